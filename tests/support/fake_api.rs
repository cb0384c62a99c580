//! A fake Kubernetes API server for the agent's tests, speaking the real list/watch HTTP
//! protocol for Namespaces, Pods, NetworkPolicies, Services, EndpointSlices and Nodes: JSON lists with a resourceVersion,
//! `?watch=true` streams of ADDED/MODIFIED/DELETED events from a given resourceVersion,
//! BOOKMARK events, and `410 Gone` for a resourceVersion older than the retained history.
//! The real kube-rs client and watchers run against it unchanged.
//!
//! Tests drive it: create, change and delete objects; compact the history; take the server
//! down (connections are refused and open watches end) and bring it back.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::{Stream, StreamExt as _, stream};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

/// How often open watches get a BOOKMARK.
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

/// The kinds served, with their list kinds and paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ApiKind {
    /// /api/v1/namespaces
    Namespace,
    /// /api/v1/pods
    Pod,
    /// /apis/networking.k8s.io/v1/networkpolicies
    NetworkPolicy,
    /// /api/v1/services
    Service,
    /// /apis/discovery.k8s.io/v1/endpointslices
    EndpointSlice,
    /// /api/v1/nodes
    Node,
}

impl ApiKind {
    fn of(kind: &str) -> Self {
        match kind {
            "Namespace" => Self::Namespace,
            "Pod" => Self::Pod,
            "NetworkPolicy" => Self::NetworkPolicy,
            "Service" => Self::Service,
            "EndpointSlice" => Self::EndpointSlice,
            "Node" => Self::Node,
            other => panic!("the fake API server does not serve {other}"),
        }
    }

    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Namespace => ("v1", "Namespace", "NamespaceList"),
            Self::Pod => ("v1", "Pod", "PodList"),
            Self::NetworkPolicy => ("networking.k8s.io/v1", "NetworkPolicy", "NetworkPolicyList"),
            Self::Service => ("v1", "Service", "ServiceList"),
            Self::EndpointSlice => ("discovery.k8s.io/v1", "EndpointSlice", "EndpointSliceList"),
            Self::Node => ("v1", "Node", "NodeList"),
        }
    }
}

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    kind: ApiKind,
    action: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(ApiKind, String, String), Value>,
    history: Vec<Event>,
    /// Watches must start at or after this resourceVersion.
    oldest: u64,
    /// Events (events.k8s.io/v1) clients created, by name, as last patched.
    posted_events: BTreeMap<String, Value>,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<Event>,
    /// False while the server is down: it refuses connections and open watches end.
    up: watch::Sender<bool>,
}

/// A running fake API server.
#[derive(Clone)]
pub struct FakeApi {
    shared: Arc<Shared>,
    address: std::net::SocketAddr,
    /// Its base URL.
    pub url: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    watch: Option<String>,
    resource_version: Option<String>,
    timeout_seconds: Option<u64>,
    allow_watch_bookmarks: Option<bool>,
}

impl FakeApi {
    /// Starts serving on a free loopback port (needs a tokio runtime).
    pub async fn start() -> Self {
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            events,
            up: watch::channel(true).0,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let api = Self {
            shared,
            address,
            url: format!("http://{address}"),
        };
        api.serve(listener);
        api
    }

    /// Serves on `listener` until the server is taken down.
    fn serve(&self, listener: tokio::net::TcpListener) {
        let route = |kind: ApiKind| {
            get(move |State(s): State<Arc<Shared>>, Query(p): Query<Params>| serve(s, kind, p))
        };
        let app = Router::new()
            .route("/api/v1/namespaces/{namespace}/pods/{name}", get(get_pod))
            .route("/api/v1/namespaces", route(ApiKind::Namespace))
            .route("/api/v1/pods", route(ApiKind::Pod))
            .route(
                "/apis/networking.k8s.io/v1/networkpolicies",
                route(ApiKind::NetworkPolicy),
            )
            .route("/api/v1/services", route(ApiKind::Service))
            .route(
                "/apis/discovery.k8s.io/v1/endpointslices",
                route(ApiKind::EndpointSlice),
            )
            .route("/api/v1/nodes", route(ApiKind::Node))
            .route(
                "/apis/events.k8s.io/v1/namespaces/{namespace}/events",
                axum::routing::post(create_event),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{namespace}/events/{name}",
                axum::routing::patch(patch_event),
            )
            .with_state(Arc::clone(&self.shared));
        let mut up = self.shared.up.subscribe();
        tokio::spawn(async move {
            let down = async move {
                let _ = up.wait_for(|u| !*u).await;
            };
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(down)
                .await;
        });
    }

