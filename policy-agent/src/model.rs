//! The cluster as the enforcer sees it: namespaces, pods and NetworkPolicies, and the
//! Services, EndpointSlices and nodes that decide where a connection really goes.
//!
//! Sources (manifest directories, the Kubernetes API) fill it in; the compiler and the
//! evaluators read it. Objects keep only what policy can observe: labels, addresses, node,
//! ports, and which backends a Service frontend forwards to.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    path::PathBuf,
};

use k8s_openapi::api::networking::v1::NetworkPolicySpec;
use policy_common::net::proto;

/// Label set of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// The label the API server puts on every namespace, with the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    /// A reference to `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `namespace/name`, as JSON shows it.
impl serde::Serialize for ObjectRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Reads `namespace/name`.
impl<'de> serde::Deserialize<'de> for ObjectRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (namespace, name) = s
            .split_once('/')
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not namespace/name")))?;
        Ok(ObjectRef::new(namespace, name))
    }
}

/// Transport protocols NetworkPolicy ports name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// All protocols, in output order.
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// Parses the spelling of the Kubernetes API (`TCP`, `UDP`, `SCTP`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The Kubernetes spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }

    /// IANA protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => proto::TCP,
            Self::Udp => proto::UDP,
            Self::Sctp => proto::SCTP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port a pod's container declares.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    /// The port's name, for named-port rules.
    pub name: Option<String>,
    /// Port number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// The node port the runtime forwards to it (`hostPort`, the `portmap` plugin's DNAT),
    /// if any.
    pub host_port: Option<u16>,
}

/// A namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels, always including [`NAMESPACE_NAME_LABEL`].
    pub labels: Labels,
}

impl Namespace {
    /// A namespace with the labels given plus the implied name label.
    pub fn new(name: impl Into<String>, mut labels: Labels) -> Self {
        let name = name.into();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
        Self { name, labels }
    }
}

/// A pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    /// Namespace and name.
    pub id: ObjectRef,
    /// Labels.
    pub labels: Labels,
    /// Addresses (status.podIPs), at most one per family.
    pub ips: Vec<IpAddr>,
    /// Node the pod runs on (spec.nodeName).
    pub node: Option<String>,
    /// Ports of all its containers.
    pub ports: Vec<ContainerPort>,
    /// Pods on the host network share the node's addresses and cannot be enforced.
    pub host_network: bool,
    /// metadata.uid, when known: tells a pod from an earlier one of the same name.
    pub uid: Option<String>,
    /// Its phase is Succeeded or Failed: it has finished, and its addresses (which its
    /// status may still show) are free for other pods.
    pub finished: bool,
    /// metadata.creationTimestamp, when known: of two running pods that claim one address,
    /// the newer keeps it.
    pub created: Option<jiff::Timestamp>,
    /// The controller that owns it (the `metadata.ownerReferences` entry with `controller:
    /// true`), which names its workload (see [`crate::workload`]).
    pub owner: Option<Owner>,
}

/// A pod's controller, from its `metadata.ownerReferences`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Owner {
    /// Its kind (`ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job`, ...).
    pub kind: String,
    /// Its name, in the pod's namespace.
    pub name: String,
}

impl Pod {
    /// Whether the pod's addresses are its own for policy: it is running (or about to),
    /// in a network namespace of its own.
    pub fn holds_addresses(&self) -> bool {
        !self.finished && !self.host_network
    }

    /// The port number a named port resolves to on this pod, for `protocol`.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

/// Where an object came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Origin {
    /// File it was read from, if any.
    pub file: Option<PathBuf>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}", file.display()),
            None => f.write_str("<api>"),
        }
    }
}

/// A NetworkPolicy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Namespace and name.
    pub id: ObjectRef,
    /// The spec as the API defines it.
    pub spec: NetworkPolicySpec,
    /// The rest of its metadata that validation reads.
    pub meta: PolicyMeta,
    /// Where it came from.
    pub origin: Origin,
}

/// The labels and annotations of a NetworkPolicy: they mean nothing to enforcement, but the
/// API server validates them, so a policy with a bad one is rejected as it would be there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyMeta {
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
}

/// The port a Service port forwards to on its backends.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port's name, resolved on each backend pod.
    Name(String),
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    /// Its name, which its EndpointSlices' ports carry too (empty for a single unnamed port).
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// The port its frontends listen on.
    pub port: u16,
    /// The port on every node's addresses, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// The port on the backends.
    pub target_port: TargetPort,
}

/// A Service: the addresses clients dial, and how its backends are chosen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Namespace and name.
    pub id: ObjectRef,
    /// `spec.clusterIPs` (none for a headless Service).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
    /// `spec.selector`: the pods whose EndpointSlices the control plane maintains (none:
    /// the slices are someone else's).
    pub selector: Option<Labels>,
    /// `spec.externalTrafficPolicy: Local`: node ports keep the client's address and go to
    /// backends on the node dialled only.
    pub external_traffic_local: bool,
    /// The families whose cluster IP the API server has yet to allocate: a manifest that
    /// names none (`spec.ipFamilies`, or both for a dual-stack `spec.ipFamilyPolicy`; empty
    /// for "the cluster's primary family"). `None` when nothing is to be allocated.
    pub unallocated: Option<Vec<IpFamily>>,
}

