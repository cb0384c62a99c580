//! The agent's local API, on a unix socket: `policy-agent status` and `flows` talk to it,
//! and the CNI plugin hands it each new pod.
//!
//! A client sends one JSON line, `{"request":"status"}`, `{"request":"flows"}` or an
//! endpoint request (`endpoint-add`, `endpoint-check`, `endpoint-delete`); the agent
//! answers with one JSON object (status, or an [`EndpointReply`]), or with a stream of JSON
//! flow records, one per line, until the client goes.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot, watch},
};

use super::{
    Command,
    flows::{FlowRecord, Flows},
    status::Status,
};
use crate::{model::ObjectRef, source::kubernetes::PodLookup};

mod blocking;

pub use blocking::{MAX_REPLY_BYTES, Stage};

/// Where the socket of an instance lives.
pub fn default_socket(instance: &str) -> PathBuf {
    Path::new("/run/policy-agent").join(format!("{instance}.sock"))
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "request")]
enum Request {
    Status,
    Flows,
    EndpointAdd(EndpointRequest),
    EndpointCheck(EndpointRequest),
    EndpointDelete(EndpointDelete),
}

/// A new pod's network, as the CNI plugin reports it after the main plugin set it up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRequest {
    /// Namespace and name (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`).
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// `K8S_POD_UID`, when the runtime passes it: tells a pod from an earlier one of the
    /// same name.
    pub uid: Option<String>,
    /// `CNI_CONTAINERID` of the sandbox.
    pub container_id: String,
    /// Host-side interface from the main plugin's result, if it named one.
    pub interface: Option<String>,
    /// Every host-side interface of the main plugin's result (a bridge plugin names the
    /// bridge and the pod's veth): the agent picks the pod's own among them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_interfaces: Vec<String>,
    /// The pod's addresses from the main plugin's result.
    pub ips: Vec<IpAddr>,
}

impl EndpointRequest {
    /// The pod's `namespace/name`.
    pub fn pod(&self) -> ObjectRef {
        ObjectRef::new(&self.namespace, &self.name)
    }
}

/// A sandbox going away.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDelete {
    /// The pod, when the runtime says (`CNI_ARGS`); DEL may come without it.
    pub pod: Option<ObjectRef>,
    /// `CNI_CONTAINERID` of the sandbox.
    pub container_id: String,
}

/// The agent's answer to an endpoint request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum EndpointReply {
    /// The programs are attached to `interface` and the pod's policy state is written.
    Enforced {
        /// Host-side interface.
        interface: String,
        /// Whether policy isolates the pod's ingress.
        ingress_isolated: bool,
        /// Whether policy isolates the pod's egress.
        egress_isolated: bool,
    },
    /// The endpoint is gone (or never was).
    Deleted,
    /// Neither the agent's watch nor the API server knows the pod.
    UnknownPod {
        /// Why.
        message: String,
    },
    /// The agent cannot enforce policy on the pod yet (not ready, attach failed).
    Failed {
        /// Why.
        message: String,
    },
    /// The pod's interface cannot be attributed to the pod alone (a bridge, an uplink, an
    /// interface another pod has): the agent will not attach to it.
    Refused {
        /// Why.
        message: String,
    },
}

/// What the API serves from.
pub struct Backend {
    /// The latest status.
    pub status: watch::Receiver<Status>,
    /// Flow records.
    pub flows: Flows,
    /// The agent task, for endpoint requests.
    pub commands: mpsc::Sender<Command>,
    /// The API server, for pods the watch has not delivered yet.
    pub pods: Option<PodLookup>,
}

/// Serves the API at `path` until the task is dropped.
pub async fn serve(path: PathBuf, backend: Backend) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket file left by an agent that stopped.
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
    let backend = std::sync::Arc::new(backend);
    loop {
        let (conn, _) = listener.accept().await?;
        let backend = std::sync::Arc::clone(&backend);
        tokio::spawn(async move {
            if let Err(e) = answer(conn, &backend).await {
                tracing::debug!(error = %e, "API client went away");
            }
        });
    }
}

async fn answer(conn: UnixStream, backend: &Backend) -> anyhow::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line).context("bad request")? {
        Request::Status => serde_json::to_string(&*backend.status.borrow())?,
        Request::EndpointAdd(request) => serde_json::to_string(&add(backend, request).await)?,
        Request::EndpointCheck(request) => {
            let reply = ask(backend, |reply| Command::Check { request, reply }).await;
            serde_json::to_string(&reply)?
        }
        Request::EndpointDelete(request) => {
            let reply = ask(backend, |reply| Command::Delete { request, reply }).await;
            serde_json::to_string(&reply)?
        }
        Request::Flows => {
            let mut flows = backend.flows.subscribe();
            // A slow client misses records rather than slowing the agent; the subscription
            // counts what it missed (metrics, status).
            // One write per batch the agent sent, not one per record.
            let mut out = Vec::new();
            while let Ok(first) = flows.recv().await {
                out.clear();
                let mut record = Some(first);
                while let Some(r) = record {
                    serde_json::to_writer(&mut out, &r)?;
                    out.push(b'\n');
                    record = flows.next_in_batch();
                }
                write.write_all(&out).await?;
            }
            return Ok(());
        }
    };
    write.write_all(format!("{reply}\n").as_bytes()).await?;
    Ok(())
}

