//! Flow records: the datapath's ring-buffer events with names instead of numbers.
//!
//! The agent's cost per record is what the issue "fast at cluster scale" measured: at
//! 20,000 new connections a second a record built for every event, whether anyone read it
//! or not, took a third of a core. So records travel as they come from the kernel:
//!
//! - The [`FlowForwarder`] takes them from the ring buffer in batches into a buffer it
//!   reuses, counts them by verdict (two atomic additions per batch) and does nothing else
//!   unless someone reads them: the log (`RUST_LOG=flows=debug`) or a subscriber.
//! - Subscribers ([`Flows::subscribe`], the `flows` API) get the raw batch with the names
//!   it was decided under (shared, not copied) and turn each event into a [`FlowRecord`]
//!   themselves, on their own task, as they read it.
//! - Nothing is lost silently: records the kernel had no room for are counted by the
//!   datapath (COUNTERS), records a slow subscriber missed by the subscriber, and both are
//!   in the metrics and `status` ([`FlowCounters`]).
//!
//! Records are not aggregated per flow: the datapath already reports one record per new
//! allowed connection (its first packet) and one per dropped packet, and `flows` users read
//! it like `hubble observe`, as a stream of decisions, where a count per flow would hide
//! when each happened. What a flood of drops costs is bounded by the ring buffer and the
//! batch size, and counted.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use nix::time::{ClockId, clock_gettime};
use policy_common::{
    event::FlowEvent,
    maps::Direction,
    net::{FAMILY_IPV4, FAMILY_IPV6, proto},
    reason::{DropReason, Verdict, reason_name},
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{
    compiler::Compiled,
    model::{Cluster, ObjectRef},
};

/// One decided packet: a drop, or the first packet of an allowed flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// When, RFC 3339.
    pub time: String,
    /// Node that decided.
    pub node: String,
    /// The pod the verdict is for (`None`: an interface with no endpoint).
    pub pod: Option<String>,
    /// `ingress` (into the pod) or `egress` (out of it).
    pub direction: String,
    /// `allow` or `drop`.
    pub verdict: String,
    /// Why (e.g. `policy`, `policy-denied`, `spoofed-source`).
    pub reason: String,
    /// The policy whose rule allowed the flow.
    pub policy: Option<String>,
    /// For a flow the policy denied: the policies that isolate the pod in that direction
    /// (none of whose rules allowed it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<String>,
    /// Protocol name.
    pub protocol: String,
    /// The pod's address and port.
    pub local: String,
    /// The peer's address and port.
    pub remote: String,
    /// The peer, when it is a pod.
    pub remote_pod: Option<String>,
}

impl fmt::Display for FlowRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arrow = if self.direction == "ingress" {
            "<-"
        } else {
            "->"
        };
        let pod = self.pod.as_deref().unwrap_or("?");
        let peer = self
            .remote_pod
            .as_ref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        write!(
            f,
            "{} {:<5} {pod} {} {arrow} {}{peer} {} {}",
            self.time, self.verdict, self.local, self.remote, self.protocol, self.reason
        )?;
        if let Some(policy) = &self.policy {
            write!(f, " by {policy}")?;
        }
        if !self.isolated_by.is_empty() {
            write!(f, " (isolated by {})", self.isolated_by.join(", "))?;
        }
        Ok(())
    }
}

/// What turns numbers into names: the last compilation and the cluster it came from.
#[derive(Clone, Debug, Default)]
pub struct Names {
    node: String,
    endpoints: BTreeMap<u32, ObjectRef>,
    policies: BTreeMap<u32, ObjectRef>,
    isolating: BTreeMap<(u32, u8), Vec<u32>>,
    pods_by_ip: BTreeMap<IpAddr, ObjectRef>,
}

