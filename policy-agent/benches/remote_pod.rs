//! `cargo xtask bench remote-pod`: how long a new pod stays "world" (an address without
//! identity) on the other nodes once its kubelet has reported its address.
//!
//! A two-node lab runs two real agents, each watching an in-process fake API server
//! (tests/support/fake_api.rs: the real list/watch protocol) through the real kube-rs
//! client, as `policy-agent run --source kubernetes` does. The cluster also holds 1,000
//! pods on other nodes and 101 policies (`-- --pods N --policies M --samples K` for other
//! sizes: the CNI ADD at 10,000 pods and 1,000 policies is one of the control plane's
//! targets). For every new pod, as a real node creates it:
//! 1. the scheduler's pod (with `spec.nodeName`, no address) is applied to the API server
//!    and both agents sync it;
//! 2. the runtime creates the sandbox through `ptp` and `policy-agent-cni` (CNI ADD): the
//!    pod's node enforces it before ADD returns, its own ipcache entry included;
//! 3. T0: the kubelet reports `status.podIPs` (the Pod is applied to the API server);
//!    T1: the other node's pinned IPCACHE maps the address to the pod's identity (a thread
//!    polls the pinned map every 0.5 ms, bounded).
//!
//! Two kinds of new pod alternate: one whose labels an identity already has (the common
//! case: one more replica), one with labels no pod had (a new identity, whose policy
//! entries must be written too; the agents make it when the scheduled pod arrives, before
//! it has an address). Prints a table and writes `target/bench/remote_pod.json`.
//!
//! What this cannot measure is the part before T0 that belongs to the kubelet: it reports
//! the address only at the pod worker's next sync after the sandbox exists, once a PLEG
//! relist (every second) has seen the containers start.

mod support;

#[allow(dead_code)]
#[path = "../../tests/support/fake_api.rs"]
mod fake_api;

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData};
use fake_api::FakeApi;
use policy_agent::{
    agent::{self, AgentConfig, AgentHandle, endpoints},
    cni::spec::PLUGIN_TYPE,
    datapath::bpffs,
    lab::{
        Lab, LabConfig,
        runtime::{self, CniRuntime},
        topology,
    },
    model::ObjectRef,
    source::{
        Source, kubernetes,
        manifests::{self, Loaded},
    },
};
use policy_common::maps::{FIRST_POD_IDENTITY, IpKey, IpcacheValue, names};
use serde::Serialize;
use serde_json::{Value, json};

/// Measured new pods of each kind (`-- --samples N` measures N).
const SAMPLES: usize = 50;
/// The most samples the new pods' addresses cover.
const MAX_SAMPLES: usize = 1_000;
/// New pods of each kind created first and not measured.
const WARMUP: usize = 3;
/// Pods of the cluster on nodes outside the lab, remote to both agents (`-- --pods N`:
/// N instead).
const BACKGROUND_PODS: usize = 1_000;
/// The most background pods the bench's addresses cover.
const MAX_BACKGROUND_PODS: usize = 60_000;
/// Namespaces the background pods and policies are spread over.
const NAMESPACES: usize = 10;
/// Policies besides the one of the new pods' namespace (`-- --policies N`: N instead).
const POLICIES: usize = 100;
/// The most policies the bench's egress prefixes (`10.128.0.0/9`, a /24 each) cover.
const MAX_POLICIES: usize = 32_768;
/// Distinct `app` and `role` labels of the background pods.
const APPS: usize = 20;
const ROLES: usize = 7;
/// Nodes outside the lab that the background pods run on.
const OTHER_NODES: usize = 8;
/// The new pods' namespace.
const NAMESPACE: &str = "bench";
/// A running pod (outside the lab) with the labels of the new pods of the first kind.
const REFERENCE_POD: &str = "web-ref";
const REFERENCE_IP: &str = "10.251.0.1";
/// How often the pinned map is read.
const POLL: Duration = Duration::from_micros(500);
/// How long an agent may take for anything.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a new pod's labels are an existing identity's or a new one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Existing,
    New,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Existing => "existing",
            Self::New => "new",
        }
    }
}

