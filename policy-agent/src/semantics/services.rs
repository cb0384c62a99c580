//! Where a connection to a Service goes. A client dials a frontend (a cluster, external or
//! load-balancer address on a Service port, any node's address on a node port, the node of
//! a pod on one of its host ports), and the node's proxy sends it on to one backend of the
//! frontend's address family, on the backend's target port. Policy is defined on pods, so a
//! connection through a frontend is decided as the connection to its backend would be.

use std::{collections::BTreeSet, fmt, net::IpAddr};

use crate::model::{Cluster, ObjectRef, Protocol, Service, ServicePort};

/// How a frontend is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    /// A cluster IP.
    ClusterIp,
    /// An external IP.
    ExternalIp,
    /// A load balancer's ingress IP.
    LoadBalancer,
    /// A node's address on a node port.
    NodePort,
    /// A pod's node's address on a host port.
    HostPort,
}

impl FrontendKind {
    /// As `explain` prints it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIp => "cluster IP",
            Self::ExternalIp => "external IP",
            Self::LoadBalancer => "load-balancer IP",
            Self::NodePort => "node port",
            Self::HostPort => "host port",
        }
    }
}

/// An address and port a client dials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// The address dialled.
    pub address: IpAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// The port dialled.
    pub port: u16,
    /// How it is reached.
    pub kind: FrontendKind,
}

/// Where the proxy may send a connection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// The backend's address.
    pub address: IpAddr,
    /// The target port.
    pub port: u16,
    /// The pod, when the backend is one.
    pub pod: Option<ObjectRef>,
    /// The node it is on (the endpoint's `nodeName`), which `externalTrafficPolicy: Local`
    /// goes by.
    pub node: Option<String>,
}

/// What forwards to a set of backends: a Service port, or a pod's host port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Forwarder {
    /// A Service port (by name; empty for a single unnamed port).
    Service {
        /// The Service.
        service: ObjectRef,
        /// The port's name.
        port: String,
    },
    /// A pod's container port published on its node.
    HostPort {
        /// The pod.
        pod: ObjectRef,
        /// The host port.
        port: u16,
    },
}

impl fmt::Display for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service { service, port } if port.is_empty() => write!(f, "service {service}"),
            Self::Service { service, port } => write!(f, "service {service} port {port}"),
            Self::HostPort { pod, port } => write!(f, "host port {port} of {pod}"),
        }
    }
}

/// One forwarder: its frontends and its ready backends (of both families: a frontend
/// forwards to those of its own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    /// What forwards.
    pub forwarder: Forwarder,
    /// The frontends.
    pub frontends: Vec<Frontend>,
    /// The backends.
    pub backends: Vec<Backend>,
}

impl Forward {
    /// The backends a frontend of `address`'s family forwards to.
    pub fn backends_for(&self, address: IpAddr) -> impl Iterator<Item = &Backend> {
        self.backends
            .iter()
            .filter(move |b| b.address.is_ipv6() == address.is_ipv6())
    }
}

/// The ready backends of a Service port, from the Service's EndpointSlices: the slice port
/// with the Service port's name and protocol gives the backends' port.
pub fn backends(cluster: &Cluster, service: &Service, port: &ServicePort) -> Vec<Backend> {
    let mut out = BTreeSet::new();
    for slice in cluster
        .endpoint_slices
        .values()
        .filter(|s| s.id.namespace == service.id.namespace && s.service == service.id.name)
    {
        let Some(slice_port) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
            for &address in &endpoint.addresses {
                out.insert(Backend {
                    address,
                    port: slice_port.port,
                    pod: endpoint.pod.clone(),
                    node: endpoint.node.clone(),
                });
            }
        }
    }
    out.into_iter().collect()
}

/// Every forwarder of the cluster, for a node whose own addresses are `local_addresses`
/// (its node ports and host ports are served there too, whether or not the cluster's Node
/// objects list them).
pub fn forwards(cluster: &Cluster, local_node: &str, local_addresses: &[IpAddr]) -> Vec<Forward> {
    let node_addresses = |node: &str| -> BTreeSet<IpAddr> {
        let mut addresses: BTreeSet<IpAddr> = cluster
            .nodes
            .get(node)
            .map(|n| n.addresses.iter().copied().collect())
            .unwrap_or_default();
        if node == local_node {
            addresses.extend(local_addresses);
        }
        addresses
    };
    let all_nodes: BTreeSet<IpAddr> = cluster
        .nodes
        .values()
        .flat_map(|n| n.addresses.iter().copied())
        .chain(local_addresses.iter().copied())
        .collect();

    let mut out = Vec::new();
    for service in cluster.services.values() {
        for port in &service.ports {
            let mut frontends = Vec::new();
            let mut at = |addresses: &mut dyn Iterator<Item = IpAddr>, p: u16, kind| {
                frontends.extend(addresses.map(|address| Frontend {
                    address,
                    protocol: port.protocol,
                    port: p,
                    kind,
                }));
            };
            at(
                &mut service.cluster_ips.iter().copied(),
                port.port,
                FrontendKind::ClusterIp,
            );
            at(
                &mut service.external_ips.iter().copied(),
                port.port,
                FrontendKind::ExternalIp,
            );
            at(
                &mut service.load_balancer_ips.iter().copied(),
                port.port,
                FrontendKind::LoadBalancer,
            );
            if let Some(node_port) = port.node_port {
                at(
                    &mut all_nodes.iter().copied(),
                    node_port,
                    FrontendKind::NodePort,
                );
            }
            out.push(Forward {
                forwarder: Forwarder::Service {
                    service: service.id.clone(),
                    port: port.name.clone(),
                },
                frontends,
                backends: backends(cluster, service, port),
            });
        }
    }
    for pod in cluster.pods.values().filter(|p| p.holds_addresses()) {
        let Some(node) = &pod.node else { continue };
        for cp in &pod.ports {
            let Some(host_port) = cp.host_port else {
                continue;
            };
            out.push(Forward {
                forwarder: Forwarder::HostPort {
                    pod: pod.id.clone(),
                    port: host_port,
                },
                frontends: node_addresses(node)
                    .into_iter()
                    .map(|address| Frontend {
                        address,
                        protocol: cp.protocol,
                        port: host_port,
                        kind: FrontendKind::HostPort,
                    })
                    .collect(),
                backends: pod
                    .ips
                    .iter()
                    .map(|&address| Backend {
                        address,
                        port: cp.port,
                        pod: Some(pod.id.clone()),
                        node: Some(node.clone()),
                    })
                    .collect(),
            });
        }
    }
    out
}

/// Every address a Service answers on (cluster, external, load-balancer): never "the
/// node", even where the node holds it (IPVS puts cluster IPs on a device of the node).
pub fn service_addresses(cluster: &Cluster) -> BTreeSet<IpAddr> {
    cluster
        .services
        .values()
        .flat_map(Service::frontend_ips)
        .collect()
}
