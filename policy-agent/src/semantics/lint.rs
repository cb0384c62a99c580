//! Warnings for valid policies that probably do not do what their author meant: they select
//! nothing, name labels nobody has, cut off DNS, or open ports nobody listens on; and for
//! Services some clients cannot use because their egress allows some backends and not
//! others.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use policy_common::maps::Direction;

use super::{
    ParsedPolicy, Peer, Peers, PortRef, Ports, applies_to,
    selector::{Requirement, Selector},
    selector_peer_admits_pod,
};
use crate::{
    evaluate::reference::{self, Remote},
    model::{Cluster, ObjectRef, Pod, Protocol, Service, ServicePort},
    semantics::services::{self, Backend},
};

/// The port DNS answers on.
const DNS_PORT: u16 = 53;

/// Clients, or backends, a warning names before it only counts the rest.
const NAMED_IN_WARNING: usize = 5;

/// What a warning is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A NetworkPolicy.
    Policy(ObjectRef),
    /// A Service.
    Service(ObjectRef),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Policy(id) => write!(f, "NetworkPolicy {id}"),
            Self::Service(id) => write!(f, "Service {id}"),
        }
    }
}

/// A likely mistake in a valid policy, or a Service the policies make unusable for some.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The object it is about.
    pub subject: Subject,
    /// The field it is about.
    pub field: String,
    /// What looks wrong, and what it means.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line naming objects and labels, which may hold anything.
        let text = format!("{}: {}: {}", self.subject, self.field, self.message);
        write!(f, "{}", crate::report::escape(&text))
    }
}

/// The objects whose warnings are wanted: what concerns one flow (see [`Scope::of_flow`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// The NetworkPolicies.
    pub policies: BTreeSet<ObjectRef>,
    /// The Services.
    pub services: BTreeSet<ObjectRef>,
}

impl Scope {
    /// What concerns a flow between `pods` (its ends, and the backends behind a Service):
    /// the policies that select one of them, which alone can decide the flow (a policy
    /// decides only for the pods it selects), and the Services in front of the
    /// destination: `dialled`, and every Service with a backend at an
    /// address of one of `destinations`.
    pub fn of_flow(
        cluster: &Cluster,
        policies: &[ParsedPolicy],
        pods: &BTreeSet<ObjectRef>,
        destinations: &BTreeSet<ObjectRef>,
        dialled: BTreeSet<ObjectRef>,
    ) -> Self {
        let pods: Vec<&Pod> = pods.iter().filter_map(|id| cluster.pods.get(id)).collect();
        let policies = policies
            .iter()
            .filter(|p| pods.iter().any(|pod| applies_to(p, pod)))
            .map(|p| p.id.clone())
            .collect();
        let addresses: BTreeSet<IpAddr> = destinations
            .iter()
            .filter_map(|id| cluster.pods.get(id))
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        let mut in_front = dialled;
        if !addresses.is_empty() {
            in_front.extend(
                cluster
                    .services
                    .values()
                    .filter(|svc| {
                        svc.ports.iter().any(|port| {
                            services::backends(cluster, svc, port)
                                .iter()
                                .any(|b| addresses.contains(&b.address))
                        })
                    })
                    .map(|svc| svc.id.clone()),
            );
        }
        Self {
            policies,
            services: in_front,
        }
    }
}

/// Every warning about `policies` in `cluster`.
pub fn lint(cluster: &Cluster, policies: &[ParsedPolicy]) -> Vec<Warning> {
    lint_in(cluster, policies, None)
}

/// The warnings of [`lint`] about the objects of `scope`, and only those: the same
/// warnings the whole-cluster lint gives them, for the work of those objects alone (each
/// warning depends on its object and the cluster, never on the other warnings).
pub fn lint_scoped(cluster: &Cluster, policies: &[ParsedPolicy], scope: &Scope) -> Vec<Warning> {
    lint_in(cluster, policies, Some(scope))
}

