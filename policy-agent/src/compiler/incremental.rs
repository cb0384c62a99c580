//! The compiler as a state that follows a cluster change by change: [`Incremental::apply`]
//! takes one change and says whether it changed anything policy sees (a status update
//! that changed no converted field costs a comparison and nothing else);
//! [`Incremental::compiled`] gives the maps' contents for the cluster as it stands,
//! compiling again only after a real change. The compilation reuses what earlier ones
//! worked out (parsed policies, the identity index and its resolved peers, see
//! [`super::Compiler`]), so a change costs what it touches there; what it yields is
//! always exactly what a compilation from the cluster alone yields (the property test
//! below holds it to that after every change of random change sequences).
//!
//! A holder of the cluster that does not see changes one by one (the agent, whose source
//! state it also changes itself) hands the whole cluster to [`Incremental::changes_to`],
//! which finds the changes by comparing, object by object.

use std::collections::BTreeMap;

use super::{Compiled, Compiler, NodeConfig};
use crate::{
    model::{Cluster, ObjectRef},
    source::{Kind, Object},
};

/// One change to the cluster or the node.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// An object was added or updated.
    Applied(Object),
    /// An object was deleted (namespaces and nodes: an empty namespace).
    Deleted(Kind, ObjectRef),
    /// The node's own configuration (addresses, sandboxes, map sizes) changed.
    Node(NodeConfig),
}

/// A cluster, the compiler following it, and the maps' contents for it.
#[derive(Debug)]
pub struct Incremental {
    compiler: Compiler,
    cluster: Cluster,
    node: NodeConfig,
    /// The contents for the cluster as it stands, unless a change came since.
    compiled: Option<Compiled>,
}

impl Incremental {
    /// An empty cluster seen from `node`.
    pub fn new(node: NodeConfig) -> Self {
        Self::with_cluster(Cluster::default(), node)
    }

    /// `cluster` seen from `node` (compiled at the first [`Self::compiled`]).
    pub fn with_cluster(cluster: Cluster, node: NodeConfig) -> Self {
        Self {
            compiler: Compiler::new(),
            cluster,
            node,
            compiled: None,
        }
    }

    /// The cluster as the changes left it.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The compiler, whose ids the contents use.
    pub fn compiler(&mut self) -> &mut Compiler {
        &mut self.compiler
    }

    /// Takes `change` in; returns whether it changed the cluster or the node (if not,
    /// nothing needs compiling or syncing).
    pub fn apply(&mut self, change: Change) -> bool {
        let changed = match change {
            Change::Applied(object) => {
                let (kind, id) = object.key();
                // Adding a namespaced object creates its namespace if it has none.
                let namespace_missing = matches!(kind, Kind::Pod | Kind::Policy | Kind::Service)
                    && !self.cluster.namespaces.contains_key(&id.namespace);
                let same = self.cluster.object(kind, &id).as_ref() == Some(&object);
                if same && !namespace_missing {
                    false
                } else {
                    self.cluster.apply(object);
                    true
                }
            }
            Change::Deleted(kind, id) => {
                let present = self.cluster.object(kind, &id).is_some();
                if present {
                    self.cluster.remove(kind, &id);
                }
                present
            }
            Change::Node(node) => {
                let changed = node != self.node;
                self.node = node;
                changed
            }
        };
        if changed {
            self.compiled = None;
        }
        changed
    }

    /// The maps' contents for the cluster as it stands.
    pub fn compiled(&mut self) -> &Compiled {
        if self.compiled.is_none() {
            self.compiled = Some(self.compiler.compile(&self.cluster, &self.node));
        }
        self.compiled.as_ref().expect("just compiled")
    }

    /// The maps' contents for the cluster as it stands, given away (the next
    /// [`Self::compiled`] compiles again, from the work the compiler kept).
    pub fn take_compiled(&mut self) -> Compiled {
        match self.compiled.take() {
            Some(compiled) => compiled,
            None => self.compiler.compile(&self.cluster, &self.node),
        }
    }

