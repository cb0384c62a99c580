//! Synthetic clusters of a given shape, for the control-plane benchmark and the compiler's
//! property tests: pods spread over namespaces and nodes, with label sets that replicas
//! share or that are unique per pod, and policies mixing podSelector, namespaceSelector
//! and ipBlock peers on numeric and named ports. Deterministic: a shape always gives the
//! same cluster.

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::networking::v1::NetworkPolicySpec;
use serde_json::json;

use crate::model::{
    Cluster, ContainerPort, Labels, Namespace, ObjectRef, Origin, Pod, Policy, PolicyMeta, Protocol,
};

/// The node whose view is compiled; pods are spread over `node-0` .. `node-(nodes-1)`.
pub const LOCAL_NODE: &str = "node-0";
/// Distinct `team` labels of namespaces, which namespaceSelector peers select.
const TEAMS: usize = 10;
/// Pods of one workload when label sets are shared (they differ by workload only).
const REPLICAS: usize = 10;
/// The named container port every pod declares (TCP 8080), which some rules name.
pub const NAMED_PORT: &str = "http";
const NAMED_PORT_NUMBER: u16 = 8080;
/// Every policy rule admits one of these numeric ports (TCP).
const RULE_PORTS: [u16; 4] = [80, 443, 5432, 9090];

/// What a generated cluster looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Pods, spread over the namespaces and nodes in turn.
    pub pods: usize,
    /// Policies, spread over the namespaces in turn.
    pub policies: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Nodes; the compiled node ([`LOCAL_NODE`]) runs `pods / nodes` of the pods.
    pub nodes: usize,
    /// Whether every pod has a label set of its own (else replicas of a workload share one).
    pub unique_labels: bool,
    /// One more policy, in the first namespace, with this many podSelector peers, each
    /// selecting one pod by its `pod` label.
    pub big_policy_peers: Option<usize>,
}

impl Shape {
    /// The workload (the `app` label) of pod `i`.
    fn app(&self, i: usize) -> usize {
        i / REPLICAS
    }

    /// Workloads there are.
    fn apps(&self) -> usize {
        self.pods.div_ceil(REPLICAS).max(1)
    }
}

/// The name of namespace `n`.
pub fn namespace_name(n: usize) -> String {
    format!("ns-{n}")
}

/// The cluster of `shape`.
pub fn cluster(shape: &Shape) -> Cluster {
    let mut cluster = Cluster::default();
    for n in 0..shape.namespaces {
        cluster.add_namespace(namespace(n, 0));
    }
    for i in 0..shape.pods {
        cluster.add_pod(pod(shape, i));
    }
    for j in 0..shape.policies {
        cluster.add_policy(policy(shape, j));
    }
    if let Some(peers) = shape.big_policy_peers {
        cluster.add_policy(big_policy(shape, peers));
    }
    cluster
}

/// Namespace `n`, in generation `generation` of its labels (a change of its labels moves
/// it to another team).
pub fn namespace(n: usize, generation: usize) -> Namespace {
    let labels = Labels::from([(
        "team".to_owned(),
        format!("team-{}", (n + generation) % TEAMS),
    )]);
    Namespace::new(namespace_name(n), labels)
}

/// Pod `i` of `shape` (an index past `shape.pods` gives a new pod in the same pattern).
pub fn pod(shape: &Shape, i: usize) -> Pod {
    let namespace = namespace_name(i % shape.namespaces);
    let mut labels = Labels::from([
        ("app".to_owned(), format!("app-{}", shape.app(i))),
        ("tier".to_owned(), format!("tier-{}", i % 3)),
    ]);
    if shape.unique_labels {
        labels.insert("pod".to_owned(), format!("pod-{i}"));
    }
    Pod {
        id: ObjectRef::new(namespace, format!("pod-{i}")),
        labels,
        ips: vec![pod_ip(i)],
        node: Some(format!("node-{}", i % shape.nodes)),
        ports: vec![ContainerPort {
            name: Some(NAMED_PORT.to_owned()),
            port: NAMED_PORT_NUMBER,
            protocol: Protocol::Tcp,
            host_port: None,
        }],
        uid: Some(format!("uid-{i}")),
        created: Some(jiff::Timestamp::UNIX_EPOCH),
        ..Pod::default()
    }
}

