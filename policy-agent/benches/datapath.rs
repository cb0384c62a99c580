//! `cargo xtask bench datapath`: what the programs cost per packet, measured by the kernel
//! with BPF_PROG_TEST_RUN, against an empty TC program, as rules and CIDRs grow.
//!
//! Paths measured (all on `to_pod`, ingress of an isolated pod):
//! - `baseline`: the empty program;
//! - `established`: a packet of a tracked connection (conntrack hit);
//! - `new-allowed`: the first packet of a flow a rule allows (conntrack miss, identity or
//!   CIDR lookup, conntrack insert, flow record), each run with a new source port, so each
//!   is its own BPF_PROG_TEST_RUN call and meets caches the system call has cooled;
//! - `established-cold`: the `established` packet measured the same way, one call per run:
//!   how much of `new-allowed` is the cold call rather than the new flow;
//! - `new-allowed-warm`: an SCTP INIT on the ports of a tracked association, which the
//!   policy decides again every time (a conntrack hit refused, the policy lookup, the
//!   entry rewritten, a flow record), repeated like `established`;
//! - `new-denied`: the first packet of a flow no rule allows (both lookups miss, flow record);
//! - `new-denied-ring-full`: the same with the ring buffer full (nobody reads it), so the
//!   difference is the flow record's cost.
//!
//! Paths that write flow records run in chunks that fit in the ring buffer, which is
//! drained between them, as the agent does.
//!
//! `POLICY_BENCH_OBJECTS=label=path,...` compares other builds of the eBPF object (an older
//! datapath, one with parts left out) with each other instead of the embedded one, and
//! `POLICY_BENCH_ROUNDS=N` (default 1) repeats every comparison N times; the variants take
//! turns within each round (old, new, old, new) and the report gives medians.
//! `POLICY_BENCH_QUICK=1` measures only 10 and 10,000 rules without CIDRs.
//!
//! Prints a table and writes `target/bench/datapath.json`.

mod support;

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use anyhow::Context as _;
use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use policy_agent::{
    capacity::MapSizes,
    compiler::{Compiled, Compiler, NodeConfig},
    datapath::{BpfDatapath, EBPF_OBJECT},
    model::{Cluster, ContainerPort, Labels, ObjectRef, Origin, Pod, Policy, Protocol},
};
use policy_common::{maps::programs, reason::TC_ACT_SHOT};
use serde::Serialize;

/// Runs per measurement of the repeatable paths.
const REPEAT: u32 = 200_000;
/// Distinct first packets per `new-allowed` measurement.
const NEW_FLOWS: u16 = 10_000;
/// Runs per call on paths that write flow records: the records of one call fit in the
/// ring buffer (1 MiB, about 96 bytes a record), which is drained after each call.
const RECORD_CHUNK: u32 = 5_000;
/// Calls per measurement on paths that write flow records (the median call counts).
const RECORD_CHUNKS: usize = 9;
const NODE: &str = "bench-node";
const LOOPBACK_IFINDEX: u32 = 1;
const PEERS: usize = 10;
/// Which builds of the eBPF object to compare (`label=path,...`).
const OBJECTS_ENV: &str = "POLICY_BENCH_OBJECTS";
/// How many times every comparison runs.
const ROUNDS_ENV: &str = "POLICY_BENCH_ROUNDS";
/// Set: only the rule counts of the README's table (10 and 10,000), no CIDRs.
const QUICK_ENV: &str = "POLICY_BENCH_QUICK";

#[derive(Serialize)]
struct Case {
    variant: String,
    rules: usize,
    cidrs: usize,
    path: &'static str,
    /// Median over the rounds.
    ns_per_packet: f64,
    over_baseline_ns: f64,
    /// Every round's figure, in order.
    rounds: Vec<f64>,
    policy_entries: usize,
    cidr_entries: usize,
    compile_ms: f64,
}

#[derive(Serialize)]
struct Report {
    kernel: String,
    repeat: u32,
    cases: Vec<Case>,
}

/// A build of the eBPF programs under test.
struct Variant {
    label: String,
    object: Vec<u8>,
}

impl Variant {
    fn load(&self, instance: &str) -> anyhow::Result<BpfDatapath> {
        Ok(
            BpfDatapath::load_object(instance, MapSizes::default(), &self.object)
                .with_context(|| format!("loading variant {}", self.label))?
                .unpin_on_drop(),
        )
    }
}

/// The builds named in `POLICY_BENCH_OBJECTS`, or the embedded one.
fn variants() -> anyhow::Result<Vec<Variant>> {
    let Ok(list) = std::env::var(OBJECTS_ENV) else {
        return Ok(vec![Variant {
            label: "embedded".into(),
            object: EBPF_OBJECT.to_vec(),
        }]);
    };
    list.split(',')
        .map(|item| {
            let (label, path) = item
                .split_once('=')
                .with_context(|| format!("{OBJECTS_ENV}: {item:?} is not label=path"))?;
            let object = std::fs::read(path)
                .with_context(|| format!("{OBJECTS_ENV}: reading {path} for {label}"))?;
            Ok(Variant {
                label: label.to_owned(),
                object,
            })
        })
        .collect()
}

