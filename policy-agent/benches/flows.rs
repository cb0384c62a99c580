//! `cargo xtask bench flows`: what flow records cost the agent, per new connection, at about
//! 20,000 new TCP connections a second between two pods of a lab node, with and without a
//! `flows` client; and what the agent costs idle once the conntrack tables are full.
//!
//! The agent is the real binary (`policy-agent run --source dir:...`) in its own process,
//! so its CPU time is its own: the sum over its threads of `/proc/<pid>/task/*/schedstat`
//! (nanoseconds on the CPU). The load comes from this process: a server in one pod's
//! namespace accepts, clients in the other's connect and reset (no TIME_WAIT, so the ports
//! can be reused and every connection is new to conntrack). Phases with and without a
//! subscriber alternate, and medians are reported (these machines are shared and noisy).
//!
//! Prints a table and writes `target/bench/flows.json`.

mod support;

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{HashMap, HashOfMaps, Map, MapData};
use policy_agent::{
    agent::{api, status::Status},
    datapath::bpffs,
    lab::{Lab, LabConfig, topology},
    source::manifests::{self, Loaded},
};
use policy_common::maps::{CtEntry, CtKey, names};
use serde::Serialize;
use socket2::{Domain, Socket, Type};

/// New connections a second the clients aim at.
const TARGET_RATE: u64 = 20_000;
/// Client threads sharing that rate.
const CLIENT_THREADS: u64 = 2;
/// Length of one measured phase.
const PHASE: Duration = Duration::from_secs(5);
/// Rounds of (no subscriber, one subscriber) phases.
const ROUNDS: usize = 3;
/// How long the idle agent is measured.
const IDLE: Duration = Duration::from_secs(10);
/// Quiet before the idle measurement (the last records flushed, the last snapshot taken).
const SETTLE: Duration = Duration::from_secs(3);
/// Each pod's conntrack table: large enough that the phases fill it far beyond the
/// default, as on a busy node.
const CONNTRACK_PER_POD: u32 = 65_536;
/// The agent's CPU per new connection the issue asks for, in microseconds.
const TARGET_US_PER_CONNECTION: f64 = 3.0;
/// The period at which the agent used to count every map key (its snapshot interval).
const OLD_WALK_PERIOD: Duration = Duration::from_secs(2);
/// The port the server pod listens on.
const SERVER_PORT: u16 = 9000;
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);
const NAMESPACE: &str = "bench";
/// Pending connections the server's listening socket holds.
const BACKLOG: i32 = 4096;
/// The client ports, as wide as the kernel allows, for many distinct connections.
const CLIENT_PORTS: &str = "1024 65535";
/// How long the agent may take to start and attach both pods.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(100);
/// Time for records of a phase to reach the agent after the load stops (more than its
/// flush interval).
const DRAIN: Duration = Duration::from_millis(500);

#[derive(Serialize)]
struct Phase {
    subscriber: bool,
    connections: u64,
    failed_connects: u64,
    rate_per_s: f64,
    agent_cpu_ms: f64,
    agent_us_per_connection: f64,
    /// Records the agent read from the ring buffer during the phase.
    records: u64,
    /// Records the ring buffer had no room for.
    lost_ring_buffer_full: u64,
    /// Records the subscriber missed because it read too slowly.
    missed_by_subscriber: u64,
    /// Records the subscriber received.
    received_by_subscriber: u64,
}

#[derive(Serialize)]
struct Idle {
    seconds: f64,
    agent_cpu_percent_of_a_core: f64,
    /// CONNTRACK entries as the agent reports them (from the datapath's counters).
    conntrack_entries_reported: u64,
    /// CONNTRACK entries counted key by key by this bench.
    conntrack_entries_walked: u64,
    conntrack_capacity: u64,
    /// What one walk of every conntrack key took here (the agent did one every 2 s before
    /// it counted fill incrementally).
    walk_ms: f64,
    walk_every_2s_percent_of_a_core: f64,
}

#[derive(Serialize)]
struct Summary {
    median_us_per_connection_without_subscriber: f64,
    median_us_per_connection_with_subscriber: f64,
    median_rate_per_s: f64,
    target_us_per_connection: f64,
    target_met: bool,
    records_lost_or_missed: u64,
}

#[derive(Serialize)]
struct Report {
    kernel: String,
    cpus: usize,
    target_rate_per_s: u64,
    phases: Vec<Phase>,
    idle: Idle,
    summary: Summary,
}

