//! Where the cluster comes from: a directory of manifests ([`directory`], re-read on
//! change), or the Kubernetes API ([`kubernetes`], watched). Both report [`SourceEvent`]s
//! on a channel; the agent applies them to its [`Cluster`].

pub mod control_plane;
pub mod convert;
pub mod directory;
pub mod documents;
pub mod kubernetes;
pub mod manifests;

use tokio::sync::mpsc;

use crate::model::{Cluster, EndpointSlice, Namespace, Node, ObjectRef, Pod, Policy, Service};

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
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// A namespace.
    Namespace(Namespace),
    /// A pod.
    Pod(Pod),
    /// A NetworkPolicy.
    Policy(Policy),
    /// A Service.
    Service(Service),
    /// An EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// A node.
    Node(Node),
}

impl Object {
    /// Its kind and namespace/name (namespaces and nodes have an empty namespace).
    pub fn key(&self) -> (Kind, ObjectRef) {
        match self {
            Self::Namespace(ns) => (Kind::Namespace, ObjectRef::new("", &ns.name)),
            Self::Pod(pod) => (Kind::Pod, pod.id.clone()),
            Self::Policy(policy) => (Kind::Policy, policy.id.clone()),
            Self::Service(service) => (Kind::Service, service.id.clone()),
            Self::EndpointSlice(slice) => (Kind::EndpointSlice, slice.id.clone()),
            Self::Node(node) => (Kind::Node, ObjectRef::new("", &node.name)),
        }
    }
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
    /// Services.
    Service,
    /// EndpointSlices.
    EndpointSlice,
    /// Nodes.
    Node,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Policy,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
    ];

    /// Resource name, as metrics and logs print it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "namespaces",
            Self::Pod => "pods",
            Self::Policy => "networkpolicies",
            Self::Service => "services",
            Self::EndpointSlice => "endpointslices",
            Self::Node => "nodes",
        }
    }

    /// Whether objects of the kind live in a namespace.
    pub const fn namespaced(self) -> bool {
        !matches!(self, Self::Namespace | Self::Node)
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
    /// An object was deleted (namespaces and nodes have an empty `namespace`).
    Deleted(Kind, ObjectRef),
    /// An object's latest version could not be taken (sent after the `Relisted` of its kind
    /// when found while listing); a later `Applied`, `Deleted` or `Relisted` of it clears it.
    Rejected(Rejection),
    /// Something went wrong; the source keeps trying.
    Error(String),
}

/// An object version a source could not take, and what stays in force instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Its kind.
    pub kind: Kind,
    /// Which.
    pub id: ObjectRef,
    /// Why.
    pub reason: RejectReason,
    /// What is wrong (field paths included).
    pub message: String,
    /// What is enforced instead.
    pub in_force: InForce,
}

/// Why an object version was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectReason {
    /// It could not be decoded or converted.
    Unreadable,
    /// It reads, but fails validation.
    Invalid,
}

impl RejectReason {
    /// As metrics label it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unreadable => "unreadable",
            Self::Invalid => "invalid",
        }
    }
}

/// What is enforced for an object whose latest version was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum InForce {
    /// Its last good version.
    LastGood,
    /// Nothing of it (an object that was never good and is not a policy: as if absent).
    Nothing,
}

impl InForce {
    /// As metrics label it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::LastGood => "last-good",
            Self::Nothing => "nothing",
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = match self.in_force {
            InForce::LastGood => "its last good version stays in force",
            InForce::Nothing => "ignored (it never had a good version)",
        };
        write!(
            f,
            "{} {} rejected, {kept}: {}",
            self.kind.as_str(),
            crate::report::escape(&self.id.to_string()),
            crate::report::escape_text(&self.message)
        )
    }
}

impl Cluster {
    /// The object of `kind` named `id` (namespaces and nodes: an empty namespace), as the
    /// cluster holds it.
    pub fn object(&self, kind: Kind, id: &ObjectRef) -> Option<Object> {
        match kind {
            Kind::Namespace => self
                .namespaces
                .get(&id.name)
                .cloned()
                .map(Object::Namespace),
            Kind::Pod => self.pods.get(id).cloned().map(Object::Pod),
            Kind::Policy => self.policies.get(id).cloned().map(Object::Policy),
            Kind::Service => self.services.get(id).cloned().map(Object::Service),
            Kind::EndpointSlice => self
                .endpoint_slices
                .get(id)
                .cloned()
                .map(Object::EndpointSlice),
            Kind::Node => self.nodes.get(&id.name).cloned().map(Object::Node),
        }
    }

    /// Adds or replaces one object.
    pub fn apply(&mut self, object: Object) {
        match object {
            Object::Namespace(ns) => self.add_namespace(ns),
            Object::Pod(pod) => self.add_pod(pod),
            Object::Policy(policy) => self.add_policy(policy),
            Object::Service(service) => self.add_service(service),
            Object::EndpointSlice(slice) => self.add_endpoint_slice(slice),
            Object::Node(node) => self.add_node(node),
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
            Kind::Service => {
                self.services.remove(id);
            }
            Kind::EndpointSlice => {
                self.endpoint_slices.remove(id);
            }
            Kind::Node => {
                self.nodes.remove(&id.name);
            }
        }
    }

    /// Replaces every object of `kind` with `objects`.
    pub fn replace(&mut self, kind: Kind, objects: Vec<Object>) {
        match kind {
            Kind::Namespace => self.namespaces.clear(),
            Kind::Pod => self.pods.clear(),
            Kind::Policy => self.policies.clear(),
            Kind::Service => self.services.clear(),
            Kind::EndpointSlice => self.endpoint_slices.clear(),
            Kind::Node => self.nodes.clear(),
        }
        for object in objects {
            self.apply(object);
        }
    }
}
