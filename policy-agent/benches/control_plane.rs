//! `cargo xtask bench control-plane`: what the compiler costs on generated clusters of
//! 10,000 pods, 2,000 policies and 100 namespaces (see `policy_agent::generate`): the
//! full compilation (time and the process's peak RSS during it), and the latency of single
//! changes through the incremental compiler (apply the change, then the new contents):
//! pod add, pod delete, label change, namespace label change, policy add, update and
//! delete, and a pod status update that changes nothing policy sees.
//!
//! The same changes are then timed end to end through the agent's reconciler (the half of
//! the agent between the source's cluster and the maps: the changes found, compiled,
//! and the maps written, on the in-memory datapath of `policy_agent::datapath::memory`,
//! so without root and without the kernel's cost per written entry): from the event to
//! the last map write. Its first sync is the in-memory part of being ready after start.
//!
//! Shapes: replicas sharing label sets, every pod's label set unique, and unique label
//! sets plus one policy of 10,000 podSelector peers. Prints a table and writes
//! `target/bench/control_plane.json`. Needs no root.

mod support;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use policy_agent::{
    agent::{
        interfaces::{Interface, Lookup},
        metrics::Metrics,
        reconcile::Reconciler,
    },
    compiler::{
        NodeConfig,
        incremental::{Change, Incremental},
    },
    datapath::MemoryDatapath,
    generate::{self, LOCAL_NODE, Shape},
    model::{Cluster, ObjectRef, Pod},
    source::{Kind, Object},
};
use serde::Serialize;

/// Pods, policies and namespaces of every shape.
const PODS: usize = 10_000;
const POLICIES: usize = 2_000;
const NAMESPACES: usize = 100;
/// Nodes the pods are spread over: the compiled node runs `PODS / NODES` of them.
const NODES: usize = 10;
/// Peers of the one big policy.
const BIG_POLICY_PEERS: usize = 10_000;
/// Measured changes per kind by default (each followed by its undoing, also measured);
/// `-- --samples N` measures N instead.
const SAMPLES: usize = 20;
/// `/proc/self/clear_refs` value that resets the peak RSS (VmHWM).
const CLEAR_PEAK_RSS: &str = "5";

#[derive(Serialize)]
struct ChangeLatency {
    change: &'static str,
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Serialize)]
struct Case {
    shape: &'static str,
    pods: usize,
    policies: usize,
    namespaces: usize,
    local_pods: usize,
    full_compile_ms: f64,
    peak_rss_mib: f64,
    policy_entries: usize,
    /// Through the compiler alone: the change applied, the new contents compiled.
    changes: Vec<ChangeLatency>,
    /// The reconciler's first sync of the whole cluster (in-memory maps).
    first_sync_ms: f64,
    /// Through the reconciler: from the event to the last map write (in-memory maps).
    synced_changes: Vec<ChangeLatency>,
}

#[derive(Serialize)]
struct Report {
    kernel: String,
    cases: Vec<Case>,
}

/// Nearest-rank percentile of sorted durations, in milliseconds.
fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

/// The process's peak RSS since the last reset, in MiB.
fn peak_rss_mib() -> f64 {
    const KIB_PER_MIB: f64 = 1024.0;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / KIB_PER_MIB)
}

fn reset_peak_rss() {
    // Best effort: without it the peak is the whole run's so far (an upper bound).
    let _ = std::fs::write("/proc/self/clear_refs", CLEAR_PEAK_RSS);
}

/// The agent's reconciler on in-memory maps, following a cluster event by event.
struct ThroughReconciler {
    reconciler: Reconciler<MemoryDatapath>,
    cluster: Cluster,
    node: NodeConfig,
    /// Local pods the agent enforces (scheduled here, not on the host network, addressed).
    local: BTreeSet<ObjectRef>,
    /// The interface index the next local pod's interface gets.
    next_index: u32,
}

/// Interface indexes of local pods start here (below are the node's own).
const FIRST_POD_INTERFACE: u32 = 100;