/// The warnings about every object, or about those of `scope`.
fn lint_in(cluster: &Cluster, policies: &[ParsedPolicy], scope: Option<&Scope>) -> Vec<Warning> {
    let mut out = Vec::new();
    for policy in policies
        .iter()
        .filter(|p| scope.is_none_or(|s| s.policies.contains(&p.id)))
    {
        let warn = |out: &mut Vec<Warning>, field: String, message: String| {
            out.push(Warning {
                subject: Subject::Policy(policy.id.clone()),
                field,
                message,
            })
        };
        let selected: Vec<&Pod> = cluster
            .pods
            .values()
            .filter(|p| applies_to(policy, p))
            .collect();
        if selected.is_empty() {
            warn(
                &mut out,
                "spec.podSelector".into(),
                format!(
                    "{} selects no pod in namespace {}: the policy has no effect",
                    policy.pod_selector, policy.id.namespace
                ),
            );
        }

        for (dir, name, peer_field) in [
            (Direction::Ingress, "ingress", "from"),
            (Direction::Egress, "egress", "to"),
        ] {
            for rule in policy.rules(dir).unwrap_or_default() {
                let base = format!("spec.{name}[{}]", rule.index);
                if let Peers::Only(peers) = &rule.peers {
                    for (j, peer) in peers.iter().enumerate() {
                        let field = format!("{base}.{peer_field}[{j}]");
                        lint_peer(cluster, policy, peer, &field, &mut out);
                    }
                }
                if dir == Direction::Ingress && !selected.is_empty() {
                    lint_ports(
                        &selected,
                        &rule.ports,
                        &format!("{base}.ports"),
                        &policy.id,
                        &mut out,
                    );
                }
            }
        }

        if policy.egress.is_some() {
            let cut_off: Vec<String> = selected
                .iter()
                .filter(|pod| !reaches_dns(policies, pod))
                .map(|pod| pod.id.to_string())
                .collect();
            if !cut_off.is_empty() {
                warn(
                    &mut out,
                    "spec.policyTypes".into(),
                    format!(
                        "isolates the egress of {} and no egress rule of the policies selecting \
                         them allows DNS (port {DNS_PORT}): name resolution will fail",
                        cut_off.join(", ")
                    ),
                );
            }
        }
    }
    out.extend(lint_services(cluster, policies, |svc| {
        scope.is_none_or(|s| s.services.contains(&svc.id))
    }));
    out
}

/// Requirements that at least one label set must satisfy for the selector to match anything.
fn positive_requirements(selector: &Selector) -> impl Iterator<Item = &Requirement> {
    selector.requirements().iter().filter(|r| {
        matches!(
            r,
            Requirement::Equals(..) | Requirement::In(..) | Requirement::Exists(_)
        )
    })
}

fn lint_peer(
    cluster: &Cluster,
    policy: &ParsedPolicy,
    peer: &Peer,
    field: &str,
    out: &mut Vec<Warning>,
) {
    let Peer::Pods { namespaces, pods } = peer else {
        return;
    };
    if let Some(ns_selector) = namespaces {
        let mut missing = false;
        for requirement in positive_requirements(ns_selector) {
            if !cluster
                .namespaces
                .values()
                .any(|ns| requirement.matches(&ns.labels))
            {
                missing = true;
                out.push(Warning {
                    subject: Subject::Policy(policy.id.clone()),
                    field: format!("{field}.namespaceSelector"),
                    message: format!(
                        "no namespace carries the label {requirement}: this peer matches nothing"
                    ),
                });
            }
        }
        if missing {
            return;
        }
    }
    let any = cluster.pods.values().any(|pod| {
        selector_peer_admits_pod(
            namespaces.as_ref(),
            pods,
            &policy.id.namespace,
            cluster,
            pod,
        )
    });
    if !any {
        let scope = match namespaces {
            None => format!("namespace {}", policy.id.namespace),
            Some(ns) => format!("namespaces {ns}"),
        };
        out.push(Warning {
            subject: Subject::Policy(policy.id.clone()),
            field: format!("{field}.podSelector"),
            message: format!("{pods} selects no pod in {scope}"),
        });
    }
}