impl Names {
    /// Names as of `compiled`.
    pub fn new(node: &str, cluster: &Cluster, compiled: &Compiled) -> Self {
        Self {
            node: node.to_owned(),
            endpoints: compiled
                .endpoints
                .iter()
                .map(|(pod, info)| (info.endpoint_id, pod.clone()))
                .collect(),
            policies: compiled.policy_names.clone(),
            isolating: compiled
                .isolating
                .iter()
                .filter_map(|((pod, dir), ids)| {
                    let ep = compiled.endpoints.get(pod)?.endpoint_id;
                    Some(((ep, *dir as u8), ids.clone()))
                })
                .collect(),
            pods_by_ip: cluster
                .pods
                .values()
                .flat_map(|p| p.ips.iter().map(|ip| (*ip, p.id.clone())))
                .collect(),
        }
    }

    /// The record of an event.
    pub fn record(&self, e: &FlowEvent) -> FlowRecord {
        let ip = |a: &[u8; 16]| -> Option<IpAddr> {
            match e.family {
                FAMILY_IPV4 => Some(Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()),
                FAMILY_IPV6 => Some(Ipv6Addr::from(*a).into()),
                _ => None,
            }
        };
        let endpoint = |addr: Option<IpAddr>, port: u16| match addr {
            Some(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            Some(v4) => format!("{v4}:{port}"),
            None => "-".to_owned(),
        };
        let remote = ip(&e.remote_addr);
        FlowRecord {
            time: wall_clock(e.timestamp_ns),
            node: self.node.clone(),
            pod: self.endpoints.get(&e.endpoint_id).map(ToString::to_string),
            direction: Direction::from_u8(e.direction)
                .map_or("?", Direction::as_str)
                .to_owned(),
            verdict: Verdict::from_u8(e.verdict)
                .map_or("?", Verdict::as_str)
                .to_owned(),
            reason: reason_name(e.verdict, e.reason).to_owned(),
            policy: self.policies.get(&e.policy_id).map(ToString::to_string),
            isolated_by: if e.verdict == Verdict::Drop as u8
                && e.reason == DropReason::PolicyDenied as u8
            {
                self.isolating
                    .get(&(e.endpoint_id, e.direction))
                    .into_iter()
                    .flatten()
                    .filter_map(|id| self.policies.get(id))
                    .map(ToString::to_string)
                    .collect()
            } else {
                Vec::new()
            },
            protocol: if e.family == 0 {
                "non-IP".to_owned()
            } else {
                proto::name(e.proto).to_owned()
            },
            local: endpoint(ip(&e.local_addr), e.local_port),
            remote: endpoint(remote, e.remote_port),
            remote_pod: remote
                .and_then(|r| self.pods_by_ip.get(&r))
                .map(ToString::to_string),
        }
    }
}

/// An event's boot-time clock reading as wall-clock time.
fn wall_clock(monotonic_ns: u64) -> String {
    let now_mono = clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| Duration::from(t).as_nanos() as u64)
        .unwrap_or(monotonic_ns);
    let age = Duration::from_nanos(now_mono.saturating_sub(monotonic_ns));
    let at = SystemTime::now() - age;
    jiff::Timestamp::try_from(at)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// How often the agent collects flow records without being woken: the datapath wakes it
/// only each time another [`policy_common::event::WAKEUP_BYTES`] of records wait, so this
/// bounds how late a record reaches `flows` when few come.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Records taken from the ring buffer per batch: a bound on the memory of one batch, and
/// on how long the agent's task is busy with records before it looks at anything else.
pub const BATCH_RECORDS: usize = 4096;

/// What happened to flow records, counted as it happens (atomics: no lock, no allocation).
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// Records of allowed flows read from the ring buffer.
    pub allowed: AtomicU64,
    /// Records of dropped packets read from the ring buffer.
    pub dropped: AtomicU64,
    /// Records the datapath had no room for in the ring buffer (as COUNTERS last said).
    pub ring_buffer_full: AtomicU64,
    /// Records subscribers missed because they read too slowly (each subscriber counts its
    /// own).
    pub slow_subscriber: AtomicU64,
}

