//! The node agent: follows a source (the Kubernetes API or a manifest directory), keeps
//! the datapath's maps in sync with it, attaches the programs to local pods' interfaces as
//! they appear, and tells operators what it does (flow records, status, metrics).
//!
//! One task owns the datapath. Source events update the cluster model; after a short
//! settling time (so that a burst of events becomes one sync) the cluster is compiled and
//! only the map entries that changed are written. A restarted agent adopts what the
//! previous one left pinned: maps, links, endpoint ids and identities, so enforcement has
//! no gap and tracked connections survive.
//!
//! The CNI plugin hands new pods over through the local API ([`api`], [`endpoints`]): such
//! a pod is synced at once, and the plugin is answered only once its programs are attached
//! and its policy is written, before any of its containers starts.

pub mod api;
pub mod endpoints;
pub mod flows;
pub mod interfaces;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod retry;
pub mod status;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use policy_common::{
    maps::{Direction, EndpointInfo},
    reason::reason_name,
};
use tokio::{
    io::unix::AsyncFd,
    sync::{broadcast, mpsc, oneshot, watch},
    task::JoinHandle,
    time::{MissedTickBehavior, interval, sleep_until},
};

use self::{
    api::{EndpointDelete, EndpointReply, EndpointRequest},
    endpoints::{CniEndpoints, same_pod},
    flows::{FlowRecord, Names},
    interfaces::{Interfaces, Lookup, Refusal},
    metrics::{Metrics, Snapshot},
    pods::{PodState, PodStates},
    retry::SyncRetry,
    status::{EndpointStatus, MapStatus, Status, SyncStatus},
};
use crate::{
    capacity::MapSizes,
    cni::install,
    compiler::{Compiled, Compiler, NodeConfig},
    datapath::Datapath,
    model::{Cluster, ObjectRef, Pod},
    netns::NetNs,
    semantics::{ParsedPolicy, lint},
    source::{Kind, Rejection, Source, SourceEvent},
};

/// How long a change waits for others before it is applied (a burst becomes one sync).
pub const SETTLE: Duration = Duration::from_millis(20);
/// How long changes may keep postponing a sync under a continuous burst.
pub const MAX_SETTLE: Duration = Duration::from_millis(200);
/// How often interfaces not found yet are looked for again.
pub const INTERFACE_RETRY: Duration = Duration::from_millis(500);
/// How often counters and fill levels are refreshed for metrics and status.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(2);
/// How often the maps are compared with what the agent last wrote, by default.
pub const FULL_RESYNC: Duration = Duration::from_secs(300);
/// A period that never comes in practice (tokio's own "far future" is 30 years).
const NEVER: Duration = Duration::from_secs(30 * 365 * 86_400);
/// Errors kept for `status`.
const RECENT_ERRORS: usize = 20;
/// Flow records buffered for slow API clients.
const FLOW_BUFFER: usize = 4096;

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
    pub flows: broadcast::Sender<FlowRecord>,
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
    let datapath =
        Datapath::load_with(&config.instance, config.map_sizes).context("loading the datapath")?;
    let interfaces = Interfaces::open(netns.as_ref(), config.interface_prefix.clone())?;
    let metrics = Metrics::new();
    let (status_tx, status) = watch::channel(Status {
        node: config.node_name.clone(),
        pin_dir: datapath.pin_dir().display().to_string(),
        source: config.source.clone(),
        ..Status::default()
    });
    let (flows, _) = broadcast::channel(FLOW_BUFFER);
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
        datapath,
        interfaces,
        compiler: Compiler::new(),
        cluster: Cluster::default(),
        cni,
        waiting: Vec::new(),
        syncs: 0,
        events: 0,
        events_synced: 0,
        listed: BTreeSet::new(),
        adopted: false,
        pending_since: None,
        last_change: Instant::now(),
        pods: PodStates::default(),
        compiled: Compiled::default(),
        names: Names::default(),
        load_errors: Vec::new(),
        rejections: BTreeMap::new(),
        warnings: Vec::new(),
        node_warnings,
        lint_due: false,
        errors,
        last_sync: None,
        retry: None,
        full_resync_due: false,
        status: status_tx,
        flows: flows.clone(),
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

