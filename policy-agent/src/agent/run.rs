//! The agent's loop: takes source events and CNI requests, forwards flow records, and
//! starts a sync when changes have settled; the compile runs on a blocking thread and its
//! result is written back on this task, so the local API is answered throughout.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    ops::Bound,
    os::fd::OwnedFd,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
    task::JoinError,
    time::{MissedTickBehavior, interval, sleep_until},
};

use super::{
    ATTACHES_PER_ROUND, Agent, Command, INTERFACE_CHECK, INTERFACE_RETRY, LOOKUPS_PER_ROUND,
    MAX_SETTLE, NEVER, SETTLE, SNAPSHOT_INTERVAL, flows,
    interfaces::{Interface, Interfaces, Lookup},
    reconcile::CompileDone,
    source_state::Applied,
};
use crate::{
    compiler::NodeConfig,
    datapath::Datapath,
    datapath::SyncReport,
    model::{ObjectRef, Pod},
    source::SourceEvent,
};

/// What a compile sends back to the task: its result, or how its thread died.
type Compiled = Result<CompileDone, JoinError>;

/// What a round of interface lookups found, per pod, with what it looked for.
type Lookups = Vec<(LookupInput, Lookup)>;

/// What a check of the interfaces pods hold found (see [`INTERFACE_CHECK`]).
struct InterfaceCheck {
    /// Interfaces that are gone, with the pods that held them.
    gone: Vec<(ObjectRef, Interface)>,
    /// The node's tunnel ports (`None`: the links could not be read).
    tunnel_ports: Option<BTreeSet<u16>>,
}

/// What a lookup of a pod's interface went by: a result is taken in only if the pod is
/// still the same (uid), with the same addresses and recorded interface.
#[derive(Clone, Debug, PartialEq)]
struct LookupInput {
    pod: ObjectRef,
    uid: Option<String>,
    ips: Vec<IpAddr>,
    recorded: Option<String>,
}

/// How long one lookup of a round may take before it counts as not found (netlink
/// answers in microseconds; a round must never hang the lookups for good).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A turn of the loop longer than this is logged: the local API (CNI ADD, status) waited.
const BUSY_WARNING: Duration = Duration::from_millis(100);

/// Does one turn's work and records how long it kept the task from the local API.
macro_rules! busy {
    ($agent:ident, $work:literal, $body:expr) => {{
        let started = Instant::now();
        $body;
        if $agent.publish_due {
            $agent.publish();
        }
        $agent.busy($work, started.elapsed());
    }};
}

/// Looks up one pod's interface: the one its sandbox recorded, checked again, or else the
/// one the route to its addresses leads to.
async fn lookup_one(interfaces: &Interfaces, input: &LookupInput) -> Lookup {
    let lookup = async {
        match &input.recorded {
            Some(name) => interfaces.named(std::slice::from_ref(name)).await,
            None => interfaces.of(&input.ips).await,
        }
    };
    tokio::time::timeout(LOOKUP_TIMEOUT, lookup)
        .await
        .unwrap_or_else(|_| {
            Lookup::Missing(format!("no answer from netlink within {LOOKUP_TIMEOUT:?}"))
        })
}

