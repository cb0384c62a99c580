//! `cargo xtask bench veth`: real packets between two lab pods on one node, through no
//! filter, this project's datapath, and kube-router-style iptables, ipset and nftables
//! filters, with 10 to 10,000 rules admitting the server pod's peers: TCP throughput, UDP
//! packet rate and TCP connection rate.
//!
//! The variants run interleaved: each repetition runs every variant once (in an order that
//! rotates between repetitions), so that the machine's drift hits all alike. Ratios to "no
//! filter" are the median over the repetitions of each variant's figure over the no-filter
//! figure of the same repetition. Before each measured variant, a connection to a port
//! the rules do not admit checks that the filter is in place (and that no filter is left
//! over for "no filter").
//!
//! Each variant is also timed from its start until it enforces ("ready"): the agent from
//! its spawn (a fresh pin directory: maps made, the policy compiled and written, programs
//! attached) to `/readyz`, a netfilter variant from its load (`iptables-restore`, `ipset
//! restore`, `nft -f`) to the tool's exit.
//!
//! `--full` measures longer and more often. Prints a table, writes
//! `target/bench/veth.json` and charts next to it.

#[path = "../support/mod.rs"]
mod support;

mod filters;
mod load;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use filters::Variant;
use policy_agent::{
    agent::{self, AgentHandle},
    datapath::bpffs,
    lab::{Lab, LabConfig, topology},
    model::Cluster,
    netns::NetNs,
    report::Family,
    source::{CHANNEL_CAPACITY, SourceEvent, manifests},
};
use serde::Serialize;
use support::chart::{Bars, Line, Series};
use tokio::{runtime::Runtime, sync::mpsc};

/// Rule counts measured.
const RULE_COUNTS: [usize; 4] = [10, 100, 1_000, 10_000];
/// Repetitions and length of each measurement, by default and with `--full`.
const QUICK: Settings = Settings {
    repetitions: 3,
    duration: Duration::from_millis(1_000),
};
const FULL: Settings = Settings {
    repetitions: 7,
    duration: Duration::from_millis(3_000),
};
/// The targets: this datapath's figure over no filter's, at least.
const TARGET_THROUGHPUT: f64 = 0.95;
const TARGET_PACKET_RATE: f64 = 0.95;
const TARGET_CONNECTIONS: f64 = 0.90;
/// The control plane's target: this datapath enforces 10,000 rules within this of its start.
const TARGET_READY: Duration = Duration::from_secs(2);
/// How long the agent may take to enforce the policy.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The two pods, on one node.
const PODS: &str = "\
---\nkind: Namespace\nmetadata: {name: bench}\n\
---\nkind: Pod\nmetadata: {name: client, namespace: bench, labels: {app: client}}\n\
spec: {containers: [{name: c}]}\nstatus: {podIP: 10.10.0.1}\n\
---\nkind: Pod\nmetadata: {name: server, namespace: bench, labels: {app: server}}\n\
spec: {containers: [{name: c}]}\nstatus: {podIP: 10.10.0.2}\n";
const CLIENT: &str = "bench/client";
const SERVER: &str = "bench/server";

/// How much to measure.
#[derive(Clone, Copy, Serialize)]
struct Settings {
    repetitions: usize,
    #[serde(serialize_with = "seconds")]
    duration: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// One variant's figures in one repetition.
#[derive(Clone, Copy, Serialize)]
struct Figures {
    tcp_gbit_s: f64,
    udp_kpps: f64,
    connections_per_s: f64,
}

impl Figures {
    fn over(&self, base: &Self) -> Self {
        Self {
            tcp_gbit_s: self.tcp_gbit_s / base.tcp_gbit_s,
            udp_kpps: self.udp_kpps / base.udp_kpps,
            connections_per_s: self.connections_per_s / base.connections_per_s,
        }
    }
}

#[derive(Serialize)]
struct Sample {
    rules: usize,
    variant: Variant,
    repetition: usize,
    #[serde(flatten)]
    figures: Figures,
    /// From the variant's start or load until it enforces (no filter: 0).
    ready_ms: f64,
}

/// A variant at a rule count: medians, and median ratios to no filter.
#[derive(Serialize)]
struct Summary {
    rules: usize,
    variant: Variant,
    median: Figures,
    ratio_to_no_filter: Figures,
    /// Median time to enforce.
    ready_ms: f64,
}

#[derive(Serialize)]
struct Target {
    throughput: f64,
    packet_rate: f64,
    connections: f64,
    met: bool,
    /// Where this datapath missed it.
    misses: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    kernel: String,
    settings: Settings,
    udp_payload_bytes: usize,
    iptables: String,
    nft: String,
    summaries: Vec<Summary>,
    target: Target,
    samples: Vec<Sample>,
}

/// The agent enforcing the datapath variant; its pins (which hold the programs attached)
/// go when it is dropped, also on error.
struct Enforcer {
    handle: Option<AgentHandle>,
    instance: PathBuf,
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        drop(self.handle.take());
        bpffs::remove_instance_dir(&self.instance);
    }
}

