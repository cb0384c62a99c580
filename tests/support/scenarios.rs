//! Random valid clusters for property tests: a few namespaces and pods (some dual-stack,
//! with named ports that resolve differently per pod), external hosts, and policies built
//! from every part of the API (selectors with all operators, ipBlocks with except, numeric,
//! named and ranged ports of all protocols, every policyTypes form); and, with
//! [`scenario_with_services`], selector-based Services in front of them.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
        NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
        util::intstr::IntOrString,
    },
};
use policy_agent::{
    model::{
        Cluster, ContainerPort, IpFamily, Labels, Namespace, ObjectRef, Origin, Pod, Policy,
        Protocol, SERVICE_NAME_LABEL, Service, ServicePort, TargetPort,
    },
    source::control_plane,
};
use proptest::{collection::vec, option, prelude::*, sample::select};

/// A generated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The cluster.
    pub cluster: Cluster,
    /// External hosts.
    pub externals: Vec<IpAddr>,
}

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const TEAMS: [&str; 2] = ["red", "blue"];
const APPS: [&str; 3] = ["a", "b", "c"];
const TIERS: [&str; 2] = ["front", "back"];
/// policyTypes as written: empty (defaulted), one, or both.
const POLICY_TYPES: [&[&str]; 4] = [&[], &["Ingress"], &["Egress"], &["Ingress", "Egress"]];
const EXTERNALS: [&str; 4] = ["192.168.1.5", "172.16.0.9", "2001:db8::7", "10.1.0.3"];

/// ipBlocks, each with the excepts that are valid inside it. They cut through the pod
/// addresses (10.0.0.x and 10.0.1.x, fd00::x and fd00:0:0:1::x) and the external hosts.
const BLOCKS: [(&str, &[&str]); 9] = [
    ("10.0.0.0/16", &["10.0.1.0/24", "10.0.0.2/32"]),
    ("10.0.1.0/24", &["10.0.1.4/30"]),
    ("10.0.0.0/8", &["10.0.0.0/16", "10.1.0.0/16"]),
    ("0.0.0.0/0", &["10.0.0.0/8", "192.168.0.0/16"]),
    ("192.168.0.0/16", &["192.168.1.0/24"]),
    ("fd00::/16", &["fd00:0:0:1::/64"]),
    ("fd00:0:0:1::/64", &["fd00:0:0:1::3/128"]),
    ("::/0", &["fd00::/16"]),
    ("2001:db8::/32", &["2001:db8::/64"]),
];

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn pod_labels() -> impl Strategy<Value = Labels> {
    (
        option::of(select(&APPS[..])),
        option::of(select(&TIERS[..])),
    )
        .prop_map(|(app, tier)| {
            let mut l = Labels::new();
            if let Some(a) = app {
                l.insert("app".into(), a.into());
            }
            if let Some(t) = tier {
                l.insert("tier".into(), t.into());
            }
            l
        })
}

/// A selector over `keys`, whose values come from `values`: empty, matchLabels, or one
/// expression of any operator.
fn selector(
    keys: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = LabelSelector> {
    let key = select(keys);
    let some_values = vec(select(values), 1..3);
    prop_oneof![
        Just(LabelSelector::default()),
        (key.clone(), select(values)).prop_map(|(k, v)| LabelSelector {
            match_labels: Some(BTreeMap::from([(k.to_owned(), v.to_owned())])),
            ..Default::default()
        }),
        (
            key,
            select(&["In", "NotIn", "Exists", "DoesNotExist"][..]),
            some_values
        )
            .prop_map(|(k, op, vs)| LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: k.to_owned(),
                    operator: op.to_owned(),
                    values: matches!(op, "In" | "NotIn")
                        .then(|| vs.iter().map(|v| (*v).to_owned()).collect()),
                }]),
                ..Default::default()
            }),
    ]
}

