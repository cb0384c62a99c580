//! The Kubernetes API as a source: kube-rs watchers on Namespaces, Pods (all namespaces:
//! remote pods feed the ipcache), NetworkPolicies, Services and EndpointSlices (where a
//! Service frontend forwards to) and Nodes (where node ports are served). A (re)list is reported whole, once
//! complete, so the agent never sees half a list; watch errors are reported and retried
//! with backoff, and a `410 Gone` makes the watcher list again. [`PodLookup`] gets one pod
//! directly, for the CNI plugin's pods that the watch has not delivered yet.

use std::{collections::BTreeMap, fmt::Debug};

use futures::{Stream, StreamExt as _};
use k8s_openapi::{
    api::{
        core::v1::{
            Namespace as ApiNamespace, Node as ApiNode, ObjectReference, Pod as ApiPod,
            Service as ApiService,
        },
        discovery::v1::EndpointSlice as ApiEndpointSlice,
        networking::v1::NetworkPolicy as ApiNetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource,
    runtime::{
        WatchStreamExt as _,
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::{
    CHANNEL_CAPACITY, InForce, Kind, Object, RejectReason, Rejection, SourceEvent, convert,
};
use crate::{
    model::{ObjectRef, Origin, Pod},
    semantics::ParsedPolicy,
};

/// Gets single pods from the API server.
#[derive(Clone)]
pub struct PodLookup {
    client: Client,
}

impl PodLookup {
    /// Looks pods up with `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The pod `namespace/name`, `None` if the API server has none.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Option<Pod>, String> {
        let api = Api::<ApiPod>::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            Some(pod) => convert_or_report(Kind::Pod, pod, convert::pod).map(Some),
            None => Ok(None),
        }
    }
}

/// Starts the watchers, one per [`Kind`]. Objects the agent rejects get an Event on them,
/// reported as this node's agent.
pub fn watch(client: Client, node: &str) -> mpsc::Receiver<SourceEvent> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let events = Recorder::new(
        client.clone(),
        Reporter {
            controller: EVENT_REPORTER.to_owned(),
            instance: Some(node.to_owned()),
        },
    );
    let watch = Watch { tx, events };
    watch.spawn(
        Kind::Namespace,
        Api::<ApiNamespace>::all(client.clone()),
        |ns| convert::namespace(ns).map(Object::Namespace),
    );
    watch.spawn(Kind::Pod, Api::<ApiPod>::all(client.clone()), |pod| {
        convert::pod(pod).map(Object::Pod)
    });
    watch.spawn(
        Kind::Policy,
        Api::<ApiNetworkPolicy>::all(client.clone()),
        |np| convert::policy(np, Origin::default()).map(Object::Policy),
    );
    watch.spawn(
        Kind::Service,
        Api::<ApiService>::all(client.clone()),
        |svc| convert::service(svc).map(Object::Service),
    );
    watch.spawn(
        Kind::EndpointSlice,
        Api::<ApiEndpointSlice>::all(client.clone()),
        |slice| convert::endpoint_slice(slice).map(Object::EndpointSlice),
    );
    watch.spawn(Kind::Node, Api::<ApiNode>::all(client), |node| {
        convert::node(node).map(Object::Node)
    });
    rx
}

/// `reportingController` of the agent's Events.
pub const EVENT_REPORTER: &str = "policy-agent";
/// `reason` of the Event on an object the agent rejects.
pub const REJECTED_REASON: &str = "PolicyAgentRejected";

/// What every watcher shares: the agent's channel and the Event recorder.
#[derive(Clone)]
struct Watch {
    tx: mpsc::Sender<SourceEvent>,
    events: Recorder,
}

impl Watch {
    fn spawn<K>(&self, kind: Kind, api: Api<K>, convert: fn(K) -> convert::FieldResult<Object>)
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K: Resource<DynamicType = ()>,
    {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        tokio::spawn(self.clone().forward(kind, stream, convert));
    }

