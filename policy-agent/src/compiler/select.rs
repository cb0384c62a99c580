//! Which identities a selector peer admits, without testing every identity against every
//! peer: identities are indexed by namespace and by pod label, so a peer costs the
//! identities that can match it (those carrying one of its `matchLabels`, or those of the
//! namespaces it admits), and each distinct peer is resolved once per compilation however
//! many rules and local pods share it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::IdentityKey;
use crate::{
    model::Labels,
    semantics::{self, Selector, selector::Requirement},
};

/// A selector peer as the compiler resolves it: the policy's namespace (which a peer
/// without `namespaceSelector` stays in), the namespace selector and the pod selector.
pub type PeerKey = (String, Option<Selector>, Selector);

/// The identities of one compilation, indexed for selector matching, with the peers
/// resolved so far.
#[derive(Debug, Default)]
pub struct IdentityIndex {
    /// Every identity.
    identities: BTreeMap<u32, IdentityKey>,
    /// Identities by namespace and that namespace's labels (one label set per namespace,
    /// except while a change of them is being taken in).
    by_namespace: BTreeMap<String, BTreeMap<Labels, BTreeSet<u32>>>,
    /// Identities by (pod label key, value).
    by_label: HashMap<(String, String), BTreeSet<u32>>,
    /// Peers resolved so far: the identities each admits, and the version of that
    /// answer (see [`Self::version`]).
    resolved: HashMap<PeerKey, (Vec<u32>, u64)>,
    /// The version the next new or changed resolution gets.
    next_version: u64,
}

impl IdentityIndex {
    /// An index of no identity.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds identity `id`; resolutions made before no longer hold, so they are dropped.
    pub fn insert(&mut self, id: u32, key: IdentityKey) {
        if self.identities.get(&id) == Some(&key) {
            return;
        }
        self.remove(id);
        self.by_namespace
            .entry(key.namespace.clone())
            .or_default()
            .entry(key.namespace_labels.clone())
            .or_default()
            .insert(id);
        for (k, v) in &key.pod_labels {
            self.by_label
                .entry((k.clone(), v.clone()))
                .or_default()
                .insert(id);
        }
        // A new identity joins exactly the resolved peers that admit it.
        for ((policy_ns, namespaces, pods), (ids, version)) in &mut self.resolved {
            if semantics::selector_peer_admits(
                namespaces.as_ref(),
                pods,
                policy_ns,
                &key.namespace,
                &key.namespace_labels,
                &key.pod_labels,
            ) {
                let at = ids.partition_point(|&i| i < id);
                ids.insert(at, id);
                *version = self.next_version;
                self.next_version += 1;
            }
        }
        self.identities.insert(id, key);
    }