fn pod_selector() -> impl Strategy<Value = LabelSelector> {
    prop_oneof![selector(&["app"], &APPS), selector(&["tier"], &TIERS)]
}

fn namespace_selector() -> impl Strategy<Value = LabelSelector> {
    prop_oneof![
        selector(&["team"], &TEAMS),
        selector(&["kubernetes.io/metadata.name"], &NAMESPACES),
    ]
}

fn peer() -> impl Strategy<Value = NetworkPolicyPeer> {
    let block = (
        select(&BLOCKS[..]),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|((cidr, holes), i, with_hole)| IPBlock {
            cidr: cidr.to_owned(),
            except: (with_hole && !holes.is_empty()).then(|| vec![(*i.get(holes)).to_owned()]),
        });
    prop_oneof![
        pod_selector().prop_map(|p| NetworkPolicyPeer {
            pod_selector: Some(p),
            ..Default::default()
        }),
        namespace_selector().prop_map(|n| NetworkPolicyPeer {
            namespace_selector: Some(n),
            ..Default::default()
        }),
        (namespace_selector(), pod_selector()).prop_map(|(n, p)| NetworkPolicyPeer {
            namespace_selector: Some(n),
            pod_selector: Some(p),
            ..Default::default()
        }),
        block.prop_map(|b| NetworkPolicyPeer {
            ip_block: Some(b),
            ..Default::default()
        }),
    ]
}

fn port() -> impl Strategy<Value = NetworkPolicyPort> {
    let protocol = option::of(select(&["TCP", "UDP", "SCTP"][..]).prop_map(str::to_owned));
    let number = select(&[9, 53, 80, 81, 8080][..]);
    let target = prop_oneof![
        Just((None, None)),
        number
            .clone()
            .prop_map(|n| (Some(IntOrString::Int(n)), None)),
        (number, select(&[0, 1, 100][..]))
            .prop_map(|(n, extra)| (Some(IntOrString::Int(n)), Some(n + extra))),
        select(&["http", "dns", "chat", "nope"][..])
            .prop_map(|name| (Some(IntOrString::String(name.to_owned())), None)),
    ];
    (protocol, target).prop_map(|(protocol, (port, end_port))| NetworkPolicyPort {
        protocol,
        port,
        end_port,
    })
}

type Rule = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

fn rule() -> impl Strategy<Value = Rule> {
    (option::of(vec(peer(), 0..3)), option::of(vec(port(), 0..3)))
}

fn policy(index: usize) -> impl Strategy<Value = Policy> {
    let types = select(&POLICY_TYPES[..]);
    (
        select(&NAMESPACES[..]),
        pod_selector(),
        option::of(types),
        option::of(vec(rule(), 0..3)),
        option::of(vec(rule(), 0..3)),
    )
        .prop_map(move |(ns, pod_selector, types, ingress, egress)| Policy {
            id: ObjectRef::new(ns, format!("policy-{index}")),
            spec: NetworkPolicySpec {
                pod_selector: Some(pod_selector),
                policy_types: types.map(|t| t.iter().map(|s| (*s).to_owned()).collect()),
                ingress: ingress.map(|rules| {
                    rules
                        .into_iter()
                        .map(|(from, ports)| NetworkPolicyIngressRule { from, ports })
                        .collect()
                }),
                egress: egress.map(|rules| {
                    rules
                        .into_iter()
                        .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
                        .collect()
                }),
            },
            meta: Default::default(),
            origin: Origin::default(),
        })
}