impl ThroughReconciler {
    /// The reconciler after its first sync of `cluster` (every local pod's interface found),
    /// and how long that sync took.
    fn start(cluster: Cluster, node: NodeConfig) -> (Self, Duration) {
        let mut this = Self {
            reconciler: Reconciler::new(MemoryDatapath::new(node.map_sizes), Metrics::new()),
            cluster: Cluster::default(),
            node,
            local: BTreeSet::new(),
            next_index: FIRST_POD_INTERFACE,
        };
        let start = Instant::now();
        let lookups: Vec<(ObjectRef, Lookup)> = cluster
            .pods
            .values()
            .filter_map(|pod| this.found(pod))
            .collect();
        this.cluster = cluster;
        this.sync(lookups);
        (this, start.elapsed())
    }

    /// An interface for `pod` if it is a new local one (as its sandbox would make).
    fn found(&mut self, pod: &Pod) -> Option<(ObjectRef, Lookup)> {
        let local = pod.node.as_deref() == Some(self.node.name.as_str())
            && !pod.host_network
            && !pod.ips.is_empty();
        if !local || !self.local.insert(pod.id.clone()) {
            return None;
        }
        let name = format!("veth{}", self.next_index);
        let index = self.next_index;
        self.next_index += 1;
        self.reconciler.datapath_mut().add_link(&name, index);
        Some((pod.id.clone(), Lookup::Found(Interface { name, index })))
    }

    fn sync(&mut self, lookups: Vec<(ObjectRef, Lookup)>) {
        self.reconciler
            .reconcile(
                &self.cluster,
                self.node.clone(),
                &self.local,
                lookups,
                tokio::time::Instant::now(),
            )
            .expect("an in-memory sync succeeds");
    }

    /// Takes `change` in and syncs it; returns the time from the event to the last write.
    fn change(&mut self, change: Change) -> Duration {
        let start = Instant::now();
        let mut lookups = Vec::new();
        match change {
            Change::Applied(object) => {
                // As the agent: an update that changes nothing policy sees costs no sync.
                let (kind, id) = object.key();
                if self.cluster.object(kind, &id).as_ref() == Some(&object) {
                    return start.elapsed();
                }
                if let Object::Pod(pod) = &object {
                    lookups.extend(self.found(pod));
                }
                self.cluster.apply(object);
            }
            Change::Deleted(kind, id) => {
                if kind == Kind::Pod {
                    self.local.remove(&id);
                }
                self.cluster.remove(kind, &id);
            }
            Change::Node(node) => self.node = node,
        }
        self.sync(lookups);
        start.elapsed()
    }
}

/// Times `changes` one after the other (each one's apply plus the new contents).
fn time_changes(state: &mut Incremental, changes: Vec<Change>) -> Vec<Duration> {
    changes
        .into_iter()
        .map(|change| {
            let start = Instant::now();
            state.apply(change);
            std::hint::black_box(state.compiled());
            start.elapsed()
        })
        .collect()
}

fn latency(change: &'static str, mut times: Vec<Duration>) -> ChangeLatency {
    times.sort();
    ChangeLatency {
        change,
        samples: times.len(),
        p50_ms: percentile(&times, 0.5),
        p99_ms: percentile(&times, 0.99),
    }
}

/// The changes per kind to measure: `--samples N` if given, else [`SAMPLES`].
fn samples() -> anyhow::Result<usize> {
    support::count_arg("samples", SAMPLES, 1..=PODS)
}