fn lint_ports(
    selected: &[&Pod],
    ports: &Ports,
    field: &str,
    policy: &ObjectRef,
    out: &mut Vec<Warning>,
) {
    let Ports::Only(specs) = ports else {
        return;
    };
    let names: Vec<String> = selected.iter().map(|p| p.id.to_string()).collect();
    for (k, spec) in specs.iter().enumerate() {
        let declared = selected.iter().any(|pod| match &spec.port {
            PortRef::Any => pod.ports.iter().any(|c| c.protocol == spec.protocol),
            PortRef::Range(a, b) => pod
                .ports
                .iter()
                .any(|c| c.protocol == spec.protocol && (*a..=*b).contains(&c.port)),
            PortRef::Named(name) => pod.named_port(name, spec.protocol).is_some(),
        });
        if !declared {
            let message = match &spec.port {
                PortRef::Named(_) => format!(
                    "no selected pod ({}) has a {spec}: the port matches nothing",
                    names.join(", ")
                ),
                _ => format!(
                    "no selected pod ({}) declares a container port for {spec}",
                    names.join(", ")
                ),
            };
            out.push(Warning {
                subject: Subject::Policy(policy.clone()),
                field: format!("{field}[{k}]"),
                message,
            });
        }
    }
}

/// Whether some egress rule of a policy selecting `pod` may allow DNS. A named port might
/// be DNS on the destination, so it counts.
fn reaches_dns(policies: &[ParsedPolicy], pod: &Pod) -> bool {
    policies
        .iter()
        .filter(|p| applies_to(p, pod))
        .filter_map(|p| p.egress.as_deref())
        .flatten()
        .any(|rule| match &rule.ports {
            Ports::All => true,
            Ports::Only(specs) => specs.iter().any(|s| {
                matches!(s.protocol, Protocol::Udp | Protocol::Tcp)
                    && match &s.port {
                        PortRef::Any | PortRef::Named(_) => true,
                        PortRef::Range(a, b) => (*a..=*b).contains(&DNS_PORT),
                    }
            }),
        })
}

/// Pods whose egress the same policies isolate: the rules of those policies alone decide
/// where all of them may connect, so one evaluation answers for the whole group.
struct EgressGroup<'a> {
    /// The policies isolating the group's egress.
    policies: Vec<&'a ParsedPolicy>,
    /// The pods.
    clients: Vec<&'a Pod>,
    /// Whether its egress rules look past a backend's namespace and labels: at its address
    /// (ipBlock peers) or its container ports (named ports).
    looks_past_labels: bool,
}

/// Whether some egress rule of `policies` has an ipBlock peer or a named port.
fn looks_past_labels(policies: &[&ParsedPolicy]) -> bool {
    policies
        .iter()
        .filter_map(|p| p.egress.as_deref())
        .flatten()
        .any(|rule| {
            let by_address = matches!(&rule.peers, Peers::Only(peers)
                if peers.iter().any(|p| matches!(p, Peer::IpBlock(_))));
            let by_name = matches!(&rule.ports, Ports::Only(specs)
                if specs.iter().any(|s| matches!(s.port, PortRef::Named(_))));
            by_address || by_name
        })
}

/// Whether `backends` (with their pods) are alike for egress rules that look only at
/// namespaces, labels and port numbers: replicas of one workload usually are.
fn alike(backends: &[Backend], pods: &[Option<&Pod>]) -> bool {
    let mut keys = backends
        .iter()
        .zip(pods)
        .map(|(b, pod)| pod.map(|p| (&p.id.namespace, &p.labels, b.port)));
    let first = keys.next().flatten();
    first.is_some() && keys.all(|k| k == first)
}