    /// The Events clients created (as last patched), oldest first.
    pub fn events(&self) -> Vec<Value> {
        let store = self.shared.store.lock().unwrap();
        store.posted_events.values().cloned().collect()
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Creates or replaces an object (JSON with `kind` and `metadata`).
    pub fn apply(&self, mut object: Value) {
        let kind = ApiKind::of(object["kind"].as_str().expect("objects have a kind"));
        let (api_version, _, _) = kind.names();
        object["apiVersion"] = json!(api_version);
        let key = key_of(kind, &object);
        let mut store = self.shared.store.lock().unwrap();
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let action = if store.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        store.objects.insert(key, object.clone());
        self.record(
            &mut store,
            Event {
                rv,
                kind,
                action,
                object,
            },
        );
    }

    /// Creates an object that GET returns but no watch has seen yet (a pod just scheduled,
    /// its event still on the way).
    pub fn apply_unwatched(&self, mut object: Value) {
        let kind = ApiKind::of(object["kind"].as_str().expect("objects have a kind"));
        object["apiVersion"] = json!(kind.names().0);
        let key = key_of(kind, &object);
        let mut store = self.shared.store.lock().unwrap();
        store.rv += 1;
        object["metadata"]["resourceVersion"] = json!(store.rv.to_string());
        store.objects.insert(key, object);
    }

    /// Deletes an object (`namespace` is empty for namespaces).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let kind = ApiKind::of(kind);
        let mut store = self.shared.store.lock().unwrap();
        let Some(mut object) = store
            .objects
            .remove(&(kind, namespace.to_owned(), name.to_owned()))
        else {
            return;
        };
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(
            &mut store,
            Event {
                rv,
                kind,
                action: "DELETED",
                object,
            },
        );
    }

    fn record(&self, store: &mut Store, event: Event) {
        store.history.push(event.clone());
        let _ = self.shared.events.send(event);
    }

    /// Forgets the history: a watch resuming from before now gets `410 Gone`.
    pub fn compact(&self) {
        let mut store = self.shared.store.lock().unwrap();
        store.oldest = store.rv + 1;
        store.history.clear();
    }

    /// Takes the server down (connections are refused, open watches end) or brings it back
    /// on the same address.
    pub async fn set_up(&self, up: bool) {
        let was = self.shared.up.send_replace(up);
        if up && !was {
            let listener = tokio::net::TcpListener::bind(self.address).await.unwrap();
            self.serve(listener);
        }
    }
}

fn key_of(kind: ApiKind, object: &Value) -> (ApiKind, String, String) {
    let meta = &object["metadata"];
    let namespace = match kind {
        ApiKind::Namespace | ApiKind::Node => String::new(),
        _ => meta["namespace"].as_str().unwrap_or("default").to_owned(),
    };
    (
        kind,
        namespace,
        meta["name"]
            .as_str()
            .expect("objects have a name")
            .to_owned(),
    )
}

fn status(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    })
}