fn measure(name: &'static str, shape: Shape, samples: usize) -> Case {
    let cluster = generate::cluster(&shape);
    let node = NodeConfig {
        name: LOCAL_NODE.into(),
        ..NodeConfig::default()
    };
    reset_peak_rss();
    let start = Instant::now();
    let mut state = Incremental::with_cluster(cluster, node.clone());
    let policy_entries = state.compiled().policy.len();
    let full_compile = start.elapsed();
    let peak = peak_rss_mib();
    let local_pods = state.cluster().pods_on(LOCAL_NODE).count();

    let pod = |i: usize| generate::pod(&shape, i);
    let pod_ref = |i: usize| pod(i).id;
    let mut kinds: Vec<(&'static str, Vec<Change>)> = Vec::new();
    // Add then delete new pods (local ones every NODES-th): a new identity each when
    // label sets are unique.
    let new = |k: usize| PODS + k;
    let adds: Vec<Change> = (0..samples)
        .map(|k| Change::Applied(Object::Pod(pod(new(k)))))
        .collect();
    kinds.push(("pod add", adds));
    let deletes: Vec<Change> = (0..samples)
        .map(|k| Change::Deleted(Kind::Pod, pod_ref(new(k))))
        .collect();
    kinds.push(("pod delete", deletes));
    // A label change and its undoing.
    let mut relabels = Vec::new();
    for k in 0..samples {
        let mut p = pod(k * (PODS / samples));
        let original = p.clone();
        p.labels.insert("canary".into(), "true".into());
        relabels.push(Change::Applied(Object::Pod(p)));
        relabels.push(Change::Applied(Object::Pod(original)));
    }
    kinds.push(("pod label change", relabels));
    let mut namespace_changes = Vec::new();
    for k in 0..samples {
        let n = k % NAMESPACES;
        namespace_changes.push(Change::Applied(Object::Namespace(generate::namespace(
            n, 1,
        ))));
        namespace_changes.push(Change::Applied(Object::Namespace(generate::namespace(
            n, 0,
        ))));
    }
    kinds.push(("namespace label change", namespace_changes));
    let policy_adds: Vec<Change> = (0..samples)
        .map(|k| {
            Change::Applied(Object::Policy(generate::policy_generation(
                &shape,
                POLICIES + k,
                0,
            )))
        })
        .collect();
    kinds.push(("policy add", policy_adds));
    let mut updates = Vec::new();
    for k in 0..samples {
        let j = k * (POLICIES / samples);
        updates.push(Change::Applied(Object::Policy(
            generate::policy_generation(&shape, j, 1),
        )));
        updates.push(Change::Applied(Object::Policy(
            generate::policy_generation(&shape, j, 0),
        )));
    }
    kinds.push(("policy update", updates));
    let policy_deletes: Vec<Change> = (0..samples)
        .map(|k| {
            Change::Deleted(
                Kind::Policy,
                ObjectRef::new(
                    generate::namespace_name((POLICIES + k) % NAMESPACES),
                    format!("policy-{}", POLICIES + k),
                ),
            )
        })
        .collect();
    kinds.push(("policy delete", policy_deletes));
    let noops: Vec<Change> = (0..samples)
        .map(|k| Change::Applied(Object::Pod(pod(k * (PODS / samples)))))
        .collect();
    kinds.push(("no-op status update", noops));
    let changes = kinds
        .iter()
        .map(|(kind, list)| latency(kind, time_changes(&mut state, list.clone())))
        .collect();
    drop(state);

    eprintln!("  through the reconciler");
    let (mut agent, first_sync) = ThroughReconciler::start(generate::cluster(&shape), node);
    let synced_changes = kinds
        .into_iter()
        .map(|(kind, list)| {
            let times = list.into_iter().map(|c| agent.change(c)).collect();
            latency(kind, times)
        })
        .collect();

    Case {
        shape: name,
        pods: shape.pods,
        policies: shape.policies + usize::from(shape.big_policy_peers.is_some()),
        namespaces: shape.namespaces,
        local_pods,
        full_compile_ms: full_compile.as_secs_f64() * 1e3,
        peak_rss_mib: peak,
        policy_entries,
        changes,
        first_sync_ms: first_sync.as_secs_f64() * 1e3,
        synced_changes,
    }
}

fn main() -> anyhow::Result<()> {
    if support::listing() {
        return Ok(());
    }
    let base = Shape {
        pods: PODS,
        policies: POLICIES,
        namespaces: NAMESPACES,
        nodes: NODES,
        unique_labels: false,
        big_policy_peers: None,
    };
    let shapes = [
        ("shared labels", base),
        (
            "unique labels",
            Shape {
                unique_labels: true,
                ..base
            },
        ),
        (
            "unique labels + 10k-peer policy",
            Shape {
                unique_labels: true,
                big_policy_peers: Some(BIG_POLICY_PEERS),
                ..base
            },
        ),
    ];
    let samples = samples()?;
    let mut cases = Vec::new();
    for (name, shape) in shapes {
        eprintln!("measuring: {name}");
        cases.push(measure(name, shape, samples));
    }
    println!(
        "{:<34} {:>10} {:>9} {:>9}   change latencies p50/p99 (ms)",
        "shape", "compile ms", "peak MiB", "entries"
    );
    for c in &cases {
        println!(
            "{:<34} {:>10.1} {:>9.1} {:>9}",
            c.shape, c.full_compile_ms, c.peak_rss_mib, c.policy_entries
        );
        for l in &c.changes {
            println!("    {:<30} {:>8.2} / {:>8.2}", l.change, l.p50_ms, l.p99_ms);
        }
        println!(
            "  through the reconciler (in-memory maps): first sync {:.1} ms; event -> last \
             map write p50/p99 (ms)",
            c.first_sync_ms
        );
        for l in &c.synced_changes {
            println!("    {:<30} {:>8.2} / {:>8.2}", l.change, l.p50_ms, l.p99_ms);
        }
    }
    support::chart::write_all("control_plane", &charts(&cases))?;
    support::write_report(
        "control_plane",
        &Report {
            kernel: support::kernel(),
            cases,
        },
    )
}

/// Full-compile time per cluster shape, and single-change latency (p99) per change kind.
fn charts(cases: &[Case]) -> Vec<(&'static str, support::chart::Bars)> {
    use support::chart::{Bars, Line, Series};
    let groups: Vec<String> = cases.iter().map(|c| c.shape.to_owned()).collect();
    let full = Bars {
        title: "control-plane: full compile (lower is better)".to_owned(),
        x_label: "cluster shape".to_owned(),
        y_label: "ms".to_owned(),
        groups: groups.clone(),
        series: vec![Series {
            name: "full compile".to_owned(),
            values: cases.iter().map(|c| Some(c.full_compile_ms)).collect(),
        }],
        lines: vec![Line {
            name: format!("target ({TARGET_FULL_COMPILE_MS} ms)"),
            y: TARGET_FULL_COMPILE_MS,
        }],
    };
    let kinds: Vec<&str> = cases
        .first()
        .map(|c| c.changes.iter().map(|l| l.change).collect())
        .unwrap_or_default();
    // p99 of each change kind per shape, as `latencies` of a case gives them.
    let by_kind = |title: &str, latencies: fn(&Case) -> &[ChangeLatency]| Bars {
        title: title.to_owned(),
        x_label: "cluster shape".to_owned(),
        y_label: "ms".to_owned(),
        groups: groups.clone(),
        series: kinds
            .iter()
            .map(|kind| Series {
                name: (*kind).to_owned(),
                values: cases
                    .iter()
                    .map(|c| {
                        latencies(c)
                            .iter()
                            .find(|l| l.change == *kind)
                            .map(|l| l.p99_ms)
                    })
                    .collect(),
            })
            .collect(),
        lines: vec![Line {
            name: format!("target ({TARGET_CHANGE_P99_MS} ms)"),
            y: TARGET_CHANGE_P99_MS,
        }],
    };
    let changes = by_kind(
        "control-plane: single changes through the compiler, p99 (lower is better)",
        compiler_changes,
    );
    let synced = by_kind(
        "control-plane: event to last map write (reconciler, in-memory maps), p99 (lower is \
         better)",
        synced_changes,
    );
    vec![
        ("full-compile", full),
        ("changes", changes),
        ("synced-changes", synced),
    ]
}

/// The changes of a case timed through the compiler alone.
fn compiler_changes(case: &Case) -> &[ChangeLatency] {
    &case.changes
}

/// The changes of a case timed through the reconciler.
fn synced_changes(case: &Case) -> &[ChangeLatency] {
    &case.synced_changes
}

/// The targets on this machine: a full compile of 10k pods / 2k policies, and
/// any single change at p99.
const TARGET_FULL_COMPILE_MS: f64 = 1000.0;
const TARGET_CHANGE_P99_MS: f64 = 10.0;
