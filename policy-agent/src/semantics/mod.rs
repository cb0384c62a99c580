//! NetworkPolicy semantics: parsing and validation, selectors, and the questions every
//! evaluator asks ("does this policy apply to that pod", "does this peer admit that pod").

pub mod cidr;
pub mod describe;
pub mod lint;
pub mod names;
pub mod policy;
pub mod selector;
pub mod services;
#[cfg(test)]
mod validation_table;

pub use policy::{
    Admission, FieldError, IpBlock, ParsedPolicy, Peer, Peers, PolicyError, PortRef, PortSpec,
    Ports, Rule,
};
pub use selector::Selector;

use crate::model::{Cluster, Labels, Pod};

/// Whether `policy` applies to `pod`: "Selects the pods to which this NetworkPolicy object
/// applies ... in the same namespace as the NetworkPolicy."
pub fn applies_to(policy: &ParsedPolicy, pod: &Pod) -> bool {
    pod.id.namespace == policy.id.namespace && policy.pod_selector.matches(&pod.labels)
}

/// Whether a selector peer of a policy in `policy_namespace` admits a pod in `namespace`
/// with `pod_labels`, given that namespace's labels.
///
/// "If namespaceSelector is also set, then the NetworkPolicyPeer as a whole selects the pods
/// matching podSelector in the Namespaces selected by NamespaceSelector. Otherwise it selects
/// the pods matching podSelector in the policy's own namespace."
pub fn selector_peer_admits(
    namespaces: Option<&Selector>,
    pods: &Selector,
    policy_namespace: &str,
    namespace: &str,
    namespace_labels: &Labels,
    pod_labels: &Labels,
) -> bool {
    let namespace_ok = match namespaces {
        Some(sel) => sel.matches(namespace_labels),
        None => namespace == policy_namespace,
    };
    namespace_ok && pods.matches(pod_labels)
}

/// [`selector_peer_admits`] for a pod of `cluster`.
pub fn selector_peer_admits_pod(
    namespaces: Option<&Selector>,
    pods: &Selector,
    policy_namespace: &str,
    cluster: &Cluster,
    pod: &Pod,
) -> bool {
    let Some(ns_labels) = cluster.namespace_labels(&pod.id.namespace) else {
        return false;
    };
    selector_peer_admits(
        namespaces,
        pods,
        policy_namespace,
        &pod.id.namespace,
        ns_labels,
        &pod.labels,
    )
}
