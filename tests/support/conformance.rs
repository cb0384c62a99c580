//! The conformance suite: every case of the upstream Kubernetes NetworkPolicy e2e suite
//! (test/e2e/network/netpol), rewritten here, on the same model: namespaces x, y, z with
//! pods a, b, c (label `pod=<name>`), each serving TCP, UDP and SCTP on ports 80 and 81
//! with named ports `serve-<port>-<protocol>`. Pods are dual-stack; ipBlock cases list a
//! block of each family.
//!
//! Upstream probes one port and protocol per step; these expectations cover every port,
//! protocol and family of the model. A pod always reaches itself.

use std::net::IpAddr;

use policy_agent::{
    model::{Cluster, ObjectRef, Protocol},
    report::Family,
};

use crate::cluster;

/// Namespaces of the model.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// Pods of every namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// A pod's IPv4 address: 10.<namespace>.0.<pod>, starting at 10.1.0.1 for x/a.
pub fn ipv4(ns: usize, pod: usize) -> IpAddr {
    format!("10.{}.0.{}", ns + 1, pod + 1).parse().unwrap()
}

/// A pod's IPv6 address: fd00:<namespace>::<pod>.
pub fn ipv6(ns: usize, pod: usize) -> IpAddr {
    format!("fd00:{}::{}", ns + 1, pod + 1).parse().unwrap()
}

/// The model's manifests.
pub fn model_yaml() -> String {
    let mut out = String::new();
    for (n, ns) in NAMESPACES.iter().enumerate() {
        out += &format!("---\nkind: Namespace\nmetadata: {{name: {ns}}}\n");
        for (p, pod) in PODS.iter().enumerate() {
            let mut ports = Vec::new();
            for port in [80, 81] {
                for proto in ["TCP", "UDP", "SCTP"] {
                    ports.push(format!(
                        "{{name: serve-{port}-{}, containerPort: {port}, protocol: {proto}}}",
                        proto.to_lowercase()
                    ));
                }
            }
            out += &format!(
                "---\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}\n\
                 spec: {{containers: [{{name: c, ports: [{}]}}]}}\n\
                 status: {{podIPs: [{{ip: \"{}\"}}, {{ip: \"{}\"}}]}}\n",
                ports.join(", "),
                ipv4(n, p),
                ipv6(n, p)
            );
        }
    }
    out
}

/// One connection of the model, as expectations see it.
#[derive(Clone, Copy, Debug)]
pub struct Conn<'a> {
    /// Source namespace.
    pub from_ns: &'a str,
    /// Source pod.
    pub from_pod: &'a str,
    /// Destination namespace.
    pub to_ns: &'a str,
    /// Destination pod.
    pub to_pod: &'a str,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
    /// Family.
    pub family: Family,
}

impl Conn<'_> {
    /// Whether the source is `ns/pod`.
    pub fn from(&self, ns: &str, pod: &str) -> bool {
        self.from_ns == ns && self.from_pod == pod
    }

    /// Whether the destination is `ns/pod`.
    pub fn to(&self, ns: &str, pod: &str) -> bool {
        self.to_ns == ns && self.to_pod == pod
    }

    /// TCP on `port`.
    pub fn tcp(&self, port: u16) -> bool {
        self.protocol == Protocol::Tcp && self.port == port
    }
}

