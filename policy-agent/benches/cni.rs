//! `cargo xtask bench cni`: how long the chained plugin's ADD keeps a new pod waiting, as
//! the container runtime sees it, with 10 and 1,000 policies in the cluster.
//!
//! A one-node lab runs the real agent; its runtime creates the same new pod again and
//! again (ADD of `ptp`, then of `policy-agent-cni`, then DEL), timing each plugin from its
//! start to its exit. The new pod is known to the agent (the watch delivered it when it was
//! scheduled) and selected by one policy in twenty, so ADD computes real policy state.
//!
//! Prints a table and writes `target/bench/cni.json`.

mod support;

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::Context as _;
use policy_agent::{
    cni::spec::PLUGIN_TYPE,
    lab::{Lab, LabConfig},
    model::ObjectRef,
    source::manifests::{self, Loaded},
};
use serde::Serialize;

/// Policy counts measured.
const POLICIES: [usize; 2] = [10, 1_000];
/// Measured ADDs per policy count.
const SAMPLES: usize = 100;
/// ADDs run first and not measured (page cache, first connections).
const WARMUP: usize = 5;
/// Namespaces the pods and policies are spread over.
const NAMESPACES: usize = 10;
/// Pods already running on the node (their addresses fill the agent's ipcache).
const RUNNING_PODS: usize = 20;
/// Distinct `app` labels; policy i selects `app-(i % APPS)`.
const APPS: usize = 20;
/// Distinct `role` labels of clients that policies admit.
const ROLES: usize = 7;
/// The namespace and `app` label of the new pod: policies i with i % APPS == 0 select it.
const NEW_POD_NAMESPACE: &str = "ns-0";
const NEW_POD: &str = "new";
/// How long the agent may take to sync a DEL.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the bench looks whether it has.
const POLL: Duration = Duration::from_millis(5);

#[derive(Serialize)]
struct Case {
    policies: usize,
    /// Policies that select the new pod.
    selecting: usize,
    samples: usize,
    /// The policy plugin's ADD.
    add_p50_ms: f64,
    add_p99_ms: f64,
    add_max_ms: f64,
    /// The agent's part: from the request to maps written and programs attached.
    agent_sync_p50_ms: f64,
    /// The main plugin's ADD (`ptp`), for scale.
    ptp_p50_ms: f64,
}

#[derive(Serialize)]
struct Report {
    kernel: String,
    running_pods: usize,
    cases: Vec<Case>,
}

/// The cluster: namespaces, running pods, the new pod, and `policies` policies, each
/// isolating both directions of one `app` in one namespace.
fn manifests(policies: usize) -> String {
    let mut y = String::new();
    for n in 0..NAMESPACES {
        let _ = write!(
            y,
            "---\nkind: Namespace\nmetadata: {{name: ns-{n}, labels: {{team: t-{n}}}}}\n"
        );
    }
    let pod = |y: &mut String, ns: &str, name: &str, app: usize, role: usize, ip: String| {
        let _ = write!(
            y,
            "---\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, \
             labels: {{app: app-{app}, role: client-{role}}}}}\n\
             spec: {{containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
             status: {{podIP: {ip}}}\n"
        );
    };
    for i in 0..RUNNING_PODS {
        let ns = format!("ns-{}", i % NAMESPACES);
        pod(
            &mut y,
            &ns,
            &format!("pod-{i}"),
            i % APPS,
            i % ROLES,
            format!("10.10.0.{}", i + 1),
        );
    }
    pod(
        &mut y,
        NEW_POD_NAMESPACE,
        NEW_POD,
        0,
        0,
        "10.10.1.1".to_owned(),
    );
    for i in 0..policies {
        let _ = write!(
            y,
            "---\nkind: NetworkPolicy\nmetadata: {{name: pol-{i}, namespace: ns-{ns}}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: app-{app}}}}}\n  \
             policyTypes: [Ingress, Egress]\n  ingress:\n  \
             - from:\n    - podSelector: {{matchLabels: {{role: client-{role}}}}}\n      \
             namespaceSelector: {{matchLabels: {{team: t-{team}}}}}\n    \
             - ipBlock: {{cidr: 10.200.{hi}.{lo}/32}}\n    \
             ports: [{{port: {port}}}, {{port: http}}]\n  \
             egress:\n  - to: [{{ipBlock: {{cidr: 192.168.{lo}.0/24, except: [192.168.{lo}.1/32]}}}}]\n    \
             ports: [{{port: 443}}, {{port: 53, protocol: UDP}}]\n",
            ns = i % NAMESPACES,
            app = i % APPS,
            role = i % ROLES,
            team = (i + 1) % NAMESPACES,
            hi = i / 256,
            lo = i % 256,
            port = 1000 + i,
        );
    }
    y
}