/// The address of pod `i` (10.128.0.0/9, one per pod).
fn pod_ip(i: usize) -> IpAddr {
    const POD_NETWORK: u32 = 0x0a80_0000;
    let offset = u32::try_from(i).expect("fewer than 2^23 pods") & 0x7f_ffff;
    IpAddr::V4(Ipv4Addr::from(POD_NETWORK | offset))
}

/// Policy `j` of `shape`, in generation `generation` of its spec (an update changes its
/// ports and peers). It selects one workload of its namespace and admits, in turn: a
/// workload of its namespace, a team's namespaces, a workload of a team's namespaces, or
/// an address block with a hole; on a numeric port, or on the named port. Every fourth
/// policy also isolates egress, to a block and to a team's namespaces.
pub fn policy_generation(shape: &Shape, j: usize, generation: usize) -> Policy {
    let n = j % shape.namespaces;
    let k = j + generation;
    let target = format!("app-{}", (j * 7) % shape.apps());
    let peer_app = format!("app-{}", (k * 13 + 1) % shape.apps());
    let team = format!("team-{}", k % TEAMS);
    let peer = match k % 4 {
        0 => json!({"podSelector": {"matchLabels": {"app": peer_app}}}),
        1 => json!({"namespaceSelector": {"matchLabels": {"team": team}}}),
        2 => json!({
            "namespaceSelector": {"matchLabels": {"team": team}},
            "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["tier-0", "tier-1"]}]}
        }),
        _ => {
            json!({"ipBlock": {"cidr": format!("172.{}.0.0/16", 16 + k % 16), "except": [format!("172.{}.{}.0/24", 16 + k % 16, k % 256)]}})
        }
    };
    let port = if k.is_multiple_of(5) {
        json!({"port": NAMED_PORT})
    } else {
        json!({"port": RULE_PORTS[k % RULE_PORTS.len()]})
    };
    let mut spec = json!({
        "podSelector": {"matchLabels": {"app": target}},
        "ingress": [{"from": [peer], "ports": [port]}],
    });
    if j % 4 == 3 {
        spec["policyTypes"] = json!(["Ingress", "Egress"]);
        spec["egress"] = json!([{
            "to": [
                {"ipBlock": {"cidr": format!("192.168.{}.0/24", k % 256)}},
                {"namespaceSelector": {"matchLabels": {"team": team}}}
            ],
            "ports": [{"port": 53, "protocol": "UDP"}, {"port": NAMED_PORT}]
        }]);
    }
    make_policy(namespace_name(n), format!("policy-{j}"), spec)
}

fn policy(shape: &Shape, j: usize) -> Policy {
    policy_generation(shape, j, 0)
}

/// The policy with `peers` podSelector peers, each admitting one pod by its `pod` label,
/// selecting every pod of the first namespace.
fn big_policy(shape: &Shape, peers: usize) -> Policy {
    let from: Vec<_> = (0..peers)
        .map(|i| json!({"podSelector": {"matchLabels": {"pod": format!("pod-{}", i % shape.pods.max(1))}}}))
        .collect();
    make_policy(
        namespace_name(0),
        "big".to_owned(),
        json!({"podSelector": {}, "ingress": [{"from": from, "ports": [{"port": 80}]}]}),
    )
}

fn make_policy(namespace: String, name: String, spec: serde_json::Value) -> Policy {
    Policy {
        id: ObjectRef::new(namespace, name),
        spec: serde_json::from_value::<NetworkPolicySpec>(spec).expect("a valid generated spec"),
        meta: PolicyMeta::default(),
        origin: Origin::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semantics::ParsedPolicy;

    #[test]
    fn generated_policies_are_valid_and_the_shape_holds() {
        let shape = Shape {
            pods: 200,
            policies: 40,
            namespaces: 5,
            nodes: 4,
            unique_labels: true,
            big_policy_peers: Some(50),
        };
        let cluster = cluster(&shape);
        assert_eq!(cluster.pods.len(), 200);
        assert_eq!(cluster.policies.len(), 41);
        assert_eq!(cluster.namespaces.len(), 5);
        assert_eq!(cluster.pods_on(LOCAL_NODE).count(), 50);
        for policy in cluster.policies.values() {
            let (_, error) = ParsedPolicy::parse_or_fail_closed(policy);
            assert!(error.is_none(), "{error:?}");
        }
        let ips: std::collections::BTreeSet<_> =
            cluster.pods.values().flat_map(|p| p.ips.clone()).collect();
        assert_eq!(ips.len(), 200, "one address per pod");
    }
}
