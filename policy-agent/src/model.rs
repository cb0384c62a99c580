//! The cluster as the enforcer sees it: namespaces, pods and NetworkPolicies.
//!
//! Sources (manifest directories, the Kubernetes API) fill it in; the compiler and the
//! evaluators read it. Pods keep only what policy can observe: labels, addresses, node,
//! and named container ports.

use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf};

use k8s_openapi::api::networking::v1::NetworkPolicySpec;
use policy_common::net::proto;

/// Label set of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// The label the API server puts on every namespace, with the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

impl Pod {
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
    /// Where it came from.
    pub origin: Origin,
}

/// Everything policy decisions depend on.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Pods by namespace/name.
    pub pods: BTreeMap<ObjectRef, Pod>,
    /// NetworkPolicies by namespace/name.
    pub policies: BTreeMap<ObjectRef, Policy>,
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