/// One pod: namespace, labels, dual-stack or not, the port its "http" name points at, and
/// which of its ports it declares.
/// A pod's namespace, labels, whether it is dual-stack, its `http` port, and for each of
/// its possible ports whether it declares it and whether it publishes it on a host port.
type PodParts = (&'static str, Labels, bool, u16, Vec<(bool, bool)>);

/// The first host port of a generated pod; each pod has its own range.
const HOST_PORT_BASE: u16 = 31_000;
/// Host ports per pod range.
const HOST_PORTS_PER_POD: u16 = 10;
/// The first node port of a generated Service; each Service has its own range.
const NODE_PORT_BASE: u16 = 30_000;
/// Node ports per Service range.
const NODE_PORTS_PER_SERVICE: u16 = 10;

fn pod_parts() -> impl Strategy<Value = PodParts> {
    (
        select(&NAMESPACES[..]),
        pod_labels(),
        any::<bool>(),
        select(&[80u16, 8080][..]),
        vec((any::<bool>(), prop::bool::weighted(0.15)), 4),
    )
}

fn build_pod(i: usize, (ns, labels, dual, http, declared): PodParts) -> Pod {
    // Half the pods in 10.0.0.x / fd00::x, half in 10.0.1.x / fd00:0:0:1::x.
    let subnet = i % 2;
    let mut ips: Vec<IpAddr> = vec![format!("10.0.{subnet}.{}", i + 1).parse().unwrap()];
    if dual {
        ips.push(format!("fd00:0:0:{subnet}::{}", i + 1).parse().unwrap());
    }
    let all = [
        (Some("http"), http, Protocol::Tcp),
        (None, 81, Protocol::Tcp),
        (Some("dns"), 53, Protocol::Udp),
        (Some("chat"), 9, Protocol::Sctp),
    ];
    let host_ports = HOST_PORT_BASE + i as u16 * HOST_PORTS_PER_POD;
    let mut ports: Vec<ContainerPort> = all
        .iter()
        .zip(&declared)
        .enumerate()
        .filter(|(_, (_, (on, _)))| *on)
        .map(
            |(k, ((name, port, protocol), (_, published)))| ContainerPort {
                name: name.map(str::to_owned),
                port: *port,
                protocol: *protocol,
                host_port: published.then_some(host_ports + k as u16),
            },
        )
        .collect();
    if ports.is_empty() {
        ports.push(ContainerPort {
            name: None,
            port: 81,
            protocol: Protocol::Tcp,
            host_port: None,
        });
    }
    Pod {
        id: ObjectRef::new(ns, format!("p{i}")),
        labels,
        ips,
        node: None,
        ports,
        ..Pod::default()
    }
}

/// Random valid scenarios.
pub fn scenario() -> impl Strategy<Value = Scenario> {
    (
        vec(option::of(select(&TEAMS[..])), 3),
        vec(pod_parts(), 2..6),
        prop::sample::subsequence(&EXTERNALS[..], 0..3),
        (0usize..5).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>()),
    )
        .prop_map(|(teams, pods, externals, policies)| {
            let mut cluster = Cluster::default();
            for (ns, team) in NAMESPACES.iter().zip(teams) {
                let l = team.map_or_else(Labels::new, |t| labels(&[("team", t)]));
                cluster.add_namespace(Namespace::new(*ns, l));
            }
            for (i, parts) in pods.into_iter().enumerate() {
                cluster.add_pod(build_pod(i, parts));
            }
            for p in policies {
                cluster.add_policy(p);
            }
            Scenario {
                cluster,
                externals: externals.iter().map(|e| e.parse().unwrap()).collect(),
            }
        })
}

/// Port numbers of generated Service ports and numeric target ports: the pods' ports, and
/// ports no pod declares.
const SERVICE_PORT_NUMBERS: [u16; 6] = [80, 81, 53, 9, 8080, 443];
/// Named target ports: the pods' names (of one protocol each) and one nobody has.
const TARGET_PORT_NAMES: [&str; 4] = ["http", "dns", "chat", "nope"];
/// The families a Service asks for.
const SERVICE_FAMILIES: [&[IpFamily]; 3] = [
    &[IpFamily::Ipv4],
    &[IpFamily::Ipv6],
    &[IpFamily::Ipv4, IpFamily::Ipv6],
];
/// Most Services a scenario has (one fewer, at most).
const MAX_SERVICES: usize = 4;
/// Most ports a Service has (one fewer, at most).
const MAX_SERVICE_PORTS: usize = 4;