/// Two pods on one node and a policy that admits the client to the server's port: both
/// ends report the first packet of each connection (the client's egress, the server's
/// ingress). No container ports: the lab starts no probe servers of its own.
fn manifests(node: &str) -> String {
    let mut y = String::new();
    let _ = write!(y, "---\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n");
    for (name, ip) in [("client", CLIENT_IP), ("server", SERVER_IP)] {
        let _ = write!(
            y,
            "---\nkind: Pod\nmetadata: {{name: {name}, namespace: {NAMESPACE}, labels: {{app: {name}}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c}}]}}\nstatus: {{podIP: {ip}}}\n"
        );
    }
    let _ = write!(
        y,
        "---\nkind: NetworkPolicy\nmetadata: {{name: server-from-client, namespace: {NAMESPACE}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  \
         ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]\n    \
         ports: [{{port: {SERVER_PORT}}}]\n"
    );
    y
}

/// The agent process; stopped (SIGTERM, then its pins and socket removed) when dropped,
/// also when the bench fails.
struct AgentProcess {
    child: Child,
    instance: String,
    socket: PathBuf,
    dir: PathBuf,
}

impl AgentProcess {
    fn start(lab: &Lab, dir: &Path) -> anyhow::Result<Self> {
        let instance = format!("{}{}-flows", topology::PIN_PREFIX, lab.id());
        let socket = std::env::temp_dir().join(format!("{instance}.sock"));
        let child = Command::new(env!("CARGO_BIN_EXE_policy-agent"))
            .args(["run", "--node-name", &topology::node_name(0)])
            .arg("--source")
            .arg(format!("dir:{}", dir.display()))
            .args(["--netns", lab.node_netns_name(0)])
            .args(["--instance", &instance])
            .arg("--socket")
            .arg(&socket)
            .args(["--metrics-address", "none"])
            .args(["--interface-prefix", topology::POD_INTERFACE_PREFIX])
            .arg("--map-size")
            .arg(format!("conntrack={CONNTRACK_PER_POD}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting policy-agent run")?;
        Ok(Self {
            child,
            instance,
            socket,
            dir: dir.to_owned(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the agent has synced and attached both pods.
    async fn ready(&mut self) -> anyhow::Result<Status> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(exit) = self.child.try_wait()? {
                anyhow::bail!("the agent exited at start: {exit}");
            }
            if let Ok(status) = api::status(&self.socket).await
                && status.ready
                && status.endpoints.len() == 2
                && status.endpoints.iter().all(|e| e.attached)
            {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the agent did not attach both pods within {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn status(&self) -> anyhow::Result<Status> {
        api::status(&self.socket).await
    }

    /// Nanoseconds the agent's threads have been on a CPU.
    fn cpu_ns(&self) -> anyhow::Result<u64> {
        let tasks = Path::new("/proc").join(self.pid().to_string()).join("task");
        let mut total = 0;
        for task in std::fs::read_dir(&tasks).with_context(|| tasks.display().to_string())? {
            let path = task?.path().join("schedstat");
            // A thread that just ended has no file any more.
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            total += text
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<u64>().ok())
                .with_context(|| format!("reading {}", path.display()))?;
        }
        Ok(total)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        bpffs::remove_instance_dir(&Path::new(bpffs::PIN_ROOT).join(&self.instance));
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Accepts and closes connections in the server pod until `stop`.
fn serve(listener: &Socket, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        // Each accepted connection is closed at once (the client has reset it already).
        let _ = listener.accept();
    }
}

/// Opens connections to the server at `rate` a second for `length`, each reset at once
/// (linger 0: no TIME_WAIT). Returns (connected, failed).
fn connect_for(rate: u64, length: Duration) -> (u64, u64) {
    let server = SocketAddr::V4(SocketAddrV4::new(SERVER_IP, SERVER_PORT)).into();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    let mut next = start;
    while start.elapsed() < length {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += interval;
        let result = Socket::new(Domain::IPV4, Type::STREAM, None).and_then(|s| {
            s.set_linger(Some(Duration::ZERO))?;
            s.connect(&server)
        });
        match result {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    (ok, failed)
}

/// Runs the clients in the client pod for one phase.
fn load(lab: &Lab) -> anyhow::Result<(u64, u64, Duration)> {
    let client = lab.netns(&format!("{NAMESPACE}/client"))?;
    let started = Instant::now();
    let per_thread = TARGET_RATE / CLIENT_THREADS;
    let results: Vec<(u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENT_THREADS)
            .map(|_| s.spawn(|| client.run(|| connect_for(per_thread, PHASE))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect::<Result<_, _>>()
    })?;
    let elapsed = started.elapsed();
    let (ok, failed) = results.iter().fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    Ok((ok, failed, elapsed))
}

/// Counts every conntrack key of the instance pinned in `pin_dir`, and how long that took.
fn walk_conntrack(pin_dir: &Path) -> anyhow::Result<(u64, Duration)> {
    let data = MapData::from_pin(pin_dir.join(names::CONNTRACK))?;
    let outer: HashOfMaps<MapData, u32, HashMap<MapData, CtKey, CtEntry>> =
        HashOfMaps::try_from(Map::HashOfMaps(data))?;
    let started = Instant::now();
    let mut entries = 0;
    for id in outer.keys() {
        let table = outer.get(&id?, 0)?;
        entries += table.keys().count() as u64;
    }
    Ok((entries, started.elapsed()))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

async fn phase(lab: &Lab, agent: &AgentProcess, subscriber: bool) -> anyhow::Result<Phase> {
    let received = Arc::new(AtomicU64::new(0));
    let reader = subscriber.then(|| {
        let socket = agent.socket.clone();
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let _ = api::flows(&socket, |_| {
                received.fetch_add(1, Ordering::Relaxed);
                true
            })
            .await;
        })
    });
    // The subscription is made before the load starts.
    tokio::time::sleep(POLL).await;
    let before = agent.status().await?.flows;
    let cpu_before = agent.cpu_ns()?;
    let (connections, failed, elapsed) = tokio::task::block_in_place(|| load(lab))?;
    tokio::time::sleep(DRAIN).await;
    let cpu = agent.cpu_ns()? - cpu_before;
    let after = agent.status().await?.flows;
    if let Some(reader) = reader {
        reader.abort();
    }
    Ok(Phase {
        subscriber,
        connections,
        failed_connects: failed,
        rate_per_s: connections as f64 / elapsed.as_secs_f64(),
        agent_cpu_ms: cpu as f64 / 1e6,
        agent_us_per_connection: cpu as f64 / 1e3 / connections.max(1) as f64,
        records: after.records - before.records,
        lost_ring_buffer_full: after.lost_ring_buffer_full - before.lost_ring_buffer_full,
        missed_by_subscriber: after.missed_by_slow_subscribers - before.missed_by_slow_subscribers,
        received_by_subscriber: received.load(Ordering::Relaxed),
    })
}

async fn measure(lab: &Lab) -> anyhow::Result<Report> {
    let dir = std::env::temp_dir().join(format!(
        "{}{}-flows-manifests",
        topology::PIN_PREFIX,
        lab.id()
    ));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("cluster.yaml"), manifests(&topology::node_name(0)))?;
    let mut agent = AgentProcess::start(lab, &dir)?;
    agent.ready().await?;

    let client = lab.netns(&format!("{NAMESPACE}/client"))?;
    client.sysctl("net.ipv4.ip_local_port_range", CLIENT_PORTS)?;
    let server = lab.netns(&format!("{NAMESPACE}/server"))?;
    let listener = server.run(|| -> std::io::Result<Socket> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::V4(SocketAddrV4::new(SERVER_IP, SERVER_PORT)).into())?;
        s.listen(BACKLOG)?;
        Ok(s)
    })??;
    let listener = Arc::new(listener);
    let stop = Arc::new(AtomicBool::new(false));
    let server_thread = {
        let (listener, stop) = (Arc::clone(&listener), Arc::clone(&stop));
        std::thread::spawn(move || serve(&listener, &stop))
    };
    let mut phases = Vec::new();
    let mut result = Ok(());
    'rounds: for _ in 0..ROUNDS {
        for subscriber in [false, true] {
            match phase(lab, &agent, subscriber).await {
                Ok(p) => phases.push(p),
                Err(e) => {
                    result = Err(e);
                    break 'rounds;
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    // Wakes the server from accept().
    let _ = client.run(|| connect_for(1, Duration::from_millis(1)));
    let _ = server_thread.join();
    result?;

    tokio::time::sleep(SETTLE).await;
    let cpu_before = agent.cpu_ns()?;
    tokio::time::sleep(IDLE).await;
    let idle_cpu = agent.cpu_ns()? - cpu_before;
    let status = agent.status().await?;
    let conntrack = status
        .maps
        .iter()
        .find(|m| m.name == names::CONNTRACK)
        .context("status lists no CONNTRACK")?;
    let (walked, walk) = walk_conntrack(&Path::new(bpffs::PIN_ROOT).join(&agent.instance))?;
    let idle = Idle {
        seconds: IDLE.as_secs_f64(),
        agent_cpu_percent_of_a_core: idle_cpu as f64 / IDLE.as_nanos() as f64 * 100.0,
        conntrack_entries_reported: conntrack.entries as u64,
        conntrack_entries_walked: walked,
        conntrack_capacity: conntrack.capacity,
        walk_ms: walk.as_secs_f64() * 1e3,
        walk_every_2s_percent_of_a_core: walk.as_secs_f64() / OLD_WALK_PERIOD.as_secs_f64() * 100.0,
    };
    let of = |subscriber: bool, f: fn(&Phase) -> f64| {
        median(
            phases
                .iter()
                .filter(|p| p.subscriber == subscriber)
                .map(f)
                .collect(),
        )
    };
    let without = of(false, |p| p.agent_us_per_connection);
    let with = of(true, |p| p.agent_us_per_connection);
    let summary = Summary {
        median_us_per_connection_without_subscriber: without,
        median_us_per_connection_with_subscriber: with,
        median_rate_per_s: median(phases.iter().map(|p| p.rate_per_s).collect()),
        target_us_per_connection: TARGET_US_PER_CONNECTION,
        target_met: without <= TARGET_US_PER_CONNECTION && with <= TARGET_US_PER_CONNECTION,
        records_lost_or_missed: phases
            .iter()
            .map(|p| p.lost_ring_buffer_full + p.missed_by_subscriber)
            .sum(),
    };
    Ok(Report {
        kernel: support::kernel(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        target_rate_per_s: TARGET_RATE,
        phases,
        idle,
        summary,
    })
}

fn print(report: &Report) {
    println!(
        "{:>10} {:>8} {:>8} {:>9} {:>9} {:>10} {:>9} {:>6} {:>7} {:>9}",
        "subscriber",
        "conns",
        "failed",
        "conn/s",
        "agent ms",
        "us/conn",
        "records",
        "lost",
        "missed",
        "received"
    );
    for p in &report.phases {
        println!(
            "{:>10} {:>8} {:>8} {:>9.0} {:>9.1} {:>10.2} {:>9} {:>6} {:>7} {:>9}",
            if p.subscriber { "yes" } else { "no" },
            p.connections,
            p.failed_connects,
            p.rate_per_s,
            p.agent_cpu_ms,
            p.agent_us_per_connection,
            p.records,
            p.lost_ring_buffer_full,
            p.missed_by_subscriber,
            p.received_by_subscriber
        );
    }
    let s = &report.summary;
    println!(
        "\nmedian agent CPU per new connection: {:.2} us without a subscriber, {:.2} us with one \
         (target <= {:.1} us: {}) at a median {:.0} connections/s; {} records lost or missed",
        s.median_us_per_connection_without_subscriber,
        s.median_us_per_connection_with_subscriber,
        s.target_us_per_connection,
        if s.target_met { "met" } else { "NOT met" },
        s.median_rate_per_s,
        s.records_lost_or_missed
    );
    let i = &report.idle;
    println!(
        "idle: agent {:.3} % of a core over {:.0} s with CONNTRACK at {} / {} (reported; {} \
         walked); one walk of every key takes {:.1} ms ({:.2} % of a core every 2 s, the old cost)",
        i.agent_cpu_percent_of_a_core,
        i.seconds,
        i.conntrack_entries_reported,
        i.conntrack_capacity,
        i.conntrack_entries_walked,
        i.walk_ms,
        i.walk_every_2s_percent_of_a_core
    );
}

fn main() -> anyhow::Result<()> {
    if support::listing() {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let mut loaded = Loaded::default();
        manifests::load_str(
            &manifests(&topology::node_name(0)),
            Path::new("bench.yaml"),
            &mut loaded,
        );
        anyhow::ensure!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let lab = Lab::network(&loaded.cluster, &LabConfig::default()).await?;
        let result = measure(&lab).await;
        lab.shutdown().await;
        result
    })?;
    print(&report);
    support::chart::write_all("flows", &[("cpu-per-connection", chart(&report))])?;
    support::write_report("flows", &report)
}

/// The agent's CPU per new connection in each phase, against the target.
fn chart(report: &Report) -> support::chart::Bars {
    use support::chart::{Bars, Line, Series};
    let by = |subscriber: bool| Series {
        name: if subscriber {
            "with a flows client".to_owned()
        } else {
            "no subscriber".to_owned()
        },
        values: report
            .phases
            .iter()
            .filter(|p| p.subscriber == subscriber)
            .map(|p| Some(p.agent_us_per_connection))
            .collect(),
    };
    let runs = report.phases.iter().filter(|p| !p.subscriber).count();
    Bars {
        title: "flows: agent CPU per new connection (lower is better)".to_owned(),
        x_label: "run".to_owned(),
        y_label: "us".to_owned(),
        groups: (1..=runs).map(|r| r.to_string()).collect(),
        series: vec![by(false), by(true)],
        lines: vec![Line {
            name: format!("target ({} us)", report.summary.target_us_per_connection),
            y: report.summary.target_us_per_connection,
        }],
    }
}
