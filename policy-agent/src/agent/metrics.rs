//! Prometheus metrics, `/healthz` and `/readyz`.
//!
//! Counters of the datapath (packets by direction, verdict and reason) and map fill levels
//! are read from a snapshot the agent refreshes after every sync and every few seconds;
//! sync latency and watch restarts are recorded as they happen.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, http::StatusCode, routing::get};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::flows::FlowCounters;
use crate::source::Kind;

/// Datapath state for the collector.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Packets and bytes by (direction, verdict, reason).
    pub packets: Vec<((String, String, String), u64, u64)>,
    /// Entries and capacity by map.
    pub maps: Vec<(String, usize, u64)>,
    /// Local endpoints.
    pub endpoints: usize,
    /// Local pods whose interface the agent refuses (not the pod's alone).
    pub refused: usize,
    /// Policies in the cluster.
    pub policies: usize,
    /// Policies rejected by validation or for lack of room in the maps.
    pub rejected: usize,
    /// Rejected objects by (reason, what is in force instead).
    pub rejected_objects: BTreeMap<(&'static str, &'static str), usize>,
    /// Maps that are full (something was left out of them).
    pub full_maps: usize,
    /// Addresses several running pods claim.
    pub address_conflicts: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkLabel {
    work: &'static str,
}

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Seconds from a change to its last map write.
    pub sync_latency: Histogram,
    /// Watch (re)lists after the first, by resource.
    watch_restarts: Family<ResourceLabel, Counter>,
    /// Errors reported by the source.
    pub source_errors: Counter,
    /// Syncs that failed (each is retried after a backoff).
    pub sync_failures: Counter,
    /// Map entries a full resync found changed behind the agent's back, and corrected.
    pub drift_corrected: Counter,
    /// Interfaces refused as not a single pod's, by reason.
    interface_refusals: Family<ReasonLabel, Counter>,
    /// How long each turn of the agent's loop kept it from the local API, by work.
    loop_busy: Family<WorkLabel, Histogram, fn() -> Histogram>,
    snapshot: Arc<Mutex<Snapshot>>,
    /// Flow records read, lost and missed, counted as they go.
    pub flows: Arc<FlowCounters>,
    ready: AtomicBool,
}

#[derive(Debug)]
struct SnapshotCollector(Arc<Mutex<Snapshot>>, Arc<FlowCounters>);

