//! The reference evaluator: the NetworkPolicy semantics applied directly to the cluster
//! model, one sentence of the API documentation at a time. It is written to be obviously
//! right, not fast; the compiled and kernel evaluators must agree with it.

use std::net::IpAddr;

use policy_common::maps::Direction;

use super::{Flow, ServiceFlow, service_verdict};
use crate::{
    model::{Cluster, ObjectRef, Pod, Protocol},
    plan::Host,
    semantics::services::Backend,
    semantics::{self, ParsedPolicy, Peer, Peers, PolicyError, PortRef, PortSpec, Ports, Rule},
};

/// The cluster with its policies parsed (invalid ones left out, as the enforcer does).
pub struct Reference<'a> {
    cluster: &'a Cluster,
    policies: Vec<ParsedPolicy>,
    rejected: Vec<PolicyError>,
}

/// What one side of a flow says: the source's egress or the destination's ingress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    /// Direction, from the side's pod.
    pub direction: Direction,
    /// The pod whose policies apply (`None` for an external host, which has none).
    pub pod: Option<ObjectRef>,
    /// Policies that select the pod and have this direction in their policyTypes.
    pub isolating: Vec<ObjectRef>,
    /// The first rule that admits the flow: policy, rule index.
    pub allowed_by: Option<(ObjectRef, usize)>,
}

impl Side {
    /// Whether this side lets the flow through.
    pub fn allows(&self) -> bool {
        self.isolating.is_empty() || self.allowed_by.is_some()
    }
}

/// The verdict on a flow and the reasons for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The flow goes from a pod to itself: "a pod cannot block access to itself".
    pub loopback: bool,
    /// The source's egress.
    pub egress: Side,
    /// The destination's ingress.
    pub ingress: Side,
}

impl Explanation {
    /// The verdict: both sides must allow it.
    pub fn allowed(&self) -> bool {
        self.loopback || (self.egress.allows() && self.ingress.allows())
    }
}

/// The verdict on a connection through a Service, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceExplanation {
    /// The client dials a Service whose only backend is itself: it may always reach itself.
    pub hairpin: bool,
    /// Each backend (of the frontend's family), with the connection to it explained.
    pub backends: Vec<(Backend, Explanation)>,
}

impl ServiceExplanation {
    /// Per backend: whether the client's egress allows it, and the backend's ingress.
    pub fn sides(&self) -> Vec<(bool, bool)> {
        self.backends
            .iter()
            .map(|(_, e)| {
                (
                    self.hairpin || e.egress.allows(),
                    e.loopback || e.ingress.allows(),
                )
            })
            .collect()
    }

    /// The verdict, when it does not depend on the backend the proxy picks.
    pub fn allowed(&self) -> Option<bool> {
        service_verdict(&self.sides())
    }

    /// How the verdict comes about, in the cases an explanation tells apart.
    pub fn outcome(&self) -> ServiceOutcome {
        if self.backends.is_empty() {
            return ServiceOutcome::NoBackend;
        }
        if self.hairpin {
            return ServiceOutcome::Hairpin;
        }
        let sides = self.sides();
        // The backends for which `pick` holds, and the others.
        let split = |pick: fn(&(bool, bool)) -> bool| {
            let (mut yes, mut no) = (Vec::new(), Vec::new());
            for ((backend, _), side) in self.backends.iter().zip(&sides) {
                if pick(side) { &mut yes } else { &mut no }.push(backend.clone());
            }
            (yes, no)
        };
        let (allowed, denied) = split(|(egress, _)| *egress);
        if allowed.is_empty() {
            return ServiceOutcome::EgressDeniesAll;
        }
        if !denied.is_empty() {
            return ServiceOutcome::BackendsDiffer { allowed, denied };
        }
        let (admitting, refusing) = split(|(_, ingress)| *ingress);
        match (admitting.is_empty(), refusing.is_empty()) {
            (_, true) => ServiceOutcome::Allowed,
            (true, false) => ServiceOutcome::IngressDeniesAll,
            (false, false) => ServiceOutcome::DependsOnBackend {
                admitting,
                refusing,
            },
        }
    }
}

