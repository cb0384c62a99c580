//! `cargo xtask bench datapath`: what the programs cost per packet, measured by the kernel
//! with BPF_PROG_TEST_RUN, against an empty TC program, as rules and CIDRs grow.
//!
//! Paths measured (all on `to_pod`, ingress of an isolated pod):
//! - `baseline`: the empty program;
//! - `established`: a packet of a tracked connection (conntrack hit);
//! - `new-allowed`: the first packet of a flow a rule allows (conntrack miss, identity or
//!   CIDR lookup, conntrack insert, flow record), each run with a new source port;
//! - `new-denied`: the first packet of a flow no rule allows (both lookups miss, flow record).
//!
//! Prints a table and writes `target/bench/datapath.json`.

mod support;

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use policy_agent::{
    compiler::{Compiler, NodeConfig},
    datapath::BpfDatapath,
    model::{Cluster, ContainerPort, Labels, ObjectRef, Origin, Pod, Policy, Protocol},
};
use policy_common::{maps::programs, reason::TC_ACT_SHOT};
use serde::Serialize;

/// Runs per measurement of the repeatable paths.
const REPEAT: u32 = 200_000;
/// Distinct first packets per `new-allowed` measurement.
const NEW_FLOWS: u16 = 10_000;
const NODE: &str = "bench-node";
const LOOPBACK_IFINDEX: u32 = 1;
const PEERS: usize = 10;

#[derive(Serialize)]
struct Case {
    rules: usize,
    cidrs: usize,
    path: &'static str,
    ns_per_packet: f64,
    over_baseline_ns: f64,
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

/// A local pod with `rules` ingress rules (rule i: from peer i % 10 on TCP port 1 + i)
/// and one rule allowing `cidrs` single-address ipBlocks on TCP 80.
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
            ports: Some(vec![NetworkPolicyPort {
                port: Some(IntOrString::Int(1 + i as i32)),
                ..Default::default()
            }]),
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
            ports: Some(vec![NetworkPolicyPort {
                port: Some(IntOrString::Int(80)),
                ..Default::default()
            }]),
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

/// An Ethernet + IPv4 + TCP frame.
fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    f
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn measure(rules: usize, cidrs: usize, baseline: f64, cases: &mut Vec<Case>) -> anyhow::Result<()> {
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

    let instance = format!("bench-{}-{rules}-{cidrs}", std::process::id());
    let mut dp = BpfDatapath::load(&instance)?.unpin_on_drop();
    dp.adopt_interface(&ObjectRef::new("bench", "local"), LOOPBACK_IFINDEX);
    dp.sync(&compiled)?;
    let local = Ipv4Addr::new(10, 0, 0, 1);

    // Allowed by the identity rule of the highest port, or (with CIDRs) by the last block.
    let (allowed_src, allowed_port) = if cidrs > 0 {
        (cidr_host(cidrs - 1), 80)
    } else {
        (peer_address((rules - 1) % PEERS), rules as u16)
    };
    let mut record = |path, ns: f64| {
        cases.push(Case {
            rules,
            cidrs,
            path,
            ns_per_packet: ns,
            over_baseline_ns: ns - baseline,
            policy_entries: compiled.policy.len(),
            cidr_entries: compiled.cidr.len(),
            compile_ms,
        })
    };

    let mut total = 0u64;
    for sport in 0..NEW_FLOWS {
        let frame = tcp_frame(allowed_src, local, 10_000 + sport, allowed_port, SYN);
        let (action, ns) = dp.test_run_repeat(programs::TO_POD, &frame, 1)?;
        anyhow::ensure!(action != TC_ACT_SHOT, "the allowed flow was dropped");
        total += ns;
    }
    record("new-allowed", total as f64 / f64::from(NEW_FLOWS));

    let ack = tcp_frame(allowed_src, local, 10_000, allowed_port, ACK);
    let (action, ns) = dp.test_run_repeat(programs::TO_POD, &ack, REPEAT)?;
    anyhow::ensure!(action != TC_ACT_SHOT, "the established flow was dropped");
    record("established", ns as f64);

    let denied = tcp_frame(Ipv4Addr::new(192, 0, 2, 1), local, 10_000, 22, SYN);
    let (action, ns) = dp.test_run_repeat(programs::TO_POD, &denied, REPEAT)?;
    anyhow::ensure!(action == TC_ACT_SHOT, "the denied flow passed");
    record("new-denied", ns as f64);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if support::listing() {
        return Ok(());
    }

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
        rules: 0,
        cidrs: 0,
        path: "baseline",
        ns_per_packet: baseline,
        over_baseline_ns: 0.0,
        policy_entries: 0,
        cidr_entries: 0,
        compile_ms: 0.0,
    }];
    for rules in [10, 1_000, 10_000] {
        measure(rules, 0, baseline, &mut cases)?;
    }
    for cidrs in [1_000, 10_000, 100_000] {
        measure(10, cidrs, baseline, &mut cases)?;
    }

    println!(
        "{:>7} {:>7} {:<12} {:>10} {:>14} {:>9} {:>9} {:>11}",
        "rules", "cidrs", "path", "ns/packet", "over baseline", "policy", "cidr", "compile ms"
    );
    for c in &cases {
        println!(
            "{:>7} {:>7} {:<12} {:>10.1} {:>14.1} {:>9} {:>9} {:>11.1}",
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