/// The pods with addresses whose egress is isolated, grouped by the policies isolating it.
fn egress_groups<'a>(cluster: &'a Cluster, policies: &'a [ParsedPolicy]) -> Vec<EgressGroup<'a>> {
    // A policy selects pods of its own namespace only: index them by namespace, so that a
    // pod is matched against its namespace's egress policies alone.
    let mut by_namespace: BTreeMap<&str, Vec<(usize, &ParsedPolicy)>> = BTreeMap::new();
    for (i, p) in policies
        .iter()
        .enumerate()
        .filter(|(_, p)| p.egress.is_some())
    {
        by_namespace
            .entry(&p.id.namespace)
            .or_default()
            .push((i, p));
    }
    let mut groups: BTreeMap<Vec<usize>, EgressGroup<'a>> = BTreeMap::new();
    for pod in cluster
        .pods
        .values()
        .filter(|p| p.holds_addresses() && !p.ips.is_empty())
    {
        let Some(candidates) = by_namespace.get(pod.id.namespace.as_str()) else {
            continue;
        };
        let isolating: Vec<(usize, &ParsedPolicy)> = candidates
            .iter()
            .filter(|(_, p)| applies_to(p, pod))
            .copied()
            .collect();
        if isolating.is_empty() {
            continue;
        }
        groups
            .entry(isolating.iter().map(|(i, _)| *i).collect())
            .or_insert_with(|| {
                let policies: Vec<&ParsedPolicy> = isolating.iter().map(|(_, p)| *p).collect();
                EgressGroup {
                    looks_past_labels: looks_past_labels(&policies),
                    policies,
                    clients: Vec::new(),
                }
            })
            .clients
            .push(pod);
    }
    groups.into_values().collect()
}

/// Whether the egress rules of `policies` admit a connection to `backend` (whose pod, if
/// any, is `pod`) on its target port, decided by the reference evaluator's own rule
/// matching so that the warning and the verdict never disagree.
fn egress_admits(
    cluster: &Cluster,
    policies: &[&ParsedPolicy],
    (backend, pod): (&Backend, Option<&Pod>),
    protocol: Protocol,
) -> bool {
    let to = Remote {
        peer_pod: pod,
        peer_ip: backend.address,
        destination: pod,
        l4: Some((protocol, backend.port)),
    };
    reference::admitting_rule(cluster, policies.iter().copied(), Direction::Egress, &to).is_some()
}

/// Whether clients reach `port` of `service` through a frontend of the family (IPv6 or
/// not) that the proxy forwards: a headless Service has none, and its clients dial the
/// backends themselves.
fn has_frontend(service: &Service, port: &ServicePort, v6: bool) -> bool {
    port.node_port.is_some() || service.frontend_ips().any(|ip| ip.is_ipv6() == v6)
}

/// Clients of a Service port whose egress allows some of the port's backends (of one
/// family) and denies the others. The datapath decides before the proxy picks a backend
/// and never allows what the chosen backend's rules would deny, so it drops every such
/// connection through the Service (`service-backends-differ`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendsDiffer<'a> {
    /// The Service.
    pub service: &'a Service,
    /// The index of the port in the Service's `spec.ports`.
    pub port: usize,
    /// The family of the backends and of the clients' addresses: IPv6 or not.
    pub v6: bool,
    /// The clients.
    pub clients: Vec<&'a Pod>,
    /// The backends their egress allows (with the pod that has the address, if any).
    pub allowed: Vec<Backend>,
    /// The backends it denies.
    pub denied: Vec<Backend>,
}

/// Every Service port, family and set of clients for which the clients' egress allows some
/// backends and not others. Clients are evaluated once per group of equal egress policies,
/// which keeps this cheap on large clusters.
pub fn backends_differ<'a>(
    cluster: &'a Cluster,
    policies: &'a [ParsedPolicy],
) -> Vec<BackendsDiffer<'a>> {
    backends_differ_of(cluster, policies, |_| true)
}