    /// Turns watcher events into source events, keeping the last good version of every
    /// object: a version that cannot be taken leaves the one before in force.
    async fn forward<K: Resource<DynamicType = ()>>(
        self,
        kind: Kind,
        stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
        convert: fn(K) -> convert::FieldResult<Object>,
    ) {
        let mut stream = std::pin::pin!(stream);
        let mut kept: BTreeMap<ObjectRef, Object> = BTreeMap::new();
        let mut listing = Listing::default();
        while let Some(event) = stream.next().await {
            let out: Vec<SourceEvent> = match event {
                Err(e) => vec![SourceEvent::Error(format!(
                    "watching {}: {e}",
                    kind.as_str()
                ))],
                Ok(watcher::Event::Init) => {
                    listing = Listing::default();
                    Vec::new()
                }
                Ok(watcher::Event::InitApply(obj)) => {
                    let taken = self.take(kind, obj, convert, &kept);
                    listing.add(taken);
                    Vec::new()
                }
                Ok(watcher::Event::InitDone) => {
                    let listed = std::mem::take(&mut listing);
                    kept = listed.kept;
                    std::iter::once(SourceEvent::Relisted(kind, listed.objects))
                        .chain(listed.rejected.into_iter().map(SourceEvent::Rejected))
                        .collect()
                }
                Ok(watcher::Event::Apply(obj)) => match self.take(kind, obj, convert, &kept) {
                    Taken::Good(o) => {
                        kept.insert(o.key().1, o.clone());
                        vec![SourceEvent::Applied(o)]
                    }
                    Taken::FailClosed(o) => vec![SourceEvent::Applied(o)],
                    // The agent holds the last good version already.
                    Taken::Rejected(r) | Taken::RejectedKeeping(r, _) => {
                        vec![SourceEvent::Rejected(r)]
                    }
                },
                Ok(watcher::Event::Delete(obj)) => {
                    let id = reference(kind, obj.meta());
                    kept.remove(&id);
                    vec![SourceEvent::Deleted(kind, id)]
                }
            };
            for out in out {
                if self.tx.send(out).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Converts and checks one object version; a rejected one gets an Event.
    fn take<K: Resource<DynamicType = ()>>(
        &self,
        kind: Kind,
        obj: K,
        convert: fn(K) -> convert::FieldResult<Object>,
        kept: &BTreeMap<ObjectRef, Object>,
    ) -> Taken {
        let id = reference(kind, obj.meta());
        let regarding = obj.object_ref(&());
        let (message, invalid) = match convert_or_report(kind, obj, convert) {
            Err(message) => (message, None),
            Ok(object) => match check(&object) {
                Ok(()) => return Taken::Good(object),
                Err(message) => (message, Some(object)),
            },
        };
        let reason = if invalid.is_some() {
            RejectReason::Invalid
        } else {
            RejectReason::Unreadable
        };
        let taken = match (kept.get(&id), invalid) {
            (Some(last), _) => Taken::RejectedKeeping(
                Rejection {
                    kind,
                    id,
                    reason,
                    message,
                    in_force: InForce::LastGood,
                },
                last.clone(),
            ),
            // A policy that was never good: the compiler enforces it fail-closed, and
            // reports it.
            (None, Some(policy)) => Taken::FailClosed(policy),
            (None, None) => Taken::Rejected(Rejection {
                kind,
                id,
                reason,
                message,
                in_force: InForce::Nothing,
            }),
        };
        self.publish(&taken, regarding);
        taken
    }

    /// An Event on a rejected object, as `kubectl describe` shows it. Sent on the side: the
    /// watch does not wait for the API server to take it.
    fn publish(&self, taken: &Taken, regarding: ObjectReference) {
        let note = match taken {
            Taken::Good(_) => return,
            Taken::FailClosed(Object::Policy(policy)) => match ParsedPolicy::parse(policy) {
                Err(e) => e.to_string(),
                Ok(_) => return,
            },
            Taken::FailClosed(_) => return,
            Taken::Rejected(r) | Taken::RejectedKeeping(r, _) => r.to_string(),
        };
        let event = Event {
            type_: EventType::Warning,
            reason: REJECTED_REASON.to_owned(),
            // The API server takes notes of at most 1 kB.
            note: Some(truncate(&note, MAX_EVENT_NOTE)),
            action: "Enforce".to_owned(),
            secondary: None,
        };
        let recorder = self.events.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &regarding).await {
                tracing::debug!(error = %e, "event not published");
            }
        });
    }
}

/// Bytes of an Event's note the API server takes.
const MAX_EVENT_NOTE: usize = 1024;

/// `s`, cut to at most `max` bytes at a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// What becomes of one object version.
enum Taken {
    /// It is good.
    Good(Object),
    /// A policy that fails validation and was never good: passed on, enforced fail-closed.
    FailClosed(Object),
    /// Rejected: its last good version stays, or nothing of it is enforced.
    Rejected(Rejection),
    /// Rejected while its last good version is listed again.
    RejectedKeeping(Rejection, Object),
}

/// A list in progress.
#[derive(Default)]
struct Listing {
    objects: Vec<Object>,
    kept: BTreeMap<ObjectRef, Object>,
    rejected: Vec<Rejection>,
}

impl Listing {
    fn add(&mut self, taken: Taken) {
        match taken {
            Taken::Good(o) => {
                self.kept.insert(o.key().1, o.clone());
                self.objects.push(o);
            }
            Taken::FailClosed(o) => self.objects.push(o),
            Taken::Rejected(r) => self.rejected.push(r),
            Taken::RejectedKeeping(r, last) => {
                self.kept.insert(last.key().1, last.clone());
                self.objects.push(last);
                self.rejected.push(r);
            }
        }
    }
}

/// Whether an object the API server accepted is one the agent can enforce as it is.
fn check(object: &Object) -> Result<(), String> {
    match object {
        Object::Policy(policy) => ParsedPolicy::parse(policy).map(|_| ()).map_err(|e| {
            e.errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        }),
        _ => Ok(()),
    }
}

/// Converts an API object, or says which object and field could not be converted.
fn convert_or_report<K: Resource, T>(
    kind: Kind,
    obj: K,
    convert: fn(K) -> convert::FieldResult<T>,
) -> Result<T, String> {
    let id = reference(kind, obj.meta());
    convert(obj).map_err(|(field, message)| {
        let field = field.map(|f| format!("{f}: ")).unwrap_or_default();
        format!("{} {id}: {field}{message}", kind.as_str())
    })
}

fn reference(kind: Kind, meta: &ObjectMeta) -> ObjectRef {
    let name = meta.name.clone().unwrap_or_default();
    match kind {
        _ if !kind.namespaced() => ObjectRef::new("", name),
        _ => ObjectRef::new(
            meta.namespace
                .clone()
                .unwrap_or_else(|| convert::DEFAULT_NAMESPACE.to_owned()),
            name,
        ),
    }
}