/// Protocols and target ports the generated pods serve (see [`build_pod`]): most Service
/// ports forward to one of them, so that most Services have backends.
const SERVED_TARGETS: [(Protocol, &str); 7] = [
    (Protocol::Tcp, "http"),
    (Protocol::Tcp, "81"),
    (Protocol::Udp, "dns"),
    (Protocol::Udp, "53"),
    (Protocol::Sctp, "chat"),
    (Protocol::Sctp, "9"),
    (Protocol::Tcp, "8080"),
];

/// A target port as a manifest writes it: a number, or a name.
fn target_port(text: &str) -> TargetPort {
    text.parse()
        .map_or_else(|_| TargetPort::Name(text.to_owned()), TargetPort::Number)
}

/// A Service port: protocol, port, target port (mostly one the pods serve). Its name is
/// given by its position.
fn service_port() -> impl Strategy<Value = (Protocol, u16, TargetPort)> {
    let served = (
        select(&SERVED_TARGETS[..]),
        select(&SERVICE_PORT_NUMBERS[..]),
    )
        .prop_map(|((protocol, target), port)| (protocol, port, target_port(target)));
    let target = prop_oneof![
        select(&SERVICE_PORT_NUMBERS[..]).prop_map(TargetPort::Number),
        select(&TARGET_PORT_NAMES[..]).prop_map(|n| TargetPort::Name(n.to_owned())),
    ];
    let any_port = (
        select(&Protocol::ALL[..]),
        select(&SERVICE_PORT_NUMBERS[..]),
        target,
    );
    prop_oneof![3 => served, 1 => any_port]
}

/// The namespace of the pod `pod` picks among `pods` (namespace, labels), and one of its
/// labels (none if it has none).
fn one_label(
    pods: &[(String, Labels)],
    pod: prop::sample::Index,
    label: prop::sample::Index,
) -> (String, Labels) {
    let (ns, labels) = pod.get(pods);
    let one = labels
        .iter()
        .nth(label.index(labels.len().max(1)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .into_iter()
        .collect();
    (ns.clone(), one)
}

/// A Service's namespace and selector: mostly one label of one of `pods` (namespace,
/// labels), so that it selects that pod (unless it has none) and likely others; else
/// anything.
fn service_selector(pods: Vec<(String, Labels)>) -> impl Strategy<Value = (String, Labels)> {
    let of_a_pod = (any::<prop::sample::Index>(), any::<prop::sample::Index>())
        .prop_map(move |(pod, label)| one_label(&pods, pod, label));
    let anything =
        (select(&NAMESPACES[..]), pod_labels()).prop_map(|(ns, labels)| (ns.to_owned(), labels));
    prop_oneof![3 => of_a_pod, 1 => anything]
}

/// The subnets the generated pods' addresses alternate between (see [`build_pod`]).
const POD_SUBNETS: [&str; 4] = ["10.0.0.0/24", "10.0.1.0/24", "fd00::/64", "fd00:0:0:1::/64"];
/// Most egress policies aimed at Service backends a scenario has (one fewer, at most).
const MAX_BACKEND_EGRESS_POLICIES: usize = 3;
/// Most rules, and peers in a rule, of such a policy (one fewer, at most).
const MAX_BACKEND_RULES: usize = 3;

/// A label selector of exactly `labels`.
fn match_labels(labels: Labels) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    }
}

/// A peer that may admit some backends of a Service and not others: the pods in any
/// namespace with one label of one of `pods` (a Service selecting them by another label
/// has backends without it), or one of the subnets the pods alternate between.
fn backend_peer(pods: Vec<(String, Labels)>) -> impl Strategy<Value = NetworkPolicyPeer> {
    let by_label = (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(
        move |(pod, label)| NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector::default()),
            pod_selector: Some(match_labels(one_label(&pods, pod, label).1)),
            ..Default::default()
        },
    );
    let by_subnet = select(&POD_SUBNETS[..]).prop_map(|cidr| NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.to_owned(),
            except: None,
        }),
        ..Default::default()
    });
    prop_oneof![by_label, by_subnet]
}

