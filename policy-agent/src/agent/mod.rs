//! The node agent: follows a source (the Kubernetes API or a manifest directory), keeps
//! the datapath's maps in sync with it, attaches the programs to local pods' interfaces as
//! they appear, and tells operators what it does (flow records, status, metrics).
//!
//! One task owns the datapath ([`run`]: the loop). Source events update the cluster model
//! ([`source_state`]); after a short settling time (so that a burst of events becomes one
//! sync) the cluster is compiled on a blocking thread while the task keeps answering, and
//! then only the map entries that changed are written ([`reconcile`]: the step, testable
//! on a datapath in memory). A restarted agent adopts what the
//! previous one left pinned: maps, links, endpoint ids and identities, so enforcement has
//! no gap and tracked connections survive.
//!
//! The CNI plugin hands new pods over through the local API ([`api`], [`endpoints`]): such
//! a pod is synced at once, and the plugin is answered only once its programs are attached
//! and its policy is written, before any of its containers starts.

pub mod api;
mod commands;
pub mod endpoints;
pub mod flows;
pub mod interfaces;
pub mod metrics;
pub mod node;
pub mod pods;
mod publish;
pub mod reconcile;
#[cfg(test)]
mod reconcile_tests;
pub mod retry;
mod run;
pub mod source_state;
pub mod status;

use std::{
    collections::{BTreeSet, VecDeque},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use self::{
    api::{EndpointDelete, EndpointReply, EndpointRequest},
    endpoints::CniEndpoints,
    flows::{FlowForwarder, Flows},
    interfaces::Interfaces,
    metrics::Metrics,
    reconcile::Reconciler,
    source_state::SourceState,
    status::Status,
};
use crate::{
    capacity::MapSizes,
    datapath::{BpfDatapath, Datapath},
    model::{ObjectRef, Pod},
    netns::NetNs,
    source::Source,
};

/// How long a change waits for others before it is applied (a burst becomes one sync).
pub const SETTLE: Duration = Duration::from_millis(20);
/// How long changes may keep postponing a sync under a continuous burst.
pub const MAX_SETTLE: Duration = Duration::from_millis(200);
/// How often interfaces not found yet are looked for again.
pub const INTERFACE_RETRY: Duration = Duration::from_millis(500);
/// How often the interfaces pods hold are checked to still be there (a sandbox made again,
/// after a crash or a restart of the runtime, gives the pod a new interface, and a pod the
/// CNI plugin did not announce would keep pointing at the old one, the new one
/// unenforced), and the node's tunnel ports read again.
pub const INTERFACE_CHECK: Duration = Duration::from_secs(2);
/// Pods whose interfaces are looked for in one go; more wait for the next round, after
/// the requests that came meanwhile (each lookup is a few netlink round trips).
pub const LOOKUPS_PER_ROUND: usize = 32;
/// Pods found by a sync that are attached in one turn of the loop besides the sandboxes
/// waiting for theirs; the rest follow, a turn each, with requests answered between (an
/// attach waits for the kernel: 10 ms or more).
pub const ATTACHES_PER_ROUND: usize = 1;
/// How often counters and fill levels are refreshed for metrics and status.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(2);
/// How often the maps are compared with what the agent last wrote, by default.
pub const FULL_RESYNC: Duration = Duration::from_secs(300);
/// A period that never comes in practice (tokio's own "far future" is 30 years).
const NEVER: Duration = Duration::from_secs(30 * 365 * 86_400);
/// Errors kept for `status`.
const RECENT_ERRORS: usize = 20;
/// Batches of flow records buffered for slow API clients (each up to
/// [`flows::BATCH_RECORDS`] records).
const FLOW_BUFFER: usize = 256;

/// How an agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This node's name: pods with this `spec.nodeName` are its endpoints.
    pub node_name: String,
    /// Pin directory name under `/sys/fs/bpf/policy-agent/`.
    pub instance: String,
    /// Network namespace holding the pods' host-side interfaces (`None`: the agent's own,
    /// as in a DaemonSet with the host network).
    pub netns: Option<String>,
    /// Only interfaces whose names start with this are pods' (e.g. `cali`, `lxc`).
    pub interface_prefix: Option<String>,
    /// Addresses of the node beyond those of its interfaces.
    pub extra_node_addresses: Vec<IpAddr>,
    /// Local API socket (`None`: no socket).
    pub socket: Option<PathBuf>,
    /// Metrics and health address (`None`: no HTTP server).
    pub metrics_address: Option<SocketAddr>,
    /// Describes the source, for `status`.
    pub source: String,
    /// The node's CNI configuration directory, to report how the CNI plugin is installed.
    pub cni_conf_dir: Option<PathBuf>,
    /// How often the maps are read back and corrected where they differ from what the
    /// agent wrote (another process, a bug, a lost write); zero never.
    pub full_resync: Duration,
    /// How many entries each map holds (`--map-size`).
    pub map_sizes: MapSizes,
}

