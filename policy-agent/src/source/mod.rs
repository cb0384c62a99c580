//! Where the cluster comes from: a directory of manifests ([`directory`], re-read on
//! change), or the Kubernetes API ([`kubernetes`], watched). Both report [`SourceEvent`]s
//! on a channel; the agent applies them to its [`Cluster`].

pub mod convert;
pub mod directory;
pub mod kubernetes;
pub mod manifests;

use tokio::sync::mpsc;

use crate::model::{Cluster, Namespace, ObjectRef, Pod, Policy};

/// What an agent is fed by: a source's events, and for the Kubernetes source a way to get
/// a pod the watch has not delivered yet.
pub struct Source {
    /// The source's events.
    pub events: mpsc::Receiver<SourceEvent>,
    /// Direct pod lookups at the API server.
    pub pods: Option<kubernetes::PodLookup>,
}

impl From<mpsc::Receiver<SourceEvent>> for Source {
    fn from(events: mpsc::Receiver<SourceEvent>) -> Self {
        Self { events, pods: None }
    }
}

/// Channel capacity between a source and the agent.
pub const CHANNEL_CAPACITY: usize = 1024;

/// One object of a kind the agent follows.
#[derive(Clone, Debug)]
pub enum Object {
    /// A namespace.
    Namespace(Namespace),
    /// A pod.
    Pod(Pod),
    /// A NetworkPolicy.
    Policy(Policy),
}

/// The kinds the agent follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Namespaces.
    Namespace,
    /// Pods.
    Pod,
    /// NetworkPolicies.
    Policy,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Namespace, Kind::Pod, Kind::Policy];

    /// Resource name, as metrics and logs print it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "namespaces",
            Self::Pod => "pods",
            Self::Policy => "networkpolicies",
        }
    }
}

/// What a source reports.
#[derive(Clone, Debug)]
pub enum SourceEvent {
    /// The whole cluster, with what could not be read (a directory, on every change).
    Snapshot {
        /// The cluster.
        cluster: Box<Cluster>,
        /// Objects that could not be read.
        errors: Vec<String>,
    },
    /// The complete set of one kind, after a (re)list.
    Relisted(Kind, Vec<Object>),
    /// An object was added or changed.
    Applied(Object),
    /// An object was deleted (namespaces have an empty `namespace`).
    Deleted(Kind, ObjectRef),
    /// Something went wrong; the source keeps trying.
    Error(String),
}

impl Cluster {
    /// Adds or replaces one object.
    pub fn apply(&mut self, object: Object) {
        match object {
            Object::Namespace(ns) => self.add_namespace(ns),
            Object::Pod(pod) => self.add_pod(pod),
            Object::Policy(policy) => self.add_policy(policy),
        }
    }

    /// Removes one object.
    pub fn remove(&mut self, kind: Kind, id: &ObjectRef) {
        match kind {
            Kind::Namespace => {
                self.namespaces.remove(&id.name);
            }
            Kind::Pod => {
                self.pods.remove(id);
            }
            Kind::Policy => {
                self.policies.remove(id);
            }
        }
    }

    /// Replaces every object of `kind` with `objects`.
    pub fn replace(&mut self, kind: Kind, objects: Vec<Object>) {
        match kind {
            Kind::Namespace => self.namespaces.clear(),
            Kind::Pod => self.pods.clear(),
            Kind::Policy => self.policies.clear(),
        }
        for object in objects {
            self.apply(object);
        }
    }
}