/// How the verdict on a connection through a Service comes about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceOutcome {
    /// The frontend has no ready backend of its family: the connection goes nowhere.
    NoBackend,
    /// The client is the Service's only backend: it may always reach itself.
    Hairpin,
    /// The client's egress allows no backend.
    EgressDeniesAll,
    /// The client's egress allows some backends and not others. The datapath decides egress
    /// at the client, before the proxy picks, so it drops the connection
    /// (`service-backends-differ`) rather than allow what the chosen backend's rules deny.
    BackendsDiffer {
        /// The backends the client's egress allows.
        allowed: Vec<Backend>,
        /// The backends it denies.
        denied: Vec<Backend>,
    },
    /// The egress allows every backend, and every backend's ingress admits the client.
    Allowed,
    /// The egress allows every backend, and no backend's ingress admits the client.
    IngressDeniesAll,
    /// The egress allows every backend, and some backends admit the client and some do not:
    /// the verdict depends on the backend the proxy picks.
    DependsOnBackend {
        /// The backends whose ingress admits the client.
        admitting: Vec<Backend>,
        /// The backends whose ingress does not.
        refusing: Vec<Backend>,
    },
}

impl ServiceOutcome {
    /// The verdict, when it does not depend on the backend the proxy picks.
    pub fn allowed(&self) -> Option<bool> {
        match self {
            Self::Hairpin | Self::Allowed => Some(true),
            Self::DependsOnBackend { .. } => None,
            Self::NoBackend
            | Self::EgressDeniesAll
            | Self::BackendsDiffer { .. }
            | Self::IngressDeniesAll => Some(false),
        }
    }
}

impl<'a> Reference<'a> {
    /// Parses the cluster's policies.
    pub fn new(cluster: &'a Cluster) -> Self {
        let mut policies = Vec::new();
        let mut rejected = Vec::new();
        for p in cluster.policies.values() {
            let (parsed, error) = ParsedPolicy::parse_or_fail_closed(p);
            policies.push(parsed);
            rejected.extend(error);
        }
        Self {
            cluster,
            policies,
            rejected,
        }
    }

    /// Policies that failed validation (enforced fail-closed).
    pub fn rejected(&self) -> &[PolicyError] {
        &self.rejected
    }

    /// The valid policies.
    pub fn policies(&self) -> &[ParsedPolicy] {
        &self.policies
    }