#[derive(Serialize)]
struct Case {
    /// "existing": the new pod's labels are those of a running pod; "new": no pod had them.
    identity: &'static str,
    samples: usize,
    /// T1 - T0: the kubelet's report at the API server to the other node's ipcache entry.
    window_p50_ms: f64,
    window_p99_ms: f64,
    window_max_ms: f64,
    /// The other node's agent: from the event's arrival to its maps written.
    agent_sync_p50_ms: f64,
    agent_sync_max_ms: f64,
    /// The pod's node: `policy-agent-cni`'s ADD (process start to exit); the node's own
    /// ipcache entry is written before ADD returns.
    add_p50_ms: f64,
    add_p99_ms: f64,
    /// Samples whose own-node ipcache entry was there when ADD returned.
    local_entry_at_add: usize,
    /// Every sample in order: the window, the agent's sync, the ADD (ms).
    window_ms: Vec<f64>,
    agent_sync_ms: Vec<f64>,
    add_ms: Vec<f64>,
}

#[derive(Serialize)]
struct Report {
    kernel: String,
    background_pods: usize,
    policies: usize,
    poll_interval_us: u128,
    settle_ms: u128,
    cases: Vec<Case>,
}

/// One measured pod.
struct Sample {
    kind: Kind,
    window: Duration,
    agent_sync: Duration,
    add: Duration,
    local_at_add: bool,
}

fn new_pod_name(i: usize) -> String {
    format!("new-{i:03}")
}

fn new_pod_kind(i: usize) -> Kind {
    if i.is_multiple_of(2) {
        Kind::Existing
    } else {
        Kind::New
    }
}

fn new_pod_ip(i: usize) -> String {
    format!("10.100.{}.{}", 1 + i / 250, 1 + i % 250)
}

fn new_pod_labels(i: usize) -> Value {
    match new_pod_kind(i) {
        Kind::Existing => json!({"app": "web", "role": "client"}),
        Kind::New => json!({"app": "web", "role": "client", "instance": format!("i-{i}")}),
    }
}

fn uid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// The new pods, as manifests for the lab (which creates their sandboxes).
fn lab_manifests(pods: usize) -> String {
    let mut y = format!("kind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n");
    for i in 0..pods {
        let _ = write!(
            y,
            "---\nkind: Pod\nmetadata: {{name: {}, namespace: {NAMESPACE}, uid: {}, labels: {}}}\n\
             spec: {{containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
             status: {{podIP: {}}}\n",
            new_pod_name(i),
            uid(i),
            new_pod_labels(i),
            new_pod_ip(i),
        );
    }
    y
}

/// A Pod as the API server serves it; `ip` once the kubelet has reported it.
fn pod_object(
    namespace: &str,
    name: &str,
    uid: Option<&str>,
    labels: &Value,
    node: &str,
    ip: Option<&str>,
) -> Value {
    let mut pod = json!({
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "containers": [
            {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}
        ]},
        "status": {"phase": "Pending"},
    });
    if let Some(uid) = uid {
        pod["metadata"]["uid"] = json!(uid);
    }
    if let Some(ip) = ip {
        pod["status"] = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]});
    }
    pod
}

/// The cluster's size besides the lab, and the samples to take.
#[derive(Clone, Copy)]
struct Shape {
    background_pods: usize,
    policies: usize,
    samples: usize,
}

impl Shape {
    /// The defaults, or what the command line says.
    fn from_args() -> anyhow::Result<Self> {
        Ok(Self {
            background_pods: support::count_arg("pods", BACKGROUND_PODS, 0..=MAX_BACKGROUND_PODS)?,
            policies: support::count_arg("policies", POLICIES, 0..=MAX_POLICIES)?,
            samples: support::count_arg("samples", SAMPLES, 1..=MAX_SAMPLES)?,
        })
    }
}