    /// The changes that turn the cluster as it stands into `cluster`: applied in order,
    /// they leave an equal cluster (namespaces last, since adding a pod or policy creates
    /// its namespace where `cluster` may have none).
    pub fn changes_to(&self, cluster: &Cluster) -> Vec<Change> {
        let mut changes = Vec::new();
        let by_name = |name: &String| ObjectRef::new("", name);
        differences(
            &self.cluster.pods,
            &cluster.pods,
            |_, o| Object::Pod(o.clone()),
            |id| (Kind::Pod, id.clone()),
            &mut changes,
        );
        differences(
            &self.cluster.policies,
            &cluster.policies,
            |_, o| Object::Policy(o.clone()),
            |id| (Kind::Policy, id.clone()),
            &mut changes,
        );
        differences(
            &self.cluster.services,
            &cluster.services,
            |_, o| Object::Service(o.clone()),
            |id| (Kind::Service, id.clone()),
            &mut changes,
        );
        differences(
            &self.cluster.endpoint_slices,
            &cluster.endpoint_slices,
            |_, o| Object::EndpointSlice(o.clone()),
            |id| (Kind::EndpointSlice, id.clone()),
            &mut changes,
        );
        differences(
            &self.cluster.nodes,
            &cluster.nodes,
            |_, o| Object::Node(o.clone()),
            |name| (Kind::Node, by_name(name)),
            &mut changes,
        );
        differences(
            &self.cluster.namespaces,
            &cluster.namespaces,
            |_, o| Object::Namespace(o.clone()),
            |name| (Kind::Namespace, by_name(name)),
            &mut changes,
        );
        changes
    }
}

