//! Warnings for valid policies that probably do not do what their author meant: they select
//! nothing, name labels nobody has, cut off DNS, or open ports nobody listens on.

use std::fmt;

use policy_common::maps::Direction;

use super::{
    ParsedPolicy, Peer, Peers, PortRef, Ports, applies_to,
    selector::{Requirement, Selector},
    selector_peer_admits_pod,
};
use crate::model::{Cluster, ObjectRef, Pod, Protocol};

/// The port DNS answers on.
const DNS_PORT: u16 = 53;

/// A likely mistake in a valid policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The policy.
    pub policy: ObjectRef,
    /// The field it is about.
    pub field: String,
    /// What looks wrong, and what it means.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NetworkPolicy {}: {}: {}",
            self.policy, self.field, self.message
        )
    }
}

/// Every warning about `policies` in `cluster`.
pub fn lint(cluster: &Cluster, policies: &[ParsedPolicy]) -> Vec<Warning> {
    let mut out = Vec::new();
    for policy in policies {
        let warn = |out: &mut Vec<Warning>, field: String, message: String| {
            out.push(Warning {
                policy: policy.id.clone(),
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
                    policy: policy.id.clone(),
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
            policy: policy.id.clone(),
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
                policy: policy.clone(),
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
}