/// The rest of the cluster: namespaces, pods on nodes outside the lab, policies.
fn background(shape: Shape) -> Vec<Value> {
    let mut out = vec![json!({"kind": "Namespace", "metadata": {"name": NAMESPACE,
        "labels": {"kubernetes.io/metadata.name": NAMESPACE}}})];
    for n in 0..NAMESPACES {
        let name = format!("ns-{n}");
        out.push(json!({"kind": "Namespace", "metadata": {"name": name,
            "labels": {"kubernetes.io/metadata.name": name, "team": format!("t-{n}")}}}));
    }
    out.push(pod_object(
        NAMESPACE,
        REFERENCE_POD,
        None,
        &new_pod_labels(0),
        "node-remote-0",
        Some(REFERENCE_IP),
    ));
    for i in 0..shape.background_pods {
        let ip = format!("10.250.{}.{}", i / 250, 1 + i % 250);
        out.push(pod_object(
            &format!("ns-{}", i % NAMESPACES),
            &format!("pod-{i}"),
            None,
            &json!({"app": format!("app-{}", i % APPS), "role": format!("client-{}", i % ROLES)}),
            &format!("node-remote-{}", i % OTHER_NODES),
            Some(&ip),
        ));
    }
    // The new pods admit clients: a new client identity gets policy entries too.
    out.push(json!({
        "kind": "NetworkPolicy",
        "metadata": {"name": "web", "namespace": NAMESPACE},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{
            "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
            "ports": [{"port": "http"}],
        }]},
    }));
    for i in 0..shape.policies {
        out.push(json!({
            "kind": "NetworkPolicy",
            "metadata": {"name": format!("pol-{i}"), "namespace": format!("ns-{}", i % NAMESPACES)},
            "spec": {
                "podSelector": {"matchLabels": {"app": format!("app-{}", i % APPS)}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{
                    "from": [
                        {"podSelector": {"matchLabels": {"role": format!("client-{}", i % ROLES)}},
                         "namespaceSelector": {"matchLabels": {"team": format!("t-{}", (i + 1) % NAMESPACES)}}},
                        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}},
                    ],
                    "ports": [{"port": 1000 + i}, {"port": "http"}],
                }],
                "egress": [{"to": [{"ipBlock": {"cidr": format!("10.{}.{}.0/24", 128 + i / 256, i % 256)}}],
                            "ports": [{"port": 443}]}],
            },
        }));
    }
    out
}

/// Pins, sockets and saved sandboxes of the bench's agents, removed when it ends (also on
/// failure; a killed run's pins are swept by the next lab, as their names start with the
/// lab's prefix and pid).
struct Pins(Vec<String>);

impl Drop for Pins {
    fn drop(&mut self) {
        for instance in &self.0 {
            bpffs::remove_instance_dir(&Path::new(bpffs::PIN_ROOT).join(instance));
            let socket = socket_of(instance);
            let _ = std::fs::remove_file(endpoints::sandboxes_file(&socket));
            let _ = std::fs::remove_file(socket);
        }
    }
}

fn socket_of(instance: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{instance}.sock"))
}

/// Node `node`'s agent, watching `api`, with its local API for the CNI plugin.
fn start_agent(
    lab: &Lab,
    node: usize,
    api: &FakeApi,
    pins: &mut Pins,
) -> anyhow::Result<AgentHandle> {
    let instance = format!("{}{}-rp{}", topology::PIN_PREFIX, lab.id(), node + 1);
    pins.0.push(instance.clone());
    agent::spawn(
        AgentConfig {
            node_name: topology::node_name(node),
            socket: Some(socket_of(&instance)),
            instance,
            netns: Some(lab.node_netns_name(node).to_owned()),
            interface_prefix: Some(topology::POD_INTERFACE_PREFIX.to_owned()),
            extra_node_addresses: Vec::new(),
            metrics_address: None,
            source: format!("kubernetes ({})", api.url),
            cni_conf_dir: None,
            full_resync: policy_agent::agent::FULL_RESYNC,
            map_sizes: policy_agent::capacity::MapSizes::default(),
        },
        Source {
            events: kubernetes::watch(api.client(), &topology::node_name(node)),
            pods: Some(kubernetes::PodLookup::new(api.client())),
        },
    )
}