impl SnapshotCollector {
    /// Flow records read by verdict, and those lost or missed by cause.
    fn encode_flows(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let kind = ConstCounter::new(0u64).metric_type();
        let mut records = encoder.encode_descriptor(
            "policy_agent_flow_records",
            "Flow records read from the datapath, by verdict",
            None,
            kind,
        )?;
        for (verdict, n) in [("allow", &self.1.allowed), ("drop", &self.1.dropped)] {
            ConstCounter::new(load(n)).encode(records.encode_family(&[("verdict", verdict)])?)?;
        }
        let mut lost = encoder.encode_descriptor(
            "policy_agent_flow_records_lost",
            "Flow records not delivered, by cause: ring-buffer-full (the datapath had no room, \
             counted since the maps were made) or slow-subscriber (a flows client read too slowly)",
            None,
            kind,
        )?;
        for (cause, n) in [
            ("ring-buffer-full", &self.1.ring_buffer_full),
            ("slow-subscriber", &self.1.slow_subscriber),
        ] {
            ConstCounter::new(load(n)).encode(lost.encode_family(&[("cause", cause)])?)?;
        }
        Ok(())
    }
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_flows(&mut encoder)?;
        let s = self.0.lock().expect("not poisoned").clone();
        // (name, help, counts bytes rather than packets)
        let counters = [
            (
                "policy_agent_packets",
                "Packets decided by the datapath, by direction, verdict and reason",
                false,
            ),
            (
                "policy_agent_bytes",
                "Bytes decided by the datapath, by direction, verdict and reason",
                true,
            ),
        ];
        for (name, help, of_bytes) in counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for ((direction, verdict, reason), packets, bytes) in &s.packets {
                let labels = [
                    ("direction", direction.as_str()),
                    ("verdict", verdict.as_str()),
                    ("reason", reason.as_str()),
                ];
                ConstCounter::new(if of_bytes { *bytes } else { *packets })
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let gauge = ConstGauge::new(0i64);
        let mut entries = encoder.encode_descriptor(
            "policy_agent_map_entries",
            "Entries in each BPF map",
            None,
            gauge.metric_type(),
        )?;
        for (map, n, _) in &s.maps {
            ConstGauge::new(*n as i64).encode(entries.encode_family(&[("map", map.as_str())])?)?;
        }
        let mut capacity = encoder.encode_descriptor(
            "policy_agent_map_capacity",
            "Maximum entries of each BPF map",
            None,
            gauge.metric_type(),
        )?;
        for (map, _, cap) in &s.maps {
            ConstGauge::new(i64::try_from(*cap).unwrap_or(i64::MAX))
                .encode(capacity.encode_family(&[("map", map.as_str())])?)?;
        }
        let mut rejected = encoder.encode_descriptor(
            "policy_agent_rejected_objects",
            "Objects whose latest version the agent rejected, by reason (unreadable, invalid, \
             manifest) and what is enforced instead (last-good, fail-closed, nothing)",
            None,
            gauge.metric_type(),
        )?;
        for ((reason, in_force), n) in &s.rejected_objects {
            ConstGauge::new(*n as i64)
                .encode(rejected.encode_family(&[("reason", *reason), ("in_force", *in_force)])?)?;
        }
        for (name, help, value) in [
            ("policy_agent_endpoints", "Local pods enforced", s.endpoints),
            (
                "policy_agent_endpoints_refused",
                "Local pods not enforced because their interface is not theirs alone",
                s.refused,
            ),
            (
                "policy_agent_policies",
                "NetworkPolicies in the cluster",
                s.policies,
            ),
            (
                "policy_agent_rejected_policies",
                "NetworkPolicies rejected by validation or for lack of room in the maps (enforced fail-closed)",
                s.rejected,
            ),
            (
                "policy_agent_full_maps",
                "Maps that are full: something was left out of them (see status)",
                s.full_maps,
            ),
            (
                "policy_agent_address_conflicts",
                "Addresses several running pods claim (one of them keeps each)",
                s.address_conflicts,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            ConstGauge::new(value as i64).encode(metric)?;
        }
        Ok(())
    }
}

/// Sync latency buckets: 1 ms to about 16 s.
const LATENCY_BUCKETS: (f64, f64, u16) = (0.001, 2.0, 15);
/// Loop turn buckets: 100 us to about 3 s.
const BUSY_BUCKETS: (f64, f64, u16) = (0.0001, 2.0, 15);

impl Metrics {
    /// Fresh metrics.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let sync_latency = Histogram::new(exponential_buckets(
            LATENCY_BUCKETS.0,
            LATENCY_BUCKETS.1,
            LATENCY_BUCKETS.2,
        ));
        registry.register(
            "policy_agent_sync_latency_seconds",
            "From a cluster change to its last map write",
            sync_latency.clone(),
        );
        let watch_restarts = Family::<ResourceLabel, Counter>::default();
        // Every resource reports from the start, so that a restart is an increase.
        for kind in Kind::ALL {
            let _ = watch_restarts.get_or_create(&ResourceLabel {
                resource: kind.as_str().to_owned(),
            });
        }
        registry.register(
            "policy_agent_watch_restarts",
            "Watches that listed again (after an error, a timeout or 410 Gone)",
            watch_restarts.clone(),
        );
        let source_errors = Counter::default();
        registry.register(
            "policy_agent_source_errors",
            "Errors reported by the source (API unreachable, bad objects)",
            source_errors.clone(),
        );
        let sync_failures = Counter::default();
        registry.register(
            "policy_agent_sync_failures",
            "Syncs that failed; each is retried with exponential backoff while the last state stays enforced",
            sync_failures.clone(),
        );
        let drift_corrected = Counter::default();
        registry.register(
            "policy_agent_drift_corrected",
            "Map entries a periodic full resync found changed behind the agent's back, and corrected",
            drift_corrected.clone(),
        );
        let interface_refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "policy_agent_interface_refusals",
            "Pod interfaces refused as not one pod's alone (bridge, uplink, shared), by reason",
            interface_refusals.clone(),
        );
        let loop_busy: Family<WorkLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(
                    BUSY_BUCKETS.0,
                    BUSY_BUCKETS.1,
                    BUSY_BUCKETS.2,
                ))
            });
        registry.register(
            "policy_agent_loop_busy_seconds",
            "How long one turn of the agent's loop kept it from answering the local API \
             (CNI ADD, status), by the work it did",
            loop_busy.clone(),
        );
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let flows = Arc::new(FlowCounters::default());
        registry.register_collector(Box::new(SnapshotCollector(
            Arc::clone(&snapshot),
            Arc::clone(&flows),
        )));
        Arc::new(Self {
            registry,
            sync_latency,
            watch_restarts,
            source_errors,
            sync_failures,
            drift_corrected,
            interface_refusals,
            loop_busy,
            snapshot,
            flows,
            ready: AtomicBool::new(false),
        })
    }

    /// Counts a relist of `resource`.
    pub fn watch_restarted(&self, resource: &str) {
        self.watch_restarts
            .get_or_create(&ResourceLabel {
                resource: resource.to_owned(),
            })
            .inc();
    }

    /// Counts an interface refused for `reason` (a [`super::interfaces::Refusal::kind`]).
    pub fn interface_refused(&self, reason: &str) {
        self.interface_refusals
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records that one turn of the agent's loop did `work` for `busy`.
    pub fn loop_busy(&self, work: &'static str, busy: std::time::Duration) {
        self.loop_busy
            .get_or_create(&WorkLabel { work })
            .observe(busy.as_secs_f64());
    }

    /// Replaces the datapath snapshot.
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        *self.snapshot.lock().expect("not poisoned") = snapshot;
    }

    /// Marks the agent ready (its last sync wrote a complete state to the maps) or not (it
    /// failed: the maps may lag the cluster until a sync succeeds again).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// The metrics address could not be bound (the cause is the source, which `{:#}` prints).
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {address} (--metrics-address; `none` disables metrics)")]
pub struct BindError {
    /// The address asked for.
    pub address: SocketAddr,
    /// Why (in use, not an address of this host, a privileged port...).
    #[source]
    pub source: std::io::Error,
}

/// Binds the metrics address. At startup, before anything else: an operator who asked for
/// metrics on a port must get them or an error, never an agent that enforces while its
/// `/readyz` and `/metrics` are not there (or are another process's).
pub fn bind(address: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    let error = |source| BindError { address, source };
    let listener = std::net::TcpListener::bind(address).map_err(error)?;
    // Tokio's listener needs a non-blocking socket.
    listener.set_nonblocking(true).map_err(error)?;
    Ok(listener)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` (from [`bind`]) until the task
/// is dropped.
pub async fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let ready = Arc::clone(&metrics);
    let app = Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        );
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, app).await?;
    Ok(())
}
