//! What the source has told the agent: the cluster, which kinds it has listed completely,
//! and the object versions it rejected (what was in force before stays: a rejected
//! version never changes the cluster).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use crate::{
    model::{Cluster, ObjectRef},
    source::{Kind, Rejection, SourceEvent},
};

/// The cluster as the source described it so far.
#[derive(Debug, Default)]
pub struct SourceState {
    /// The cluster. Shared with the compile and the lint that run on other threads: a
    /// change made while they hold it copies it first (`Arc::make_mut`), so starting them
    /// copies nothing.
    pub cluster: Arc<Cluster>,
    /// Kinds whose complete set the source has delivered at least once.
    listed: BTreeSet<Kind>,
    /// Objects whose latest version the source rejected (Kubernetes source).
    pub rejections: BTreeMap<(Kind, ObjectRef), Rejection>,
    /// Objects the source could not read (directory sources).
    pub load_errors: Vec<String>,
    /// Events taken from the source so far.
    events: u64,
}

/// What an event did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// The cluster changed.
    Changed,
    /// A watch listed its kind again, after an error or a timeout (the cluster changed).
    ListedAgain(Kind),
    /// A pod was deleted (the cluster changed).
    PodDeleted(ObjectRef),
    /// An object's latest version was rejected: the cluster did not change.
    Rejected,
    /// The source reported an error: the cluster did not change.
    Error(String),
}

impl SourceState {
    /// Takes one event in.
    pub fn apply(&mut self, event: SourceEvent) -> Applied {
        self.events += 1;
        match event {
            SourceEvent::Snapshot { cluster, errors } => {
                self.cluster = Arc::new(*cluster);
                self.rejections.clear();
                self.load_errors = errors;
                self.listed.extend(Kind::ALL);
                Applied::Changed
            }
            SourceEvent::Relisted(kind, objects) => {
                let again = !self.listed.insert(kind);
                self.rejections.retain(|(k, _), _| *k != kind);
                Arc::make_mut(&mut self.cluster).replace(kind, objects);
                if again {
                    Applied::ListedAgain(kind)
                } else {
                    Applied::Changed
                }
            }
            SourceEvent::Applied(object) => {
                self.rejections.remove(&object.key());
                Arc::make_mut(&mut self.cluster).apply(object);
                Applied::Changed
            }
            SourceEvent::Rejected(rejection) => {
                // Nothing changes in the cluster: what was in force stays.
                self.rejections
                    .insert((rejection.kind, rejection.id.clone()), rejection);
                Applied::Rejected
            }
            SourceEvent::Deleted(kind, id) => {
                self.rejections.remove(&(kind, id.clone()));
                Arc::make_mut(&mut self.cluster).remove(kind, &id);
                if kind == Kind::Pod {
                    Applied::PodDeleted(id)
                } else {
                    Applied::Changed
                }
            }
            SourceEvent::Error(e) => Applied::Error(e),
        }
    }

    /// Events taken so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Whether `kind` has been listed completely.
    pub fn listed(&self, kind: Kind) -> bool {
        self.listed.contains(&kind)
    }

    /// Whether the source has delivered everything once: syncing a half-listed cluster
    /// would briefly enforce the wrong thing.
    pub fn complete(&self) -> bool {
        Kind::ALL.iter().all(|k| self.listed.contains(k))
    }
}