/// A node's pinned ipcache.
fn ipcache(pin_dir: &Path) -> anyhow::Result<HashMap<MapData, IpKey, IpcacheValue>> {
    let path = pin_dir.join(names::IPCACHE);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(HashMap::try_from(Map::HashMap(data))?)
}

fn key(ip: &str) -> anyhow::Result<IpKey> {
    Ok(match ip.parse::<IpAddr>()? {
        IpAddr::V4(v4) => IpKey::v4(v4.octets()),
        IpAddr::V6(v6) => IpKey::v6(v6.octets()),
    })
}

/// The identity `map` gives `key`, if any.
fn identity(map: &HashMap<MapData, IpKey, IpcacheValue>, key: &IpKey) -> Option<u32> {
    map.get(key, 0).ok().map(|v| v.identity)
}

/// Polls `map` until `key` has an identity `wanted` accepts; the moment it saw it.
fn poll(
    map: &HashMap<MapData, IpKey, IpcacheValue>,
    key: &IpKey,
    wanted: impl Fn(u32) -> bool,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let seen = identity(map, key);
        if seen.is_some_and(&wanted) {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the ipcache did not get the address in {TIMEOUT:?} (identity seen: {seen:?})"
        );
        std::thread::sleep(POLL);
    }
}

/// Waits until `agent` has synced since it had synced `after` times.
async fn synced(agent: &mut AgentHandle, after: u64) -> anyhow::Result<()> {
    tokio::time::timeout(TIMEOUT, agent.status.wait_for(|s| s.syncs > after))
        .await
        .context("the agent did not sync in time")?
        .context("the agent stopped")?;
    Ok(())
}

fn syncs(agent: &AgentHandle) -> u64 {
    agent.status.borrow().syncs
}

/// Nearest-rank percentile of sorted durations, in milliseconds.
fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

async fn measure(shape: Shape) -> anyhow::Result<Vec<Sample>> {
    let pods = 2 * (WARMUP + shape.samples);
    let mut loaded = Loaded::default();
    manifests::load_str(&lab_manifests(pods), Path::new("bench.yaml"), &mut loaded);
    anyhow::ensure!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let new: Vec<ObjectRef> = (0..pods)
        .map(|i| ObjectRef::new(NAMESPACE, new_pod_name(i)))
        .collect();
    let config = LabConfig {
        nodes: 2,
        deferred: new.clone(),
        ..LabConfig::default()
    };
    let mut lab = Lab::network(&loaded.cluster, &config).await?;
    let result = run(&mut lab, &new, &config, shape).await;
    lab.shutdown().await;
    result
}