impl<D: Datapath> Agent<D> {
    pub(super) async fn run(
        mut self,
        mut source: mpsc::Receiver<SourceEvent>,
        mut commands: mpsc::Receiver<Command>,
        mut stop: oneshot::Receiver<()>,
    ) -> anyhow::Result<()> {
        let events = match self.reconciler.datapath().events_fd() {
            Some(fd) => {
                let fd: OwnedFd = fd.try_clone_to_owned()?;
                // SAFETY: the descriptor is owned by the AsyncFd for its whole life.
                Some(unsafe { AsyncFd::register(fd) }?)
            }
            None => None,
        };
        let mut interface_retry = interval(INTERFACE_RETRY);
        let mut interface_check = interval(INTERFACE_CHECK);
        let mut snapshot = interval(SNAPSHOT_INTERVAL);
        let mut flush_flows = interval(flows::FLUSH_INTERVAL);
        let resync_every = self.config.full_resync;
        // Never, when off: a period far beyond any agent's life.
        let mut full_resync = interval(if resync_every.is_zero() {
            NEVER
        } else {
            resync_every
        });
        // The first tick of an interval is at once; the first sync reads the maps anyway.
        full_resync.reset();
        for t in [
            &mut interface_retry,
            &mut interface_check,
            &mut snapshot,
            &mut full_resync,
            &mut flush_flows,
        ] {
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        // One compile at a time: the reconciler has one compiler, out while it runs.
        let (compiled_tx, mut compiled_rx) = mpsc::channel::<Compiled>(1);
        let (linted_tx, mut linted_rx) = mpsc::channel(1);
        // One round of interface lookups at a time, on its own task.
        let (looked_up_tx, mut looked_up_rx) = mpsc::channel::<Lookups>(1);
        let (checked_tx, mut checked_rx) = mpsc::channel::<InterfaceCheck>(1);
        let mut source_open = true;
        loop {
            let due = self.sync_due();
            tokio::select! {
                _ = &mut stop => break,
                event = source.recv(), if source_open => busy!(self, "source-event", match event {
                    Some(event) => self.apply(event),
                    None => {
                        source_open = false;
                        self.error("the source stopped; enforcing the last state".into());
                    }
                }),
                Some(command) = commands.recv() => busy!(self, "command", self.command(command).await),
                _ = sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    busy!(self, "sync-start", self.start_sync(&compiled_tx, &looked_up_tx).await)
                }
                Some(done) = compiled_rx.recv() => {
                    // A compile that panicked ends the agent, as it did on the task.
                    busy!(self, "sync-finish", self.finish_sync(done?).await)
                }
                _ = interface_retry.tick(), if !self.looking_up && self.waiting_for_interfaces() => {
                    busy!(self, "interface-lookup", self.start_lookups(&looked_up_tx))
                }
                // The rest of a pass, a round at a time.
                () = std::future::ready(()), if self.lookups_left && !self.looking_up && self.source.complete() => {
                    busy!(self, "interface-lookup", self.start_lookups(&looked_up_tx))
                }
                // The pods found by the last sync, a few at a time.
                () = std::future::ready(()), if self.reconciler.attaches_left() => {
                    busy!(self, "attach", self.attach_round())
                }
                Some(lookups) = looked_up_rx.recv() => {
                    busy!(self, "interface-lookup", self.looked_up(lookups))
                }
                _ = interface_check.tick(), if !self.checking_interfaces => {
                    busy!(self, "interface-lookup", self.check_interfaces(&checked_tx))
                }
                Some(check) = checked_rx.recv() => {
                    busy!(self, "interface-lookup", self.interfaces_checked(check))
                }
                guard = async { events.as_ref()?.readable().await.ok() }, if events.is_some() => {
                    if let Some(mut guard) = guard {
                        busy!(self, "flows", self.forward_flows());
                        guard.clear_ready();
                    }
                }
                // The datapath wakes the agent only for a batch of records (see flows).
                _ = flush_flows.tick() => busy!(self, "flows", self.forward_flows()),
                _ = snapshot.tick() => busy!(self, "snapshot", {
                    self.prepare_tables();
                    self.start_lint(&linted_tx);
                    self.publish();
                }),
                Some(warnings) = linted_rx.recv() => busy!(self, "lint", self.linted(warnings)),
                _ = full_resync.tick(), if !resync_every.is_zero() => {
                    self.reconciler.request_full_resync();
                    self.pending_since.get_or_insert_with(Instant::now);
                }
            }
        }
        tracing::info!("agent stopping; programs stay attached and maps pinned");
        Ok(())
    }

