//! The reconcile step: from the cluster the source describes and the interfaces found to
//! the datapath's maps and attachments, with what a sync leaves behind (the pods' states,
//! what was compiled, the backoff of failed syncs, the drift check). Plain data around a
//! [`Datapath`], so it runs against the kernel in the agent and against memory in tests.
//!
//! A sync has two halves around the compile, so that the agent can compile on a blocking
//! thread while its task keeps answering: [`Reconciler::start`] hands out the compiler
//! with the changes of the cluster since its last compile ([`CompileJob`]), and
//! [`Reconciler::finish`] writes what it produced. The compiler follows the cluster
//! ([`Incremental`]): a compile costs what the changes touch, not the cluster's size.
//! There is one compiler: while it is out no other sync can start, so two
//! compiles never race to write the maps out of order. [`Reconciler::reconcile`] runs both
//! halves at once.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Instant,
};

use anyhow::Context as _;
use policy_common::maps::EndpointInfo;

use super::{
    flows::Names,
    interfaces::{Lookup, Refusal},
    metrics::Metrics,
    pods::{PodState, PodStates},
    retry::SyncRetry,
    status::SyncStatus,
};
use crate::{
    compiler::{
        Compiled, NodeConfig,
        incremental::{Change, Incremental},
    },
    datapath::{Datapath, DatapathError, SyncReport},
    model::{Cluster, ObjectRef},
    netns::NetNs,
};

/// The compile of one sync, to run anywhere: the compiler following the cluster, and the
/// cluster as it was when the sync started.
pub struct CompileJob {
    compiler: Incremental,
    /// The cluster as the source described it, shared with the agent's task.
    cluster: Arc<Cluster>,
    node: NodeConfig,
}

impl CompileJob {
    /// Takes in what changed since the last compile (found here, off the agent's task),
    /// compiles, and names what flow records will refer to.
    pub fn run(mut self) -> CompileDone {
        for change in self.compiler.changes_to(&self.cluster) {
            self.compiler.apply(change);
        }
        self.compiler.apply(Change::Node(self.node.clone()));
        let compiled = self.compiler.take_compiled();
        let names = Names::new(&self.node.name, self.compiler.cluster(), &compiled);
        CompileDone {
            compiler: self.compiler,
            compiled,
            names,
        }
    }
}

/// What a [`CompileJob`] produced, and its compiler back.
pub struct CompileDone {
    compiler: Incremental,
    compiled: Compiled,
    names: Names,
}

/// The agent's enforcement state and the steps that change it (see the module).
pub struct Reconciler<D> {
    datapath: D,
    /// The compiler, following the cluster of the last compile; `None` while a compile
    /// runs elsewhere.
    compiler: Option<Incremental>,
    /// Where each local pod stands: waiting for its interface, refused, found, attached.
    pods: PodStates,
    /// What the last successful sync compiled.
    compiled: Compiled,
    names: Names,
    /// Whether the state left by an earlier agent has been adopted (and a first sync
    /// written: the agent is ready).
    adopted: bool,
    /// Whether the next sync compares with what the maps hold rather than with what the
    /// agent last wrote.
    full_resync_due: bool,
    /// Failures of the sync in a row, and when to try again.
    retry: Option<SyncRetry>,
    /// Whether found pods wait to be attached (see [`Self::attach_found`]).
    attaches_left: bool,
    /// Whether the pods the first successful sync found have all been attached.
    first_attached: bool,
    /// Successful syncs so far.
    syncs: u64,
    last_sync: Option<SyncStatus>,
    metrics: Arc<Metrics>,
    /// Errors for the agent to report, oldest first.
    errors: Vec<String>,
}

impl<D: Datapath> Reconciler<D> {
    /// A reconciler that has synced nothing yet.
    pub fn new(datapath: D, metrics: Arc<Metrics>) -> Self {
        Self {
            datapath,
            compiler: Some(Incremental::new(NodeConfig::default())),
            pods: PodStates::default(),
            compiled: Compiled::default(),
            names: Names::default(),
            adopted: false,
            full_resync_due: false,
            retry: None,
            attaches_left: false,
            first_attached: false,
            syncs: 0,
            last_sync: None,
            metrics,
            errors: Vec::new(),
        }
    }

    /// The datapath.
    pub fn datapath(&self) -> &D {
        &self.datapath
    }

    /// The datapath, to change behind the reconciler's back (tests).
    pub fn datapath_mut(&mut self) -> &mut D {
        &mut self.datapath
    }

    /// Where each local pod stands.
    pub fn pods(&self) -> &PodStates {
        &self.pods
    }

    /// What the last successful sync compiled.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// Names for flow records, as of the last successful sync.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Whether a first complete state is enforced: a sync written, and every pod it found
    /// attached (later syncs' attaches do not make the agent unready).
    pub fn ready(&self) -> bool {
        self.adopted && self.first_attached
    }

    /// Successful syncs so far.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// The last successful sync.
    pub fn last_sync(&self) -> Option<&SyncStatus> {
        self.last_sync.as_ref()
    }