/// A request of the CNI plugin, for the agent task (see [`api`]).
#[derive(Debug)]
pub enum Command {
    /// Enforce a new sandbox's pod; `pod` is the API server's, when the agent lacked it.
    Add {
        /// What the plugin reported.
        request: EndpointRequest,
        /// The pod as the API server returned it.
        pod: Option<Box<Pod>>,
        /// Answered once the pod is enforced, or cannot be.
        reply: oneshot::Sender<EndpointReply>,
    },
    /// Whether a sandbox's pod is enforced.
    Check {
        /// What the plugin reported.
        request: EndpointRequest,
        /// The answer.
        reply: oneshot::Sender<EndpointReply>,
    },
    /// A sandbox is gone.
    Delete {
        /// Which.
        request: EndpointDelete,
        /// The answer.
        reply: oneshot::Sender<EndpointReply>,
    },
}

/// Endpoint requests waiting for the agent task.
const COMMAND_QUEUE: usize = 64;

/// A running agent.
pub struct AgentHandle {
    /// The latest status.
    pub status: watch::Receiver<Status>,
    /// Flow records as they are decided.
    pub flows: Flows,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// The API and metrics servers, stopped with the agent.
    servers: Vec<JoinHandle<()>>,
    socket: Option<PathBuf>,
}

