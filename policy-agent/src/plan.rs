//! What to probe: the hosts of a scenario (pods, then external hosts) and every question
//! "can this host open a connection to that one on this port" that `lab` and `matrix`
//! answer, so both print the same rows and columns.

use std::net::IpAddr;

use crate::{
    model::{
        Cluster, EndpointSlice, IpFamily, ObjectRef, Protocol, Service, ServicePort, SliceEndpoint,
        SlicePort, TargetPort,
    },
    report::{Family, NodeFrontend, Probe, Reachability},
    semantics::services::{Backend, FrontendKind, backends},
    source::control_plane,
};

/// Which Services `lab` and `matrix` probe through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceProbes {
    /// Through every Service of the manifests.
    On,
    /// By pod address only.
    Off,
    /// Through one Service per pod, `s-<namespace>-<pod>`, as the upstream e2e suite
    /// probes, and through the manifests' Services.
    PerPod,
}

impl ServiceProbes {
    /// What to do when nobody chose: probe through the Services the cluster has, if any.
    pub fn resolve(choice: Option<Self>, cluster: &Cluster) -> Self {
        choice.unwrap_or(if cluster.services.is_empty() {
            Self::Off
        } else {
            Self::On
        })
    }
}

/// The name of pod `pod`'s own Service: `s-<namespace>-<pod>`.
pub fn per_pod_service_name(pod: &ObjectRef) -> String {
    format!("s-{}-{}", pod.namespace, pod.name)
}

/// Adds one Service per pod that serves ports, as the upstream e2e suite does: named
/// [`per_pod_service_name`], in the pod's namespace, a port per container port (the same
/// number on the Service and the pod), cluster IPs of the pod's families, and an
/// EndpointSlice per family with the pod as the only backend.
pub fn add_per_pod_services(cluster: &mut Cluster) {
    let pods: Vec<_> = cluster
        .pods
        .values()
        .filter(|p| p.holds_addresses() && !p.ips.is_empty() && !p.ports.is_empty())
        .cloned()
        .collect();
    for pod in pods {
        let name = per_pod_service_name(&pod.id);
        let mut ports: Vec<(Protocol, u16)> =
            pod.ports.iter().map(|c| (c.protocol, c.port)).collect();
        ports.sort();
        ports.dedup();
        let port_name = |(protocol, port): &(Protocol, u16)| {
            format!("{}-{port}", protocol.to_string().to_ascii_lowercase())
        };
        let mut families: Vec<IpFamily> = pod.ips.iter().map(IpFamily::of).collect();
        families.dedup();
        cluster.add_service(Service {
            id: ObjectRef::new(&pod.id.namespace, &name),
            ports: ports
                .iter()
                .map(|p| ServicePort {
                    name: port_name(p),
                    protocol: p.0,
                    port: p.1,
                    node_port: None,
                    target_port: TargetPort::Number(p.1),
                })
                .collect(),
            unallocated: Some(families),
            ..Service::default()
        });
        for ip in &pod.ips {
            let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
            cluster.add_endpoint_slice(EndpointSlice {
                id: ObjectRef::new(&pod.id.namespace, format!("{name}-{family}")),
                service: name.clone(),
                ports: ports
                    .iter()
                    .map(|p| SlicePort {
                        name: port_name(p),
                        protocol: p.0,
                        port: p.1,
                    })
                    .collect(),
                endpoints: vec![SliceEndpoint {
                    addresses: vec![*ip],
                    ready: true,
                    node: pod.node.clone(),
                    pod: Some(pod.id.clone()),
                }],
            });
        }
    }
    control_plane::allocate_cluster_ips(cluster);
}

/// A pod or an external host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// `namespace/pod`, or the external address.
    pub label: String,
    /// The pod, for pods.
    pub pod: Option<ObjectRef>,
    /// Addresses (at most one per family).
    pub ips: Vec<IpAddr>,
    /// Ports it serves: a pod's container ports, or the external ports.
    pub serves: Vec<(Protocol, u16)>,
}

impl Host {
    /// The host's address of `family`.
    pub fn ip(&self, family: Family) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| Family::of(ip) == family)
    }
}

