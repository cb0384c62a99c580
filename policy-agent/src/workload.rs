//! Workloads: the controller a pod belongs to (Deployment, StatefulSet, DaemonSet, Job,
//! ...), found from the pod's own `metadata.ownerReferences`, so that `matrix --summary`
//! can speak of workloads rather than of their replicas.

use std::fmt;

use serde::Serialize;

use crate::model::{Owner, Pod};

/// The label the Deployment controller puts on the pods (and in the name) of each of its
/// ReplicaSets: `<deployment>-<pod-template-hash>`.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The kind of the controller between a Deployment and its pods.
const REPLICA_SET: &str = "ReplicaSet";
/// The kind a ReplicaSet with a pod-template hash belongs to.
const DEPLOYMENT: &str = "Deployment";
/// The kind of a pod that no controller owns: it is its own workload.
const POD: &str = "Pod";

/// A workload: the controller at the top of a pod's ownership chain, or the pod itself.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Workload {
    /// The namespace (a controller owns pods of its own namespace only).
    pub namespace: String,
    /// Its API kind: `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `ReplicaSet` (one no
    /// Deployment owns), another controller's kind, or `Pod`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

impl Workload {
    /// The workload of `pod`. A ReplicaSet whose name is `<name>-<pod-template-hash>` (the
    /// hash the pod carries as a label) belongs to Deployment `<name>`: the manifests
    /// rarely hold the ReplicaSet itself, but the Deployment controller names it so. A pod
    /// without a controller is its own workload.
    pub fn of(pod: &Pod) -> Self {
        let namespace = pod.id.namespace.clone();
        let Some(Owner { kind, name }) = &pod.owner else {
            return Self {
                namespace,
                kind: POD.to_owned(),
                name: pod.id.name.clone(),
            };
        };
        let deployment = (kind == REPLICA_SET)
            .then(|| pod.labels.get(POD_TEMPLATE_HASH))
            .flatten()
            .and_then(|hash| name.strip_suffix(hash.as_str()))
            .and_then(|rest| rest.strip_suffix('-'))
            .filter(|d| !d.is_empty());
        match deployment {
            Some(d) => Self {
                namespace,
                kind: DEPLOYMENT.to_owned(),
                name: d.to_owned(),
            },
            None => Self {
                namespace,
                kind: kind.clone(),
                name: name.clone(),
            },
        }
    }
}

/// `namespace/kind/name`, the kind in lower case as kubectl names resources
/// (`shop/deployment/web`).
impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.namespace,
            self.kind.to_ascii_lowercase(),
            self.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Labels, ObjectRef};

    fn pod(owner: Option<(&str, &str)>, hash: Option<&str>) -> Pod {
        let mut labels = Labels::new();
        if let Some(h) = hash {
            labels.insert(POD_TEMPLATE_HASH.to_owned(), h.to_owned());
        }
        Pod {
            id: ObjectRef::new("shop", "web-7d9f-x2x"),
            labels,
            owner: owner.map(|(kind, name)| Owner {
                kind: kind.to_owned(),
                name: name.to_owned(),
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn a_replica_set_named_after_its_pod_template_hash_is_a_deployment() {
        let w = Workload::of(&pod(Some(("ReplicaSet", "web-7d9f")), Some("7d9f")));
        assert_eq!(w.to_string(), "shop/deployment/web");
        assert_eq!(w.kind, "Deployment");
        // A hash that is not the name's suffix (a hand-made ReplicaSet) proves nothing.
        let w = Workload::of(&pod(Some(("ReplicaSet", "web-7d9f")), Some("abcd")));
        assert_eq!(w.to_string(), "shop/replicaset/web-7d9f");
        // Nor does a name that is only the hash.
        let w = Workload::of(&pod(Some(("ReplicaSet", "7d9f")), Some("7d9f")));
        assert_eq!(w.to_string(), "shop/replicaset/7d9f");
        let w = Workload::of(&pod(Some(("ReplicaSet", "web-7d9f")), None));
        assert_eq!(w.kind, "ReplicaSet");
    }

    #[test]
    fn other_controllers_are_their_own_workload_and_a_bare_pod_is_one() {
        for kind in ["StatefulSet", "DaemonSet", "Job"] {
            let w = Workload::of(&pod(Some((kind, "db")), Some("7d9f")));
            assert_eq!((w.kind.as_str(), w.name.as_str()), (kind, "db"));
        }
        let w = Workload::of(&pod(None, None));
        assert_eq!(w.to_string(), "shop/pod/web-7d9f-x2x");
    }
}