fn rounds() -> anyhow::Result<usize> {
    match std::env::var(ROUNDS_ENV) {
        Ok(n) => n
            .parse()
            .with_context(|| format!("{ROUNDS_ENV}={n:?} is not a count")),
        Err(_) => Ok(1),
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn pod(name: &str, labels: Labels, ip: Ipv4Addr, node: &str) -> Pod {
    Pod {
        id: ObjectRef::new("bench", name),
        labels,
        ips: vec![IpAddr::V4(ip)],
        node: Some(node.to_owned()),
        ports: vec![ContainerPort {
            name: Some("http".into()),
            port: 80,
            protocol: Protocol::Tcp,
            host_port: None,
        }],
        ..Pod::default()
    }
}

/// The address of the i-th ipBlock (each a /32 in 172.16.0.0/12).
fn cidr_host(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i as u32)
}

fn peer_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, i as u8 + 1)
}

/// A port on TCP and on SCTP (`new-allowed-warm` sends SCTP INITs where the other paths
/// send TCP).
fn tcp_and_sctp(port: i32) -> Vec<NetworkPolicyPort> {
    ["TCP", "SCTP"]
        .into_iter()
        .map(|protocol| NetworkPolicyPort {
            port: Some(IntOrString::Int(port)),
            protocol: Some(protocol.into()),
            ..Default::default()
        })
        .collect()
}

/// A local pod with `rules` ingress rules (rule i: from peer i % 10 on TCP port 1 + i; the
/// last one on SCTP too) and one rule allowing `cidrs` single-address ipBlocks on TCP and
/// SCTP 80.
fn cluster(rules: usize, cidrs: usize) -> Cluster {
    let mut c = Cluster::default();
    c.add_pod(pod(
        "local",
        labels(&[("role", "local")]),
        Ipv4Addr::new(10, 0, 0, 1),
        NODE,
    ));
    for i in 0..PEERS {
        let name = format!("peer-{i}");
        c.add_pod(pod(
            &name,
            labels(&[("peer", &name)]),
            peer_address(i),
            "elsewhere",
        ));
    }
    let selector = |pairs: &[(&str, &str)]| LabelSelector {
        match_labels: Some(labels(pairs)),
        ..Default::default()
    };
    let mut ingress: Vec<NetworkPolicyIngressRule> = (0..rules)
        .map(|i| NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(selector(&[("peer", &format!("peer-{}", i % PEERS))])),
                ..Default::default()
            }]),
            ports: Some(if i + 1 == rules {
                tcp_and_sctp(1 + i as i32)
            } else {
                vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(1 + i as i32)),
                    ..Default::default()
                }]
            }),
        })
        .collect();
    if cidrs > 0 {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(
                (0..cidrs)
                    .map(|i| NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: format!("{}/32", cidr_host(i)),
                            except: None,
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(tcp_and_sctp(80)),
        });
    }
    c.add_policy(Policy {
        id: ObjectRef::new("bench", "bench"),
        spec: NetworkPolicySpec {
            pod_selector: Some(selector(&[("role", "local")])),
            ingress: Some(ingress),
            ..Default::default()
        },
        meta: Default::default(),
        origin: Origin::default(),
    });
    c
}

/// Ethernet + IPv4 headers for a payload of `l4_len` bytes of protocol `ip_proto`.
fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr, ip_proto: u8, l4_len: usize) -> Vec<u8> {
    let mut f = vec![0u8; ETH_HLEN + IPV4_HLEN + l4_len];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((IPV4_HLEN + l4_len) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = ip_proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    f
}

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const TCP_HLEN: usize = 20;
/// SCTP common header (12 bytes) and an INIT chunk without parameters (20 bytes).
const SCTP_INIT_LEN: usize = 32;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_SCTP: u8 = 132;
const SCTP_CHUNK_INIT: u8 = 1;

/// An Ethernet + IPv4 + TCP frame.
fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = ipv4_frame(src, dst, IPPROTO_TCP, TCP_HLEN);
    let tcp = &mut f[ETH_HLEN + IPV4_HLEN..];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    f
}