/// Creates an endpoint: from the pod the agent knows, or else the one the API server
/// returns (the watch may lag behind a pod that was just scheduled; it is never waited for).
#[tracing::instrument(skip_all, fields(pod = %request.pod(), container = %request.container_id))]
async fn add(backend: &Backend, request: EndpointRequest) -> EndpointReply {
    let known = ask(backend, |reply| Command::Add {
        request: request.clone(),
        pod: None,
        reply,
    })
    .await;
    let EndpointReply::UnknownPod { message } = known else {
        return known;
    };
    let Some(lookup) = &backend.pods else {
        return EndpointReply::UnknownPod { message };
    };
    let pod = match lookup.get(&request.namespace, &request.name).await {
        Ok(Some(pod)) => pod,
        Ok(None) => {
            return EndpointReply::UnknownPod {
                message: format!("the API server has no pod {}", request.pod()),
            };
        }
        Err(e) => {
            return EndpointReply::Failed {
                message: format!("getting pod {} from the API server: {e}", request.pod()),
            };
        }
    };
    tracing::debug!("pod fetched from the API server ahead of the watch");
    ask(backend, |reply| Command::Add {
        request,
        pod: Some(Box::new(pod)),
        reply,
    })
    .await
}

/// Sends a command to the agent task and waits for its reply.
async fn ask(
    backend: &Backend,
    command: impl FnOnce(oneshot::Sender<EndpointReply>) -> Command,
) -> EndpointReply {
    let (reply, answer) = oneshot::channel();
    if backend.commands.send(command(reply)).await.is_err() {
        return EndpointReply::Failed {
            message: "the agent is stopping".to_owned(),
        };
    }
    answer.await.unwrap_or_else(|_| EndpointReply::Failed {
        message: "the agent is stopping".to_owned(),
    })
}

/// Why an endpoint request got no usable answer. Every variant names the socket.
#[derive(Debug, thiserror::Error)]
pub enum EndpointCallError {
    /// Nothing listens on the socket (the agent is not running), or it cannot be opened.
    #[error("the agent at {path} is not reachable: {source}")]
    Unreachable {
        /// The socket.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The call's deadline ran out: the agent is stuck, or answers too slowly.
    #[error("the agent at {path} did not answer within {timeout:?} (still {stage})")]
    TimedOut {
        /// The socket.
        path: String,
        /// The whole call's deadline.
        timeout: Duration,
        /// The step that was under way.
        stage: Stage,
    },
    /// The connection failed after it was made.
    #[error("the connection to the agent at {path} failed while {stage}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// The step that failed.
        stage: Stage,
        /// Cause.
        source: std::io::Error,
    },
    /// The agent closed the connection without a word.
    #[error("the agent at {path} closed the connection without answering")]
    Closed {
        /// The socket.
        path: String,
    },
    /// The reply did not end within [`MAX_REPLY_BYTES`]; the rest was not read.
    #[error("the agent at {path} sent a reply longer than the limit of {limit} bytes")]
    Oversized {
        /// The socket.
        path: String,
        /// The limit.
        limit: usize,
    },
    /// The reply is not an [`EndpointReply`].
    #[error("the agent at {path} sent a reply that is not an endpoint answer: {source}")]
    Malformed {
        /// The socket.
        path: String,
        /// Why it does not parse.
        source: serde_json::Error,
    },
}

/// Sends one endpoint request and parses the reply, all within `timeout` (connect, request
/// and the whole reply: see [`blocking`]).
fn call_blocking(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<EndpointReply, EndpointCallError> {
    let line = serde_json::to_string(request).expect("requests serialize") + "\n";
    let reply = blocking::call(path, line.as_bytes(), timeout)?;
    serde_json::from_slice(&reply).map_err(|source| EndpointCallError::Malformed {
        path: path.display().to_string(),
        source,
    })
}

/// Asks the agent to enforce a new pod; returns once it does (or cannot).
pub fn endpoint_add(
    path: &Path,
    request: EndpointRequest,
    timeout: Duration,
) -> Result<EndpointReply, EndpointCallError> {
    call_blocking(path, &Request::EndpointAdd(request), timeout)
}

/// Asks the agent whether it enforces a pod as described.
pub fn endpoint_check(
    path: &Path,
    request: EndpointRequest,
    timeout: Duration,
) -> Result<EndpointReply, EndpointCallError> {
    call_blocking(path, &Request::EndpointCheck(request), timeout)
}

/// Tells the agent a sandbox is gone.
pub fn endpoint_delete(
    path: &Path,
    request: EndpointDelete,
    timeout: Duration,
) -> Result<EndpointReply, EndpointCallError> {
    call_blocking(path, &Request::EndpointDelete(request), timeout)
}

async fn connect(path: &Path, request: Request) -> anyhow::Result<BufReader<UnixStream>> {
    let mut conn = UnixStream::connect(path).await.with_context(|| {
        format!(
            "connecting to the agent at {} (is it running?)",
            path.display()
        )
    })?;
    let line = serde_json::to_string(&request)? + "\n";
    conn.write_all(line.as_bytes()).await?;
    Ok(BufReader::new(conn))
}

/// Asks a running agent for its status.
pub async fn status(path: &Path) -> anyhow::Result<Status> {
    let mut reader = connect(path, Request::Status).await?;
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    serde_json::from_str(&line).context("reading the agent's status")
}

/// Streams a running agent's flow records to `each` until it returns false or the agent
/// goes away.
pub async fn flows(path: &Path, mut each: impl FnMut(FlowRecord) -> bool) -> anyhow::Result<()> {
    let mut lines = connect(path, Request::Flows).await?.lines();
    while let Some(line) = lines.next_line().await? {
        if !each(serde_json::from_str(&line).context("reading a flow record")?) {
            break;
        }
    }
    Ok(())
}