/// [`backends_differ`] for the Services `wanted` says yes to.
fn backends_differ_of<'a>(
    cluster: &'a Cluster,
    policies: &'a [ParsedPolicy],
    wanted: impl Fn(&Service) -> bool,
) -> Vec<BackendsDiffer<'a>> {
    let mut out = Vec::new();
    let services: Vec<&Service> = cluster.services.values().filter(|s| wanted(s)).collect();
    if services.is_empty() {
        return out;
    }
    let groups = egress_groups(cluster, policies);
    if groups.is_empty() {
        return out;
    }
    for service in services {
        for (index, port) in service.ports.iter().enumerate() {
            let all = services::backends(cluster, service, port);
            for v6 in [false, true] {
                // The backends as the datapath knows them: by address.
                let backends: Vec<Backend> = all
                    .iter()
                    .filter(|b| b.address.is_ipv6() == v6)
                    .map(|b| Backend {
                        pod: reference::backend_host(cluster, b).pod,
                        ..b.clone()
                    })
                    .collect();
                // One backend is allowed or not: only two or more can differ.
                if backends.len() < 2 || !has_frontend(service, port, v6) {
                    continue;
                }
                for (allowed, clients) in splits(cluster, &groups, &backends, port.protocol, v6) {
                    let side = |want: bool| {
                        backends
                            .iter()
                            .zip(&allowed)
                            .filter(|(_, a)| **a == want)
                            .map(|(b, _)| b.clone())
                            .collect()
                    };
                    out.push(BackendsDiffer {
                        service,
                        port: index,
                        v6,
                        clients,
                        allowed: side(true),
                        denied: side(false),
                    });
                }
            }
        }
    }
    out
}

/// Warnings about Service ports whose backends some clients' egress allows in part
/// ([`backends_differ`]), for the Services `wanted` says yes to.
fn lint_services(
    cluster: &Cluster,
    policies: &[ParsedPolicy],
    wanted: impl Fn(&Service) -> bool,
) -> Vec<Warning> {
    backends_differ_of(cluster, policies, wanted)
        .iter()
        .map(|d| Warning {
            subject: Subject::Service(d.service.id.clone()),
            field: format!("spec.ports[{}]", d.port),
            message: d.message(),
        })
        .collect()
}

/// For each way the backends split into allowed and denied (by the client's egress) that
/// leaves some on each side: the split (allowed or not, per backend) and the clients of
/// the family (IPv6 or not) that see it.
fn splits<'a>(
    cluster: &Cluster,
    groups: &[EgressGroup<'a>],
    backends: &[Backend],
    protocol: Protocol,
    v6: bool,
) -> BTreeMap<Vec<bool>, Vec<&'a Pod>> {
    // Each backend's pod, looked up once rather than for every group.
    let pods: Vec<Option<&Pod>> = backends
        .iter()
        .map(|b| b.pod.as_ref().and_then(|p| cluster.pods.get(p)))
        .collect();
    let alike = alike(backends, &pods);
    let mut out: BTreeMap<Vec<bool>, Vec<&'a Pod>> = BTreeMap::new();
    // Rules that look only at namespaces, labels and port numbers treat alike backends
    // alike: only the groups with other rules need a look.
    for group in groups.iter().filter(|g| !alike || g.looks_past_labels) {
        let clients = group
            .clients
            .iter()
            .filter(|p| p.ips.iter().any(|ip| ip.is_ipv6() == v6));
        let mut clients = clients.peekable();
        if clients.peek().is_none() {
            continue;
        }
        let allowed: Vec<bool> = backends
            .iter()
            .zip(pods.iter().copied())
            .map(|backend| egress_admits(cluster, &group.policies, backend, protocol))
            .collect();
        if allowed.iter().all(|a| *a) || !allowed.iter().any(|a| *a) {
            continue;
        }
        out.entry(allowed).or_default().extend(clients);
    }
    out
}