/// An Ethernet + IPv4 + SCTP frame holding one INIT chunk.
fn sctp_init_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = ipv4_frame(src, dst, IPPROTO_SCTP, SCTP_INIT_LEN);
    let sctp = &mut f[ETH_HLEN + IPV4_HLEN..];
    sctp[0..2].copy_from_slice(&sport.to_be_bytes());
    sctp[2..4].copy_from_slice(&dport.to_be_bytes());
    sctp[12] = SCTP_CHUNK_INIT;
    sctp[14..16].copy_from_slice(&((SCTP_INIT_LEN - 12) as u16).to_be_bytes());
    f
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// One compiled cluster of the benchmark.
struct Setup {
    rules: usize,
    cidrs: usize,
    compiled: Compiled,
    compile_ms: f64,
}

fn setup(rules: usize, cidrs: usize) -> anyhow::Result<Setup> {
    let cluster = cluster(rules, cidrs);
    let start = Instant::now();
    let compiled = Compiler::new().compile(
        &cluster,
        &NodeConfig {
            name: NODE.into(),
            addresses: vec![],
            ..NodeConfig::default()
        },
    );
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(compiled.rejected.is_empty(), "{:?}", compiled.rejected);
    Ok(Setup {
        rules,
        cidrs,
        compiled,
        compile_ms,
    })
}

/// Mean ns per run of `frame` over `calls` calls of `repeat` runs each, the ring buffer
/// drained after every call; the median call's figure.
fn chunked(
    dp: &mut BpfDatapath,
    frame: &[u8],
    repeat: u32,
    calls: usize,
    drain: bool,
    expect_drop: bool,
) -> anyhow::Result<f64> {
    let mut per_call = Vec::with_capacity(calls);
    for _ in 0..calls {
        let (action, ns) = dp.test_run_repeat(programs::TO_POD, frame, repeat)?;
        anyhow::ensure!(
            (action == TC_ACT_SHOT) == expect_drop,
            "unexpected verdict {action}"
        );
        per_call.push(ns as f64);
        if drain {
            dp.drain_events();
        }
    }
    Ok(median(&per_call))
}

/// Every path on `setup` with `variant`: (path, ns per packet).
fn measure(setup: &Setup, variant: &Variant) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let (rules, cidrs) = (setup.rules, setup.cidrs);
    let instance = format!("bench-{}-{rules}-{cidrs}", std::process::id());
    let mut dp = variant.load(&instance)?;
    dp.adopt_interface(&ObjectRef::new("bench", "local"), LOOPBACK_IFINDEX);
    dp.sync(&setup.compiled)?;
    let local = Ipv4Addr::new(10, 0, 0, 1);

    // Allowed by the identity rule of the highest port, or (with CIDRs) by the last block.
    let (allowed_src, allowed_port) = if cidrs > 0 {
        (cidr_host(cidrs - 1), 80)
    } else {
        (peer_address((rules - 1) % PEERS), rules as u16)
    };
    let mut out = Vec::new();

    let mut total = 0u64;
    for sport in 0..NEW_FLOWS {
        let frame = tcp_frame(allowed_src, local, 10_000 + sport, allowed_port, SYN);
        let (action, ns) = dp.test_run_repeat(programs::TO_POD, &frame, 1)?;
        anyhow::ensure!(action != TC_ACT_SHOT, "the allowed flow was dropped");
        total += ns;
    }
    out.push(("new-allowed", total as f64 / f64::from(NEW_FLOWS)));
    dp.drain_events();

    let ack = tcp_frame(allowed_src, local, 10_000, allowed_port, ACK);
    let (action, ns) = dp.test_run_repeat(programs::TO_POD, &ack, REPEAT)?;
    anyhow::ensure!(action != TC_ACT_SHOT, "the established flow was dropped");
    out.push(("established", ns as f64));

    let mut total = 0u64;
    for _ in 0..NEW_FLOWS {
        total += dp.test_run_repeat(programs::TO_POD, &ack, 1)?.1;
    }
    out.push(("established-cold", total as f64 / f64::from(NEW_FLOWS)));

    let init = sctp_init_frame(allowed_src, local, 10_000, allowed_port);
    let ns = chunked(&mut dp, &init, RECORD_CHUNK, RECORD_CHUNKS, true, false)?;
    out.push(("new-allowed-warm", ns));

    let denied = tcp_frame(Ipv4Addr::new(192, 0, 2, 1), local, 10_000, 22, SYN);
    let ns = chunked(&mut dp, &denied, RECORD_CHUNK, RECORD_CHUNKS, true, true)?;
    out.push(("new-denied", ns));
    // Nobody reads the ring now: it fills within the first call.
    let ns = chunked(&mut dp, &denied, REPEAT, 1, false, true)?;
    out.push(("new-denied-ring-full", ns));
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    if support::listing() {
        return Ok(());
    }
    let variants = variants()?;
    let rounds = rounds()?;

    let dp = BpfDatapath::load(&format!("bench-{}-baseline", std::process::id()))?.unpin_on_drop();
    let frame = tcp_frame(
        Ipv4Addr::new(10, 1, 0, 1),
        Ipv4Addr::new(10, 0, 0, 1),
        1,
        80,
        SYN,
    );
    let baseline = dp.test_run_repeat(programs::BASELINE, &frame, REPEAT)?.1 as f64;
    drop(dp);

    let mut cases = vec![Case {
        variant: String::new(),
        rules: 0,
        cidrs: 0,
        path: "baseline",
        ns_per_packet: baseline,
        over_baseline_ns: 0.0,
        rounds: vec![baseline],
        policy_entries: 0,
        cidr_entries: 0,
        compile_ms: 0.0,
    }];
    let configs: &[(usize, usize)] = if std::env::var_os(QUICK_ENV).is_some() {
        &[(10, 0), (10_000, 0)]
    } else {
        &[
            (10, 0),
            (1_000, 0),
            (10_000, 0),
            (10, 1_000),
            (10, 10_000),
            (10, 100_000),
        ]
    };
    for &(rules, cidrs) in configs {
        let setup = setup(rules, cidrs)?;
        // figures[variant][path] over the rounds
        let mut figures: Vec<Vec<(&'static str, Vec<f64>)>> = vec![Vec::new(); variants.len()];
        for _ in 0..rounds {
            for (v, variant) in variants.iter().enumerate() {
                for (i, (path, ns)) in measure(&setup, variant)?.into_iter().enumerate() {
                    match figures[v].get_mut(i) {
                        Some((_, all)) => all.push(ns),
                        None => figures[v].push((path, vec![ns])),
                    }
                }
            }
        }
        for (variant, paths) in variants.iter().zip(figures) {
            for (path, all) in paths {
                let ns = median(&all);
                cases.push(Case {
                    variant: variant.label.clone(),
                    rules,
                    cidrs,
                    path,
                    ns_per_packet: ns,
                    over_baseline_ns: ns - baseline,
                    rounds: all,
                    policy_entries: setup.compiled.policy.len(),
                    cidr_entries: setup.compiled.cidr.len(),
                    compile_ms: setup.compile_ms,
                });
            }
        }
    }

    println!(
        "{:<12} {:>7} {:>7} {:<21} {:>10} {:>14} {:>9} {:>9} {:>11}",
        "variant",
        "rules",
        "cidrs",
        "path",
        "ns/packet",
        "over baseline",
        "policy",
        "cidr",
        "compile ms"
    );
    for c in &cases {
        println!(
            "{:<12} {:>7} {:>7} {:<21} {:>10.1} {:>14.1} {:>9} {:>9} {:>11.1}",
            c.variant,
            c.rules,
            c.cidrs,
            c.path,
            c.ns_per_packet,
            c.over_baseline_ns,
            c.policy_entries,
            c.cidr_entries,
            c.compile_ms
        );
    }
    let report = Report {
        kernel: support::kernel(),
        repeat: REPEAT,
        cases,
    };
    support::write_report("datapath", &report)?;
    support::chart::write_all("datapath", &[("per-packet", chart(&report.cases))])?;
    Ok(())
}

