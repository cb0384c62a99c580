//! The agent's local API, on a unix socket: `policy-agent status` and `flows` talk to it.
//!
//! A client sends one JSON line, `{"request":"status"}` or `{"request":"flows"}`; the agent
//! answers with one JSON status object, or with a stream of JSON flow records, one per line,
//! until the client goes.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{broadcast, watch},
};

use super::{flows::FlowRecord, status::Status};

/// Where the socket of an instance lives.
pub fn default_socket(instance: &str) -> PathBuf {
    Path::new("/run/policy-agent").join(format!("{instance}.sock"))
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "request")]
enum Request {
    Status,
    Flows,
}

/// Serves the API at `path` until the task is dropped.
pub async fn serve(
    path: PathBuf,
    status: watch::Receiver<Status>,
    flows: broadcast::Sender<FlowRecord>,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket file left by an agent that stopped.
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
    loop {
        let (conn, _) = listener.accept().await?;
        let status = status.clone();
        let flows = flows.subscribe();
        tokio::spawn(async move {
            if let Err(e) = answer(conn, status, flows).await {
                tracing::debug!(error = %e, "API client went away");
            }
        });
    }
}

async fn answer(
    conn: UnixStream,
    status: watch::Receiver<Status>,
    mut flows: broadcast::Receiver<FlowRecord>,
) -> anyhow::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    match serde_json::from_str::<Request>(&line).context("bad request")? {
        Request::Status => {
            let body = serde_json::to_string(&*status.borrow())?;
            write.write_all(format!("{body}\n").as_bytes()).await?;
        }
        Request::Flows => loop {
            let record = match flows.recv().await {
                Ok(r) => r,
                // A slow client misses records rather than slowing the agent.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
            let body = serde_json::to_string(&record)?;
            write.write_all(format!("{body}\n").as_bytes()).await?;
        },
    }
    Ok(())
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