impl FlowCounters {
    /// The counts, for `status`.
    pub fn status(&self, subscribers: usize) -> FlowStatus {
        FlowStatus {
            records: self.allowed.load(Ordering::Relaxed) + self.dropped.load(Ordering::Relaxed),
            lost_ring_buffer_full: self.ring_buffer_full.load(Ordering::Relaxed),
            missed_by_slow_subscribers: self.slow_subscriber.load(Ordering::Relaxed),
            subscribers,
        }
    }
}

/// Flow records in `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStatus {
    /// Records read from the ring buffer since the agent started.
    pub records: u64,
    /// Records the datapath could not write because the ring buffer was full (since the
    /// maps were made: the count survives restarts).
    pub lost_ring_buffer_full: u64,
    /// Records `flows` clients missed because they read too slowly.
    pub missed_by_slow_subscribers: u64,
    /// `flows` clients now.
    pub subscribers: usize,
}

/// Records as the kernel wrote them, with the names they were decided under.
#[derive(Debug)]
pub struct FlowBatch {
    /// Sequence number of the first record (records are numbered from 0 as read).
    first: u64,
    names: Arc<Names>,
    events: Vec<FlowEvent>,
}

/// Where flow records go: the agent sends batches, clients subscribe.
#[derive(Clone, Debug)]
pub struct Flows {
    tx: broadcast::Sender<Arc<FlowBatch>>,
    /// Sequence number of the next record read from the ring buffer.
    next: Arc<AtomicU64>,
    counters: Arc<FlowCounters>,
}

impl Flows {
    /// A stream holding at most `batches` batches for its slowest subscriber; what it
    /// misses is counted in `counters`.
    pub fn new(batches: usize, counters: Arc<FlowCounters>) -> Self {
        let (tx, _) = broadcast::channel(batches);
        Self {
            tx,
            next: Arc::default(),
            counters,
        }
    }

    /// Records from now on.
    pub fn subscribe(&self) -> FlowSubscription {
        FlowSubscription {
            rx: self.tx.subscribe(),
            batch: None,
            at: 0,
            next: self.next.load(Ordering::Acquire),
            counters: Arc::clone(&self.counters),
        }
    }

    /// Clients reading records now.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// The counts.
    pub fn counters(&self) -> &FlowCounters {
        &self.counters
    }
}

/// The stream ended: the agent stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the agent stopped sending flow records")]
pub struct FlowsClosed;

/// One client's records. A client that falls more than the stream's buffer behind misses
/// the oldest; the miss is counted ([`FlowCounters::slow_subscriber`]), never waited for.
#[derive(Debug)]
pub struct FlowSubscription {
    rx: broadcast::Receiver<Arc<FlowBatch>>,
    batch: Option<Arc<FlowBatch>>,
    /// The next event of `batch`.
    at: usize,
    /// The sequence number expected next.
    next: u64,
    counters: Arc<FlowCounters>,
}

impl FlowSubscription {
    /// The next record, named and formatted here (on the reader's task).
    pub async fn recv(&mut self) -> Result<FlowRecord, FlowsClosed> {
        loop {
            if let Some(record) = self.next_in_batch() {
                return Ok(record);
            }
            let batch = match self.rx.recv().await {
                Ok(batch) => batch,
                // The gap is counted from the sequence numbers of the next batch.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Err(FlowsClosed),
            };
            // A batch sent while this subscription was made may start before `next`.
            let missed = batch.first.saturating_sub(self.next);
            self.counters
                .slow_subscriber
                .fetch_add(missed, Ordering::Relaxed);
            self.next = batch.first + batch.events.len() as u64;
            self.at = 0;
            self.batch = Some(batch);
        }
    }
}

impl FlowSubscription {
    /// The next record of the batch being read, if any is left, without waiting (so that
    /// a reader can write a whole batch at once).
    pub fn next_in_batch(&mut self) -> Option<FlowRecord> {
        let batch = self.batch.as_ref()?;
        let event = batch.events.get(self.at)?;
        self.at += 1;
        Some(batch.names.record(event))
    }
}