    /// The failures in a row of the sync and when to try again, while it fails.
    pub fn retry(&self) -> Option<&SyncRetry> {
        self.retry.as_ref()
    }

    /// Whether a compile is out (between [`Reconciler::start`] and
    /// [`Reconciler::finish`]).
    pub fn compiling(&self) -> bool {
        self.compiler.is_none()
    }

    /// Takes the errors to report since the last call.
    pub fn take_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.errors)
    }

    /// Makes the next sync read the maps back, count what differs from what was last
    /// written, and correct it.
    pub fn request_full_resync(&mut self) {
        self.full_resync_due = true;
    }

    /// Detaches the pods that hold an interface but are not among `local` any more (gone,
    /// moved, or without addresses), and forgets the other pods not among them.
    pub fn forget_gone(&mut self, local: &BTreeSet<ObjectRef>) {
        let gone: Vec<ObjectRef> = self
            .pods
            .with_interfaces()
            .map(|(id, _)| id)
            .filter(|id| !local.contains(*id))
            .cloned()
            .collect();
        for pod in gone {
            tracing::info!(%pod, "pod gone: detaching");
            self.forget_interface(&pod);
        }
        self.retain_local(local);
    }

    /// Forgets the pods not among `local` that hold no interface.
    pub fn retain_local(&mut self, local: &BTreeSet<ObjectRef>) {
        self.pods.retain_local(local);
    }

    /// Tells the datapath the node's tunnel ports (see [`Datapath::set_tunnel_ports`]).
    pub fn set_tunnel_ports(&mut self, ports: &BTreeSet<u16>) -> Result<(), DatapathError> {
        self.datapath.set_tunnel_ports(ports)
    }

    /// Detaches a pod and forgets its interface (it is looked for again).
    pub fn forget_interface(&mut self, pod: &ObjectRef) {
        self.datapath.detach(pod);
        self.pods.forget_interface(pod);
    }

    /// Detaches a pod and forgets all about it.
    pub fn remove_pod(&mut self, pod: &ObjectRef) {
        self.forget_interface(pod);
        self.pods.remove(pod);
    }

    /// Takes in what looking for pods' interfaces found (see [`PodStates::settle`]) and
    /// tells the datapath. True if a pod got an interface.
    pub fn settle(&mut self, lookups: Vec<(ObjectRef, Lookup)>) -> bool {
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

    /// Counts and reports a new refusal.
    fn refused(&mut self, pod: &ObjectRef, refusal: &Refusal) {
        self.metrics.interface_refused(refusal.kind());
        self.errors
            .push(format!("pod {pod} not enforced: {refusal}"));
    }

    /// Starts a sync of `cluster`: adopts what an earlier agent left (once), checks the
    /// maps for drift when a full resync is due, and hands out the compile.
    pub fn start(
        &mut self,
        cluster: &Arc<Cluster>,
        node: NodeConfig,
    ) -> anyhow::Result<CompileJob> {
        if !self.adopted {
            self.adopt(cluster)?;
        }
        if std::mem::take(&mut self.full_resync_due) {
            self.resync_with_maps();
        }
        let compiler = self
            .compiler
            .take()
            .context("a compile is already out: one sync at a time")?;
        // The job finds what changed on its own thread: the task copies nothing.
        Ok(CompileJob {
            compiler,
            cluster: Arc::clone(cluster),
            node,
        })
    }

    /// Takes over the ids an earlier agent left in the pinned maps.
    fn adopt(&mut self, cluster: &Cluster) -> anyhow::Result<()> {
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
        let compiler = self
            .compiler
            .as_mut()
            .context("a compile is already out: one sync at a time")?;
        compiler
            .compiler()
            .adopt(cluster, &endpoints, &live.ipcache, rulesets);
        if !endpoints.is_empty() {
            tracing::info!(
                endpoints = endpoints.len(),
                "adopted the state of a previous agent"
            );
        }
        Ok(())
    }

    /// Makes the next sync compare with what the maps hold, and reports what differs from
    /// what the agent last wrote: nothing should, unless something else writes the maps.
    fn resync_with_maps(&mut self) {
        match self.datapath.drift() {
            Ok(0) => tracing::debug!("full resync: the maps hold what the agent wrote"),
            Ok(drift) => {
                self.metrics.drift_corrected.inc_by(drift as u64);
                self.errors.push(format!(
                    "full resync: {drift} map entries differed from what the agent wrote \
                     (changed by another process?); corrected"
                ));
            }
            Err(e) => self
                .errors
                .push(format!("full resync: reading the maps: {e}")),
        }
    }

    /// Ends a sync with what its compile produced: writes the maps, then attaches the
    /// programs to the interfaces found (after their endpoint entries: an attached
    /// interface never lacks one): those of the pods in `first` (sandboxes waiting for
    /// their pod's enforcement), and `budget` others; [`Self::attaches_left`] says whether
    /// more wait for [`Self::attach_found`]. `since`: when the oldest change it enforces
    /// arrived.
    pub fn finish(
        &mut self,
        done: CompileDone,
        netns: Option<&NetNs>,
        since: Instant,
        first: &BTreeSet<ObjectRef>,
        budget: usize,
    ) -> anyhow::Result<SyncReport> {
        let CompileDone {
            compiler,
            compiled,
            names,
        } = done;
        self.compiler = Some(compiler);
        for c in (compiled.conflicts.iter()).filter(|c| !self.compiled.conflicts.contains(c)) {
            tracing::warn!(conflict = %c);
        }
        let report = self.datapath.sync(&compiled)?;
        // The maps no longer use the ids this compile (and any before it) dropped.
        if let Some(compiler) = self.compiler.as_mut() {
            compiler.compiler().written();
        }
        // Only pods this compile wrote an entry for: one found while it ran waits for
        // the next sync.
        self.attach_to(netns, &compiled, first, budget);
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
        self.names = names;
        self.compiled = compiled;
        self.syncs += 1;
        self.metrics.set_ready(self.ready());
        Ok(report)
    }

    /// Attaches the programs for up to `budget` pods whose interface was found and whose
    /// endpoint entry the last successful sync wrote, besides those in `first`. Each
    /// attach waits for the kernel (a TCX attach waits out an RCU grace period), so a
    /// node with many new interfaces is attached a few at a time.
    pub fn attach_found(
        &mut self,
        netns: Option<&NetNs>,
        first: &BTreeSet<ObjectRef>,
        budget: usize,
    ) {
        let compiled = std::mem::take(&mut self.compiled);
        self.attach_to(netns, &compiled, first, budget);
        self.compiled = compiled;
        if self.retry.is_none() {
            self.metrics.set_ready(self.ready());
        }
    }

    /// Whether pods wait for [`Self::attach_found`].
    pub fn attaches_left(&self) -> bool {
        self.attaches_left
    }

    fn attach_to(
        &mut self,
        netns: Option<&NetNs>,
        compiled: &Compiled,
        first: &BTreeSet<ObjectRef>,
        budget: usize,
    ) {
        // Only interfaces whose endpoint entry the maps hold: attached without one, a
        // pod's traffic would all be dropped (one found after the last sync began waits
        // for the next).
        let (firsts, others): (Vec<_>, Vec<_>) = self
            .pods
            .to_attach()
            .into_iter()
            .filter(|(pod, iface)| {
                compiled.endpoints.contains_key(pod) && self.datapath.has_endpoint(iface.index)
            })
            .partition(|(pod, _)| first.contains(pod));
        self.attaches_left = others.len() > budget;
        self.first_attached |= !self.attaches_left;
        for (pod, iface) in firsts.into_iter().chain(others.into_iter().take(budget)) {
            match self.datapath.attach(&pod, netns, &iface.name, iface.index) {
                Ok(_) => {
                    tracing::info!(%pod, interface = %iface.name, "attached");
                    self.pods.set_attached(&pod);
                }
                Err(e) => {
                    // Looked up again next time (the interface may have gone meanwhile).
                    self.pods.forget_interface(&pod);
                    let e = format!("attaching to {} for {pod}: {e}", iface.name);
                    self.pods
                        .set_not_attached(&pod, PodState::Waiting(e.clone()));
                    self.errors.push(e);
                }
            }
        }
    }

    /// Records how a sync ended: a success clears the backoff; a failure leaves the last
    /// state enforced and schedules the next attempt later than the last (jittered).
    /// Returns the failure's message.
    pub fn record(
        &mut self,
        outcome: anyhow::Result<SyncReport>,
        now: tokio::time::Instant,
    ) -> Result<SyncReport, String> {
        match outcome {
            Ok(report) => {
                if let Some(retry) = self.retry.take() {
                    tracing::info!(failures = retry.failures(), "sync succeeded again");
                }
                Ok(report)
            }
            Err(e) => {
                // `/readyz` says the maps may lag the cluster.
                self.metrics.set_ready(false);
                self.metrics.sync_failures.inc();
                let e = format!("sync failed: {e:#}");
                match &mut self.retry {
                    Some(retry) => retry.failed_again(now, e.clone()),
                    None => self.retry = Some(SyncRetry::after_first_failure(now, e.clone())),
                }
                self.errors.push(e.clone());
                Err(e)
            }
        }
    }

    /// One whole step on the calling thread: forgets the pods not in `local`, takes in
    /// `lookups`, compiles `cluster` for `node`, writes and attaches, and records the
    /// outcome at `now`. (The agent runs the same halves with the compile elsewhere.)
    pub fn reconcile(
        &mut self,
        cluster: &Cluster,
        node: NodeConfig,
        local: &BTreeSet<ObjectRef>,
        lookups: Vec<(ObjectRef, Lookup)>,
        now: tokio::time::Instant,
    ) -> Result<SyncReport, String> {
        let since = Instant::now();
        self.forget_gone(local);
        self.settle(lookups);
        let outcome = self
            .start(&Arc::new(cluster.clone()), node)
            .and_then(|job| self.finish(job.run(), None, since, &BTreeSet::new(), usize::MAX));
        self.record(outcome, now)
    }
}