    /// Removes identity `id` (if present) from the index and every resolution.
    pub fn remove(&mut self, id: u32) {
        let Some(key) = self.identities.remove(&id) else {
            return;
        };
        if let Some(by_labels) = self.by_namespace.get_mut(&key.namespace) {
            if let Some(ids) = by_labels.get_mut(&key.namespace_labels) {
                ids.remove(&id);
                if ids.is_empty() {
                    by_labels.remove(&key.namespace_labels);
                }
            }
            if by_labels.is_empty() {
                self.by_namespace.remove(&key.namespace);
            }
        }
        for (k, v) in key.pod_labels {
            let entry = (k, v);
            if let Some(ids) = self.by_label.get_mut(&entry) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_label.remove(&entry);
                }
            }
        }
        for (ids, version) in self.resolved.values_mut() {
            if let Ok(at) = ids.binary_search(&id) {
                ids.remove(at);
                *version = self.next_version;
                self.next_version += 1;
            }
        }
    }

    /// The identity `id`.
    pub fn get(&self, id: u32) -> Option<&IdentityKey> {
        self.identities.get(&id)
    }

    /// Every identity, by id.
    pub fn identities(&self) -> &BTreeMap<u32, IdentityKey> {
        &self.identities
    }

    /// The identities (ascending) a selector peer of a policy in `policy_namespace` admits.
    pub fn admitted(
        &mut self,
        policy_namespace: &str,
        namespaces: Option<&Selector>,
        pods: &Selector,
    ) -> &[u32] {
        let key: PeerKey = (
            policy_namespace.to_owned(),
            namespaces.cloned(),
            pods.clone(),
        );
        if !self.resolved.contains_key(&key) {
            let ids = self.resolve(policy_namespace, namespaces, pods);
            self.resolved.insert(key.clone(), (ids, self.next_version));
            self.next_version += 1;
        }
        &self.resolved[&key].0
    }

    /// The version of the resolution of `peer`, if it is resolved: it changes whenever
    /// the identities it admits do (and when it is resolved again after being dropped), so
    /// what was worked out from an equal version still holds.
    pub fn version(&self, peer: &PeerKey) -> Option<u64> {
        self.resolved.get(peer).map(|(_, version)| *version)
    }

    /// Forgets the resolutions no longer asked for: keeps those in `keep`.
    pub fn retain_resolved(&mut self, keep: impl Fn(&PeerKey) -> bool) {
        self.resolved.retain(|k, _| keep(k));
    }

    fn resolve(
        &self,
        policy_namespace: &str,
        namespaces: Option<&Selector>,
        pods: &Selector,
    ) -> Vec<u32> {
        // The namespaces the peer may admit pods of.
        let in_namespace: Vec<&BTreeSet<u32>> = match namespaces {
            None => self
                .by_namespace
                .get(policy_namespace)
                .into_iter()
                .flat_map(BTreeMap::values)
                .collect(),
            Some(sel) => self
                .by_namespace
                .values()
                .flatten()
                .filter(|(labels, _)| sel.matches(labels))
                .map(|(_, ids)| ids)
                .collect(),
        };
        // The smallest set of identities that a label requirement narrows to, if any.
        let narrowed = pods
            .requirements()
            .iter()
            .filter_map(|r| self.carrying(r))
            .min_by_key(BTreeSet::len);
        let total: usize = in_namespace.iter().map(|ids| ids.len()).sum();
        let admits = |id: &u32| {
            let key = &self.identities[id];
            semantics::selector_peer_admits(
                namespaces,
                pods,
                policy_namespace,
                &key.namespace,
                &key.namespace_labels,
                &key.pod_labels,
            )
        };
        let mut out: Vec<u32> = match narrowed {
            Some(candidates) if candidates.len() < total => {
                candidates.iter().copied().filter(admits).collect()
            }
            _ => in_namespace
                .iter()
                .flat_map(|ids| ids.iter().copied())
                .filter(admits)
                .collect(),
        };
        out.sort_unstable();
        out
    }

    /// The identities that can satisfy `requirement`, when it names the values it needs.
    fn carrying(&self, requirement: &Requirement) -> Option<BTreeSet<u32>> {
        let empty = BTreeSet::new();
        match requirement {
            Requirement::Equals(k, v) => Some(
                self.by_label
                    .get(&(k.clone(), v.clone()))
                    .unwrap_or(&empty)
                    .clone(),
            ),
            Requirement::In(k, vs) => Some(
                vs.iter()
                    .filter_map(|v| self.by_label.get(&(k.clone(), v.clone())))
                    .flatten()
                    .copied()
                    .collect(),
            ),
            Requirement::NotIn(..) | Requirement::Exists(_) | Requirement::DoesNotExist(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::model::{Labels, NAMESPACE_NAME_LABEL};

    fn labels(pairs: &[(String, String)]) -> Labels {
        pairs.iter().cloned().collect()
    }

    fn requirement() -> impl Strategy<Value = Requirement> {
        let key = prop::sample::select(vec!["app", "tier", "team"]).prop_map(str::to_owned);
        let value = prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_owned);
        let values = prop::collection::btree_set(value.clone(), 1..3);
        prop_oneof![
            (key.clone(), value).prop_map(|(k, v)| Requirement::Equals(k, v)),
            (key.clone(), values.clone()).prop_map(|(k, v)| Requirement::In(k, v)),
            (key.clone(), values).prop_map(|(k, v)| Requirement::NotIn(k, v)),
            key.clone().prop_map(Requirement::Exists),
            key.prop_map(Requirement::DoesNotExist),
        ]
    }

    fn selector() -> impl Strategy<Value = Selector> {
        prop::collection::vec(requirement(), 0..3).prop_map(Selector::from_requirements)
    }

    fn label_set() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec(
            (
                prop::sample::select(vec!["app", "tier", "team"]).prop_map(str::to_owned),
                prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_owned),
            ),
            0..3,
        )
    }

    /// A generated identity: its namespace (by index), namespace labels and pod labels.
    type Ident = (usize, Vec<(String, String)>, Vec<(String, String)>);

    proptest! {
        /// The index admits exactly what testing every identity admits, also after
        /// identities come and go around resolutions made earlier.
        #[test]
        fn index_agrees_with_testing_every_identity(
            idents in prop::collection::vec((0..3usize, label_set(), label_set()), 0..12),
            removed in prop::collection::btree_set(0..12u32, 0..4),
            late in prop::collection::vec((0..3usize, label_set(), label_set()), 0..4),
            peers in prop::collection::vec((0..3usize, prop::option::of(selector()), selector()), 1..6),
        ) {
            let namespaces = ["x", "y", "z"];
            let key = |(ns, ns_labels, pod_labels): &Ident| {
                let mut namespace_labels = labels(ns_labels);
                namespace_labels.insert(NAMESPACE_NAME_LABEL.into(), namespaces[*ns].into());
                IdentityKey {
                    namespace: namespaces[*ns].into(),
                    namespace_labels,
                    pod_labels: labels(pod_labels),
                    named_ports: BTreeSet::new(),
                }
            };
            let mut index = IdentityIndex::new();
            for (i, ident) in idents.iter().enumerate() {
                index.insert(i as u32, key(ident));
            }
            // Resolve once, then change the identities, then ask again.
            for (ns, nsel, psel) in &peers {
                index.admitted(namespaces[*ns], nsel.as_ref(), psel);
            }
            for id in &removed {
                index.remove(*id);
            }
            for (i, ident) in late.iter().enumerate() {
                index.insert(100 + i as u32, key(ident));
            }
            for (ns, nsel, psel) in &peers {
                let expected: Vec<u32> = index
                    .identities()
                    .iter()
                    .filter(|(_, k)| semantics::selector_peer_admits(
                        nsel.as_ref(), psel, namespaces[*ns], &k.namespace,
                        &k.namespace_labels, &k.pod_labels))
                    .map(|(id, _)| *id)
                    .collect();
                prop_assert_eq!(index.admitted(namespaces[*ns], nsel.as_ref(), psel), &expected[..]);
            }
        }
    }
}
