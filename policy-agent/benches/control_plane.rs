//! `cargo xtask bench control-plane`: what the compiler costs on generated clusters of
//! 10,000 pods, 2,000 policies and 100 namespaces (see `policy_agent::generate`): the
//! full compilation (time and the process's peak RSS during it), and the latency of single
//! changes through the incremental compiler (apply the change, then the new contents):
//! pod add, pod delete, label change, namespace label change, policy add, update and
//! delete, and a pod status update that changes nothing policy sees.
//!
//! Shapes: replicas sharing label sets, every pod's label set unique, and unique label
//! sets plus one policy of 10,000 podSelector peers. Prints a table and writes
//! `target/bench/control_plane.json`. Needs no root.

mod support;

use std::time::{Duration, Instant};

use policy_agent::{
    compiler::{
        NodeConfig,
        incremental::{Change, Incremental},
    },
    generate::{self, LOCAL_NODE, Shape},
    model::ObjectRef,
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
/// Measured changes per kind (each followed by its undoing, also measured).
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
    changes: Vec<ChangeLatency>,
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

fn measure(name: &'static str, shape: Shape) -> Case {
    let cluster = generate::cluster(&shape);
    let node = NodeConfig {
        name: LOCAL_NODE.into(),
        ..NodeConfig::default()
    };
    reset_peak_rss();
    let start = Instant::now();
    let mut state = Incremental::with_cluster(cluster, node);
    let policy_entries = state.compiled().policy.len();
    let full_compile = start.elapsed();
    let peak = peak_rss_mib();
    let local_pods = state.cluster().pods_on(LOCAL_NODE).count();

    let pod = |i: usize| generate::pod(&shape, i);
    let pod_ref = |i: usize| pod(i).id;
    let mut changes = Vec::new();
    // Add then delete new pods (local ones every NODES-th): a new identity each when
    // label sets are unique.
    let new = |k: usize| PODS + k;
    let adds: Vec<Change> = (0..SAMPLES)
        .map(|k| Change::Applied(Object::Pod(pod(new(k)))))
        .collect();
    changes.push(latency("pod add", time_changes(&mut state, adds)));
    let deletes: Vec<Change> = (0..SAMPLES)
        .map(|k| Change::Deleted(Kind::Pod, pod_ref(new(k))))
        .collect();
    changes.push(latency("pod delete", time_changes(&mut state, deletes)));
    // A label change and its undoing.
    let mut relabels = Vec::new();
    for k in 0..SAMPLES {
        let mut p = pod(k * (PODS / SAMPLES));
        let original = p.clone();
        p.labels.insert("canary".into(), "true".into());
        relabels.push(Change::Applied(Object::Pod(p)));
        relabels.push(Change::Applied(Object::Pod(original)));
    }
    changes.push(latency(
        "pod label change",
        time_changes(&mut state, relabels),
    ));
    let mut namespace_changes = Vec::new();
    for k in 0..SAMPLES {
        let n = k % NAMESPACES;
        namespace_changes.push(Change::Applied(Object::Namespace(generate::namespace(
            n, 1,
        ))));
        namespace_changes.push(Change::Applied(Object::Namespace(generate::namespace(
            n, 0,
        ))));
    }
    changes.push(latency(
        "namespace label change",
        time_changes(&mut state, namespace_changes),
    ));
    let policy_adds: Vec<Change> = (0..SAMPLES)
        .map(|k| {
            Change::Applied(Object::Policy(generate::policy_generation(
                &shape,
                POLICIES + k,
                0,
            )))
        })
        .collect();
    changes.push(latency("policy add", time_changes(&mut state, policy_adds)));
    let mut updates = Vec::new();
    for k in 0..SAMPLES {
        let j = k * (POLICIES / SAMPLES);
        updates.push(Change::Applied(Object::Policy(
            generate::policy_generation(&shape, j, 1),
        )));
        updates.push(Change::Applied(Object::Policy(
            generate::policy_generation(&shape, j, 0),
        )));
    }
    changes.push(latency("policy update", time_changes(&mut state, updates)));
    let policy_deletes: Vec<Change> = (0..SAMPLES)
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
    changes.push(latency(
        "policy delete",
        time_changes(&mut state, policy_deletes),
    ));
    let noops: Vec<Change> = (0..SAMPLES)
        .map(|k| Change::Applied(Object::Pod(pod(k * (PODS / SAMPLES)))))
        .collect();
    changes.push(latency(
        "no-op status update",
        time_changes(&mut state, noops),
    ));

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
    let mut cases = Vec::new();
    for (name, shape) in shapes {
        eprintln!("measuring: {name}");
        cases.push(measure(name, shape));
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
    let changes = Bars {
        title: "control-plane: single changes, p99 (lower is better)".to_owned(),
        x_label: "cluster shape".to_owned(),
        y_label: "ms".to_owned(),
        groups,
        series: kinds
            .iter()
            .map(|kind| Series {
                name: (*kind).to_owned(),
                values: cases
                    .iter()
                    .map(|c| {
                        c.changes
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
    vec![("full-compile", full), ("changes", changes)]
}

/// The targets on this machine: a full compile of 10k pods / 2k policies, and
/// any single change at p99.
const TARGET_FULL_COMPILE_MS: f64 = 1000.0;
const TARGET_CHANGE_P99_MS: f64 = 10.0;
