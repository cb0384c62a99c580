//! The agent's loop: takes source events and CNI requests, forwards flow records, and
//! starts a sync when changes have settled; the compile runs on a blocking thread and its
//! result is written back on this task, so the local API is answered throughout.

use std::{collections::BTreeSet, net::IpAddr, os::fd::OwnedFd, time::Instant};

use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
    task::JoinError,
    time::{MissedTickBehavior, interval, sleep_until},
};

use super::{
    Agent, Command, INTERFACE_RETRY, LOOKUPS_PER_ROUND, MAX_SETTLE, NEVER, SETTLE,
    SNAPSHOT_INTERVAL, flows, reconcile::CompileDone, source_state::Applied,
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
            &mut snapshot,
            &mut full_resync,
            &mut flush_flows,
        ] {
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        // One compile at a time: the reconciler has one compiler, out while it runs.
        let (compiled_tx, mut compiled_rx) = mpsc::channel::<Compiled>(1);
        let (linted_tx, mut linted_rx) = mpsc::channel(1);
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
                    self.start_sync(&compiled_tx).await;
                }
                Some(done) = compiled_rx.recv() => {
                    // A compile that panicked ends the agent, as it did on the task.
                    self.finish_sync(done?).await;
                }
                _ = interface_retry.tick(), if self.waiting_for_interfaces() => {
                    self.lookup_round().await;
                }
                // The rest of a pass, a round at a time, with requests answered between.
                () = std::future::ready(()), if self.lookups_left => self.lookup_round().await,
                guard = async { events.as_ref()?.readable().await.ok() }, if events.is_some() => {
                    if let Some(mut guard) = guard {
                        self.forward_flows();
                        guard.clear_ready();
                    }
                }
                // The datapath wakes the agent only for a batch of records (see flows).
                _ = flush_flows.tick() => self.forward_flows(),
                _ = snapshot.tick() => {
                    self.prepare_tables();
                    self.start_lint(&linted_tx);
                    self.publish();
                }
                Some(warnings) = linted_rx.recv() => self.linted(warnings),
                _ = full_resync.tick(), if !resync_every.is_zero() => {
                    self.reconciler.request_full_resync();
                    self.pending_since.get_or_insert_with(Instant::now);
                }
            }
        }
        tracing::info!("agent stopping; programs stay attached and maps pinned");
        Ok(())
    }

    /// When the pending changes should be synced, if any, the state is complete and no
    /// sync runs. A sandbox waiting for its pod's enforcement is synced at once.
    fn sync_due(&self) -> Option<tokio::time::Instant> {
        let since = self.pending_since?;
        if !self.source.complete() || self.reconciler.compiling() {
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

    pub(super) fn local_pods(&self) -> impl Iterator<Item = &Pod> {
        self.source
            .cluster
            .pods_on(&self.config.node_name)
            .filter(|p| !p.host_network && !p.ips.is_empty())
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
                && self.reconciler.retry().is_none();
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
    /// interfaces are looked for, and the compile goes to a blocking thread (its result
    /// comes back through `compiled`).
    #[tracing::instrument(skip_all, fields(node = %self.config.node_name))]
    async fn start_sync(&mut self, compiled: &mpsc::Sender<Compiled>) {
        let since = self.pending_since.take().unwrap_or_else(Instant::now);
        let events = self.source.events();
        // What waits now is answered when this sync ends; what comes meanwhile, after
        // the next one (this one's compile cannot know of it).
        self.in_sync = std::mem::take(&mut self.waiting);
        let local: BTreeSet<ObjectRef> = self.local_pods().map(|p| p.id.clone()).collect();
        self.reconciler.forget_gone(&local);
        self.find_interfaces().await;
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
        self.publish();
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
        let outcome = self.reconciler.finish(done, self.netns.as_ref(), since);
        self.reconciler_errors();
        if outcome.is_ok() {
            self.events_synced = events;
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

    /// One round of looking for interfaces; a pod found makes a sync due.
    async fn lookup_round(&mut self) {
        if self.find_interfaces().await {
            self.pending_since.get_or_insert_with(Instant::now);
        }
    }

    /// Looks for the interfaces of local pods that have none yet: the one their sandbox
    /// recorded, checked again, or else by the route. True if it found one. At most
    /// [`LOOKUPS_PER_ROUND`] pods are looked up, after the last one of the previous round
    /// (so that every pod has its turn), and `lookups_left` says whether pods remain: a
    /// node with thousands of pods waiting never keeps the task from its requests.
    pub(super) async fn find_interfaces(&mut self) -> bool {
        let local: BTreeSet<ObjectRef> = self.local_pods().map(|p| p.id.clone()).collect();
        self.reconciler.retain_local(&local);
        let mut missing: Vec<(ObjectRef, Vec<IpAddr>, Option<String>)> = self
            .local_pods()
            .filter(|p| self.reconciler.pods().interface(&p.id).is_none())
            .map(|p| {
                let recorded = self.cni.get(&p.id).and_then(|e| e.interface.clone());
                (p.id.clone(), p.ips.clone(), recorded)
            })
            .collect();
        missing.sort_by(|a, b| a.0.cmp(&b.0));
        let first = match &self.lookup_cursor {
            Some(last) => missing.iter().position(|(id, ..)| id > last).unwrap_or(0),
            None => 0,
        };
        missing.rotate_left(first);
        // Pods not looked up in this round, counting from where the last pass began.
        let pass_left = if self.lookups_left {
            self.pass_left
                .saturating_sub(missing.len().min(LOOKUPS_PER_ROUND))
        } else {
            missing.len().saturating_sub(LOOKUPS_PER_ROUND)
        };
        missing.truncate(LOOKUPS_PER_ROUND);
        self.pass_left = pass_left;
        self.lookups_left = pass_left > 0;
        self.lookup_cursor = if self.lookups_left {
            missing.last().map(|(id, ..)| id.clone())
        } else {
            None
        };
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

    /// Takes in what looking for interfaces found; true if a pod got one.
    pub(super) fn settle(&mut self, lookups: Vec<(ObjectRef, super::interfaces::Lookup)>) -> bool {
        let found = self.reconciler.settle(lookups);
        self.reconciler_errors();
        found
    }
}