/// Appends the changes that turn `from` into `to`: the objects `to` has and `from` has
/// not, or has otherwise, as applied (`object`); those only `from` has as deleted (`key`).
fn differences<K: Ord, V: PartialEq>(
    from: &BTreeMap<K, V>,
    to: &BTreeMap<K, V>,
    object: impl Fn(&K, &V) -> Object,
    key: impl Fn(&K) -> (Kind, ObjectRef),
    changes: &mut Vec<Change>,
) {
    for (k, v) in to {
        if from.get(k) != Some(v) {
            changes.push(Change::Applied(object(k, v)));
        }
    }
    for k in from.keys().filter(|k| !to.contains_key(*k)) {
        let (kind, id) = key(k);
        changes.push(Change::Deleted(kind, id));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::generate::{self, LOCAL_NODE, Shape};

    /// A change, by index into the generated cluster's pattern.
    #[derive(Clone, Debug)]
    enum Op {
        AddPod(usize),
        DeletePod(usize),
        /// Pod `.0` gets the labels of pod `.1`'s pattern (another workload, tier, or
        /// unique label).
        Relabel(usize, usize),
        /// The pod's status changes in no field policy sees.
        Unchanged(usize),
        /// The pod finishes (Succeeded), freeing its address.
        Finish(usize),
        /// Pod `.0` takes pod `.1`'s address (two claims).
        TakeAddress(usize, usize),
        NamespaceLabels(usize, usize),
        AddPolicy(usize),
        UpdatePolicy(usize, usize),
        DeletePolicy(usize),
        NodeAddress(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..40usize).prop_map(Op::AddPod),
            (0..40usize).prop_map(Op::DeletePod),
            (0..40usize, 0..60usize).prop_map(|(a, b)| Op::Relabel(a, b)),
            (0..40usize).prop_map(Op::Unchanged),
            (0..40usize).prop_map(Op::Finish),
            (0..40usize, 0..40usize).prop_map(|(a, b)| Op::TakeAddress(a, b)),
            (0..4usize, 0..10usize).prop_map(|(n, g)| Op::NamespaceLabels(n, g)),
            (0..16usize).prop_map(Op::AddPolicy),
            (0..16usize, 0..8usize).prop_map(|(j, g)| Op::UpdatePolicy(j, g)),
            (0..16usize).prop_map(Op::DeletePolicy),
            any::<u8>().prop_map(Op::NodeAddress),
        ]
    }

    fn shape() -> impl Strategy<Value = Shape> {
        (
            0..30usize,
            0..12usize,
            1..4usize,
            1..3usize,
            any::<bool>(),
            prop::option::of(1..20usize),
        )
            .prop_map(
                |(pods, policies, namespaces, nodes, unique_labels, big_policy_peers)| Shape {
                    pods,
                    policies,
                    namespaces,
                    nodes,
                    unique_labels,
                    big_policy_peers,
                },
            )
    }

    /// The change `op` stands for in `cluster` of `shape`.
    fn change(shape: &Shape, cluster: &Cluster, op: &Op) -> Change {
        let existing = |i: usize| -> Option<crate::model::Pod> {
            let mut pods: Vec<_> = cluster.pods.values().collect();
            pods.sort_by(|a, b| a.id.cmp(&b.id));
            (!pods.is_empty()).then(|| pods[i % pods.len()].clone())
        };
        let fallback = || Change::Applied(Object::Pod(generate::pod(shape, 0)));
        match *op {
            Op::AddPod(i) => Change::Applied(Object::Pod(generate::pod(shape, shape.pods + i))),
            Op::DeletePod(i) => {
                existing(i).map_or_else(fallback, |p| Change::Deleted(Kind::Pod, p.id))
            }
            Op::Relabel(i, like) => existing(i).map_or_else(fallback, |mut p| {
                p.labels = generate::pod(shape, like).labels;
                Change::Applied(Object::Pod(p))
            }),
            Op::Unchanged(i) => {
                existing(i).map_or_else(fallback, |p| Change::Applied(Object::Pod(p)))
            }
            Op::Finish(i) => existing(i).map_or_else(fallback, |mut p| {
                p.finished = true;
                Change::Applied(Object::Pod(p))
            }),
            Op::TakeAddress(a, b) => match (existing(a), existing(b)) {
                (Some(mut p), Some(q)) => {
                    p.ips.clone_from(&q.ips);
                    Change::Applied(Object::Pod(p))
                }
                _ => fallback(),
            },
            Op::NamespaceLabels(n, generation) => Change::Applied(Object::Namespace(
                generate::namespace(n % shape.namespaces, generation),
            )),
            Op::AddPolicy(j) => Change::Applied(Object::Policy(generate::policy_generation(
                shape,
                shape.policies + j,
                0,
            ))),
            Op::UpdatePolicy(j, generation) => Change::Applied(Object::Policy(
                generate::policy_generation(shape, j, generation),
            )),
            Op::DeletePolicy(j) => {
                let mut policies: Vec<_> = cluster.policies.keys().cloned().collect();
                policies.sort();
                match policies.get(j % policies.len().max(1)) {
                    Some(id) => Change::Deleted(Kind::Policy, id.clone()),
                    None => fallback(),
                }
            }
            Op::NodeAddress(last) => Change::Node(node(&[last])),
        }
    }

    fn node(addresses: &[u8]) -> NodeConfig {
        NodeConfig {
            name: LOCAL_NODE.into(),
            addresses: addresses
                .iter()
                .map(|&b| std::net::IpAddr::from([10, 0, 0, b]))
                .collect(),
            ..NodeConfig::default()
        }
    }

    fn check(shape: Shape, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let cluster = generate::cluster(&shape);
        let mut incremental = Incremental::with_cluster(cluster.clone(), node(&[]));
        // The full compilation runs the same compiler on the whole cluster every time,
        // from nothing but the ids (which are stable by design, so they carry over).
        let mut full = Compiler::new();
        let mut full_node = node(&[]);
        prop_assert_eq!(incremental.compiled(), &full.compile(&cluster, &full_node));
        for op in &ops {
            let change = change(&shape, incremental.cluster(), op);
            let before = format!("{:?}", incremental.cluster());
            let changed = incremental.apply(change.clone());
            let cluster = incremental.cluster().clone();
            let really_changed = match &change {
                Change::Node(n) => *n != std::mem::replace(&mut full_node, n.clone()),
                _ => before != format!("{cluster:?}"),
            };
            prop_assert_eq!(
                changed,
                really_changed,
                "apply says whether {:?} changed anything",
                change
            );
            full.forget_caches();
            let expected = full.compile(&cluster, &full_node);
            prop_assert_eq!(incremental.compiled(), &expected, "after {:?}", op);
        }
        Ok(())
    }

    /// Follows the cluster of `shape` through `ops` by its differences only
    /// ([`Incremental::changes_to`]), as the agent does: the cluster followed stays equal to
    /// the one changed, and the contents to a full compilation of it.
    fn check_following(shape: Shape, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut changed = Incremental::with_cluster(generate::cluster(&shape), node(&[]));
        let mut follower = Incremental::new(node(&[]));
        let mut full = Compiler::new();
        for op in &ops {
            let change = change(&shape, changed.cluster(), op);
            changed.apply(change);
            let target = changed.cluster().clone();
            let changes = follower.changes_to(&target);
            let any = !changes.is_empty();
            let mut applied = false;
            for c in changes {
                applied |= follower.apply(c);
            }
            prop_assert_eq!(applied, any, "every difference is a change");
            prop_assert_eq!(format!("{:?}", follower.cluster()), format!("{target:?}"));
            prop_assert!(follower.changes_to(&target).is_empty());
            full.forget_caches();
            let expected = full.compile(&target, &node(&[]));
            prop_assert_eq!(&follower.take_compiled(), &expected, "after {:?}", op);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Following a cluster by its differences ends where it is, and compiles as a
        /// full compilation does.
        #[test]
        fn following_by_differences_equals_full_compile(shape in shape(), ops in prop::collection::vec(op(), 1..12)) {
            check_following(shape, ops)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// After every change, the incremental compiler's contents equal a compilation of
        /// the whole cluster.
        #[test]
        fn incremental_equals_full_compile(shape in shape(), ops in prop::collection::vec(op(), 1..12)) {
            check(shape, ops)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        #[ignore = "deep: larger clusters and longer change sequences (a few minutes)"]
        fn incremental_equals_full_compile_deep(
            shape in shape().prop_map(|s| Shape { pods: s.pods * 4, policies: s.policies * 3, ..s }),
            ops in prop::collection::vec(op(), 1..40),
        ) {
            check(shape, ops)?;
        }
    }

    #[test]
    fn a_status_update_that_changes_nothing_is_no_change() {
        let shape = Shape {
            pods: 20,
            policies: 5,
            namespaces: 2,
            nodes: 2,
            unique_labels: false,
            big_policy_peers: None,
        };
        let mut incremental = Incremental::with_cluster(generate::cluster(&shape), node(&[1]));
        let first = incremental.compiled().clone();
        let pod = generate::pod(&shape, 3);
        assert!(!incremental.apply(Change::Applied(Object::Pod(pod.clone()))));
        assert!(!incremental.apply(Change::Node(node(&[1]))));
        assert!(!incremental.apply(Change::Deleted(
            Kind::Pod,
            ObjectRef::new("ns-0", "no-such-pod")
        )));
        assert_eq!(incremental.compiled(), &first);
        let mut relabelled = pod;
        relabelled.labels.insert("extra".into(), "x".into());
        assert!(incremental.apply(Change::Applied(Object::Pod(relabelled))));
        // A new identity (the pod's new label set) now exists.
        assert_ne!(incremental.compiled().pod_identities, first.pod_identities);
    }
}