impl Enforcer {
    async fn start(lab: &Lab, cluster: &Cluster, sequence: usize) -> anyhow::Result<Self> {
        let instance = format!("{}{}-veth{sequence}", topology::PIN_PREFIX, lab.id());
        let mut enforcer = Self {
            handle: None,
            instance: Path::new(bpffs::PIN_ROOT).join(&instance),
        };
        let (feed, events) = mpsc::channel(CHANNEL_CAPACITY);
        let handle = enforcer.handle.insert(agent::spawn(
            lab.agent_config(0, instance, "veth bench".to_owned()),
            events,
        )?);
        feed.send(SourceEvent::Snapshot {
            cluster: Box::new(cluster.clone()),
            errors: Vec::new(),
        })
        .await
        .context("the agent stopped")?;
        handle.ready(AGENT_TIMEOUT).await?;
        // The feed may close: the agent keeps what it enforces.
        Ok(enforcer)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(handle) = self.handle.take() {
            handle.stop().await?;
        }
        Ok(())
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The lab's cluster with the policy of `rules` rules, pods placed as the lab placed them.
fn cluster_with(
    lab: &Lab,
    rules: &[filters::Rule],
    client: std::net::Ipv4Addr,
) -> anyhow::Result<Cluster> {
    let mut loaded = manifests::Loaded::default();
    manifests::load_str(
        &filters::policy_yaml(rules, client),
        Path::new("bench-policy.yaml"),
        &mut loaded,
    );
    anyhow::ensure!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let mut cluster = lab.cluster().clone();
    for (id, policy) in loaded.cluster.policies {
        cluster.policies.insert(id, policy);
    }
    Ok(cluster)
}

/// Measures every variant `settings.repetitions` times at `rules` rules.
fn measure_rules(
    runtime: &Runtime,
    lab: &Lab,
    servers: &load::Servers,
    settings: Settings,
    rules: usize,
    sequence: &mut usize,
) -> anyhow::Result<Vec<Sample>> {
    let client = lab.netns(CLIENT)?;
    let node = &NetNs::open(lab.node_netns_name(0))?;
    let server_ip = ip_of(lab, SERVER)?;
    let client_ip = filters::v4(ip_of(lab, CLIENT)?)?;
    let rule_list = filters::rules(rules, client_ip);
    let cluster = cluster_with(lab, &rule_list, client_ip)?;
    let mut samples = Vec::new();
    for repetition in 0..settings.repetitions {
        for k in 0..Variant::ALL.len() {
            let variant = Variant::ALL[(k + repetition) % Variant::ALL.len()];
            *sequence += 1;
            let started = Instant::now();
            let enforcer = match variant {
                Variant::Datapath => {
                    Some(runtime.block_on(Enforcer::start(lab, &cluster, *sequence))?)
                }
                _ => None,
            };
            filters::install(variant, node, filters::v4(server_ip)?, &rule_list)
                .with_context(|| format!("installing {} with {rules} rules", variant.name()))?;
            let ready_ms = if variant == Variant::NoFilter {
                0.0
            } else {
                started.elapsed().as_secs_f64() * 1e3
            };
            let figures = (|| -> anyhow::Result<Figures> {
                let passes = load::denied_port_passes(client, server_ip)?;
                if passes != (variant == Variant::NoFilter) {
                    bail!(
                        "{} with {rules} rules: a connection to the denied port {}",
                        variant.name(),
                        if passes {
                            "got through"
                        } else {
                            "did not get through"
                        }
                    );
                }
                Ok(Figures {
                    tcp_gbit_s: load::tcp_throughput(client, server_ip, settings.duration)? / 1e9,
                    udp_kpps: load::udp_rate(client, server_ip, servers, settings.duration)? / 1e3,
                    connections_per_s: load::connection_rate(client, server_ip, settings.duration)?,
                })
            })();
            filters::remove(variant, node)?;
            if let Some(enforcer) = enforcer {
                runtime.block_on(enforcer.stop())?;
            }
            let figures = figures?;
            eprintln!(
                "  {rules:>6} rules, repetition {}, {:<14} {:>7.2} Gbit/s {:>8.1} kpps {:>8.0} conn/s, ready in {ready_ms:.0} ms",
                repetition + 1,
                variant.name(),
                figures.tcp_gbit_s,
                figures.udp_kpps,
                figures.connections_per_s
            );
            samples.push(Sample {
                rules,
                variant,
                repetition,
                figures,
                ready_ms,
            });
        }
    }
    Ok(samples)
}

fn ip_of(lab: &Lab, label: &str) -> anyhow::Result<IpAddr> {
    lab.host(label)?
        .spec
        .ip(Family::IPv4)
        .with_context(|| format!("{label} has no IPv4 address"))
}

/// Medians and paired ratios of every variant at every rule count.
fn summarise(samples: &[Sample]) -> Vec<Summary> {
    let mut out = Vec::new();
    for rules in RULE_COUNTS {
        let of = |variant: Variant| -> Vec<&Sample> {
            samples
                .iter()
                .filter(|s| s.rules == rules && s.variant == variant)
                .collect()
        };
        let base = of(Variant::NoFilter);
        for variant in Variant::ALL {
            let mine = of(variant);
            if mine.is_empty() {
                continue;
            }
            let field =
                |f: fn(&Figures) -> f64| median(mine.iter().map(|s| f(&s.figures)).collect());
            let ratios: Vec<Figures> = mine
                .iter()
                .filter_map(|s| {
                    base.iter()
                        .find(|b| b.repetition == s.repetition)
                        .map(|b| s.figures.over(&b.figures))
                })
                .collect();
            let ratio = |f: fn(&Figures) -> f64| median(ratios.iter().map(f).collect());
            out.push(Summary {
                rules,
                variant,
                median: Figures {
                    tcp_gbit_s: field(|f| f.tcp_gbit_s),
                    udp_kpps: field(|f| f.udp_kpps),
                    connections_per_s: field(|f| f.connections_per_s),
                },
                ratio_to_no_filter: Figures {
                    tcp_gbit_s: ratio(|f| f.tcp_gbit_s),
                    udp_kpps: ratio(|f| f.udp_kpps),
                    connections_per_s: ratio(|f| f.connections_per_s),
                },
                ready_ms: median(mine.iter().map(|s| s.ready_ms).collect()),
            });
        }
    }
    out
}

/// Whether this datapath met the targets at every rule count.
fn target(summaries: &[Summary]) -> Target {
    let mut misses = Vec::new();
    for s in summaries.iter().filter(|s| s.variant == Variant::Datapath) {
        let r = &s.ratio_to_no_filter;
        for (what, ratio, wanted) in [
            ("TCP throughput", r.tcp_gbit_s, TARGET_THROUGHPUT),
            ("UDP packet rate", r.udp_kpps, TARGET_PACKET_RATE),
            (
                "TCP connection rate",
                r.connections_per_s,
                TARGET_CONNECTIONS,
            ),
        ] {
            if ratio < wanted {
                misses.push(format!(
                    "{} rules: {what} at {ratio:.3} of no filter (target {wanted})",
                    s.rules
                ));
            }
        }
    }
    Target {
        throughput: TARGET_THROUGHPUT,
        packet_rate: TARGET_PACKET_RATE,
        connections: TARGET_CONNECTIONS,
        met: misses.is_empty(),
        misses,
    }
}

/// Time to enforce, by rule count: this datapath's start against the netfilter loads.
fn print_ready(summaries: &[Summary]) {
    println!(
        "\nready (ms from start or load to enforced, median):\n{:>6}  {}",
        "rules",
        Variant::ALL[1..]
            .iter()
            .map(|v| format!("{:>14}", v.name()))
            .collect::<String>()
    );
    for rules in RULE_COUNTS {
        let cells: String = Variant::ALL[1..]
            .iter()
            .map(|&variant| {
                summaries
                    .iter()
                    .find(|s| s.rules == rules && s.variant == variant)
                    .map_or_else(
                        || format!("{:>14}", "-"),
                        |s| format!("{:>14.0}", s.ready_ms),
                    )
            })
            .collect();
        println!("{rules:>6}  {cells}");
    }
    let datapath_at_most = summaries
        .iter()
        .filter(|s| s.variant == Variant::Datapath && s.rules == RULE_COUNTS[RULE_COUNTS.len() - 1])
        .all(|s| s.ready_ms <= TARGET_READY.as_secs_f64() * 1e3);
    println!(
        "target (this datapath ready within {TARGET_READY:?} at {} rules): {}",
        RULE_COUNTS[RULE_COUNTS.len() - 1],
        if datapath_at_most { "met" } else { "NOT met" }
    );
}

/// A series per filter (every variant but no filter) of `value`, by rule count.
fn filter_series(summaries: &[Summary], value: impl Fn(&Summary) -> f64) -> Vec<Series> {
    Variant::ALL[1..]
        .iter()
        .map(|&variant| Series {
            name: variant.name().to_owned(),
            values: RULE_COUNTS
                .iter()
                .map(|&rules| {
                    summaries
                        .iter()
                        .find(|s| s.rules == rules && s.variant == variant)
                        .map(&value)
                })
                .collect(),
        })
        .collect()
}

/// Time to enforce of every filter, by rule count.
fn ready_chart(summaries: &[Summary]) -> Bars {
    Bars {
        title: "veth: time from start or load until enforced (lower is better)".to_owned(),
        x_label: "rules admitting the server pod's peers".to_owned(),
        y_label: "ms (median)".to_owned(),
        groups: RULE_COUNTS.iter().map(|n| n.to_string()).collect(),
        series: filter_series(summaries, |s| s.ready_ms),
        lines: vec![Line {
            name: format!("target for this datapath ({TARGET_READY:?})"),
            y: TARGET_READY.as_secs_f64() * 1e3,
        }],
    }
}

fn print_table(summaries: &[Summary]) {
    println!(
        "\n{:>6}  {:<14} {:>10} {:>6} {:>10} {:>6} {:>10} {:>6}",
        "rules", "variant", "TCP Gbit/s", "ratio", "UDP kpps", "ratio", "conn/s", "ratio"
    );
    for s in summaries {
        let (m, r) = (&s.median, &s.ratio_to_no_filter);
        println!(
            "{:>6}  {:<14} {:>10.2} {:>6.3} {:>10.1} {:>6.3} {:>10.0} {:>6.3}",
            s.rules,
            s.variant.name(),
            m.tcp_gbit_s,
            r.tcp_gbit_s,
            m.udp_kpps,
            r.udp_kpps,
            m.connections_per_s,
            r.connections_per_s
        );
    }
}

/// A charted measure: its file suffix, its title, its target ratio, and how to read it.
type Measure = (&'static str, &'static str, f64, fn(&Figures) -> f64);

/// One chart per measure: each filter's ratio to no filter, by rule count.
fn charts(summaries: &[Summary]) -> Vec<(&'static str, Bars)> {
    let measures: [Measure; 3] = [
        ("tcp", "TCP throughput", TARGET_THROUGHPUT, |f| f.tcp_gbit_s),
        (
            "udp",
            "UDP packet rate (64-byte payloads)",
            TARGET_PACKET_RATE,
            |f| f.udp_kpps,
        ),
        (
            "connections",
            "TCP connection rate",
            TARGET_CONNECTIONS,
            |f| f.connections_per_s,
        ),
    ];
    measures
        .into_iter()
        .map(|(suffix, title, wanted, field)| {
            let series = filter_series(summaries, |s| field(&s.ratio_to_no_filter));
            (
                suffix,
                Bars {
                    title: format!("veth: {title}, relative to no filter (higher is better)"),
                    x_label: "rules admitting the server pod's peers".to_owned(),
                    y_label: "ratio to no filter (median)".to_owned(),
                    groups: RULE_COUNTS.iter().map(|n| n.to_string()).collect(),
                    series,
                    lines: vec![
                        Line {
                            name: "no filter".to_owned(),
                            y: 1.0,
                        },
                        Line {
                            name: format!("target for this datapath ({wanted})"),
                            y: wanted,
                        },
                    ],
                },
            )
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    if support::listing() {
        return Ok(());
    }
    filters::check_tools()?;
    let settings = if std::env::args().any(|a| a == "--full") {
        FULL
    } else {
        QUICK
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut loaded = manifests::Loaded::default();
    manifests::load_str(PODS, Path::new("bench.yaml"), &mut loaded);
    anyhow::ensure!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let lab = runtime.block_on(Lab::network(&loaded.cluster, &LabConfig::default()))?;
    let result = (|| -> anyhow::Result<Vec<Sample>> {
        let servers = load::Servers::start(lab.netns(SERVER)?, ip_of(&lab, SERVER)?)?;
        let mut samples = Vec::new();
        let mut sequence = 0;
        for rules in RULE_COUNTS {
            eprintln!("{rules} rules:");
            samples.extend(measure_rules(
                &runtime,
                &lab,
                &servers,
                settings,
                rules,
                &mut sequence,
            )?);
        }
        Ok(samples)
    })();
    runtime.block_on(lab.shutdown());
    let samples = result?;
    let summaries = summarise(&samples);
    print_table(&summaries);
    print_ready(&summaries);
    let target = target(&summaries);
    if target.met {
        println!(
            "\ntarget met: this datapath within 5 % of no filter in throughput and packet rate, 10 % in connections, at every rule count"
        );
    } else {
        println!("\ntarget NOT met:");
        for miss in &target.misses {
            println!("  {miss}");
        }
    }
    let mut chart_list = charts(&summaries);
    chart_list.push(("ready", ready_chart(&summaries)));
    let report = Report {
        kernel: support::kernel(),
        settings,
        udp_payload_bytes: load::UDP_PAYLOAD,
        iptables: filters::version("iptables"),
        nft: filters::version("nft"),
        summaries,
        target,
        samples,
    };
    support::write_report("veth", &report)?;
    support::chart::write_all("veth", &chart_list)?;
    Ok(())
}