/// Takes records from the datapath to their readers (see the module's docs).
#[derive(Debug)]
pub struct FlowForwarder {
    flows: Flows,
    names: Arc<Names>,
    /// Records of the batch being read; reused while nobody subscribes.
    buffer: Vec<FlowEvent>,
}

impl FlowForwarder {
    /// Sends to `flows`.
    pub fn new(flows: Flows) -> Self {
        Self {
            flows,
            names: Arc::default(),
            buffer: Vec::new(),
        }
    }

    /// Names records from now on as `names` says (after a sync).
    pub fn set_names(&mut self, names: Names) {
        self.names = Arc::new(names);
    }

    /// The names records get now.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The counts for `status`, with `lost_in_kernel` (from the datapath's COUNTERS) as the
    /// records the ring buffer had no room for.
    pub fn status(&self, lost_in_kernel: u64) -> FlowStatus {
        let counters = self.flows.counters();
        counters
            .ring_buffer_full
            .store(lost_in_kernel, Ordering::Relaxed);
        counters.status(self.flows.subscribers())
    }

    /// Reads every waiting record with `drain` (which appends at most the given number of
    /// records to the buffer and says how many), counts them and hands them to whoever
    /// reads them; returns how many it read.
    pub fn forward(&mut self, mut drain: impl FnMut(&mut Vec<FlowEvent>, usize) -> usize) -> u64 {
        let mut total = 0;
        loop {
            self.buffer.clear();
            let n = drain(&mut self.buffer, BATCH_RECORDS);
            if n == 0 {
                break;
            }
            total += n as u64;
            self.count();
            if tracing::enabled!(target: "flows", tracing::Level::DEBUG) {
                for event in &self.buffer {
                    let record = self.names.record(event);
                    tracing::debug!(target: "flows", "{record}");
                }
            }
            // Before the send: a subscription made after this expects the next batch.
            let first = self.flows.next.fetch_add(n as u64, Ordering::AcqRel);
            if self.flows.subscribers() > 0 {
                let events = std::mem::replace(&mut self.buffer, Vec::with_capacity(n));
                let batch = FlowBatch {
                    first,
                    names: Arc::clone(&self.names),
                    events,
                };
                // Every subscriber may have gone since: nobody misses the batch then.
                let _ = self.flows.tx.send(Arc::new(batch));
            }
            if n < BATCH_RECORDS {
                break;
            }
        }
        total
    }

    /// Counts the buffer's records by verdict.
    fn count(&self) {
        let dropped = self
            .buffer
            .iter()
            .filter(|e| e.verdict == Verdict::Drop as u8)
            .count() as u64;
        let counters = self.flows.counters();
        counters.dropped.fetch_add(dropped, Ordering::Relaxed);
        counters
            .allowed
            .fetch_add(self.buffer.len() as u64 - dropped, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use policy_common::reason::AllowReason;

    use super::*;

    fn event(verdict: Verdict, port: u16) -> FlowEvent {
        FlowEvent {
            family: FAMILY_IPV4,
            proto: proto::TCP,
            verdict: verdict as u8,
            reason: match verdict {
                Verdict::Drop => DropReason::PolicyDenied as u8,
                Verdict::Allow => AllowReason::Policy as u8,
            },
            local_port: port,
            ..FlowEvent::default()
        }
    }

    /// A datapath stand-in: hands out `waiting` as the ring buffer would.
    fn drain_from(waiting: &mut Vec<FlowEvent>) -> impl FnMut(&mut Vec<FlowEvent>, usize) -> usize {
        move |out, max| {
            let n = waiting.len().min(max);
            out.extend(waiting.drain(..n));
            n
        }
    }

    #[test]
    fn records_are_counted_even_when_nobody_reads_them() {
        let counters = Arc::new(FlowCounters::default());
        let mut forwarder = FlowForwarder::new(Flows::new(4, Arc::clone(&counters)));
        let mut waiting: Vec<FlowEvent> = (0..BATCH_RECORDS as u16 + 10)
            .map(|i| {
                event(
                    if i % 3 == 0 {
                        Verdict::Drop
                    } else {
                        Verdict::Allow
                    },
                    i,
                )
            })
            .collect();
        let drops = waiting
            .iter()
            .filter(|e| e.verdict == Verdict::Drop as u8)
            .count() as u64;
        let total = waiting.len() as u64;
        assert_eq!(forwarder.forward(drain_from(&mut waiting)), total);
        assert!(
            waiting.is_empty(),
            "every record taken, over several batches"
        );
        let status = counters.status(0);
        assert_eq!(status.records, total);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), drops);
        assert_eq!(status.missed_by_slow_subscribers, 0);
    }