/// The hosts of a scenario: every pod that has an address and its own network namespace
/// (host-network pods share the node's) and has not finished, in name order, then the
/// external hosts.
pub fn hosts(
    cluster: &Cluster,
    externals: &[IpAddr],
    external_ports: &[(Protocol, u16)],
) -> Vec<Host> {
    let mut hosts: Vec<Host> = cluster
        .pods
        .values()
        .filter(|p| p.holds_addresses() && !p.ips.is_empty())
        .map(|p| {
            let mut serves: Vec<(Protocol, u16)> =
                p.ports.iter().map(|c| (c.protocol, c.port)).collect();
            serves.sort();
            serves.dedup();
            Host {
                label: p.id.to_string(),
                pod: Some(p.id.clone()),
                ips: p.ips.clone(),
                serves,
            }
        })
        .collect();
    hosts.extend(externals.iter().map(|ip| Host {
        label: ip.to_string(),
        pod: None,
        ips: vec![*ip],
        serves: external_ports.to_vec(),
    }));
    hosts
}

/// One question about a pair of hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Question {
    /// Index of the source in the host list.
    pub from: usize,
    /// Index of the destination.
    pub to: usize,
    /// Address family both use.
    pub family: Family,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
}

/// Every ordered pair of hosts (external to external excepted), on every port the
/// destination serves, once per address family both have.
pub fn questions(hosts: &[Host]) -> Vec<Question> {
    (0..hosts.len())
        .flat_map(|from| questions_from(hosts, from))
        .collect()
}

/// The [`questions`] whose source is `hosts[from]`, in the same order.
pub fn questions_from(hosts: &[Host], from: usize) -> impl Iterator<Item = Question> + '_ {
    (0..hosts.len()).flat_map(move |to| questions_between(hosts, from, to))
}

/// The [`questions`] from `hosts[from]` to the hosts of `to` (indices in increasing
/// order), in the same order: those of a matrix that shows only some destinations.
pub fn questions_to<'a>(
    hosts: &'a [Host],
    from: usize,
    to: &'a [usize],
) -> impl Iterator<Item = Question> + 'a {
    to.iter()
        .flat_map(move |&to| questions_between(hosts, from, to))
}

/// The questions from `hosts[from]` to `hosts[to]`: none between two external hosts,
/// else one per family both have and port the destination serves.
fn questions_between(
    hosts: &[Host],
    from: usize,
    to: usize,
) -> impl Iterator<Item = Question> + '_ {
    let (src, dst) = (&hosts[from], &hosts[to]);
    let asked = src.pod.is_some() || dst.pod.is_some();
    [Family::IPv4, Family::IPv6]
        .into_iter()
        .filter(move |&family| asked && src.ip(family).is_some() && dst.ip(family).is_some())
        .flat_map(move |family| {
            dst.serves.iter().map(move |&(protocol, port)| Question {
                from,
                to,
                family,
                protocol,
                port,
            })
        })
}

/// The report row of an answered question.
pub fn probe(hosts: &[Host], q: &Question, allowed: bool) -> Probe {
    Probe {
        from: hosts[q.from].label.clone(),
        to: hosts[q.to].label.clone(),
        port: q.port,
        protocol: q.protocol,
        family: q.family,
        allowed,
        service: None,
        address: None,
        backend_dependent: false,
        via: None,
    }
}

/// A Service frontend that pods dial: a cluster IP and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTarget {
    /// `namespace/name` of the Service.
    pub label: String,
    /// The Service.
    pub service: ObjectRef,
    /// The cluster IP.
    pub address: std::net::IpAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// The Service port.
    pub port: u16,
    /// The backends of the address's family.
    pub backends: Vec<Backend>,
}

impl ServiceTarget {
    /// The address family.
    pub fn family(&self) -> Family {
        Family::of(&self.address)
    }

    /// The backend pod, when there is exactly one.
    pub fn only_pod(&self) -> Option<&ObjectRef> {
        match self.backends.as_slice() {
            [only] => only.pod.as_ref(),
            _ => None,
        }
    }
}

/// Every cluster IP and port of the cluster's Services (with the backends of its family).
pub fn service_targets(cluster: &Cluster) -> Vec<ServiceTarget> {
    frontend_targets(cluster)
        .into_iter()
        .filter(|(kind, _)| *kind == FrontendKind::ClusterIp)
        .map(|(_, t)| t)
        .collect()
}

