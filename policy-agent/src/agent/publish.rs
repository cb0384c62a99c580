//! What the agent tells people: status and metrics snapshots, flow records, lint
//! warnings (linted off the task), and tables prepared between syncs.

use std::collections::BTreeMap;

use policy_common::{maps::Direction, reason::reason_name};
use tokio::sync::mpsc;

use super::{
    Agent,
    metrics::Snapshot,
    pods::PodState,
    retry::SyncRetry,
    status::{EndpointStatus, MapStatus, Status},
};
use crate::{
    cni::install,
    datapath::Datapath,
    model::Cluster,
    semantics::{ParsedPolicy, lint},
};

impl<D: Datapath> Agent<D> {
    pub(super) fn prepare_tables(&mut self) {
        if let Err(e) = self.reconciler.datapath_mut().prepare_tables(1) {
            self.error(format!("preparing conntrack tables: {e}"));
        }
    }

    /// Starts linting the policies on a blocking thread if they may have changed and no
    /// lint runs; the warnings come back through `done`. Warnings are for people: they
    /// follow at a status refresh, and a big cluster's lint never holds up the task.
    pub(super) fn start_lint(&mut self, done: &mpsc::Sender<Vec<String>>) {
        if self.linting || !std::mem::take(&mut self.lint_due) {
            return;
        }
        self.linting = true;
        let cluster = std::sync::Arc::clone(&self.source.cluster);
        let done = done.clone();
        tokio::task::spawn_blocking(move || {
            let _ = done.blocking_send(lint_warnings(&cluster));
        });
    }

    /// Takes in the warnings of a lint, logging those that are new.
    pub(super) fn linted(&mut self, warnings: Vec<String>) {
        self.linting = false;
        for w in warnings.iter().filter(|w| !self.warnings.contains(w)) {
            tracing::warn!(warning = %w);
        }
        self.warnings = warnings;
    }

    /// Rejected objects by (reason, what is in force instead), for metrics.
    fn rejected_objects(&self) -> BTreeMap<(&'static str, &'static str), usize> {
        let mut out = BTreeMap::new();
        let mut count = |reason, in_force| *out.entry((reason, in_force)).or_default() += 1;
        for _ in &self.source.load_errors {
            // The directory source keeps the last good version of what it cannot read, or
            // enforces a policy that never read fail-closed; its errors say which.
            count("manifest", "last-good-or-fail-closed");
        }
        for r in self.source.rejections.values() {
            count(r.reason.as_str(), r.in_force.as_str());
        }
        for _ in &self.reconciler.compiled().rejected {
            count("invalid", "fail-closed");
        }
        out
    }

    /// Sends waiting flow records to API clients and the log.
    pub(super) fn forward_flows(&mut self) {
        let datapath = self.reconciler.datapath_mut();
        self.flows
            .forward(|buffer, max| datapath.drain_events_into(buffer, max));
    }

    /// Refreshes the status and metrics snapshot.
    pub(super) fn publish(&mut self) {
        self.publish_due = false;
        let mut packets = BTreeMap::new();
        if let Ok(stats) = self.reconciler.datapath().stats() {
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
        let fill = self.reconciler.datapath().fill();
        self.metrics.set_snapshot(Snapshot {
            packets: packets.into_iter().map(|(k, (p, b))| (k, p, b)).collect(),
            maps: fill
                .iter()
                .map(|(n, e, c)| ((*n).to_owned(), *e, *c))
                .collect(),
            endpoints: self.reconciler.pods().attached(),
            refused: self.reconciler.pods().refused(),
            policies: self.source.cluster.policies.len(),
            rejected: self.reconciler.compiled().rejected.len(),
            rejected_objects: self.rejected_objects(),
            full_maps: self.reconciler.compiled().full.len()
                + usize::from(!self.reconciler.datapath().left_out().is_empty()),
            address_conflicts: self.reconciler.compiled().conflicts.len(),
        });

        let endpoints = self
            .source
            .cluster
            .pods_on(&self.config.node_name)
            .filter(|p| !p.host_network)
            .map(|p| {
                let info = self.reconciler.compiled().endpoints.get(&p.id);
                let state = self.reconciler.pods().get(&p.id);
                EndpointStatus {
                    pod: p.id.to_string(),
                    interface: self
                        .reconciler
                        .pods()
                        .interface(&p.id)
                        .map(|i| i.name.clone()),
                    attached: self.reconciler.pods().is_attached(&p.id),
                    refused: self.reconciler.pods().refusal(&p.id).is_some(),
                    reason: state.and_then(PodState::not_attached),
                    ingress_isolated: info.is_some_and(|i| i.is_isolated(Direction::Ingress)),
                    egress_isolated: info.is_some_and(|i| i.is_isolated(Direction::Egress)),
                }
            })
            .collect();
        let status = Status {
            node: self.config.node_name.clone(),
            pin_dir: self.reconciler.datapath().pin_dir().display().to_string(),
            source: self.config.source.clone(),
            ready: self.reconciler.ready(),
            syncs: self.reconciler.syncs(),
            source_events: self.events_synced,
            source_events_seen: self.source.events(),
            syncing: self.reconciler.compiling(),
            cni: self.config.cni_conf_dir.as_deref().map(install::status),
            policies: self.source.cluster.policies.len(),
            endpoints,
            not_enforced: (self.reconciler.compiled().warnings.iter().cloned())
                .chain(self.reconciler.datapath().left_out().iter().map(|pod| {
                    format!(
                        "pod {pod}: ENDPOINTS is full: its traffic is dropped until it fits; \
                         raise --map-size endpoints"
                    )
                }))
                .collect(),
            map_sizes: self.config.map_sizes.to_string(),
            tunnel_ports: self.tunnel_ports.iter().copied().collect(),
            full: self.reconciler.compiled().full.clone(),
            flows: self.flows.status(self.reconciler.datapath().events_lost()),
            maps: fill
                .into_iter()
                .map(|(name, entries, capacity)| MapStatus {
                    name: name.to_owned(),
                    entries,
                    capacity,
                })
                .collect(),
            last_sync: self.reconciler.last_sync().cloned(),
            sync_failures: self.reconciler.retry().map_or(0, SyncRetry::failures),
            sync_error: self.reconciler.retry().map(|r| r.last_error().to_owned()),
            rejected: self
                .source
                .load_errors
                .iter()
                .cloned()
                .chain(self.source.rejections.values().map(ToString::to_string))
                .chain(
                    self.reconciler
                        .compiled()
                        .rejected
                        .iter()
                        .map(ToString::to_string),
                )
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

/// The lint warnings about the valid policies of `cluster`.
fn lint_warnings(cluster: &Cluster) -> Vec<String> {
    let valid: Vec<ParsedPolicy> = cluster
        .policies
        .values()
        .filter_map(|p| ParsedPolicy::parse(p).ok())
        .collect();
    lint::lint(cluster, &valid)
        .iter()
        .map(ToString::to_string)
        .collect()
}