/// Egress policy `index` of some of `pods` (all of a namespace, or those with one label),
/// whose rules tell a Service's backends apart: by label, by subnet, or by port (numbers,
/// ranges, and names that resolve differently per backend).
fn backend_egress_policy(
    index: usize,
    pods: Vec<(String, Labels)>,
) -> impl Strategy<Value = Policy> {
    let rule = (
        vec(backend_peer(pods.clone()), 1..MAX_BACKEND_RULES),
        option::of(vec(port(), 1..MAX_BACKEND_RULES)),
    )
        .prop_map(|(to, ports)| NetworkPolicyEgressRule {
            to: Some(to),
            ports,
        });
    (
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        any::<bool>(),
        vec(rule, 1..MAX_BACKEND_RULES),
    )
        .prop_map(move |(pod, label, whole_namespace, egress)| {
            let (ns, labels) = one_label(&pods, pod, label);
            let selected = if whole_namespace {
                Labels::new()
            } else {
                labels
            };
            Policy {
                id: ObjectRef::new(ns, format!("egress-{index}")),
                spec: NetworkPolicySpec {
                    pod_selector: Some(match_labels(selected)),
                    policy_types: Some(vec!["Egress".to_owned()]),
                    ingress: None,
                    egress: Some(egress),
                },
                meta: Default::default(),
                origin: Origin::default(),
            }
        })
}

/// Service `index`, selecting pods by labels (an empty selector is none: such a Service
/// has no backends), on one or more ports (a single one sometimes unnamed), with cluster
/// IPs of one or both families to allocate, sometimes an external and a load-balancer
/// address, and sometimes node ports (`externalTrafficPolicy` `Cluster` or `Local`).
fn service(index: usize, pods: Vec<(String, Labels)>) -> impl Strategy<Value = Service> {
    (
        service_selector(pods),
        vec(service_port(), 1..MAX_SERVICE_PORTS),
        any::<bool>(),
        select(&SERVICE_FAMILIES[..]),
        (any::<bool>(), any::<bool>()),
        option::weighted(0.3, any::<bool>()),
    )
        .prop_map(
            move |((ns, selector), ports, unnamed, families, (external, balanced), node_ports)| {
                let node_ports_from = NODE_PORT_BASE + index as u16 * NODE_PORTS_PER_SERVICE;
                let mut ports: Vec<ServicePort> = ports
                    .into_iter()
                    .enumerate()
                    .map(|(j, (protocol, port, target_port))| ServicePort {
                        name: format!("p{j}"),
                        protocol,
                        port,
                        node_port: node_ports.map(|_| node_ports_from + j as u16),
                        target_port,
                    })
                    .collect();
                // The API server refuses two ports with one number and protocol.
                let mut seen = std::collections::BTreeSet::new();
                ports.retain(|p| seen.insert((p.protocol, p.port)));
                if unnamed && ports.len() == 1 {
                    ports[0].name.clear();
                }
                // Addresses of documentation ranges, one per Service: no pod, host or
                // other Service has them.
                let host = index + 1;
                Service {
                    id: ObjectRef::new(ns, format!("svc-{index}")),
                    ports,
                    selector: (!selector.is_empty()).then_some(selector),
                    external_ips: external
                        .then(|| format!("203.0.113.{host}").parse().unwrap())
                        .into_iter()
                        .collect(),
                    load_balancer_ips: balanced
                        .then(|| format!("198.51.100.{host}").parse().unwrap())
                        .into_iter()
                        .collect(),
                    unallocated: Some(families.to_vec()),
                    external_traffic_local: node_ports == Some(true),
                    ..Service::default()
                }
            },
        )
}