impl BackendsDiffer<'_> {
    /// The warning's message.
    fn message(&self) -> String {
        let list = |bs: &[Backend]| named(&bs.iter().map(describe_backend).collect::<Vec<_>>());
        let names: Vec<String> = self.clients.iter().map(|p| p.id.to_string()).collect();
        let who = if names.len() == 1 {
            format!("pod {}", names[0])
        } else {
            format!("{} pods ({})", names.len(), named(&names))
        };
        let port = &self.service.ports[self.port];
        let port_name = if port.name.is_empty() {
            String::new()
        } else {
            format!(" {}", port.name)
        };
        format!(
            "port{port_name} {}/{} ({}): the egress of {who} allows backends {} and denies {}: \
             the datapath decides before the proxy picks a backend, so it drops their \
             connections through the Service (service-backends-differ)",
            port.protocol,
            port.port,
            if self.v6 { "IPv6" } else { "IPv4" },
            list(&self.allowed),
            list(&self.denied),
        )
    }
}

/// A backend in words: its pod (or address) and where the proxy sends the connection.
fn describe_backend(b: &Backend) -> String {
    let at = std::net::SocketAddr::new(b.address, b.port);
    match &b.pod {
        Some(pod) => format!("{pod} ({at})"),
        None => at.to_string(),
    }
}