async fn run(
    lab: &mut Lab,
    new: &[ObjectRef],
    config: &LabConfig,
    shape: Shape,
) -> anyhow::Result<Vec<Sample>> {
    let api = FakeApi::start().await;
    for object in background(shape) {
        api.apply(object);
    }
    for node in lab.cluster().nodes.values() {
        let addresses: Vec<Value> = node
            .addresses
            .iter()
            .map(|a| json!({"type": "InternalIP", "address": a.to_string()}))
            .collect();
        api.apply(json!({"kind": "Node", "metadata": {"name": node.name},
            "status": {"addresses": addresses}}));
    }
    let mut pins = Pins(Vec::new());
    let mut agents = Vec::new();
    for node in 0..2 {
        agents.push(start_agent(lab, node, &api, &mut pins)?);
    }
    for agent in &mut agents {
        agent.ready(TIMEOUT).await?;
    }
    let bin_dirs = runtime::bin_dirs(true)?;
    let runtimes: Vec<CniRuntime> = pins
        .0
        .iter()
        .map(|instance| {
            CniRuntime::new(
                runtime::lab_conflist(Some(&socket_of(instance)), config),
                bin_dirs.clone(),
            )
        })
        .collect();
    let pin_dirs: Vec<PathBuf> = pins
        .0
        .iter()
        .map(|i| Path::new(bpffs::PIN_ROOT).join(i))
        .collect();
    // On each node, the identity of the labels the first kind of new pod shares with a
    // running pod (each agent numbers identities itself).
    let mut existing = [0u32; 2];
    for (n, pin_dir) in pin_dirs.iter().enumerate() {
        let map = ipcache(pin_dir)?;
        let key = key(REFERENCE_IP)?;
        tokio::task::spawn_blocking(move || poll(&map, &key, |id| id >= FIRST_POD_IDENTITY))
            .await??;
        existing[n] =
            identity(&ipcache(pin_dir)?, &key).context("the reference pod has no identity")?;
    }

    let mut samples = Vec::new();
    for (i, id) in new.iter().enumerate() {
        let kind = new_pod_kind(i);
        // The pod's identity in node `n`'s ipcache.
        let wanted = move |n: usize| {
            move |identity: u32| match kind {
                Kind::Existing => identity == existing[n],
                Kind::New => identity >= FIRST_POD_IDENTITY && identity != existing[n],
            }
        };
        let node_name = lab.cluster().pods[id]
            .node
            .clone()
            .context("the lab placed the pod on no node")?;
        let node = (0..2)
            .find(|&n| topology::node_name(n) == node_name)
            .context("the pod is on no lab node")?;
        let other = 1 - node;
        let ip = new_pod_ip(i);
        let key = key(&ip)?;
        let labels = new_pod_labels(i);
        let object = |ip| pod_object(NAMESPACE, &id.name, Some(&uid(i)), &labels, &node_name, ip);

        // Scheduled: both agents know the pod, without an address.
        let before = [syncs(&agents[0]), syncs(&agents[1])];
        api.apply(object(None));
        for (agent, before) in agents.iter_mut().zip(before) {
            synced(agent, before).await?;
        }

        // The sandbox: CNI ADD, answered once the pod's node enforces the pod.
        lab.start_pod_with(id, Some(&runtimes[node]))?;
        let add = lab
            .sandbox(id)
            .context("no sandbox")?
            .add_times
            .iter()
            .find(|t| t.plugin == PLUGIN_TYPE)
            .context("the policy plugin did not run")?
            .elapsed;
        let local_at_add = identity(&ipcache(&pin_dirs[node])?, &key).is_some_and(wanted(node));
        if !local_at_add {
            let map = ipcache(&pin_dirs[node])?;
            tokio::task::spawn_blocking(move || poll(&map, &key, wanted(node))).await??;
        }
        let remote = ipcache(&pin_dirs[other])?;
        anyhow::ensure!(
            identity(&remote, &key).is_none(),
            "node {} knew {ip} before the kubelet reported it",
            other + 1
        );

        // T0: the kubelet reports the address; T1: the other node's ipcache has it.
        let before = syncs(&agents[other]);
        let poller = tokio::task::spawn_blocking(move || poll(&remote, &key, wanted(other)));
        let t0 = Instant::now();
        api.apply(object(Some(&ip)));
        let t1 = poller.await??;
        synced(&mut agents[other], before).await?;
        let agent_sync = agents[other]
            .status
            .borrow()
            .last_sync
            .as_ref()
            .map_or(Duration::ZERO, |s| Duration::from_millis(s.latency_ms));
        if i >= 2 * WARMUP {
            samples.push(Sample {
                kind,
                window: t1 - t0,
                agent_sync,
                add,
                local_at_add,
            });
        }
    }
    for agent in agents {
        agent.stop().await?;
    }
    drop(pins);
    Ok(samples)
}