/// Random valid scenarios with Services (cluster IPs allocated and EndpointSlices derived
/// from the selectors, as the control plane would), and egress policies aimed at telling
/// their backends apart.
pub fn scenario_with_services() -> impl Strategy<Value = Scenario> {
    scenario()
        .prop_flat_map(|s| {
            let pods: Vec<(String, Labels)> = s
                .cluster
                .pods
                .values()
                .map(|p| (p.id.namespace.clone(), p.labels.clone()))
                .collect();
            // Each Service with a flag: whether its EndpointSlices leave out targetRef.
            let services = (0usize..MAX_SERVICES).prop_flat_map({
                let pods = pods.clone();
                move |n| {
                    (0..n)
                        .map(|i| (service(i, pods.clone()), any::<bool>()))
                        .collect::<Vec<_>>()
                }
            });
            let policies = (0usize..MAX_BACKEND_EGRESS_POLICIES).prop_flat_map(move |n| {
                (0..n)
                    .map(|i| backend_egress_policy(i, pods.clone()))
                    .collect::<Vec<_>>()
            });
            (Just(s), services, policies)
        })
        .prop_map(|(mut s, services, policies)| {
            let mut anonymous = Vec::new();
            for (service, without_target_refs) in services {
                if without_target_refs {
                    anonymous.push(service.id.clone());
                }
                s.cluster.add_service(service);
            }
            for policy in policies {
                s.cluster.add_policy(policy);
            }
            control_plane::complete(&mut s.cluster);
            leave_out_target_refs(&mut s.cluster, &anonymous);
            s
        })
}

/// Removes the pods' names from the EndpointSlices of `services`, as some controllers
/// write them: the backends are known by address alone.
fn leave_out_target_refs(cluster: &mut Cluster, services: &[ObjectRef]) {
    for slice in cluster.endpoint_slices.values_mut() {
        let service = ObjectRef::new(&slice.id.namespace, &slice.service);
        if services.contains(&service) {
            for endpoint in &mut slice.endpoints {
                endpoint.pod = None;
            }
        }
    }
}

/// The EndpointSlices that leave out targetRef as manifests (the others are derived again
/// from their Services' selectors when the manifests are loaded, and these are not).
fn anonymous_slice_objects(cluster: &Cluster) -> Vec<serde_json::Value> {
    use serde_json::json;
    cluster
        .endpoint_slices
        .values()
        .filter(|slice| slice.endpoints.iter().any(|e| e.pod.is_none()))
        .map(|slice| {
            let v6 = slice
                .endpoints
                .iter()
                .flat_map(|e| &e.addresses)
                .any(IpAddr::is_ipv6);
            let ports: Vec<_> = slice
                .ports
                .iter()
                .map(|p| json!({"name": p.name, "protocol": p.protocol.as_str(), "port": p.port}))
                .collect();
            let endpoints: Vec<_> = slice
                .endpoints
                .iter()
                .map(|e| json!({"addresses": e.addresses, "conditions": {"ready": e.ready}}))
                .collect();
            json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": slice.id.name, "namespace": slice.id.namespace,
                    "labels": {SERVICE_NAME_LABEL: slice.service}},
                "addressType": if v6 { "IPv6" } else { "IPv4" },
                "ports": ports,
                "endpoints": endpoints,
            })
        })
        .collect()
}

impl Scenario {
    /// The scenario as manifests (JSON is YAML), to reproduce a failure with
    /// `policy-agent matrix`/`explain`/`lab`.
    pub fn to_yaml(&self) -> String {
        let mut out: String = crate::api_objects(&self.cluster)
            .iter()
            .chain(&anonymous_slice_objects(&self.cluster))
            .map(|d| format!("---\n{d}\n"))
            .collect();
        out += &format!("# external hosts: {:?}\n", self.externals);
        out
    }
}