/// A change to the model, on top of the base.
#[derive(Clone, Copy, Debug)]
pub enum Label {
    /// Add a label to a namespace.
    Namespace(&'static str, &'static str, &'static str),
    /// Add a label to a pod.
    Pod(&'static str, &'static str, &'static str, &'static str),
}

/// One state of a case and what it allows.
pub struct Step {
    /// Every policy of this state.
    pub policies: String,
    /// Labels added to the model.
    pub labels: &'static [Label],
    /// Whether a connection between two different pods is allowed.
    pub expect: Box<dyn Fn(&Conn<'_>) -> bool>,
}

/// A case: one or more states, as upstream creates, updates and deletes things.
pub struct Case {
    /// Upstream's title.
    pub name: &'static str,
    /// The states.
    pub steps: Vec<Step>,
    /// Whether the lab also runs it (cases upstream repeats for UDP and SCTP are the same
    /// policies as a TCP case, already covered on every protocol).
    pub lab: bool,
}

impl Step {
    /// The model plus this step's labels and policies.
    pub fn cluster(&self) -> Cluster {
        let mut c = cluster(&format!("{}\n---\n{}", model_yaml(), self.policies));
        for label in self.labels {
            match *label {
                Label::Namespace(ns, k, v) => {
                    c.namespaces
                        .get_mut(ns)
                        .unwrap()
                        .labels
                        .insert(k.into(), v.into());
                }
                Label::Pod(ns, pod, k, v) => {
                    let id = ObjectRef::new(ns, pod);
                    c.pods
                        .get_mut(&id)
                        .unwrap()
                        .labels
                        .insert(k.into(), v.into());
                }
            }
        }
        c
    }
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!("---\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
}

fn step(policies: String, expect: impl Fn(&Conn<'_>) -> bool + 'static) -> Step {
    labelled(policies, &[], expect)
}

fn labelled(
    policies: String,
    labels: &'static [Label],
    expect: impl Fn(&Conn<'_>) -> bool + 'static,
) -> Step {
    Step {
        policies,
        labels,
        expect: Box::new(expect),
    }
}

fn case(name: &'static str, steps: Vec<Step>) -> Case {
    Case {
        name,
        steps,
        lab: true,
    }
}

/// Same policies as a TCP case; upstream runs it again for another protocol.
fn repeat(name: &'static str, steps: Vec<Step>) -> Case {
    Case {
        name,
        steps,
        lab: false,
    }
}

const DENY_INGRESS_X: &str = "{podSelector: {}, policyTypes: [Ingress]}";
const NS_Y: &str = "namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}";

/// The blocks of the "CIDR" cases: x/a's address with prefix length 4 (so every pod
/// address), per family, except x/b's address.
fn x_a_slash_4_except_x_b() -> String {
    format!(
        "{{ipBlock: {{cidr: \"{}/4\", except: [\"{}/32\"]}}}}, {{ipBlock: {{cidr: \"{}/4\", except: [\"{}/128\"]}}}}",
        net_of(ipv4(0, 0), 4),
        ipv4(0, 1),
        net_of(ipv6(0, 0), 4),
        ipv6(0, 1)
    )
}

/// The network address of `ip/len`.
fn net_of(ip: IpAddr, len: u8) -> IpAddr {
    ipnet::IpNet::new(ip, len).unwrap().network()
}

fn host_blocks(ns: usize, pod: usize) -> String {
    format!(
        "{{ipBlock: {{cidr: \"{}/32\"}}}}, {{ipBlock: {{cidr: \"{}/128\"}}}}",
        ipv4(ns, pod),
        ipv6(ns, pod)
    )
}

/// Nothing enters namespace x.
fn default_deny_ingress() -> Step {
    step(policy("x", "deny-ingress", DENY_INGRESS_X), |c| {
        c.to_ns != "x"
    })
}

/// x/a accepts only pod a of namespace y.
fn from_y_a() -> Step {
    step(
        policy(
            "x",
            "allow-ns-y-pod-a-via-namespace-pod-selector",
            &format!(
                "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Ingress], ingress: [{{from: [{{{NS_Y}, podSelector: {{matchLabels: {{pod: a}}}}}}]}}]}}"
            ),
        ),
        |c| !c.to("x", "a") || c.from("y", "a"),
    )
}

/// x/a accepts only namespace y, and only on port 81 of `protocol`.
fn ports_from_y(protocol: Protocol) -> Step {
    step(
        policy(
            "x",
            "allow-port-81-from-ns-y",
            &format!(
                "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Ingress], ingress: [{{from: [{{{NS_Y}}}], ports: [{{port: 81, protocol: {protocol}}}]}}]}}"
            ),
        ),
        move |c| !c.to("x", "a") || (c.from_ns == "y" && c.protocol == protocol && c.port == 81),
    )
}

/// Every case.
pub fn cases() -> Vec<Case> {
    vec![
        case(
            "should support a 'default-deny-ingress' policy",
            vec![default_deny_ingress()],
        ),
        case(
            "should support a 'default-deny-all' policy",
            vec![step(
                policy(
                    "x",
                    "deny-all",
                    "{podSelector: {}, policyTypes: [Ingress, Egress]}",
                ),
                |c| c.to_ns != "x" && c.from_ns != "x",
            )],
        ),
        case(
            "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
            vec![step(
                policy(
                    "x",
                    "x-a-allows-x-b",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
                ),
                |c| !c.to("x", "a") || c.from("x", "b"),
            )],
        ),
        case(
            "should enforce policy to allow ingress traffic for a target",
            vec![step(
                policy("x", "deny-all", DENY_INGRESS_X)
                    + &policy(
                        "x",
                        "allow-all-to-a",
                        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {}, namespaceSelector: {}}]}]}",
                    ),
                |c| c.to_ns != "x" || c.to_pod == "a",
            )],
        ),
        case(
            "should enforce policy to allow ingress traffic from pods in all namespaces",
            vec![step(
                policy(
                    "x",
                    "allow-from-another-ns",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {}}}]}]}",
                ),
                |_| true,
            )],
        ),
        case(
            "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
            vec![step(
                policy(
                    "x",
                    "allow-client-a-via-ns-selector",
                    &format!(
                        "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Ingress], ingress: [{{from: [{{{NS_Y}}}]}}]}}"
                    ),
                ),
                |c| !c.to("x", "a") || c.from_ns == "y",
            )],
        ),
        case(
            "should enforce policy based on PodSelector with MatchExpressions",
            vec![step(
                policy(
                    "x",
                    "x-a-allows-x-b",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]}]}",
                ),
                |c| !c.to("x", "a") || c.from("x", "b"),
            )],
        ),
        case(
            "should enforce policy based on NamespaceSelector with MatchExpressions",
            vec![step(
                policy(
                    "x",
                    "allow-ns-y-match-selector",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [y]}]}}]}]}",
                ),
                |c| !c.to("x", "a") || c.from_ns == "y",
            )],
        ),
        case(
            "should enforce policy based on PodSelector or NamespaceSelector",
            vec![step(
                policy(
                    "x",
                    "allow-ns-y-match-selector",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}}, {podSelector: {matchLabels: {pod: b}}}]}]}",
                ),
                |c| !c.to("x", "a") || c.from_ns != "x" || c.from_pod == "b",
            )],
        ),
        case(
            "should enforce policy based on PodSelector and NamespaceSelector",
            vec![step(
                policy(
                    "x",
                    "allow-ns-y-podselector-and-nsselector",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}, podSelector: {matchLabels: {pod: b}}}]}]}",
                ),
                |c| !c.to("x", "a") || (c.from_ns != "x" && c.from_pod == "b"),
            )],
        ),
        case(
            "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
            vec![step(
                policy(
                    "x",
                    "allow-ns-y-z-pod-b-c",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}]}]}",
                ),
                |c| !c.to("x", "a") || (c.from_ns != "x" && c.from_pod != "a"),
            )],
        ),
        case(
            "should enforce policy based on any PodSelectors",
            vec![step(
                policy(
                    "x",
                    "allow-ns-x-pod-b-c",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}, {podSelector: {matchLabels: {pod: c}}}]}]}",
                ),
                |c| !c.to("x", "a") || c.from("x", "b") || c.from("x", "c"),
            )],
        ),
        case(
            "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            vec![from_y_a()],
        ),
        case(
            "should enforce policy based on Ports",
            vec![ports_from_y(Protocol::Tcp)],
        ),
        case(
            "should enforce multiple, stacked policies with overlapping podSelectors",
            {
                let allow_81 = policy(
                    "x",
                    "allow-client-a-via-ns-selector",
                    &format!(
                        "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Ingress], ingress: [{{from: [{{{NS_Y}}}], ports: [{{port: 81, protocol: TCP}}]}}]}}"
                    ),
                );
                let allow_80 = policy(
                    "x",
                    "allow-client-a-via-ns-selector-80",
                    &format!(
                        "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Ingress], ingress: [{{from: [{{{NS_Y}}}], ports: [{{port: 80, protocol: TCP}}]}}]}}"
                    ),
                );
                vec![
                    step(allow_81.clone(), |c| {
                        !c.to("x", "a") || (c.from_ns == "y" && c.tcp(81))
                    }),
                    step(allow_81 + &allow_80, |c| {
                        !c.to("x", "a") || (c.from_ns == "y" && (c.tcp(80) || c.tcp(81)))
                    }),
                ]
            },
        ),
        case(
            "should support allow-all policy",
            vec![step(
                policy(
                    "x",
                    "allow-all",
                    "{podSelector: {}, policyTypes: [Ingress], ingress: [{}]}",
                ),
                |_| true,
            )],
        ),
        case(
            "should allow ingress access on one named port",
            vec![step(
                policy(
                    "x",
                    "allow-all",
                    "{podSelector: {}, policyTypes: [Ingress], ingress: [{ports: [{port: serve-81-tcp}]}]}",
                ),
                |c| c.to_ns != "x" || c.tcp(81),
            )],
        ),
        case(
            "should allow ingress access from namespace on one named port",
            vec![step(
                policy(
                    "x",
                    "allow-client-a-via-ns-selector-80",
                    &format!(
                        "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Ingress], ingress: [{{from: [{{{NS_Y}}}], ports: [{{port: serve-80-tcp, protocol: TCP}}]}}]}}"
                    ),
                ),
                |c| !c.to("x", "a") || (c.from_ns == "y" && c.tcp(80)),
            )],
        ),
        case(
            "should allow egress access on one named port",
            vec![step(
                policy(
                    "x",
                    "allow-egress",
                    "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: serve-80-tcp}]}]}",
                ),
                |c| c.from_ns != "x" || c.tcp(80),
            )],
        ),
        case(
            "should enforce updated policy",
            vec![
                step(
                    policy(
                        "x",
                        "allow-all-mutate-to-deny-all",
                        "{podSelector: {}, policyTypes: [Ingress], ingress: [{}]}",
                    ),
                    |_| true,
                ),
                step(
                    policy(
                        "x",
                        "allow-all-mutate-to-deny-all",
                        "{podSelector: {}, policyTypes: [Ingress], ingress: []}",
                    ),
                    |c| c.to_ns != "x",
                ),
            ],
        ),
        case("should allow ingress access from updated namespace", {
            let p = policy(
                "x",
                "allow-client-a-via-ns-selector",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]}]}",
            );
            vec![
                step(p.clone(), |c| !c.to("x", "a")),
                labelled(p, &[Label::Namespace("y", "ns2", "updated")], |c| {
                    !c.to("x", "a") || c.from_ns == "y"
                }),
            ]
        }),
        case("should allow ingress access from updated pod", {
            let p = policy(
                "x",
                "allow-client-a-via-pod-selector",
                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b, pod2: updated}}}]}]}",
            );
            vec![
                step(p.clone(), |c| !c.to("x", "a")),
                labelled(p, &[Label::Pod("x", "b", "pod2", "updated")], |c| {
                    !c.to("x", "a") || c.from("x", "b")
                }),
            ]
        }),
        case(
            "should deny ingress from pods on other namespaces",
            vec![step(
                policy(
                    "x",
                    "deny-empty-policy",
                    "{podSelector: {}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {}}}]}]}",
                ),
                |c| c.to_ns != "x" || c.from_ns == "x",
            )],
        ),
        case("should deny ingress access to updated pod", {
            let p = policy(
                "x",
                "deny-ingress-via-label-selector",
                "{podSelector: {matchLabels: {target: isolated}}, policyTypes: [Ingress]}",
            );
            vec![
                step(p.clone(), |_| true),
                labelled(p, &[Label::Pod("x", "a", "target", "isolated")], |c| {
                    !c.to("x", "a")
                }),
            ]
        }),
        case(
            "should deny egress from pods based on PodSelector",
            vec![step(
                policy(
                    "x",
                    "deny-egress-pod-a",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}",
                ),
                |c| !c.from("x", "a"),
            )],
        ),
        case(
            "should deny egress from all pods in a namespace",
            vec![step(
                policy(
                    "x",
                    "deny-egress-ns-x",
                    "{podSelector: {}, policyTypes: [Egress]}",
                ),
                |c| c.from_ns != "x",
            )],
        ),
        case(
            "should work with Ingress, Egress specified together",
            vec![step(
                policy(
                    "x",
                    "allow-client-a-via-pod-selector",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress, Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}], egress: [{ports: [{port: 80}]}]}",
                ),
                |c| (!c.to("x", "a") || c.from("x", "b")) && (!c.from("x", "a") || c.tcp(80)),
            )],
        ),
        case(
            "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
            vec![step(
                policy(
                    "x",
                    "allow-to-ns-y-pod-a",
                    &format!(
                        "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{{NS_Y}, podSelector: {{matchLabels: {{pod: a}}}}}}]}}]}}"
                    ),
                ) + &policy(
                    "y",
                    "allow-from-xa-on-ya-match-selector",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}, podSelector: {matchLabels: {pod: a}}}]}]}",
                ) + &policy(
                    "y",
                    "allow-from-xa-on-yb-match-selector",
                    "{podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}, podSelector: {matchLabels: {pod: a}}}]}]}",
                ),
                |c| {
                    (!c.from("x", "a") || c.to("y", "a"))
                        && (!(c.to("y", "a") || c.to("y", "b")) || c.from("x", "a"))
                },
            )],
        ),
        case(
            "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
            vec![step(
                policy(
                    "x",
                    "allow-to-ns-y-pod-a",
                    &format!(
                        "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{{NS_Y}, podSelector: {{matchLabels: {{pod: a}}}}}}]}}]}}"
                    ),
                ),
                |c| !c.from("x", "a") || c.to("y", "a"),
            )],
        ),
        case(
            "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
            vec![step(
                policy(
                    "x",
                    "allow-ingress-by-proto",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{protocol: TCP}]}]}",
                ),
                |c| !c.to("x", "a") || c.protocol == Protocol::Tcp,
            )],
        ),
        case(
            "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
            {
                let only_80 = policy(
                    "x",
                    "allow-ingress-port-80",
                    "{podSelector: {}, policyTypes: [Ingress], ingress: [{ports: [{port: 80}]}]}",
                );
                vec![
                    step(only_80.clone(), |c| c.to_ns != "x" || c.tcp(80)),
                    step(
                        only_80
                            + &policy(
                                "x",
                                "allow-ingress",
                                "{podSelector: {}, policyTypes: [Ingress], ingress: [{}]}",
                            ),
                        |_| true,
                    ),
                ]
            },
        ),
        case(
            "should enforce multiple egress policies with egress allow-all policy taking precedence",
            {
                let only_80 = policy(
                    "x",
                    "allow-egress-port-80",
                    "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 80}]}]}",
                );
                vec![
                    step(only_80.clone(), |c| c.from_ns != "x" || c.tcp(80)),
                    step(
                        only_80
                            + &policy(
                                "x",
                                "allow-egress",
                                "{podSelector: {}, policyTypes: [Egress], egress: [{}]}",
                            ),
                        |_| true,
                    ),
                ]
            },
        ),
        case(
            "should stop enforcing policies after they are deleted",
            vec![
                step(
                    policy(
                        "x",
                        "deny-all",
                        "{podSelector: {}, policyTypes: [Ingress, Egress]}",
                    ),
                    |c| c.to_ns != "x" && c.from_ns != "x",
                ),
                step(String::new(), |_| true),
            ],
        ),
        case(
            "should allow egress access to server in CIDR block",
            vec![step(
                policy(
                    "x",
                    "allow-client-a-via-cidr-egress-rule",
                    &format!(
                        "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{}]}}]}}",
                        host_blocks(1, 1)
                    ),
                ),
                |c| !c.from("x", "a") || c.to("y", "b"),
            )],
        ),
        case(
            "should enforce except clause while egress access to server in CIDR block",
            vec![step(
                policy(
                    "x",
                    "allow-client-a-via-cidr-egress-rule",
                    &format!(
                        "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{}]}}]}}",
                        x_a_slash_4_except_x_b()
                    ),
                ),
                |c| !c.from("x", "a") || !c.to("x", "b"),
            )],
        ),
        case(
            "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
            vec![
                step(
                    policy(
                        "x",
                        "allow-client-a-via-cidr-egress-rule",
                        &format!(
                            "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{}]}}]}}",
                            x_a_slash_4_except_x_b()
                        ),
                    ),
                    |c| !c.from("x", "a") || !c.to("x", "b"),
                ),
                step(
                    policy(
                        "x",
                        "allow-client-a-via-cidr-egress-rule",
                        &format!(
                            "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{}]}}]}}",
                            host_blocks(0, 1)
                        ),
                    ),
                    |c| !c.from("x", "a") || c.to("x", "b"),
                ),
            ],
        ),
        case(
            "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
            {
                let egress = policy(
                    "x",
                    "allow-egress-for-target",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{}]}",
                );
                vec![
                    step(egress.clone(), |_| true),
                    step(
                        egress
                            + &policy(
                                "x",
                                "deny-ingress-via-label-selector",
                                "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}",
                            ),
                        |c| !c.to("x", "a"),
                    ),
                ]
            },
        ),
        case(
            "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
            vec![step(
                policy("x", "deny-ingress", DENY_INGRESS_X)
                    + &policy(
                        "x",
                        "allow-only-sctp-ingress-on-port-81",
                        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{port: 81, protocol: SCTP}]}]}",
                    ),
                |c| {
                    c.to_ns != "x"
                        || (c.to_pod == "a" && c.protocol == Protocol::Sctp && c.port == 81)
                },
            )],
        ),
        case(
            "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
            vec![step(
                policy(
                    "x",
                    "allow-only-sctp-ingress-on-port-80",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{port: 80, protocol: SCTP}]}]}",
                ),
                |c| !c.to("x", "a") || (c.protocol == Protocol::Sctp && c.port == 80),
            )],
        ),
        case(
            "should not allow access by TCP when a policy specifies only UDP",
            vec![step(
                policy(
                    "x",
                    "allow-only-udp-ingress-on-port-81",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{ports: [{port: 81, protocol: UDP}]}]}",
                ),
                |c| !c.to("x", "a") || (c.protocol == Protocol::Udp && c.port == 81),
            )],
        ),
        case(
            "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
            vec![step(
                policy(
                    "x",
                    "allow-client-a-via-ns-selector-for-immutable-ns-label",
                    &format!(
                        "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Ingress], ingress: [{{from: [{{{NS_Y}}}]}}]}}"
                    ),
                ),
                |c| !c.to("x", "a") || c.from_ns == "y",
            )],
        ),
        case(
            "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
            vec![step(
                policy(
                    "x",
                    "allow-ns-y-match-selector-for-immutable-ns-label",
                    "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]}}]}]}",
                ),
                |c| !c.from("x", "a") || c.to_ns != "y",
            )],
        ),
        // The UDP and SCTP blocks of the upstream suite.
        repeat(
            "UDP: should support a 'default-deny-ingress' policy",
            vec![default_deny_ingress()],
        ),
        case(
            "UDP: should enforce policy based on Ports",
            vec![ports_from_y(Protocol::Udp)],
        ),
        repeat(
            "UDP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            vec![from_y_a()],
        ),
        repeat(
            "SCTP: should support a 'default-deny-ingress' policy",
            vec![default_deny_ingress()],
        ),
        case(
            "SCTP: should enforce policy based on Ports",
            vec![ports_from_y(Protocol::Sctp)],
        ),
        repeat(
            "SCTP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            vec![from_y_a()],
        ),
    ]
}

/// The connection a probe is about (`None` for a pod talking to itself, always allowed).
pub fn conn<'a>(
    from: &'a str,
    to: &'a str,
    protocol: Protocol,
    port: u16,
    family: Family,
) -> Option<Conn<'a>> {
    if from == to {
        return None;
    }
    let (from_ns, from_pod) = from.split_once('/')?;
    let (to_ns, to_pod) = to.split_once('/')?;
    Some(Conn {
        from_ns,
        from_pod,
        to_ns,
        to_pod,
        protocol,
        port,
        family,
    })
}