/// An address family, as `spec.ipFamilies` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IpFamily {
    /// `IPv4`.
    Ipv4,
    /// `IPv6`.
    Ipv6,
}

impl IpFamily {
    /// The family of `ip`.
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() { Self::Ipv4 } else { Self::Ipv6 }
    }
}

impl Service {
    /// Every address a client may dial: cluster, external and load-balancer addresses.
    pub fn frontend_ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.cluster_ips
            .iter()
            .chain(&self.external_ips)
            .chain(&self.load_balancer_ips)
            .copied()
    }
}

/// One backend in an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Its addresses (of the slice's family).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (absent means ready): the proxy sends new connections to ready
    /// backends only.
    pub ready: bool,
    /// `nodeName`.
    pub node: Option<String>,
    /// `targetRef`, when it is a pod.
    pub pod: Option<ObjectRef>,
}

/// A port in an EndpointSlice: a Service port's name and the backends' port number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    /// The Service port it belongs to (empty for an unnamed one).
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// The number on the backends (a named target port, resolved).
    pub port: u16,
}

/// A `discovery.k8s.io/v1` EndpointSlice: backends of one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSlice {
    /// Namespace and name.
    pub id: ObjectRef,
    /// The Service (`kubernetes.io/service-name` label), in the slice's namespace.
    pub service: String,
    /// Ports.
    pub ports: Vec<SlicePort>,
    /// Backends.
    pub endpoints: Vec<SliceEndpoint>,
}

/// A node of the cluster: the addresses node ports and host ports are served on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// Name.
    pub name: String,
    /// `status.addresses` of type InternalIP and ExternalIP.
    pub addresses: Vec<IpAddr>,
}

/// The EndpointSlice label naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Everything policy decisions depend on.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Pods by namespace/name.
    pub pods: BTreeMap<ObjectRef, Pod>,
    /// NetworkPolicies by namespace/name.
    pub policies: BTreeMap<ObjectRef, Policy>,
    /// Services by namespace/name.
    pub services: BTreeMap<ObjectRef, Service>,
    /// EndpointSlices by namespace/name.
    pub endpoint_slices: BTreeMap<ObjectRef, EndpointSlice>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
}

impl Cluster {
    /// Adds or replaces a pod. Its namespace is created if nobody declared it, with the
    /// name label every namespace of a real cluster has.
    pub fn add_pod(&mut self, pod: Pod) {
        self.ensure_namespace(&pod.id.namespace);
        self.pods.insert(pod.id.clone(), pod);
    }

    /// Adds or replaces a policy (creating its namespace if needed, as for pods).
    pub fn add_policy(&mut self, policy: Policy) {
        self.ensure_namespace(&policy.id.namespace);
        self.policies.insert(policy.id.clone(), policy);
    }

    /// Adds or replaces a Service (creating its namespace if needed).
    pub fn add_service(&mut self, service: Service) {
        self.ensure_namespace(&service.id.namespace);
        self.services.insert(service.id.clone(), service);
    }

    /// Adds or replaces an EndpointSlice.
    pub fn add_endpoint_slice(&mut self, slice: EndpointSlice) {
        self.endpoint_slices.insert(slice.id.clone(), slice);
    }

    /// Adds or replaces a node.
    pub fn add_node(&mut self, node: Node) {
        self.nodes.insert(node.name.clone(), node);
    }

    /// Adds or replaces a namespace.
    pub fn add_namespace(&mut self, ns: Namespace) {
        self.namespaces.insert(ns.name.clone(), ns);
    }

    fn ensure_namespace(&mut self, name: &str) {
        if !self.namespaces.contains_key(name) {
            self.add_namespace(Namespace::new(name, Labels::new()));
        }
    }

    /// Labels of a namespace.
    pub fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.namespaces.get(name).map(|ns| &ns.labels)
    }

    /// Pods scheduled on `node`.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods
            .values()
            .filter(move |p| p.node.as_deref() == Some(node))
    }
}

/// An address two running pods claim at once (a pod that finished still shows the address
/// the next one got, and a node's IPAM may have been confused), and which of them keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressConflict {
    /// The address.
    pub address: IpAddr,
    /// The pod that keeps it.
    pub kept_by: ObjectRef,
    /// Whether it keeps it because its sandbox is on this node (else: it is the newest).
    pub local_sandbox: bool,
    /// The pods that lose it (for policy they do not have it).
    pub lost_by: Vec<ObjectRef>,
}