/// POST of an Event: kept, and returned as created.
async fn create_event(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(namespace): axum::extract::Path<String>,
    axum::Json(mut event): axum::Json<Value>,
) -> Response {
    event["metadata"]["namespace"] = json!(namespace);
    let name = event["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut store = shared.store.lock().unwrap();
    store.posted_events.insert(name, event.clone());
    (StatusCode::CREATED, axum::Json(event)).into_response()
}

/// PATCH (merge) of an Event: a series continues.
async fn patch_event(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path((_namespace, name)): axum::extract::Path<(String, String)>,
    axum::Json(patch): axum::Json<Value>,
) -> Response {
    let mut store = shared.store.lock().unwrap();
    let Some(event) = store.posted_events.get_mut(&name) else {
        let body = status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("events \"{name}\" not found"),
        );
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    if let (Some(event), Some(patch)) = (event.as_object_mut(), patch.as_object()) {
        for (k, v) in patch {
            event.insert(k.clone(), v.clone());
        }
    }
    axum::Json(event.clone()).into_response()
}

/// GET of one pod.
async fn get_pod(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path((namespace, name)): axum::extract::Path<(String, String)>,
) -> Response {
    let store = shared.store.lock().unwrap();
    match store.objects.get(&(ApiKind::Pod, namespace, name.clone())) {
        Some(pod) => axum::Json(pod.clone()).into_response(),
        None => {
            let body = status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("pods \"{name}\" not found"),
            );
            (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
        }
    }
}

async fn serve(shared: Arc<Shared>, kind: ApiKind, params: Params) -> Response {
    if !*shared.up.borrow() {
        let body = status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the fake API server is down",
        );
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let (_, _, list_kind) = kind.names();
    let watching = params
        .watch
        .as_deref()
        .is_some_and(|w| w == "true" || w == "1");
    if !watching {
        let store = shared.store.lock().unwrap();
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, v)| v.clone())
            .collect();
        let (api_version, _, _) = kind.names();
        return axum::Json(json!({
            "apiVersion": api_version, "kind": list_kind,
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items,
        }))
        .into_response();
    }

    let from: u64 = params
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = params.allow_watch_bookmarks.unwrap_or(false);
    let timeout = Duration::from_secs(params.timeout_seconds.unwrap_or(60));
    // Subscribe before reading the history, so that nothing falls in between.
    let live = shared.events.subscribe();
    let (backlog, gone, current) = {
        let store = shared.store.lock().unwrap();
        let backlog: Vec<Event> = store
            .history
            .iter()
            .filter(|e| e.kind == kind && e.rv > from)
            .cloned()
            .collect();
        (backlog, from != 0 && from + 1 < store.oldest, store.rv)
    };
    let body: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Infallible>> + Send>> = if gone {
        let expired = status(StatusCode::GONE, "Expired", "too old resource version");
        Box::pin(stream::once(async move {
            Ok(line(&json!({"type": "ERROR", "object": expired})))
        }))
    } else {
        Box::pin(watch_stream(
            shared, kind, backlog, live, current, bookmarks, timeout,
        ))
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .unwrap()
}

fn line(v: &Value) -> Bytes {
    Bytes::from(format!("{v}\n"))
}

/// The events of `kind` after the backlog, bookmarks now and then, until the timeout or
/// the server goes down.
fn watch_stream(
    shared: Arc<Shared>,
    kind: ApiKind,
    backlog: Vec<Event>,
    live: broadcast::Receiver<Event>,
    current: u64,
    bookmarks: bool,
    timeout: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let replayed = backlog.last().map_or(0, |e| e.rv);
    let backlog = stream::iter(
        backlog
            .into_iter()
            .map(|e| Ok(line(&json!({"type": e.action, "object": e.object})))),
    );
    struct Live {
        events: broadcast::Receiver<Event>,
        up: watch::Receiver<bool>,
        tick: tokio::time::Interval,
        last: u64,
    }
    let mut tick = tokio::time::interval(BOOKMARK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Live {
        events: live,
        up: shared.up.subscribe(),
        tick,
        last: current.max(replayed),
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let (api_version, object_kind, _) = kind.names();
    enum Step {
        End,
        Event(Event),
        Other,
        Bookmark,
    }
    let live = stream::unfold(state, move |mut s| async move {
        loop {
            let step = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => Step::End,
                _ = s.up.wait_for(|u| !*u) => Step::End,
                event = s.events.recv() => match event {
                    Ok(e) if e.kind == kind && e.rv > replayed => Step::Event(e),
                    Ok(_) => Step::Other,
                    Err(_) => Step::End,
                },
                _ = s.tick.tick(), if bookmarks => Step::Bookmark,
            };
            let out = match step {
                Step::End => return None,
                Step::Other => continue,
                Step::Event(e) => {
                    s.last = s.last.max(e.rv);
                    json!({"type": e.action, "object": e.object})
                }
                Step::Bookmark => json!({"type": "BOOKMARK", "object": {
                    "apiVersion": api_version, "kind": object_kind,
                    "metadata": {"resourceVersion": s.last.to_string()},
                }}),
            };
            return Some((Ok(line(&out)), s));
        }
    });
    backlog.chain(live)
}