    #[tokio::test]
    async fn a_subscriber_gets_every_record_in_order_with_names() {
        let counters = Arc::new(FlowCounters::default());
        let flows = Flows::new(4, Arc::clone(&counters));
        let mut forwarder = FlowForwarder::new(flows.clone());
        let mut sub = flows.subscribe();
        for round in 0..3u16 {
            let mut waiting = vec![
                event(Verdict::Allow, round * 2),
                event(Verdict::Drop, round * 2 + 1),
            ];
            forwarder.forward(drain_from(&mut waiting));
        }
        for port in 0..6u16 {
            let record = sub.recv().await.unwrap();
            assert_eq!(record.local, format!("0.0.0.0:{port}"));
            let verdict = if port % 2 == 0 { "allow" } else { "drop" };
            assert_eq!(record.verdict, verdict);
        }
        assert_eq!(counters.status(1).missed_by_slow_subscribers, 0);
    }

    #[tokio::test]
    async fn what_a_slow_subscriber_misses_is_counted_exactly() {
        let counters = Arc::new(FlowCounters::default());
        let flows = Flows::new(2, Arc::clone(&counters));
        let mut forwarder = FlowForwarder::new(flows.clone());
        let mut sub = flows.subscribe();
        // Five batches of 3 into a stream that keeps 2: the first three batches are lost.
        for round in 0..5u16 {
            let mut waiting: Vec<FlowEvent> = (0..3)
                .map(|i| event(Verdict::Allow, round * 3 + i))
                .collect();
            forwarder.forward(drain_from(&mut waiting));
        }
        let first = sub.recv().await.unwrap();
        assert_eq!(first.local, "0.0.0.0:9", "the oldest batch kept");
        assert_eq!(counters.status(1).missed_by_slow_subscribers, 9);
        for _ in 0..5 {
            sub.recv().await.unwrap();
        }

        // Lagging again after having read.
        for round in 5..9u16 {
            let mut waiting: Vec<FlowEvent> = (0..3)
                .map(|i| event(Verdict::Allow, round * 3 + i))
                .collect();
            forwarder.forward(drain_from(&mut waiting));
        }
        let next = sub.recv().await.unwrap();
        assert_eq!(next.local, "0.0.0.0:21", "batches 5 and 6 were lost");
        assert_eq!(counters.status(1).missed_by_slow_subscribers, 9 + 6);

        // A subscriber that comes later expects only what comes after it.
        let mut late = flows.subscribe();
        let mut waiting = vec![event(Verdict::Drop, 99)];
        forwarder.forward(drain_from(&mut waiting));
        assert_eq!(late.recv().await.unwrap().local, "0.0.0.0:99");
        assert_eq!(counters.status(2).missed_by_slow_subscribers, 9 + 6);
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_agent_stops() {
        let flows = Flows::new(2, Arc::default());
        let mut sub = flows.subscribe();
        let forwarder = FlowForwarder::new(flows);
        drop(forwarder);
        assert_eq!(sub.recv().await, Err(FlowsClosed));
    }
}