impl fmt::Display for AddressConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let others: Vec<String> = self.lost_by.iter().map(ToString::to_string).collect();
        let text = format!(
            "address {} is claimed by {} and {}: {} keeps it ({})",
            self.address,
            self.kept_by,
            others.join(", "),
            self.kept_by,
            if self.local_sandbox {
                "its sandbox is on this node"
            } else {
                "it is the newest"
            }
        );
        // One line about pods whose names may hold anything.
        write!(f, "{}", crate::report::escape(&text))
    }
}

impl Cluster {
    /// Whether the cluster is as policy sees it already ([`Self::settled`] would change
    /// nothing): no finished pod shows an address, and no address has two claims.
    pub fn is_settled(&self) -> bool {
        let mut claimed = std::collections::HashSet::new();
        for pod in self.pods.values() {
            if pod.finished && !pod.ips.is_empty() {
                return false;
            }
            if pod.holds_addresses() && !pod.ips.iter().all(|ip| claimed.insert(*ip)) {
                return false;
            }
        }
        true
    }

    /// The cluster as policy sees it: pods that finished hold no address, and an address
    /// several running pods claim stays with one of them, the same on every node that
    /// knows the same: the pod whose sandbox this node made (`local_sandboxes`), else the
    /// one created last, else the one whose name sorts last. Returns the conflicts.
    pub fn settled(
        &self,
        local_sandboxes: &BTreeSet<ObjectRef>,
    ) -> (Cluster, Vec<AddressConflict>) {
        let mut settled = self.clone();
        let mut claims: BTreeMap<IpAddr, Vec<&Pod>> = BTreeMap::new();
        for pod in self.pods.values().filter(|p| p.holds_addresses()) {
            for &ip in &pod.ips {
                claims.entry(ip).or_default().push(pod);
            }
        }
        for pod in settled.pods.values_mut().filter(|p| p.finished) {
            pod.ips.clear();
        }
        let mut conflicts = Vec::new();
        for (address, mut pods) in claims.into_iter().filter(|(_, p)| p.len() > 1) {
            pods.sort_by_key(|p| (local_sandboxes.contains(&p.id), p.created, p.id.clone()));
            let keeper = pods.pop().expect("two or more");
            for loser in &pods {
                if let Some(p) = settled.pods.get_mut(&loser.id) {
                    p.ips.retain(|&ip| ip != address);
                }
            }
            conflicts.push(AddressConflict {
                address,
                kept_by: keeper.id.clone(),
                local_sandbox: local_sandboxes.contains(&keeper.id),
                lost_by: pods.iter().map(|p| p.id.clone()).collect(),
            });
        }
        (settled, conflicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, created: &str) -> Pod {
        Pod {
            id: ObjectRef::new("x", name),
            ips: vec![ip.parse().unwrap()],
            created: Some(created.parse().unwrap()),
            ..Pod::default()
        }
    }

    #[test]
    fn a_finished_pod_frees_its_address_and_the_newest_claim_wins() {
        let mut c = Cluster::default();
        let mut job = pod("job", "10.0.0.5", "2026-01-01T00:00:00Z");
        job.finished = true;
        c.add_pod(job);
        assert!(!c.is_settled(), "a finished pod still shows its address");
        c.add_pod(pod("web", "10.0.0.5", "2026-01-02T00:00:00Z"));
        let (settled, conflicts) = c.settled(&BTreeSet::new());
        assert!(settled.is_settled());
        assert!(
            conflicts.is_empty(),
            "a finished pod claims nothing: {conflicts:?}"
        );
        assert!(settled.pods[&ObjectRef::new("x", "job")].ips.is_empty());
        assert_eq!(settled.pods[&ObjectRef::new("x", "web")].ips.len(), 1);

        c.add_pod(pod("old", "10.0.0.7", "2026-01-01T00:00:00Z"));
        c.pods
            .get_mut(&ObjectRef::new("x", "job"))
            .unwrap()
            .ips
            .clear();
        assert!(
            c.is_settled(),
            "distinct addresses, no finished pod showing one"
        );
        c.add_pod(pod("new", "10.0.0.7", "2026-01-03T00:00:00Z"));
        assert!(!c.is_settled(), "two claims of 10.0.0.7");
        let (settled, conflicts) = c.settled(&BTreeSet::new());
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].kept_by, ObjectRef::new("x", "new"));
        assert!(settled.pods[&ObjectRef::new("x", "old")].ips.is_empty());
        // The pod whose sandbox this node made wins here, however old.
        let local = BTreeSet::from([ObjectRef::new("x", "old")]);
        let (settled, conflicts) = c.settled(&local);
        assert_eq!(conflicts[0].kept_by, ObjectRef::new("x", "old"));
        assert!(
            conflicts[0]
                .to_string()
                .contains("its sandbox is on this node")
        );
        assert!(settled.pods[&ObjectRef::new("x", "new")].ips.is_empty());
    }
}