    /// Records a turn of the loop; one that kept requests waiting noticeably is logged.
    fn busy(&self, work: &'static str, busy: Duration) {
        self.metrics.loop_busy(work, busy);
        if busy >= BUSY_WARNING {
            tracing::warn!(
                work,
                busy_ms = busy.as_millis() as u64,
                "the agent's loop was busy: local requests (CNI ADD, status) waited"
            );
        }
    }

    /// When the pending changes should be synced, if any, the state is complete and no
    /// sync runs. A sandbox waiting for its pod's enforcement is synced at once.
    fn sync_due(&self) -> Option<tokio::time::Instant> {
        let since = self.pending_since?;
        if !self.source.complete() || self.reconciler.compiling() {
            return None;
        }
        // The first sync adopts what an earlier agent left for the pods whose interfaces
        // are known, and drops the rest (entries, links): every local pod is looked for
        // once before, or a pod not looked up yet would lose its enforcement.
        if !self.reconciler.ready() && !self.lookup_pass_done {
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
        Some(match self.reconciler.retry() {
            Some(retry) => due.max(retry.next()),
            None => due,
        })
    }

    fn waiting_for_interfaces(&self) -> bool {
        self.source.complete()
            && self
                .local_pods()
                .any(|p| self.reconciler.pods().interface(&p.id).is_none())
    }

    /// The pods this node enforces (see [`Self::is_local`]).
    pub(super) fn local_pods(&self) -> impl Iterator<Item = &Pod> {
        self.source
            .cluster
            .pods
            .values()
            .filter(|p| self.is_local(p))
    }

    /// Whether this node enforces `pod`: scheduled here on a network of its own, with an
    /// address to find its interface by, or already holding one. A running pod whose
    /// status loses its addresses (rewritten by a controller, or by hand) keeps its
    /// programs: its endpoint then owns no address, so all it sends is dropped, instead of
    /// its interface going unenforced. A finished pod's sandbox is going away.
    fn is_local(&self, pod: &Pod) -> bool {
        pod.node.as_deref() == Some(self.config.node_name.as_str())
            && !pod.host_network
            && (!pod.ips.is_empty()
                || !pod.finished && self.reconciler.pods().interface(&pod.id).is_some())
    }

    fn apply(&mut self, event: SourceEvent) {
        let now = Instant::now();
        if let SourceEvent::Rejected(rejection) = &event {
            tracing::warn!(rejected = %rejection);
        }
        // An update that changes nothing policy sees (a pod's status heartbeat: the
        // converted object is what policy sees) costs no sync.
        let updated = match &event {
            SourceEvent::Applied(object) => Some(object.key()),
            _ => None,
        };
        let seen = |cluster: &crate::model::Cluster| {
            updated
                .as_ref()
                .map(|(kind, id)| (cluster.object(*kind, id), cluster.namespaces.len()))
        };
        let before = seen(&self.source.cluster);
        match self.source.apply(event) {
            Applied::Changed => {}
            Applied::ListedAgain(kind) => {
                self.metrics.watch_restarted(kind.as_str());
                tracing::info!(resource = kind.as_str(), "watch listed again");
            }
            Applied::PodDeleted(id) => self.cni.forget(&id),
            Applied::Rejected => {
                self.publish();
                return;
            }
            Applied::Error(e) => {
                self.metrics.source_errors.inc();
                self.error(e);
                return;
            }
        }
        self.overlay_sandboxes();
        if before.is_some() && seen(&self.source.cluster) == before {
            // In force already, unless a change before it is still on its way (pending,
            // compiling, or waiting for a retry): then the sync of that says so.
            let settled = self.pending_since.is_none()
                && !self.reconciler.compiling()
                && self.reconciler.retry().is_none()
                && self.events_attaching.is_none();
            if settled {
                self.events_synced = self.source.events();
            }
            return;
        }
        self.changed(now);
    }

    pub(super) fn changed(&mut self, now: Instant) {
        self.pending_since.get_or_insert(now);
        self.last_change = now;
    }

    /// The first half of a sync, on the task: pods that went away lose their attachment,
    /// a round of interface lookups starts (what it finds makes the next sync due), and
    /// the compile goes to a blocking thread (its result comes back through `compiled`).
    #[tracing::instrument(skip_all, fields(node = %self.config.node_name))]
    async fn start_sync(
        &mut self,
        compiled: &mpsc::Sender<Compiled>,
        looked_up: &mpsc::Sender<Lookups>,
    ) {
        let since = self.pending_since.take().unwrap_or_else(Instant::now);
        let events = self.source.events();
        // What waits now is answered when this sync ends; what comes meanwhile, after
        // the next one (this one's compile cannot know of it).
        self.in_sync = std::mem::take(&mut self.waiting);
        let local: BTreeSet<ObjectRef> = self.local_pods().map(|p| p.id.clone()).collect();
        self.reconciler.forget_gone(&local);
        self.look_up_waiting().await;
        if !self.looking_up {
            self.start_lookups(looked_up);
        }
        let job = match self.node_config().await {
            Ok(node) => self.reconciler.start(&self.source.cluster, node),
            Err(e) => Err(e),
        };
        self.reconciler_errors();
        let job = match job {
            Ok(job) => job,
            Err(e) => return self.sync_ended(since, Err(e)),
        };
        self.sync_started = Some((since, events));
        let compiled = compiled.clone();
        tokio::spawn(async move {
            let done = tokio::task::spawn_blocking(move || job.run()).await;
            let _ = compiled.send(done).await;
        });
        // Only what starting a sync changed: the whole status grows with the pods.
        let seen = self.source.events();
        self.status.send_modify(|status| {
            status.syncing = true;
            status.source_events_seen = seen;
        });
    }

    /// The node as the compiler sees it: its name, addresses and sandboxes.
    async fn node_config(&self) -> anyhow::Result<NodeConfig> {
        let mut addresses = self.interfaces.addresses().await?;
        addresses.extend::<Vec<IpAddr>>(self.config.extra_node_addresses.clone());
        Ok(NodeConfig {
            name: self.config.node_name.clone(),
            addresses,
            sandboxes: self.cni.pods(),
            map_sizes: self.config.map_sizes,
        })
    }

    /// The second half of a sync, on the task: writes what the compile produced.
    async fn finish_sync(&mut self, done: CompileDone) {
        let Some((since, events)) = self.sync_started.take() else {
            return;
        };
        let first: BTreeSet<ObjectRef> = self.in_sync.iter().map(|(pod, _)| pod.clone()).collect();
        let outcome =
            self.reconciler
                .finish(done, self.netns.as_ref(), since, &first, ATTACHES_PER_ROUND);
        self.reconciler_errors();
        if outcome.is_ok() {
            // In force once the pods the sync found are attached too.
            if self.reconciler.attaches_left() {
                self.events_attaching = Some(events);
            } else {
                self.events_attaching = None;
                self.events_synced = events;
            }
            // Records waiting were decided under the previous names (ids are reused at
            // once); those from now on are named after what was just written.
            self.forward_flows();
            self.flows.set_names(self.reconciler.names().clone());
        }
        self.sync_ended(since, outcome);
        // The woken API tasks wait in this worker's LIFO slot, which other workers do not
        // steal from: let them write their answers before this task goes on.
        tokio::task::yield_now().await;
        if self.reconciler.retry().is_none() {
            self.prepare_tables();
        }
        self.publish();
    }

    /// Attaches a few more of the pods found (see [`super::reconcile::Reconciler::attach_found`]).
    fn attach_round(&mut self) {
        let netns = self.netns.as_ref();
        self.reconciler
            .attach_found(netns, &BTreeSet::new(), ATTACHES_PER_ROUND);
        if !self.reconciler.attaches_left()
            && self.reconciler.retry().is_none()
            && let Some(events) = self.events_attaching.take()
        {
            self.events_synced = self.events_synced.max(events);
        }
        self.reconciler_errors();
        self.publish_due = true;
    }

    /// Records how a sync ended and answers the CNI requests that waited for it.
    fn sync_ended(&mut self, since: Instant, outcome: anyhow::Result<SyncReport>) {
        let waiting = std::mem::take(&mut self.in_sync);
        match self.reconciler.record(outcome, tokio::time::Instant::now()) {
            Ok(_) => {
                // The datapath is complete: sandboxes waiting for it may start now,
                // before the work that is for people (lint, status).
                self.answer_waiting(waiting, None);
                self.lint_due = true;
            }
            Err(e) => {
                // Tried again later, ever less often; until then the last state stays
                // enforced.
                self.pending_since = Some(since);
                self.answer_waiting(waiting, Some(&e));
                // The reconciler reported it among its errors.
                self.reconciler_errors();
                self.publish();
            }
        }
    }

    /// Starts a round of looking for the interfaces of local pods that have none yet, on
    /// its own task (each lookup is a few netlink round trips; the loop goes on answering
    /// meanwhile): the interface their sandbox recorded, checked again, or else the one
    /// the route leads to. A pass goes over the pods in name order, at most
    /// [`LOOKUPS_PER_ROUND`] a round, each round after the last pod of the one before;
    /// `lookups_left` says whether the pass has pods left. What a round finds comes back
    /// through `done`.
    fn start_lookups(&mut self, done: &mpsc::Sender<Lookups>) {
        let after = match self.lookup_cursor.take() {
            Some(last) => (Bound::Excluded(last), Bound::Unbounded),
            None => (Bound::Unbounded, Bound::Unbounded),
        };
        let mut round: Vec<LookupInput> = Vec::new();
        let mut pods = self.source.cluster.pods.range(after).map(|(_, p)| p);
        for pod in pods.by_ref() {
            if self.is_local(pod) && self.reconciler.pods().interface(&pod.id).is_none() {
                round.push(self.lookup_input(pod));
                if round.len() == LOOKUPS_PER_ROUND {
                    break;
                }
            }
        }
        self.lookups_left = round.len() == LOOKUPS_PER_ROUND && pods.next().is_some();
        if self.lookups_left {
            self.lookup_cursor = round.last().map(|input| input.pod.clone());
        }
        if round.is_empty() {
            self.lookup_pass_done = !self.lookups_left;
            return;
        }
        self.looking_up = true;
        let interfaces = Arc::clone(&self.interfaces);
        let done = done.clone();
        let lookups = async move {
            let mut lookups = Vec::with_capacity(round.len());
            for input in round {
                let lookup = lookup_one(&interfaces, &input).await;
                lookups.push((input, lookup));
            }
            lookups
        };
        tokio::spawn(async move {
            // A round that panicked found nothing, and lookups go on.
            let lookups = tokio::spawn(lookups).await.unwrap_or_default();
            let _ = done.send(lookups).await;
        });
    }

    /// Starts checking, on a task of its own, that the interfaces pods hold are still
    /// there, and reading the node's tunnel ports (see [`INTERFACE_CHECK`]); what it finds
    /// comes back through `done`.
    fn check_interfaces(&mut self, done: &mpsc::Sender<InterfaceCheck>) {
        let held: Vec<(ObjectRef, Interface)> = (self.reconciler.pods().with_interfaces())
            .map(|(pod, iface)| (pod.clone(), iface.clone()))
            .collect();
        self.checking_interfaces = true;
        let interfaces = Arc::clone(&self.interfaces);
        let done = done.clone();
        tokio::spawn(async move {
            let mut gone = Vec::new();
            for (pod, iface) in held {
                // No answer in time says nothing is gone.
                let check = tokio::time::timeout(LOOKUP_TIMEOUT, interfaces.is_gone(&iface));
                if check.await.unwrap_or(false) {
                    gone.push((pod, iface));
                }
            }
            let tunnel_ports = tokio::time::timeout(LOOKUP_TIMEOUT, interfaces.tunnel_ports())
                .await
                .ok()
                .flatten();
            let _ = done.send(InterfaceCheck { gone, tunnel_ports }).await;
        });
    }

    /// Takes in what a check found: the interfaces gone are forgotten (if the pods still
    /// hold them: their programs went with them; the pods are looked for again, and the
    /// next sync drops the entries of the old interfaces), and the datapath learns the
    /// node's tunnel ports if they changed.
    fn interfaces_checked(&mut self, check: InterfaceCheck) {
        self.checking_interfaces = false;
        let mut forgot = false;
        for (pod, iface) in check.gone {
            if self.reconciler.pods().interface(&pod) == Some(&iface) {
                tracing::info!(%pod, interface = %iface.name, "the pod's interface is gone: looking for its new one");
                self.reconciler.forget_interface(&pod);
                forgot = true;
            }
        }
        if forgot {
            self.changed(Instant::now());
        }
        if let Some(ports) = check.tunnel_ports.filter(|p| *p != self.tunnel_ports) {
            match self.reconciler.set_tunnel_ports(&ports) {
                Ok(()) => {
                    tracing::info!(
                        ?ports,
                        "the node's tunnel ports: pods may not send the node anything there"
                    );
                    self.tunnel_ports = ports;
                    self.publish_due = true;
                }
                Err(e) => self.error(format!("writing the node's tunnel ports: {e}")),
            }
        }
    }

    /// Looks up, at once, the interfaces of the pods whose sandboxes wait for this sync
    /// and named none (their ADD is answered when it ends; a round may not reach them).
    async fn look_up_waiting(&mut self) {
        let inputs: Vec<LookupInput> = (self.in_sync.iter())
            .filter_map(|(pod, _)| self.source.cluster.pods.get(pod))
            .filter(|p| self.is_local(p) && self.reconciler.pods().interface(&p.id).is_none())
            .map(|p| self.lookup_input(p))
            .collect();
        let mut lookups = Vec::with_capacity(inputs.len());
        for input in inputs {
            let lookup = lookup_one(&self.interfaces, &input).await;
            lookups.push((input.pod, lookup));
        }
        if !lookups.is_empty() {
            self.settle(lookups);
        }
    }

    /// What looking up `pod`'s interface goes by.
    fn lookup_input(&self, pod: &Pod) -> LookupInput {
        LookupInput {
            pod: pod.id.clone(),
            uid: pod.uid.clone(),
            ips: pod.ips.clone(),
            recorded: self.cni.get(&pod.id).and_then(|e| e.interface.clone()),
        }
    }

    /// Takes in what a round of lookups found; a pod found makes a sync due. A result
    /// counts only if the pod is still what the round looked for (not gone, replaced,
    /// readdressed, or given an interface by a CNI ADD meanwhile): an address may belong
    /// to another pod by now.
    fn looked_up(&mut self, lookups: Lookups) {
        self.looking_up = false;
        if !self.lookups_left {
            self.lookup_pass_done = true;
        }
        let current: Vec<(ObjectRef, Lookup)> = lookups
            .into_iter()
            .filter(|(input, _)| {
                self.source.cluster.pods.get(&input.pod).is_some_and(|p| {
                    self.is_local(p)
                        && self.reconciler.pods().interface(&p.id).is_none()
                        && self.lookup_input(p) == *input
                })
            })
            .map(|(input, lookup)| (input.pod, lookup))
            .collect();
        if self.settle(current) {
            self.pending_since.get_or_insert_with(Instant::now);
        }
    }

    /// Takes in what looking for interfaces found; true if a pod got one.
    pub(super) fn settle(&mut self, lookups: Vec<(ObjectRef, super::interfaces::Lookup)>) -> bool {
        let found = self.reconciler.settle(lookups);
        self.reconciler_errors();
        found
    }
}