fn case(samples: &[Sample], kind: Kind) -> Case {
    let ordered = |f: fn(&Sample) -> Duration| -> Vec<Duration> {
        samples.iter().filter(|s| s.kind == kind).map(f).collect()
    };
    let ms = |v: Vec<Duration>| v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let of = |f: fn(&Sample) -> Duration| {
        let mut v = ordered(f);
        v.sort();
        v
    };
    let (window, sync, add) = (of(|s| s.window), of(|s| s.agent_sync), of(|s| s.add));
    Case {
        identity: kind.as_str(),
        samples: window.len(),
        window_p50_ms: percentile(&window, 0.5),
        window_p99_ms: percentile(&window, 0.99),
        window_max_ms: percentile(&window, 1.0),
        agent_sync_p50_ms: percentile(&sync, 0.5),
        agent_sync_max_ms: percentile(&sync, 1.0),
        add_p50_ms: percentile(&add, 0.5),
        add_p99_ms: percentile(&add, 0.99),
        local_entry_at_add: samples
            .iter()
            .filter(|s| s.kind == kind && s.local_at_add)
            .count(),
        window_ms: ms(ordered(|s| s.window)),
        agent_sync_ms: ms(ordered(|s| s.agent_sync)),
        add_ms: ms(ordered(|s| s.add)),
    }
}

fn main() -> anyhow::Result<()> {
    if support::listing() {
        return Ok(());
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let shape = Shape::from_args()?;
    let samples = runtime.block_on(measure(shape))?;
    let cases: Vec<Case> = [Kind::Existing, Kind::New]
        .into_iter()
        .map(|k| case(&samples, k))
        .collect();

    println!(
        "{:>9} {:>8} {:>14} {:>14} {:>14} {:>15} {:>11} {:>11} {:>13}",
        "identity",
        "samples",
        "window p50 ms",
        "window p99 ms",
        "window max ms",
        "agent p50 ms",
        "ADD p50 ms",
        "ADD p99 ms",
        "local at ADD"
    );
    for c in &cases {
        println!(
            "{:>9} {:>8} {:>14.1} {:>14.1} {:>14.1} {:>15.1} {:>11.1} {:>11.1} {:>13}",
            c.identity,
            c.samples,
            c.window_p50_ms,
            c.window_p99_ms,
            c.window_max_ms,
            c.agent_sync_p50_ms,
            c.add_p50_ms,
            c.add_p99_ms,
            format!("{}/{}", c.local_entry_at_add, c.samples),
        );
    }
    let report = Report {
        kernel: support::kernel(),
        background_pods: shape.background_pods,
        policies: shape.policies + 1,
        poll_interval_us: POLL.as_micros(),
        settle_ms: agent::SETTLE.as_millis(),
        cases,
    };
    support::write_report("remote_pod", &report)?;
    support::chart::write_all("remote_pod", &[("window", chart(&report.cases))])?;
    Ok(())
}

/// The window and its parts, by the kind of the new pod's labels.
fn chart(cases: &[Case]) -> support::chart::Bars {
    let fields: [support::chart::Field<Case>; 4] = [
        ("window p50", |c| c.window_p50_ms),
        ("window p99", |c| c.window_p99_ms),
        ("other agent's sync p50", |c| c.agent_sync_p50_ms),
        ("CNI ADD p50", |c| c.add_p50_ms),
    ];
    support::chart::Bars {
        title: "remote-pod: how long a new pod is \"world\" on the other node (lower is better)"
            .to_owned(),
        x_label: "the new pod's labels are".to_owned(),
        y_label: "ms".to_owned(),
        groups: cases
            .iter()
            .map(|c| format!("{} identity's", c.identity))
            .collect(),
        series: support::chart::series_of(cases, &fields),
        lines: Vec::new(),
    }
}