/// Every address a Service answers on (cluster, external and load-balancer IPs) and port,
/// with how it is reached and the backends of its family. Node ports and host ports are
/// left out: they are addresses of nodes, which a client outside the cluster dials too,
/// and the proxy masquerades some of those connections.
pub fn frontend_targets(cluster: &Cluster) -> Vec<(FrontendKind, ServiceTarget)> {
    let mut out = Vec::new();
    for service in cluster.services.values() {
        let addresses = [
            (FrontendKind::ClusterIp, &service.cluster_ips),
            (FrontendKind::ExternalIp, &service.external_ips),
            (FrontendKind::LoadBalancer, &service.load_balancer_ips),
        ];
        for port in &service.ports {
            let all = backends(cluster, service, port);
            for (kind, ips) in addresses {
                for &address in ips {
                    let target = ServiceTarget {
                        label: service.id.to_string(),
                        service: service.id.clone(),
                        address,
                        protocol: port.protocol,
                        port: port.port,
                        backends: all
                            .iter()
                            .filter(|b| b.address.is_ipv6() == address.is_ipv6())
                            .cloned()
                            .collect(),
                    };
                    out.push((kind, target));
                }
            }
        }
    }
    out
}

/// One pod dialling one Service frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceQuestion {
    /// Index of the source in the host list (a pod).
    pub from: usize,
    /// Index of the target in the target list.
    pub target: usize,
}

/// Every pod dialling every Service frontend of a family it has.
pub fn service_questions(hosts: &[Host], targets: &[ServiceTarget]) -> Vec<ServiceQuestion> {
    (0..hosts.len())
        .flat_map(|from| service_questions_from(hosts, targets, from))
        .collect()
}

/// The [`service_questions`] whose source is `hosts[from]`, in the same order.
pub fn service_questions_from<'a>(
    hosts: &'a [Host],
    targets: &'a [ServiceTarget],
    from: usize,
) -> impl Iterator<Item = ServiceQuestion> + 'a {
    let h = &hosts[from];
    targets
        .iter()
        .enumerate()
        .filter(move |(_, t)| h.pod.is_some() && h.ip(t.family()).is_some())
        .map(move |(target, _)| ServiceQuestion { from, target })
}

/// The report row of an answered Service question.
pub fn service_probe(
    hosts: &[Host],
    targets: &[ServiceTarget],
    q: &ServiceQuestion,
    allowed: bool,
) -> Probe {
    let t = &targets[q.target];
    Probe {
        from: hosts[q.from].label.clone(),
        to: t
            .only_pod()
            .map_or_else(|| t.label.clone(), ToString::to_string),
        port: t.port,
        protocol: t.protocol,
        family: t.family(),
        allowed,
        service: Some(t.label.clone()),
        address: Some(t.address),
        backend_dependent: false,
        via: None,
    }
}

/// The report row of a Service question an evaluator answered: `None` (the verdict
/// depends on the backend the proxy picks) is reported as not allowed, and marked.
pub fn service_probe_verdict(
    hosts: &[Host],
    targets: &[ServiceTarget],
    q: &ServiceQuestion,
    verdict: Option<bool>,
) -> Probe {
    Probe {
        backend_dependent: verdict.is_none(),
        ..service_probe(hosts, targets, q, verdict.unwrap_or(false))
    }
}

/// Answers every question by address with `allowed`, then every question through a
/// Service frontend of `targets` with `through` (`None`: it depends on the backend).
pub fn answer_with_services(
    hosts: &[Host],
    targets: &[ServiceTarget],
    allowed: impl FnMut(&Question) -> bool,
    mut through: impl FnMut(&ServiceQuestion) -> Option<bool>,
) -> Reachability {
    let mut probes = answer(hosts, allowed).probes;
    probes.extend(
        service_questions(hosts, targets)
            .iter()
            .map(|q| service_probe_verdict(hosts, targets, q, through(q))),
    );
    Reachability::new(probes)
}

/// Answers every question with `allowed`.
pub fn answer(hosts: &[Host], mut allowed: impl FnMut(&Question) -> bool) -> Reachability {
    Reachability::new(
        questions(hosts)
            .iter()
            .map(|q| probe(hosts, q, allowed(q)))
            .collect(),
    )
}

/// A frontend on a node's address: a Service's node port, or a pod's host port (the
/// runtime's `portmap` plugin publishes it on the pod's node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTarget {
    /// The frontend as a Service target: `service` is the pod for a host port.
    pub target: ServiceTarget,
    /// Node port or host port.
    pub via: NodeFrontend,
    /// The node whose address it is.
    pub node: String,
    /// The node masquerades external clients (a node port whose Service has
    /// `externalTrafficPolicy: Cluster`): backends see the node's address as the source.
    pub masquerades: bool,
}