struct Agent {
    config: AgentConfig,
    netns: Option<NetNs>,
    datapath: Datapath,
    interfaces: Interfaces,
    compiler: Compiler,
    cluster: Cluster,
    /// Sandboxes the CNI plugin reported.
    cni: CniEndpoints,
    /// CNI requests answered after the next sync.
    waiting: Vec<(ObjectRef, oneshot::Sender<EndpointReply>)>,
    /// Successful syncs so far.
    syncs: u64,
    /// Events taken from the source so far.
    events: u64,
    /// Events the last successful sync enforced (all those taken when it began).
    events_synced: u64,
    /// Kinds whose complete set the source has delivered at least once.
    listed: BTreeSet<Kind>,
    /// Whether the state left by an earlier agent has been adopted.
    adopted: bool,
    /// When the oldest change not yet synced arrived.
    pending_since: Option<Instant>,
    /// When the latest change arrived.
    last_change: Instant,
    /// Where each local pod stands: waiting for its interface, refused, found, attached.
    pods: PodStates,
    compiled: Compiled,
    names: Names,
    /// Objects the source could not read (directory sources).
    load_errors: Vec<String>,
    /// Objects whose latest version the source rejected (Kubernetes source).
    rejections: BTreeMap<(Kind, ObjectRef), Rejection>,
    /// Lint warnings about the policies, as of the last lint.
    warnings: Vec<String>,
    /// Settings of the node the datapath relies on that are not as it needs them.
    node_warnings: Vec<String>,
    /// Whether a sync happened since the last lint.
    lint_due: bool,
    errors: VecDeque<String>,
    last_sync: Option<SyncStatus>,
    /// Failures of the sync in a row, and when to try again.
    retry: Option<SyncRetry>,
    /// Whether the next sync compares with what the maps hold rather than with what the
    /// agent last wrote.
    full_resync_due: bool,
    status: watch::Sender<Status>,
    flows: broadcast::Sender<FlowRecord>,
    metrics: Arc<Metrics>,
}

impl Agent {
    async fn run(
        mut self,
        mut source: mpsc::Receiver<SourceEvent>,
        mut commands: mpsc::Receiver<Command>,
        mut stop: oneshot::Receiver<()>,
    ) -> anyhow::Result<()> {
        let events: OwnedFd = self.datapath.events_fd().try_clone_to_owned()?;
        // SAFETY: the descriptor is owned by the AsyncFd for its whole life.
        let events = unsafe { AsyncFd::register(events) }?;
        let mut interface_retry = interval(INTERFACE_RETRY);
        let mut snapshot = interval(SNAPSHOT_INTERVAL);
        let resync_every = self.config.full_resync;
        // Never, when off: a period far beyond any agent's life.
        let mut full_resync = interval(if resync_every.is_zero() {
            NEVER
        } else {
            resync_every
        });
        // The first tick of an interval is at once; the first sync reads the maps anyway.
        full_resync.reset();
        for t in [&mut interface_retry, &mut snapshot, &mut full_resync] {
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        let mut source_open = true;
        loop {
            let due = self.sync_due();
            tokio::select! {
                _ = &mut stop => break,
                event = source.recv(), if source_open => match event {
                    Some(event) => self.apply(event),
                    None => {
                        source_open = false;
                        self.error("the source stopped; enforcing the last state".into());
                    }
                },
                Some(command) = commands.recv() => self.command(command).await,
                _ = sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    self.reconcile().await;
                }
                _ = interface_retry.tick(), if self.waiting_for_interfaces() => {
                    if self.find_interfaces().await {
                        self.pending_since.get_or_insert_with(Instant::now);
                    }
                }
                guard = events.readable() => {
                    let mut guard = guard?;
                    self.forward_flows();
                    guard.clear_ready();
                }
                _ = snapshot.tick() => {
                    self.prepare_tables();
                    self.lint();
                    self.publish();
                }
                _ = full_resync.tick(), if !resync_every.is_zero() => {
                    self.full_resync_due = true;
                    self.pending_since.get_or_insert_with(Instant::now);
                }
            }
        }
        tracing::info!("agent stopping; programs stay attached and maps pinned");
        Ok(())
    }