impl AgentHandle {
    /// Stops the agent. Programs stay attached and maps pinned: enforcement continues, and
    /// the next agent takes over from there.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.context("agent task")?,
            None => Ok(()),
        }
    }

    /// Waits until the agent enforces a complete state, or `timeout` passes.
    pub async fn ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(timeout, self.status.wait_for(|s| s.ready))
            .await
            .context("the agent did not become ready in time")?
            .context("the agent stopped")?;
        Ok(())
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
        if let Some(socket) = &self.socket {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// Starts an agent fed by `source` (see [`crate::source`]).
pub fn spawn(config: AgentConfig, source: impl Into<Source>) -> anyhow::Result<AgentHandle> {
    let source = source.into();
    // First, so that a busy port stops the agent before it loads or pins anything.
    let metrics_listener = config.metrics_address.map(metrics::bind).transpose()?;
    let netns = config.netns.as_deref().map(NetNs::open).transpose()?;
    let datapath = BpfDatapath::load_with(&config.instance, config.map_sizes)
        .context("loading the datapath")?;
    let interfaces = Interfaces::open(netns.as_ref(), config.interface_prefix.clone())?;
    let metrics = Metrics::new();
    let (status_tx, status) = watch::channel(Status {
        node: config.node_name.clone(),
        pin_dir: datapath.pin_dir().display().to_string(),
        source: config.source.clone(),
        ..Status::default()
    });
    let flows = Flows::new(FLOW_BUFFER, Arc::clone(&metrics.flows));
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let mut servers = Vec::new();
    if let Some(path) = &config.socket {
        let backend = api::Backend {
            status: status.clone(),
            flows: flows.clone(),
            commands,
            pods: source.pods,
        };
        let path = path.clone();
        servers.push(tokio::spawn(async move {
            if let Err(e) = api::serve(path, backend).await {
                tracing::error!(error = %format!("{e:#}"), "local API stopped");
            }
        }));
    }
    if let Some(listener) = metrics_listener {
        let metrics = Arc::clone(&metrics);
        servers.push(tokio::spawn(async move {
            if let Err(e) = metrics::serve(listener, metrics).await {
                tracing::error!(error = %format!("{e:#}"), "metrics server stopped");
            }
        }));
    }
    let mut cni = config
        .socket
        .as_deref()
        .map_or_else(CniEndpoints::default, |socket| {
            CniEndpoints::saved_in(endpoints::sandboxes_file(socket))
        });
    let node_warnings = node::check(netns.as_ref());
    for w in &node_warnings {
        tracing::warn!(warning = %w);
    }
    let mut errors = VecDeque::new();
    if !datapath.replaced_maps().is_empty() {
        let why: Vec<String> = datapath
            .replaced_maps()
            .iter()
            .map(ToString::to_string)
            .collect();
        errors.push_back(format!(
            "the pinned maps did not fit this agent ({}): all were replaced, tracked \
             connections restarted",
            why.join("; ")
        ));
    }
    if let Err(e) = cni.load(|name| interfaces.by_name(name).is_some()) {
        // Those pods are enforced again once the API server has their addresses.
        tracing::warn!(error = %e, "sandboxes of the previous agent not restored");
        errors.push_back(format!("sandboxes of the previous agent not restored: {e}"));
    }
    let socket = config.socket.clone();
    let agent = Agent {
        config,
        netns,
        interfaces: Arc::new(interfaces),
        reconciler: Reconciler::new(datapath, Arc::clone(&metrics)),
        source: SourceState::default(),
        cni,
        waiting: Vec::new(),
        in_sync: Vec::new(),
        events_synced: 0,
        events_attaching: None,
        pending_since: None,
        last_change: Instant::now(),
        lookup_cursor: None,
        // The first pass starts once the source has listed everything.
        lookups_left: true,
        lookup_pass_done: false,
        looking_up: false,
        checking_interfaces: false,
        tunnel_ports: BTreeSet::new(),
        publish_due: false,
        sync_started: None,
        warnings: Vec::new(),
        node_warnings,
        lint_due: false,
        linting: false,
        errors,
        status: status_tx,
        flows: FlowForwarder::new(flows.clone()),
        metrics: Arc::clone(&metrics),
    };
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(agent.run(source.events, command_rx, stopped));
    Ok(AgentHandle {
        status,
        flows,
        metrics,
        stop: Some(stop),
        task: Some(task),
        servers,
        socket,
    })
}

/// CNI requests waiting for a sync, with where to answer.
type Waiting = Vec<(ObjectRef, oneshot::Sender<EndpointReply>)>;

/// The agent's task: its state and what it talks to (the loop is in [`run`], the CNI
/// requests in [`commands`], what it tells people in [`publish`]).
struct Agent<D> {
    config: AgentConfig,
    netns: Option<NetNs>,
    /// Shared with the task of a lookup round.
    interfaces: Arc<Interfaces>,
    /// The pods' states, the datapath and what was last compiled and written.
    reconciler: Reconciler<D>,
    /// The cluster as the source described it.
    source: SourceState,
    /// Sandboxes the CNI plugin reported.
    cni: CniEndpoints,
    /// CNI requests answered after the next sync to start.
    waiting: Waiting,
    /// CNI requests answered when the running sync ends.
    in_sync: Waiting,
    /// Events the last successful sync enforced (all those taken when it began).
    events_synced: u64,
    /// Events a successful sync wrote whose found pods are still being attached (in force,
    /// and so `events_synced`, once they all are).
    events_attaching: Option<u64>,
    /// When the oldest change not yet synced arrived.
    pending_since: Option<Instant>,
    /// When the latest change arrived.
    last_change: Instant,
    /// The last pod looked up in a pass over the pods waiting for interfaces that is not
    /// complete.
    lookup_cursor: Option<ObjectRef>,
    /// Whether the pass has pods left.
    lookups_left: bool,
    /// Whether a pass over every local pod has ended (the first sync waits for one).
    lookup_pass_done: bool,
    /// Whether a round of lookups runs.
    looking_up: bool,
    /// Whether a check of the interfaces pods hold runs (see [`INTERFACE_CHECK`]).
    checking_interfaces: bool,
    /// The node's tunnel ports the datapath was last told (read with that check).
    tunnel_ports: BTreeSet<u16>,
    /// Whether status and metrics changed since they were last published (published at
    /// the end of the loop's turn: one turn, one snapshot).
    publish_due: bool,
    /// The running sync: when the oldest change it enforces arrived, and the events taken
    /// when it began.
    sync_started: Option<(Instant, u64)>,
    /// Lint warnings about the policies, as of the last lint.
    warnings: Vec<String>,
    /// Settings of the node the datapath relies on that are not as it needs them.
    node_warnings: Vec<String>,
    /// Whether a sync happened since the last lint.
    lint_due: bool,
    /// Whether a lint runs.
    linting: bool,
    errors: VecDeque<String>,
    status: watch::Sender<Status>,
    flows: FlowForwarder,
    metrics: Arc<Metrics>,
}

impl<D: Datapath> Agent<D> {
    fn error(&mut self, e: String) {
        tracing::warn!(error = %e);
        if self.errors.len() == RECENT_ERRORS {
            self.errors.pop_front();
        }
        self.errors.push_back(e);
        self.publish_due = true;
    }

    /// Reports the errors the reconciler met.
    fn reconciler_errors(&mut self) {
        for e in self.reconciler.take_errors() {
            self.error(e);
        }
    }
}
