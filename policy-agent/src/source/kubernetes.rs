//! The Kubernetes API as a source: kube-rs watchers on Namespaces, Pods (all namespaces:
//! remote pods feed the ipcache), NetworkPolicies, Services and EndpointSlices (where a
//! Service frontend forwards to) and Nodes (where node ports are served). A (re)list is reported whole, once
//! complete, so the agent never sees half a list; watch errors are reported and retried
//! with backoff, and a `410 Gone` makes the watcher list again. [`PodLookup`] gets one pod
//! directly, for the CNI plugin's pods that the watch has not delivered yet.

use std::fmt::Debug;

use futures::{Stream, StreamExt as _};
use k8s_openapi::{
    api::{
        core::v1::{
            Namespace as ApiNamespace, Node as ApiNode, Pod as ApiPod, Service as ApiService,
        },
        discovery::v1::EndpointSlice as ApiEndpointSlice,
        networking::v1::NetworkPolicy as ApiNetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::{CHANNEL_CAPACITY, Kind, Object, SourceEvent, convert};
use crate::model::{ObjectRef, Origin, Pod};

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

/// Starts the watchers, one per [`Kind`].
pub fn watch(client: Client) -> mpsc::Receiver<SourceEvent> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    spawn(
        Kind::Namespace,
        Api::<ApiNamespace>::all(client.clone()),
        |ns| convert::namespace(ns).map(Object::Namespace),
        tx.clone(),
    );
    spawn(
        Kind::Pod,
        Api::<ApiPod>::all(client.clone()),
        |pod| convert::pod(pod).map(Object::Pod),
        tx.clone(),
    );
    spawn(
        Kind::Policy,
        Api::<ApiNetworkPolicy>::all(client.clone()),
        |np| convert::policy(np, Origin::default()).map(Object::Policy),
        tx.clone(),
    );
    spawn(
        Kind::Service,
        Api::<ApiService>::all(client.clone()),
        |svc| convert::service(svc).map(Object::Service),
        tx.clone(),
    );
    spawn(
        Kind::EndpointSlice,
        Api::<ApiEndpointSlice>::all(client.clone()),
        |slice| convert::endpoint_slice(slice).map(Object::EndpointSlice),
        tx.clone(),
    );
    spawn(
        Kind::Node,
        Api::<ApiNode>::all(client),
        |node| convert::node(node).map(Object::Node),
        tx,
    );
    rx
}

fn spawn<K>(
    kind: Kind,
    api: Api<K>,
    convert: fn(K) -> convert::FieldResult<Object>,
    tx: mpsc::Sender<SourceEvent>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K: Resource<DynamicType = ()>,
{
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    tokio::spawn(forward(kind, stream, convert, tx));
}

/// Turns watcher events into source events.
async fn forward<K: Resource>(
    kind: Kind,
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    convert: fn(K) -> convert::FieldResult<Object>,
    tx: mpsc::Sender<SourceEvent>,
) {
    let mut stream = std::pin::pin!(stream);
    let mut listing: Vec<Object> = Vec::new();
    while let Some(event) = stream.next().await {
        let out = match event {
            Err(e) => Some(SourceEvent::Error(format!(
                "watching {}: {e}",
                kind.as_str()
            ))),
            Ok(watcher::Event::Init) => {
                listing.clear();
                None
            }
            Ok(watcher::Event::InitApply(obj)) => {
                match convert_or_report(kind, obj, convert) {
                    Ok(o) => listing.push(o),
                    Err(e) => {
                        let _ = tx.send(SourceEvent::Error(e)).await;
                    }
                }
                None
            }
            Ok(watcher::Event::InitDone) => {
                Some(SourceEvent::Relisted(kind, std::mem::take(&mut listing)))
            }
            Ok(watcher::Event::Apply(obj)) => Some(match convert_or_report(kind, obj, convert) {
                Ok(o) => SourceEvent::Applied(o),
                Err(e) => SourceEvent::Error(e),
            }),
            Ok(watcher::Event::Delete(obj)) => {
                Some(SourceEvent::Deleted(kind, reference(kind, obj.meta())))
            }
        };
        if let Some(out) = out
            && tx.send(out).await.is_err()
        {
            return;
        }
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