    /// When the pending changes should be synced, if any and the state is complete. A
    /// sandbox waiting for its pod's enforcement is synced at once.
    fn sync_due(&self) -> Option<tokio::time::Instant> {
        let since = self.pending_since?;
        if !self.complete() {
            return None;
        }
        // A sandbox waiting for its pod is worth an attempt even while syncs fail (the
        // kubelet paces its ADDs); nothing else retries before the backoff says so.
        if !self.waiting.is_empty() {
            return Some(tokio::time::Instant::now());
        }
        let quiet = tokio::time::Instant::from_std(self.last_change) + SETTLE;
        let latest = tokio::time::Instant::from_std(since) + MAX_SETTLE;
        let due = quiet.min(latest);
        Some(match &self.retry {
            Some(retry) => due.max(retry.next()),
            None => due,
        })
    }

    /// Whether the source has delivered everything once: syncing a half-listed cluster
    /// would briefly enforce the wrong thing.
    fn complete(&self) -> bool {
        Kind::ALL.iter().all(|k| self.listed.contains(k))
    }

    fn waiting_for_interfaces(&self) -> bool {
        self.complete()
            && self
                .local_pods()
                .any(|p| self.pods.interface(&p.id).is_none())
    }

    fn local_pods(&self) -> impl Iterator<Item = &Pod> {
        self.cluster
            .pods_on(&self.config.node_name)
            .filter(|p| !p.host_network && !p.ips.is_empty())
    }

    fn apply(&mut self, event: SourceEvent) {
        let now = Instant::now();
        self.events += 1;
        match event {
            SourceEvent::Snapshot { cluster, errors } => {
                self.cluster = *cluster;
                self.rejections.clear();
                self.load_errors = errors;
                self.listed.extend(Kind::ALL);
            }
            SourceEvent::Relisted(kind, objects) => {
                if !self.listed.insert(kind) {
                    self.metrics.watch_restarted(kind.as_str());
                    tracing::info!(resource = kind.as_str(), "watch listed again");
                }
                self.rejections.retain(|(k, _), _| *k != kind);
                self.cluster.replace(kind, objects);
            }
            SourceEvent::Applied(object) => {
                let (kind, id) = object.key();
                self.rejections.remove(&(kind, id.clone()));
                let before = (
                    self.cluster.object(kind, &id),
                    self.cluster.namespaces.len(),
                );
                self.cluster.apply(object);
                self.overlay_sandboxes();
                // A status update that changed nothing policy sees (the converted object
                // is what policy sees) costs no sync.
                let after = (
                    self.cluster.object(kind, &id),
                    self.cluster.namespaces.len(),
                );
                if after == before {
                    if self.pending_since.is_none() {
                        self.events_synced = self.events;
                    }
                    return;
                }
                self.changed(now);
                return;
            }
            SourceEvent::Rejected(rejection) => {
                // Nothing changes in the cluster: what was in force stays.
                tracing::warn!(rejected = %rejection);
                self.rejections
                    .insert((rejection.kind, rejection.id.clone()), rejection);
                self.publish();
                return;
            }
            SourceEvent::Deleted(kind, id) => {
                self.rejections.remove(&(kind, id.clone()));
                if kind == Kind::Pod {
                    self.cni.forget(&id);
                }
                self.cluster.remove(kind, &id);
            }
            SourceEvent::Error(e) => {
                self.metrics.source_errors.inc();
                self.error(e);
                return;
            }
        }
        self.overlay_sandboxes();
        self.changed(now);
    }