    fn pod(&self, host: &Host) -> Option<&'a Pod> {
        self.cluster.pods.get(host.pod.as_ref()?)
    }

    /// Whether the flow is allowed.
    pub fn allows(&self, flow: &Flow<'_>) -> bool {
        self.explain(flow).allowed()
    }

    /// A connection through a Service is the connection to the backend the proxy picks,
    /// on its target port: every backend's, explained.
    pub fn explain_service(&self, flow: &ServiceFlow<'_>) -> ServiceExplanation {
        self.explain_service_masqueraded(flow, |_| None)
    }

    /// As [`Self::explain_service`], for a proxy that rewrites the client's address to
    /// `masquerade(backend)` where that is `Some` (a node port with `externalTrafficPolicy:
    /// Cluster`): the backend's ingress decides the node's address, as it would any address
    /// outside the cluster; the client's egress is still the client's.
    pub fn explain_service_masqueraded(
        &self,
        flow: &ServiceFlow<'_>,
        masquerade: impl Fn(&Backend) -> Option<IpAddr>,
    ) -> ServiceExplanation {
        let t = flow.target;
        // The client is the only backend: by address, as the datapath knows it.
        let only = match t.backends.as_slice() {
            [only] => self.backend_host(only).pod,
            _ => None,
        };
        let hairpin = only.is_some() && only == flow.from.pod;
        let backends = t
            .backends
            .iter()
            .map(|b| {
                let to = self.backend_host(b);
                let mut explanation = self.explain(&Flow {
                    from: flow.from,
                    to: &to,
                    src: flow.src,
                    dst: b.address,
                    protocol: t.protocol,
                    port: b.port,
                });
                if let Some(node) = masquerade(b) {
                    let node_host = Host {
                        label: node.to_string(),
                        pod: None,
                        ips: vec![node],
                        serves: Vec::new(),
                    };
                    explanation.ingress = self
                        .explain(&Flow {
                            from: &node_host,
                            to: &to,
                            src: node,
                            dst: b.address,
                            protocol: t.protocol,
                            port: b.port,
                        })
                        .ingress;
                }
                (b.clone(), explanation)
            })
            .collect();
        ServiceExplanation { hairpin, backends }
    }

    /// A backend as a host: the pod that has its address, or an address outside the
    /// cluster (see [`backend_host`]).
    pub fn backend_host(&self, b: &Backend) -> Host {
        backend_host(self.cluster, b)
    }

    /// The verdict on `flow`, and why.
    pub fn explain(&self, flow: &Flow<'_>) -> Explanation {
        self.explain_l4(flow, Some((flow.protocol, flow.port)))
    }

    /// The verdict on `flow` if it were of a protocol without ports (ICMP, or anything but
    /// TCP, UDP and SCTP; `flow.protocol` and `flow.port` are not looked at): "If this field
    /// is present and contains at least one item, then this rule allows traffic only if the
    /// traffic matches at least one port in the list" - which such traffic never does.
    pub fn explain_portless(&self, flow: &Flow<'_>) -> Explanation {
        self.explain_l4(flow, None)
    }

    fn explain_l4(&self, flow: &Flow<'_>, l4: Option<(Protocol, u16)>) -> Explanation {
        let (src, dst) = (self.pod(flow.from), self.pod(flow.to));
        Explanation {
            loopback: src.is_some() && flow.from.pod == flow.to.pod,
            // The source's egress decides on the destination; the destination's ingress on
            // the source. Ports always name the destination's port.
            egress: self.side(Direction::Egress, src, flow.to, flow.dst, dst, l4),
            ingress: self.side(Direction::Ingress, dst, flow.from, flow.src, dst, l4),
        }
    }

    fn side(
        &self,
        direction: Direction,
        pod: Option<&Pod>,
        peer: &Host,
        peer_ip: IpAddr,
        destination: Option<&Pod>,
        l4: Option<(Protocol, u16)>,
    ) -> Side {
        let Some(pod) = pod else {
            return Side {
                direction,
                pod: None,
                isolating: Vec::new(),
                allowed_by: None,
            };
        };
        // "Pods become isolated by having a NetworkPolicy that selects them" for a
        // direction when the policy's policyTypes contains it.
        let isolating: Vec<&ParsedPolicy> = self
            .policies
            .iter()
            .filter(|p| p.rules(direction).is_some() && semantics::applies_to(p, pod))
            .collect();
        let to = Remote {
            peer_pod: self.pod(peer),
            peer_ip,
            destination,
            l4,
        };
        Side {
            direction,
            pod: Some(pod.id.clone()),
            isolating: isolating.iter().map(|p| p.id.clone()).collect(),
            allowed_by: admitting_rule(self.cluster, isolating, direction, &to),
        }
    }
}

/// A backend of `cluster` as a host: the pod that has its address, or an address outside
/// the cluster. The datapath knows a backend by its address alone, whether the
/// EndpointSlice names the pod (`targetRef`), leaves it out, or names one that has lost
/// the address since.
pub fn backend_host(cluster: &Cluster, b: &Backend) -> Host {
    let has_address = |p: &&Pod| p.holds_addresses() && p.ips.contains(&b.address);
    // The pod the slice names is almost always the one; look it up before searching.
    let pod = b
        .pod
        .as_ref()
        .and_then(|p| cluster.pods.get(p))
        .filter(has_address)
        .or_else(|| cluster.pods.values().find(has_address))
        .map(|p| &p.id);
    Host {
        label: pod.map_or_else(|| b.address.to_string(), ToString::to_string),
        pod: pod.cloned(),
        ips: vec![b.address],
        serves: Vec::new(),
    }
}