/// The first [`NAMED_IN_WARNING`] of `items`, and how many more there are.
fn named(items: &[String]) -> String {
    let shown = items[..items.len().min(NAMED_IN_WARNING)].join(", ");
    match items.len().saturating_sub(NAMED_IN_WARNING) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifests::{Loaded, load_str};

    const PODS: &str = r#"
kind: Namespace
metadata: {name: x, labels: {team: x}}
---
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec: {containers: [{name: c, ports: [{containerPort: 8080, name: http}, {containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.0.0.1}
"#;

    /// Warnings for the pods above plus `policies`.
    fn warnings(policies: &str) -> Vec<Warning> {
        let mut loaded = Loaded::default();
        load_str(
            &format!("{PODS}\n---\n{policies}"),
            std::path::Path::new("t.yaml"),
            &mut loaded,
        );
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let parsed: Vec<ParsedPolicy> = loaded
            .cluster
            .policies
            .values()
            .map(|p| ParsedPolicy::parse(p).unwrap())
            .collect();
        lint(&loaded.cluster, &parsed)
    }

    fn policy(spec: &str) -> String {
        format!("kind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec: {spec}\n")
    }

    #[test]
    fn a_sound_policy_has_no_warning() {
        let w = warnings(&policy(
            "{podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress, Egress], \
             ingress: [{from: [{namespaceSelector: {matchLabels: {team: x}}}], ports: [{port: 8080}, {port: http}]}], \
             egress: [{ports: [{port: 53, protocol: UDP}]}]}",
        ));
        assert_eq!(w, Vec::new());
    }

    #[test]
    fn a_pod_selector_that_selects_no_pod() {
        let w = warnings(&policy("{podSelector: {matchLabels: {app: wbe}}}"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].field, "spec.podSelector");
        assert!(
            w[0].message.contains("selects no pod in namespace x"),
            "{}",
            w[0]
        );

        let w = warnings(&policy(
            "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {app: db}}}]}]}",
        ));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].field, "spec.ingress[0].from[0].podSelector");
    }

    #[test]
    fn a_namespace_label_no_namespace_carries() {
        let w = warnings(&policy(
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: y}}}]}]}",
        ));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].field, "spec.ingress[0].from[0].namespaceSelector");
        assert!(w[0].message.contains("team=y"), "{}", w[0]);
        // The implied name label counts.
        let w = warnings(&policy(
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}}]}]}",
        ));
        assert_eq!(w, Vec::new());
    }

    #[test]
    fn egress_isolation_without_dns() {
        let w = warnings(&policy(
            "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 443}]}]}",
        ));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].field, "spec.policyTypes");
        assert!(
            w[0].message.contains("x/web") && w[0].message.contains("DNS"),
            "{}",
            w[0]
        );
        // Another policy selecting the pod may allow it.
        let dns = "kind: NetworkPolicy\nmetadata: {name: dns, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 53, protocol: TCP}]}]}\n";
        let w = warnings(&format!(
            "{}---\n{dns}",
            policy("{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 443}]}]}")
        ));
        assert_eq!(w, Vec::new());
    }

    /// Two backends of Service y/web (only y/web-0 is `tier: front`), and three clients
    /// in x whose egress `policies` isolate.
    fn service_warnings(policies: &str) -> Vec<Warning> {
        let pod = |ns: &str, name: &str, labels: &str, ip: &str| {
            format!(
                "kind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
                 spec: {{containers: [{{name: c, ports: [{{containerPort: 8080}}]}}]}}\n\
                 status: {{podIP: {ip}}}\n---\n"
            )
        };
        let manifests = [
            pod("y", "web-0", "app: web, tier: front", "10.0.1.1"),
            pod("y", "web-1", "app: web", "10.0.1.2"),
            pod("x", "c0", "app: client", "10.0.0.1"),
            pod("x", "c1", "app: client", "10.0.0.2"),
            pod("x", "other", "app: other", "10.0.0.3"),
            "kind: Service\nmetadata: {name: web, namespace: y}\n\
             spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}\n---\n"
                .to_owned(),
            policies.to_owned(),
        ]
        .concat();
        let mut loaded = Loaded::default();
        load_str(&manifests, std::path::Path::new("t.yaml"), &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        crate::source::control_plane::complete(&mut loaded.cluster);
        let parsed: Vec<ParsedPolicy> = loaded
            .cluster
            .policies
            .values()
            .map(|p| ParsedPolicy::parse(p).unwrap())
            .collect();
        lint(&loaded.cluster, &parsed)
            .into_iter()
            .filter(|w| matches!(w.subject, Subject::Service(_)))
            .collect()
    }

    /// An egress policy of the clients in x allowing `to` on every port, and DNS.
    fn client_egress(to: &str) -> String {
        format!(
            "kind: NetworkPolicy\nmetadata: {{name: out, namespace: x}}\n\
             spec: {{podSelector: {{matchLabels: {{app: client}}}}, policyTypes: [Egress], \
             egress: [{{to: [{to}]}}, {{ports: [{{port: 53, protocol: UDP}}]}}]}}\n"
        )
    }

    #[test]
    fn a_service_whose_backends_the_egress_of_some_clients_allows_in_part() {
        let w = service_warnings(&client_egress(
            "{namespaceSelector: {}, podSelector: {matchLabels: {tier: front}}}",
        ));
        assert_eq!(w.len(), 1, "{w:?}");
        let text = w[0].to_string();
        assert!(
            text.starts_with("Service y/web: spec.ports[0]: port http TCP/80 (IPv4): ")
                && text.contains("the egress of 2 pods (x/c0, x/c1)")
                && text.contains(
                    "allows backends y/web-0 (10.0.1.1:8080) and denies y/web-1 (10.0.1.2:8080)"
                )
                && text.contains("service-backends-differ"),
            "{text}"
        );
    }

    #[test]
    fn no_service_warning_when_the_egress_allows_every_backend_or_none() {
        let every =
            client_egress("{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}");
        assert_eq!(service_warnings(&every), Vec::new());
        let none = client_egress("{ipBlock: {cidr: 192.168.0.0/16}}");
        assert_eq!(service_warnings(&none), Vec::new());
        // The same split for a pod that is not isolated at all: only egress decides.
        assert_eq!(service_warnings(""), Vec::new());
    }

    #[test]
    fn a_port_no_selected_pod_exposes() {
        let w = warnings(&policy(
            "{podSelector: {}, ingress: [{ports: [{port: 8080}, {port: 9090}, {port: grpc}, {port: 53, protocol: TCP}]}]}",
        ));
        let fields: Vec<&str> = w.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.ingress[0].ports[1]",
                "spec.ingress[0].ports[2]",
                "spec.ingress[0].ports[3]"
            ],
            "{w:?}"
        );
        assert!(w[1].message.contains("matches nothing"), "{}", w[1]);
    }

    /// A generated cluster (`unique`: a label set per pod), with what the generator has
    /// none of: Services (one per workload and namespace) and an egress policy that allows
    /// one tier only, so that some clients see the backends of a Service differ.
    fn generated(unique: bool) -> Cluster {
        use crate::generate::{self, Shape};
        let shape = Shape {
            pods: 150,
            policies: 60,
            namespaces: 5,
            nodes: 2,
            unique_labels: unique,
            big_policy_peers: Some(20),
        };
        let mut loaded = Loaded {
            cluster: generate::cluster(&shape),
            ..Loaded::default()
        };
        let mut extra = String::new();
        // A workload's replicas are spread over the namespaces, two per namespace here.
        for n in 0..shape.namespaces {
            let ns = generate::namespace_name(n);
            for app in 0..shape.pods / 10 {
                extra.push_str(&format!(
                    "kind: Service\nmetadata: {{name: app-{app}, namespace: {ns}}}\n\
                     spec: {{selector: {{app: app-{app}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n---\n"
                ));
            }
        }
        extra.push_str(&format!(
            "kind: NetworkPolicy\nmetadata: {{name: to-tier0, namespace: {}}}\n\
             spec: {{podSelector: {{matchLabels: {{tier: tier-1}}}}, policyTypes: [Egress], \
             egress: [{{to: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{tier: tier-0}}}}}}]}}]}}\n",
            generate::namespace_name(1)
        ));
        load_str(&extra, std::path::Path::new("extra.yaml"), &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        crate::source::control_plane::complete(&mut loaded.cluster);
        loaded.cluster
    }

    /// Whether `w` is about an object of `scope`.
    fn concerns(scope: &Scope, w: &Warning) -> bool {
        match &w.subject {
            Subject::Policy(id) => scope.policies.contains(id),
            Subject::Service(id) => scope.services.contains(id),
        }
    }

    #[test]
    fn the_scoped_lint_gives_the_whole_lints_warnings_about_the_flows_objects() {
        for unique in [false, true] {
            let cluster = generated(unique);
            let parsed: Vec<ParsedPolicy> = cluster
                .policies
                .values()
                .map(|p| ParsedPolicy::parse(p).unwrap())
                .collect();
            let whole = lint(&cluster, &parsed);
            let pods: Vec<&ObjectRef> = cluster.pods.keys().collect();
            let (mut policy_warnings, mut service_warnings) = (0, 0);
            // Flows pod to pod, and pod to the Services of a namespace, by a stride that
            // meets every namespace, tier and workload.
            for (i, from) in pods.iter().enumerate().step_by(7) {
                let to = pods[(i * 13 + 5) % pods.len()];
                let ends = BTreeSet::from([(*from).clone(), to.clone()]);
                let flows = [
                    (BTreeSet::from([to.clone()]), BTreeSet::new()),
                    (
                        BTreeSet::new(),
                        BTreeSet::from([ObjectRef::new(
                            to.namespace.clone(),
                            cluster.pods[to].labels["app"].clone(),
                        )]),
                    ),
                ];
                for (destinations, dialled) in flows {
                    let scope = Scope::of_flow(&cluster, &parsed, &ends, &destinations, dialled);
                    // The policies that decide the flow are those selecting an end.
                    for p in &parsed {
                        let selects = ends.iter().any(|id| applies_to(p, &cluster.pods[id]));
                        assert_eq!(scope.policies.contains(&p.id), selects, "{}", p.id);
                    }
                    let scoped = lint_scoped(&cluster, &parsed, &scope);
                    let expected: Vec<Warning> = whole
                        .iter()
                        .filter(|w| concerns(&scope, w))
                        .cloned()
                        .collect();
                    assert_eq!(scoped, expected, "{from} -> {to} ({scope:?})");
                    policy_warnings += scoped
                        .iter()
                        .filter(|w| matches!(w.subject, Subject::Policy(_)))
                        .count();
                    service_warnings += scoped
                        .iter()
                        .filter(|w| matches!(w.subject, Subject::Service(_)))
                        .count();
                }
            }
            // The comparison met warnings of both kinds.
            assert!(policy_warnings > 0 && service_warnings > 0, "{whole:?}");
        }
    }
}