    fn changed(&mut self, now: Instant) {
        self.pending_since.get_or_insert(now);
        self.last_change = now;
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Add {
                request,
                pod,
                reply,
            } => self.add_endpoint(request, pod.map(|p| *p), reply).await,
            Command::Check { request, reply } => {
                let _ = reply.send(self.check_endpoint(&request));
            }
            Command::Delete { request, reply } => {
                self.delete_endpoint(&request);
                let _ = reply.send(EndpointReply::Deleted);
            }
        }
    }

    /// Takes a new sandbox's pod in: its addresses and interface come from the plugin,
    /// the rest from the source (or `fetched` from the API server). Answered after the sync.
    #[tracing::instrument(skip_all, fields(pod = %request.pod(), container = %request.container_id))]
    async fn add_endpoint(
        &mut self,
        request: EndpointRequest,
        fetched: Option<Pod>,
        reply: oneshot::Sender<EndpointReply>,
    ) {
        let id = request.pod();
        let known = self
            .cluster
            .pods
            .get(&id)
            .filter(|p| same_pod(p.uid.as_deref(), request.uid.as_deref()))
            .cloned();
        let Some(pod) = known.or(fetched) else {
            let _ = reply.send(EndpointReply::UnknownPod {
                message: format!(
                    "pod {id} is not known to the agent ({})",
                    self.config.source
                ),
            });
            return;
        };
        let replaced = self
            .cni
            .get(&id)
            .is_some_and(|old| old.container_id != request.container_id);
        // The pod's own among the interfaces the CNI result names; with none named, the
        // sync finds it by the route.
        let candidates = candidates(&request);
        let lookup = if candidates.is_empty() {
            None
        } else {
            Some(self.interfaces.named(&candidates).await)
        };
        if let Some(Lookup::Missing(why)) = &lookup {
            let _ = reply.send(EndpointReply::Failed {
                message: format!("pod {id}: {why}"),
            });
            return;
        }
        let interface = match &lookup {
            Some(Lookup::Found(iface)) => Some(iface),
            _ => None,
        };
        // A new sandbox of the pod: the old interface loses the programs first.
        if replaced || lookup.is_some() && self.pods.interface(&id) != interface {
            self.forget_interface(&id);
        }
        let mut request = request;
        request.interface = lookup.as_ref().and_then(recorded_interface);
        tracing::info!("sandbox added by the CNI plugin");
        self.cni.insert(&request, pod);
        self.overlay_sandboxes();
        self.changed(Instant::now());
        if let Some(lookup) = lookup {
            // Its endpoint entry is written before the programs are attached.
            self.settle(vec![(id.clone(), lookup)]);
        }
        match self.pods.refusal(&id) {
            Some(refusal) => {
                let _ = reply.send(EndpointReply::Refused {
                    message: format!("pod {id}: {refusal}"),
                });
            }
            None => self.waiting.push((id, reply)),
        }
    }

    /// Lays the sandboxes over the cluster and saves them if that or a request changed
    /// them (before any ADD is answered).
    fn overlay_sandboxes(&mut self) {
        let pods_listed = self.listed.contains(&Kind::Pod);
        self.cni
            .overlay(&mut self.cluster, &self.config.node_name, pods_listed);
        self.save_sandboxes();
    }

    fn save_sandboxes(&mut self) {
        if let Err(e) = self.cni.save() {
            self.error(format!("saving the CNI sandboxes: {e}"));
        }
    }

    fn check_endpoint(&self, request: &EndpointRequest) -> EndpointReply {
        let id = request.pod();
        let sandbox = self
            .cni
            .get(&id)
            .is_some_and(|e| e.container_id == request.container_id);
        if let Some(refusal) = self.pods.refusal(&id) {
            return EndpointReply::Refused {
                message: format!("pod {id}: {refusal}"),
            };
        }
        let iface = self.pods.interface(&id);
        let attached = self.pods.is_attached(&id);
        let candidates = candidates(request);
        let interface_matches =
            iface.is_some_and(|i| candidates.is_empty() || candidates.contains(&i.name));
        if !sandbox || !interface_matches || !attached {
            return EndpointReply::Failed {
                message: format!(
                    "pod {id} (container {}) is not enforced: sandbox {}, interface {}, programs {}",
                    request.container_id,
                    if sandbox { "known" } else { "unknown" },
                    iface.map_or("not found", |i| i.name.as_str()),
                    if attached { "attached" } else { "not attached" },
                ),
            };
        }
        self.enforced(&id)
    }

    fn delete_endpoint(&mut self, request: &EndpointDelete) {
        let Some(id) = self.cni.remove(&request.container_id, request.pod.as_ref()) else {
            return;
        };
        tracing::info!(pod = %id, container = %request.container_id, "sandbox deleted");
        self.save_sandboxes();
        // The sandbox's addresses are gone with it, whatever the source still says.
        if let Some(pod) = self.cluster.pods.get_mut(&id) {
            pod.ips.clear();
        }
        self.forget_interface(&id);
        self.pods.remove(&id);
        self.changed(Instant::now());
    }

    fn forget_interface(&mut self, pod: &ObjectRef) {
        self.datapath.detach(pod);
        self.pods.forget_interface(pod);
    }

    /// The answer for an enforced pod.
    fn enforced(&self, pod: &ObjectRef) -> EndpointReply {
        let info = self.compiled.endpoints.get(pod);
        EndpointReply::Enforced {
            interface: self
                .pods
                .interface(pod)
                .map(|i| i.name.clone())
                .unwrap_or_default(),
            ingress_isolated: info.is_some_and(|i| i.is_isolated(Direction::Ingress)),
            egress_isolated: info.is_some_and(|i| i.is_isolated(Direction::Egress)),
        }
    }

    /// Answers the CNI requests waiting for this sync (`error`: it failed; none are left
    /// waiting after a successful one).
    fn answer_waiting(&mut self, error: Option<&str>) {
        for (pod, reply) in std::mem::take(&mut self.waiting) {
            let answer = match error {
                Some(e) => EndpointReply::Failed {
                    message: format!("the agent could not sync: {e}"),
                },
                None if self.datapath.left_out().contains(&pod) => EndpointReply::Failed {
                    message: format!(
                        "pod {pod}: ENDPOINTS is full ({} pods): its traffic is dropped; \
                         raise --map-size endpoints",
                        self.datapath
                            .capacity(policy_common::maps::names::ENDPOINTS)
                    ),
                },
                None if self.pods.is_attached(&pod) => self.enforced(&pod),
                None => match self.pods.get(&pod) {
                    Some(PodState::Refused(refusal, _)) => EndpointReply::Refused {
                        message: format!("pod {pod}: {refusal}"),
                    },
                    Some(PodState::Waiting(why)) => EndpointReply::Failed {
                        message: format!("no programs attached for pod {pod}: {why}"),
                    },
                    Some(PodState::Found(_) | PodState::Attached(_)) | None => {
                        EndpointReply::Failed {
                            message: format!(
                                "no programs attached for pod {pod}: {}",
                                self.errors
                                    .back()
                                    .map_or("its interface was not found", String::as_str)
                            ),
                        }
                    }
                },
            };
            let _ = reply.send(answer);
        }
    }

    fn error(&mut self, e: String) {
        tracing::warn!(error = %e);
        if self.errors.len() == RECENT_ERRORS {
            self.errors.pop_front();
        }
        self.errors.push_back(e);
        self.publish();
    }

    /// Looks for the interfaces of local pods that have none yet: the one their sandbox
    /// recorded, checked again, or else by the route. True if it found one.
    async fn find_interfaces(&mut self) -> bool {
        let local: BTreeSet<ObjectRef> = self.local_pods().map(|p| p.id.clone()).collect();
        self.pods.retain_local(&local);
        let missing: Vec<(ObjectRef, Vec<IpAddr>, Option<String>)> = self
            .local_pods()
            .filter(|p| self.pods.interface(&p.id).is_none())
            .map(|p| {
                let recorded = self.cni.get(&p.id).and_then(|e| e.interface.clone());
                (p.id.clone(), p.ips.clone(), recorded)
            })
            .collect();
        let mut lookups = Vec::new();
        for (pod, ips, recorded) in missing {
            let lookup = match recorded {
                Some(name) => self.interfaces.named(&[name]).await,
                None => self.interfaces.of(&ips).await,
            };
            lookups.push((pod, lookup));
        }
        self.settle(lookups)
    }

    /// Takes in what looking for pods' interfaces found (see [`PodStates::settle`]) and
    /// tells the datapath. True if a pod got an interface.
    fn settle(&mut self, lookups: Vec<(ObjectRef, Lookup)>) -> bool {
        for (pod, lookup) in &lookups {
            if let Lookup::Missing(reason) = lookup {
                tracing::debug!(%pod, %reason, "pod's interface not found yet");
            }
        }
        let settled = self.pods.settle(lookups);
        for pod in &settled.lost {
            self.datapath.detach(pod);
        }
        for (pod, ifindex) in &settled.found {
            tracing::info!(%pod, ifindex, "found the pod's interface");
            self.datapath.adopt_interface(pod, *ifindex);
        }
        for (pod, refusal) in settled.refused {
            self.refused(&pod, &refusal);
        }
        !settled.found.is_empty()
    }

    /// Counts, logs and keeps among the recent errors a new refusal (they outlive the
    /// pod's sandbox, when the refusal failed its ADD).
    fn refused(&mut self, pod: &ObjectRef, refusal: &Refusal) {
        self.metrics.interface_refused(refusal.kind());
        self.error(format!("pod {pod} not enforced: {refusal}"));
    }

    /// Takes over the ids an earlier agent left in the pinned maps.
    fn adopt(&mut self) -> anyhow::Result<()> {
        let live = self.datapath.live()?;
        let endpoints: BTreeMap<ObjectRef, EndpointInfo> = self
            .pods
            .with_interfaces()
            .filter_map(|(pod, iface)| Some((pod.clone(), *live.endpoints.get(&iface.index)?)))
            .collect();
        let rulesets = live
            .endpoints
            .values()
            .flat_map(|e| [e.ingress_ruleset, e.egress_ruleset])
            .chain(live.policy.keys().map(|k| k.data.ruleset));
        self.compiler
            .adopt(&self.cluster, &endpoints, &live.ipcache, rulesets);
        if !endpoints.is_empty() {
            tracing::info!(
                endpoints = endpoints.len(),
                "adopted the state of a previous agent"
            );
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(node = %self.config.node_name))]
    async fn reconcile(&mut self) {
        let since = self.pending_since.take().unwrap_or_else(Instant::now);
        match self.try_reconcile(since).await {
            Ok(()) => {
                if let Some(retry) = self.retry.take() {
                    tracing::info!(failures = retry.failures(), "sync succeeded again");
                }
                self.answer_waiting(None);
            }
            Err(e) => {
                // Try again later, ever less often; until then the last state stays
                // enforced, and `/readyz` says the maps may lag the cluster.
                self.metrics.set_ready(false);
                self.metrics.sync_failures.inc();
                self.pending_since = Some(since);
                let e = format!("sync failed: {e:#}");
                let now = tokio::time::Instant::now();
                match &mut self.retry {
                    Some(retry) => retry.failed_again(now, e.clone()),
                    None => self.retry = Some(SyncRetry::after_first_failure(now, e.clone())),
                }
                self.answer_waiting(Some(&e));
                self.error(e);
            }
        }
    }

    async fn try_reconcile(&mut self, since: Instant) -> anyhow::Result<()> {
        let events = self.events;
        // Pods that went away, moved, or changed address lose their attachment first.
        let local: BTreeMap<ObjectRef, &Pod> =
            self.local_pods().map(|p| (p.id.clone(), p)).collect();
        let gone: Vec<ObjectRef> = self
            .pods
            .with_interfaces()
            .map(|(id, _)| id)
            .filter(|id| !local.contains_key(*id))
            .cloned()
            .collect();
        for pod in gone {
            tracing::info!(%pod, "pod gone: detaching");
            self.forget_interface(&pod);
        }

        self.find_interfaces().await;
        if !self.adopted {
            self.adopt()?;
        }
        if std::mem::take(&mut self.full_resync_due) {
            self.resync_with_maps();
        }

        let mut addresses = self.interfaces.addresses().await?;
        addresses.extend(&self.config.extra_node_addresses);
        let node = NodeConfig {
            name: self.config.node_name.clone(),
            addresses,
            sandboxes: self.cni.pods(),
            map_sizes: self.config.map_sizes,
        };
        let compiled = self.compiler.compile(&self.cluster, &node);
        for c in compiled
            .conflicts
            .iter()
            .filter(|c| !self.compiled.conflicts.contains(c))
        {
            tracing::warn!(conflict = %c);
        }
        let report = self.datapath.sync(&compiled)?;

        // Endpoint entries first, then the programs: an attached interface never lacks one.
        for (pod, ifname) in self.pods.to_attach() {
            match self.datapath.attach(&pod, self.netns.as_ref(), &ifname) {
                Ok(_) => {
                    tracing::info!(%pod, interface = %ifname, "attached");
                    self.pods.set_attached(&pod);
                }
                Err(e) => {
                    // Looked up again next time (the interface may have gone meanwhile).
                    self.pods.forget_interface(&pod);
                    let e = format!("attaching to {ifname} for {pod}: {e}");
                    self.pods
                        .set_not_attached(&pod, PodState::Waiting(e.clone()));
                    self.error(e);
                }
            }
        }
        if !self.adopted {
            self.datapath.prune_links();
            self.adopted = true;
        }

        let latency = since.elapsed();
        self.metrics.sync_latency.observe(latency.as_secs_f64());
        tracing::debug!(
            written = report.written,
            removed = report.removed,
            latency_ms = latency.as_millis() as u64,
            "synced"
        );
        self.last_sync = Some(SyncStatus {
            at: jiff::Timestamp::now().to_string(),
            latency_ms: latency.as_millis() as u64,
            written: report.written,
            removed: report.removed,
        });
        for w in (compiled.warnings.iter()).filter(|w| !self.compiled.warnings.contains(w)) {
            tracing::warn!(not_enforced = %w);
        }
        for w in (compiled.full.iter()).filter(|w| !self.compiled.full.contains(w)) {
            tracing::warn!(full = %w);
        }
        for r in (compiled.rejected.iter()).filter(|r| !self.compiled.rejected.contains(r)) {
            tracing::warn!(rejected = %r);
        }
        self.names = Names::new(&self.config.node_name, &self.cluster, &compiled);
        self.compiled = compiled;
        self.syncs += 1;
        self.events_synced = events;
        // The datapath is complete: sandboxes waiting for it may start now, before the
        // work that is for people (lint, status).
        self.answer_waiting(None);
        // The woken API tasks wait in this worker's LIFO slot, which other workers do not
        // steal from: let them write their answers before this task goes on.
        tokio::task::yield_now().await;
        self.prepare_tables();
        self.lint_due = true;
        self.metrics.set_ready(true);
        self.publish();
        Ok(())
    }

    /// Makes the next sync compare with what the maps hold, and reports what differs from
    /// what the agent last wrote: nothing should, unless something else writes the maps.
    fn resync_with_maps(&mut self) {
        match self.datapath.drift() {
            Ok(0) => tracing::debug!("full resync: the maps hold what the agent wrote"),
            Ok(drift) => {
                self.metrics.drift_corrected.inc_by(drift as u64);
                self.error(format!(
                    "full resync: {drift} map entries differed from what the agent wrote \
                     (changed by another process?); corrected"
                ));
            }
            Err(e) => self.error(format!("full resync: reading the maps: {e}")),
        }
    }

    /// Makes a per-endpoint table ahead of need, so that the next new pod's ADD does not
    /// wait for the kernel to make one: one at a time, when nothing waits for the agent.
    fn prepare_tables(&mut self) {
        if let Err(e) = self.datapath.prepare_tables(1) {
            self.error(format!("preparing conntrack tables: {e}"));
        }
    }

    /// Lints the policies if they may have changed, and logs the warnings that are new.
    /// Warnings are for people: they follow at the next status refresh instead of keeping
    /// the loop from the next event after every sync.
    fn lint(&mut self) {
        if !std::mem::take(&mut self.lint_due) {
            return;
        }
        let valid: Vec<ParsedPolicy> = self
            .cluster
            .policies
            .values()
            .filter_map(|p| ParsedPolicy::parse(p).ok())
            .collect();
        let warnings: Vec<String> = lint::lint(&self.cluster, &valid)
            .iter()
            .map(ToString::to_string)
            .collect();
        for w in warnings.iter().filter(|w| !self.warnings.contains(w)) {
            tracing::warn!(warning = %w);
        }
        self.warnings = warnings;
    }

    /// Rejected objects by (reason, what is in force instead), for metrics.
    fn rejected_objects(&self) -> BTreeMap<(&'static str, &'static str), usize> {
        let mut out = BTreeMap::new();
        let mut count = |reason, in_force| *out.entry((reason, in_force)).or_default() += 1;
        for _ in &self.load_errors {
            // The directory source keeps the last good version of what it cannot read, or
            // enforces a policy that never read fail-closed; its errors say which.
            count("manifest", "last-good-or-fail-closed");
        }
        for r in self.rejections.values() {
            count(r.reason.as_str(), r.in_force.as_str());
        }
        for _ in &self.compiled.rejected {
            count("invalid", "fail-closed");
        }
        out
    }

    /// Sends waiting flow records to API clients and the log.
    fn forward_flows(&mut self) {
        for event in self.datapath.drain_events() {
            let record = self.names.record(&event);
            tracing::debug!(target: "flows", "{record}");
            let _ = self.flows.send(record);
        }
    }

    /// Refreshes the status and metrics snapshot.
    fn publish(&mut self) {
        let mut packets = BTreeMap::new();
        if let Ok(stats) = self.datapath.stats() {
            for (k, v) in stats {
                let dir = Direction::from_u8(k.direction).map_or("?", Direction::as_str);
                let verdict = policy_common::reason::Verdict::from_u8(k.verdict)
                    .map_or("?", policy_common::reason::Verdict::as_str);
                let key = (
                    dir.to_owned(),
                    verdict.to_owned(),
                    reason_name(k.verdict, k.reason).to_owned(),
                );
                let e: &mut (u64, u64) = packets.entry(key).or_default();
                e.0 += v.packets;
                e.1 += v.bytes;
            }
        }
        let fill = self.datapath.fill();
        self.metrics.set_snapshot(Snapshot {
            packets: packets.into_iter().map(|(k, (p, b))| (k, p, b)).collect(),
            maps: fill
                .iter()
                .map(|(n, e, c)| ((*n).to_owned(), *e, *c))
                .collect(),
            endpoints: self.pods.attached(),
            refused: self.pods.refused(),
            policies: self.cluster.policies.len(),
            rejected: self.compiled.rejected.len(),
            rejected_objects: self.rejected_objects(),
            full_maps: self.compiled.full.len() + usize::from(!self.datapath.left_out().is_empty()),
            address_conflicts: self.compiled.conflicts.len(),
        });

        let endpoints = self
            .cluster
            .pods_on(&self.config.node_name)
            .filter(|p| !p.host_network)
            .map(|p| {
                let info = self.compiled.endpoints.get(&p.id);
                let state = self.pods.get(&p.id);
                EndpointStatus {
                    pod: p.id.to_string(),
                    interface: self.pods.interface(&p.id).map(|i| i.name.clone()),
                    attached: self.pods.is_attached(&p.id),
                    refused: self.pods.refusal(&p.id).is_some(),
                    reason: state.and_then(PodState::not_attached),
                    ingress_isolated: info.is_some_and(|i| i.is_isolated(Direction::Ingress)),
                    egress_isolated: info.is_some_and(|i| i.is_isolated(Direction::Egress)),
                }
            })
            .collect();
        let status = Status {
            node: self.config.node_name.clone(),
            pin_dir: self.datapath.pin_dir().display().to_string(),
            source: self.config.source.clone(),
            ready: self.adopted,
            syncs: self.syncs,
            source_events: self.events_synced,
            cni: self.config.cni_conf_dir.as_deref().map(install::status),
            policies: self.cluster.policies.len(),
            endpoints,
            not_enforced: (self.compiled.warnings.iter().cloned())
                .chain(self.datapath.left_out().iter().map(|pod| {
                    format!(
                        "pod {pod}: ENDPOINTS is full: its traffic is dropped until it fits; \
                         raise --map-size endpoints"
                    )
                }))
                .collect(),
            map_sizes: self.config.map_sizes.to_string(),
            full: self.compiled.full.clone(),
            maps: fill
                .into_iter()
                .map(|(name, entries, capacity)| MapStatus {
                    name: name.to_owned(),
                    entries,
                    capacity,
                })
                .collect(),
            last_sync: self.last_sync.clone(),
            sync_failures: self.retry.as_ref().map_or(0, SyncRetry::failures),
            sync_error: self.retry.as_ref().map(|r| r.last_error().to_owned()),
            rejected: self
                .load_errors
                .iter()
                .cloned()
                .chain(self.rejections.values().map(ToString::to_string))
                .chain(self.compiled.rejected.iter().map(ToString::to_string))
                .collect(),
            warnings: self
                .node_warnings
                .iter()
                .chain(&self.warnings)
                .cloned()
                .collect(),
            errors: self.errors.iter().cloned().collect(),
        };
        self.status.send_replace(status);
    }
}

/// The host-side interfaces a CNI request names.
fn candidates(request: &EndpointRequest) -> Vec<String> {
    if request.host_interfaces.is_empty() {
        request.interface.iter().cloned().collect()
    } else {
        request.host_interfaces.clone()
    }
}

/// The interface a sandbox records as its pod's, to be checked again after a restart: the
/// one found, or the one refused (but never a bridge: behind it, the pod's port may still
/// be found by the route).
fn recorded_interface(lookup: &Lookup) -> Option<String> {
    match lookup {
        Lookup::Found(iface) => Some(iface.name.clone()),
        Lookup::Refused(Refusal::Bridge { .. }) | Lookup::Missing(_) => None,
        Lookup::Refused(refusal) => refusal.interface().map(str::to_owned),
    }
}