/// Nearest-rank percentile of sorted durations, in milliseconds.
fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

/// The plugin's ADD time of the new pod's current sandbox.
fn add_time(lab: &Lab, pod: &ObjectRef, plugin: &str) -> anyhow::Result<Duration> {
    lab.sandbox(pod)
        .context("the new pod has no sandbox")?
        .add_times
        .iter()
        .find(|t| t.plugin == plugin)
        .map(|t| t.elapsed)
        .with_context(|| format!("{plugin} did not run"))
}

/// Waits until the agent has synced again since it had synced `syncs` times.
async fn settled(lab: &Lab, syncs: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    while lab.status(0).map_or(0, |s| s.syncs) <= syncs {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the agent did not sync the DEL"
        );
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

async fn measure(policies: usize) -> anyhow::Result<Case> {
    let mut loaded = Loaded::default();
    manifests::load_str(&manifests(policies), Path::new("bench.yaml"), &mut loaded);
    anyhow::ensure!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let new = ObjectRef::new(NEW_POD_NAMESPACE, NEW_POD);
    let config = LabConfig {
        deferred: vec![new.clone()],
        ..LabConfig::default()
    };
    let mut lab = Lab::start(&loaded.cluster, &config).await?;
    let (mut add, mut ptp, mut sync) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..WARMUP + SAMPLES {
        lab.start_pod_with(&new, None)?;
        if i >= WARMUP {
            add.push(add_time(&lab, &new, PLUGIN_TYPE)?);
            ptp.push(add_time(&lab, &new, "ptp")?);
            let last = lab.status(0).and_then(|s| s.last_sync);
            sync.push(Duration::from_millis(last.context("no sync")?.latency_ms));
        }
        let syncs = lab.status(0).map_or(0, |s| s.syncs);
        lab.stop_pod(&new)?;
        // The next ADD finds the agent idle, not still syncing this DEL.
        settled(&lab, syncs).await?;
    }
    lab.shutdown().await;
    for samples in [&mut add, &mut ptp, &mut sync] {
        samples.sort();
    }
    Ok(Case {
        policies,
        selecting: policies.div_ceil(APPS),
        samples: SAMPLES,
        add_p50_ms: percentile(&add, 0.5),
        add_p99_ms: percentile(&add, 0.99),
        add_max_ms: percentile(&add, 1.0),
        agent_sync_p50_ms: percentile(&sync, 0.5),
        ptp_p50_ms: percentile(&ptp, 0.5),
    })
}

fn main() -> anyhow::Result<()> {
    if support::listing() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cases = POLICIES
        .into_iter()
        .map(|n| runtime.block_on(measure(n)))
        .collect::<anyhow::Result<Vec<_>>>()?;

    println!(
        "{:>9} {:>10} {:>8} {:>11} {:>11} {:>11} {:>14} {:>11}",
        "policies",
        "selecting",
        "samples",
        "ADD p50 ms",
        "ADD p99 ms",
        "ADD max ms",
        "agent p50 ms",
        "ptp p50 ms"
    );
    for c in &cases {
        println!(
            "{:>9} {:>10} {:>8} {:>11.1} {:>11.1} {:>11.1} {:>14.1} {:>11.1}",
            c.policies,
            c.selecting,
            c.samples,
            c.add_p50_ms,
            c.add_p99_ms,
            c.add_max_ms,
            c.agent_sync_p50_ms,
            c.ptp_p50_ms
        );
    }
    let report = Report {
        kernel: support::kernel(),
        running_pods: RUNNING_PODS,
        cases,
    };
    support::write_report("cni", &report)?;
    support::chart::write_all("cni", &[("add", chart(&report.cases))])?;
    Ok(())
}

/// The control-plane contract's CNI ADD p50 at 1,000 policies.
const TARGET_ADD_P50_MS: f64 = 15.0;

/// ADD latencies by policy count.
fn chart(cases: &[Case]) -> support::chart::Bars {
    let fields: [support::chart::Field<Case>; 4] = [
        ("ADD p50", |c| c.add_p50_ms),
        ("ADD p99", |c| c.add_p99_ms),
        ("agent's share (p50)", |c| c.agent_sync_p50_ms),
        ("ptp ADD p50, for scale", |c| c.ptp_p50_ms),
    ];
    support::chart::Bars {
        title: "cni: how long ADD keeps a new pod waiting (lower is better)".to_owned(),
        x_label: "policies in the cluster".to_owned(),
        y_label: "ms".to_owned(),
        groups: cases.iter().map(|c| c.policies.to_string()).collect(),
        series: support::chart::series_of(cases, &fields),
        lines: vec![support::chart::Line {
            name: format!("target, ADD p50 at 1,000 policies ({TARGET_ADD_P50_MS} ms)"),
            y: TARGET_ADD_P50_MS,
        }],
    }
}