/// Whether a host outside the node can dial `ip` without naming an interface (IPv6
/// link-local addresses need one).
fn dialable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unspecified() && !v6.is_unicast_link_local(),
    }
}

/// Every node address (of the cluster's Node objects, dialable from outside) on every node
/// port, and every pod's node address on each of its host ports, with the backends of the
/// address's family: for a node port of a Service with `externalTrafficPolicy: Local`, those
/// on the node dialled only.
pub fn node_targets(cluster: &Cluster) -> Vec<NodeTarget> {
    let mut out = Vec::new();
    let node_addresses = |node: &str| {
        cluster
            .nodes
            .get(node)
            .into_iter()
            .flat_map(|n| n.addresses.iter().copied())
            .filter(dialable)
            .collect::<Vec<_>>()
    };
    for service in cluster.services.values() {
        for port in &service.ports {
            let Some(node_port) = port.node_port else {
                continue;
            };
            let all = backends(cluster, service, port);
            for node in cluster.nodes.keys() {
                for address in node_addresses(node) {
                    out.push(NodeTarget {
                        target: ServiceTarget {
                            label: service.id.to_string(),
                            service: service.id.clone(),
                            address,
                            protocol: port.protocol,
                            port: node_port,
                            backends: all
                                .iter()
                                .filter(|b| b.address.is_ipv6() == address.is_ipv6())
                                .filter(|b| {
                                    !service.external_traffic_local || b.node.as_ref() == Some(node)
                                })
                                .cloned()
                                .collect(),
                        },
                        via: NodeFrontend::NodePort,
                        node: node.clone(),
                        masquerades: !service.external_traffic_local,
                    });
                }
            }
        }
    }
    for pod in cluster.pods.values().filter(|p| p.holds_addresses()) {
        let Some(node) = &pod.node else { continue };
        for cp in &pod.ports {
            let Some(host_port) = cp.host_port else {
                continue;
            };
            for address in node_addresses(node) {
                out.push(NodeTarget {
                    target: ServiceTarget {
                        label: pod.id.to_string(),
                        service: pod.id.clone(),
                        address,
                        protocol: cp.protocol,
                        port: host_port,
                        backends: pod
                            .ips
                            .iter()
                            .filter(|ip| ip.is_ipv6() == address.is_ipv6())
                            .map(|&ip| Backend {
                                address: ip,
                                port: cp.port,
                                pod: Some(pod.id.clone()),
                                node: Some(node.clone()),
                            })
                            .collect(),
                    },
                    via: NodeFrontend::HostPort,
                    node: node.clone(),
                    masquerades: false,
                });
            }
        }
    }
    out
}

/// Every external host dialling every node target of its family, and every pod dialling
/// every host port of a family it has (a pod dialling a node port may be masqueraded or
/// not, as the proxy decides for traffic from its own node's pods: not asked).
pub fn node_questions(hosts: &[Host], targets: &[NodeTarget]) -> Vec<ServiceQuestion> {
    let mut out = Vec::new();
    for (from, h) in hosts.iter().enumerate() {
        for (target, t) in targets.iter().enumerate() {
            let asked = h.pod.is_none() || t.via == NodeFrontend::HostPort;
            if asked && h.ip(t.target.family()).is_some() {
                out.push(ServiceQuestion { from, target });
            }
        }
    }
    out
}

/// The report row of an answered question to a node target (`None`: the verdict depends on
/// the backend the proxy picks, reported as not allowed and marked).
pub fn node_probe(
    hosts: &[Host],
    targets: &[NodeTarget],
    q: &ServiceQuestion,
    verdict: Option<bool>,
) -> Probe {
    let t = &targets[q.target];
    Probe {
        from: hosts[q.from].label.clone(),
        to: t
            .target
            .only_pod()
            .map_or_else(|| t.target.label.clone(), ToString::to_string),
        port: t.target.port,
        protocol: t.target.protocol,
        family: t.target.family(),
        allowed: verdict.unwrap_or(false),
        service: (t.via == NodeFrontend::NodePort).then(|| t.target.label.clone()),
        address: Some(t.target.address),
        backend_dependent: verdict.is_none(),
        via: Some(t.via),
    }
}