/// Targets of the performance contract, in ns over the empty program.
const TARGET_HIT_NS: f64 = 120.0;
const TARGET_NEW_FLOW_NS: f64 = 400.0;
/// The paths measured, as the chart's series.
const PATHS: [&str; 3] = ["established", "new-allowed", "new-denied"];

/// Cost over the empty program of each path, by rule and CIDR count.
fn chart(cases: &[Case]) -> support::chart::Bars {
    let mut sizes: Vec<(usize, usize)> = Vec::new();
    for c in cases.iter().filter(|c| c.path != "baseline") {
        if !sizes.contains(&(c.rules, c.cidrs)) {
            sizes.push((c.rules, c.cidrs));
        }
    }
    support::chart::Bars {
        title: "datapath: cost per packet over the empty TC program (lower is better)".to_owned(),
        x_label: "rules / CIDRs".to_owned(),
        y_label: "ns per packet".to_owned(),
        groups: sizes
            .iter()
            .map(|(rules, cidrs)| format!("{rules} / {cidrs}"))
            .collect(),
        series: PATHS
            .iter()
            .map(|&path| support::chart::Series {
                name: path.to_owned(),
                values: sizes
                    .iter()
                    .map(|&(rules, cidrs)| {
                        cases
                            .iter()
                            .find(|c| c.path == path && c.rules == rules && c.cidrs == cidrs)
                            .map(|c| c.over_baseline_ns)
                    })
                    .collect(),
            })
            .collect(),
        lines: vec![
            support::chart::Line {
                name: format!("target, established ({TARGET_HIT_NS} ns)"),
                y: TARGET_HIT_NS,
            },
            support::chart::Line {
                name: format!("target, new flow ({TARGET_NEW_FLOW_NS} ns)"),
                y: TARGET_NEW_FLOW_NS,
            },
        ],
    }
}
