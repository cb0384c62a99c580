//! Random valid clusters for property tests: a few namespaces and pods (some dual-stack,
//! with named ports that resolve differently per pod), external hosts, and policies built
//! from every part of the API (selectors with all operators, ipBlocks with except, numeric,
//! named and ranged ports of all protocols, every policyTypes form).

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
use policy_agent::model::{
    Cluster, ContainerPort, Labels, Namespace, ObjectRef, Origin, Pod, Policy, Protocol,
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
            origin: Origin::default(),
        })
}

/// One pod: namespace, labels, dual-stack or not, the port its "http" name points at, and
/// which of its ports it declares.
type PodParts = (&'static str, Labels, bool, u16, Vec<bool>);

fn pod_parts() -> impl Strategy<Value = PodParts> {
    (
        select(&NAMESPACES[..]),
        pod_labels(),
        any::<bool>(),
        select(&[80u16, 8080][..]),
        vec(any::<bool>(), 4),
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
    let mut ports: Vec<ContainerPort> = all
        .iter()
        .zip(&declared)
        .filter(|(_, on)| **on)
        .map(|((name, port, protocol), _)| ContainerPort {
            name: name.map(str::to_owned),
            port: *port,
            protocol: *protocol,
            host_port: None,
        })
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

impl Scenario {
    /// The scenario as manifests (JSON is YAML), to reproduce a failure with
    /// `policy-agent matrix`/`explain`/`lab`.
    pub fn to_yaml(&self) -> String {
        let mut out: String = crate::api_objects(&self.cluster)
            .iter()
            .map(|d| format!("---\n{d}\n"))
            .collect();
        out += &format!("# external hosts: {:?}\n", self.externals);
        out
    }
}