/// The other end of a flow as one side's rules see it, and the flow's destination port.
#[derive(Clone, Copy, Debug)]
pub struct Remote<'a> {
    /// The peer's pod, when it is one of the cluster's: the destination for egress rules,
    /// the source for ingress rules.
    pub peer_pod: Option<&'a Pod>,
    /// The peer's address.
    pub peer_ip: IpAddr,
    /// The flow's destination pod, whose container ports named ports resolve against.
    pub destination: Option<&'a Pod>,
    /// Protocol and destination port (`None` for a protocol without ports).
    pub l4: Option<(Protocol, u16)>,
}

/// The first rule of `direction` among `policies` (those isolating one pod) that admits
/// the flow to or from `to`: policy, rule index.
///
/// "Traffic is allowed if it matches at least one rule across all of the NetworkPolicy
/// objects": a rule matches when one of its peers and one of its ports match.
pub fn admitting_rule<'p>(
    cluster: &Cluster,
    policies: impl IntoIterator<Item = &'p ParsedPolicy>,
    direction: Direction,
    to: &Remote<'_>,
) -> Option<(ObjectRef, usize)> {
    policies.into_iter().find_map(|policy| {
        let rule = policy.rules(direction)?.iter().find(|rule| {
            peers_match(cluster, rule, &policy.id.namespace, to.peer_pod, to.peer_ip)
                && ports_match(&rule.ports, to.l4, to.destination)
        })?;
        Some((policy.id.clone(), rule.index))
    })
}

fn peers_match(
    cluster: &Cluster,
    rule: &Rule,
    policy_namespace: &str,
    peer_pod: Option<&Pod>,
    ip: IpAddr,
) -> bool {
    let peers = match &rule.peers {
        // "If this field is empty or missing, this rule matches all sources" (or
        // "all destinations" for egress).
        Peers::All => return true,
        Peers::Only(peers) => peers,
    };
    // "If this field is present and contains at least one item, this rule allows
    // traffic only if the traffic matches at least one item in the from list."
    peers.iter().any(|p| match p {
        // "IPBlock defines policy on a particular IPBlock": addresses in cidr and in none
        // of except, whoever has them (pods included). A CIDR of one family contains no
        // address of the other.
        Peer::IpBlock(block) => block.contains(ip),
        // Selectors select pods; an external host is no pod.
        Peer::Pods { namespaces, pods } => peer_pod.is_some_and(|pod| {
            semantics::selector_peer_admits_pod(
                namespaces.as_ref(),
                pods,
                policy_namespace,
                cluster,
                pod,
            )
        }),
    })
}

/// "If this field is empty or missing, this rule matches all ports ... If this field is
/// present and contains at least one item, then this rule allows traffic only if the traffic
/// matches at least one port in the list."
fn ports_match(ports: &Ports, l4: Option<(Protocol, u16)>, destination: Option<&Pod>) -> bool {
    match (ports, l4) {
        (Ports::All, _) => true,
        (Ports::Only(specs), Some((protocol, port))) => specs
            .iter()
            .any(|s| port_matches(s, protocol, port, destination)),
        (Ports::Only(_), None) => false,
    }
}

fn port_matches(spec: &PortSpec, protocol: Protocol, port: u16, destination: Option<&Pod>) -> bool {
    // "The protocol (TCP, UDP, or SCTP) which traffic must match. If not specified, this
    // field defaults to TCP."
    spec.protocol == protocol
        && match &spec.port {
            // "If this field is not provided, this matches all port names and numbers."
            PortRef::Any => true,
            // "endPort indicates that the range of ports from port to endPort if set,
            // inclusive, should be allowed by the policy."
            PortRef::Range(first, last) => (*first..=*last).contains(&port),
            // A named port is "a named port on a pod": the destination's container port of
            // that name and protocol. An external destination has no named ports.
            PortRef::Named(name) => {
                destination.and_then(|pod| pod.named_port(name, protocol)) == Some(port)
            }
        }
}
