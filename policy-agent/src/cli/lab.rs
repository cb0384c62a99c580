//! `policy-agent lab`.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Args;
use policy_agent::{
    lab::{Lab, LabConfig, config::parse_port},
    manifests,
    report::Reachability,
};
use policy_common::{
    maps::Direction,
    reason::{Verdict, reason_name},
};
use tokio::signal::unix::{SignalKind, signal};

/// Exit status after an interrupt (128 + SIGINT), as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Args)]
pub struct LabArgs {
    /// Directory of Namespace, Pod and NetworkPolicy manifests (and an optional lab.toml).
    #[arg(long)]
    manifests: PathBuf,
    /// Simulated nodes to spread the pods over.
    #[arg(long)]
    nodes: Option<usize>,
    /// External hosts (comma-separated addresses), each in its own namespace behind a node.
    #[arg(long, value_delimiter = ',')]
    external: Vec<IpAddr>,
    /// Ports the external hosts serve: PORT or PORT/PROTOCOL, comma-separated
    /// [default: 22,80,443,53/udp].
    #[arg(long, value_delimiter = ',', value_parser = parse_port)]
    external_ports: Vec<(policy_agent::model::Protocol, u16)>,
    /// Print the JSON contract instead of tables.
    #[arg(long)]
    json: bool,
    /// After probing, keep the lab running (maps pinned, programs attached) until Ctrl-C,
    /// to inspect it with bpftool.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    let loaded = manifests::load_dir(&args.manifests)?;
    for e in &loaded.errors {
        eprintln!("error: {e}");
    }
    let mut config = LabConfig::from_dir(&args.manifests)?;
    if let Some(n) = args.nodes {
        config.nodes = n;
    }
    if !args.external.is_empty() {
        config.externals = args.external;
    }
    if !args.external_ports.is_empty() {
        config.external_ports = args.external_ports;
    }

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let work = async {
            let lab = Lab::start(&loaded.cluster, &config).await?;
            // Every node rejects the same policies; warnings are about each node's pods.
            for e in &lab.compiled(0).rejected {
                eprintln!("error: {e}");
            }
            for node in 0..config.nodes.max(1) {
                for w in &lab.compiled(node).warnings {
                    eprintln!("warning: {w}");
                }
            }
            let reachability = lab.probe_all().await?;
            anyhow::Ok((lab, reachability))
        };
        // Dropping `work` on a signal drops the half-built lab, which tears it down.
        let (lab, reachability) = tokio::select! {
            r = work => r?,
            _ = interrupt.recv() => return Ok(ExitCode::from(EXIT_INTERRUPTED)),
            _ = terminate.recv() => return Ok(ExitCode::from(EXIT_INTERRUPTED)),
        };

        if args.json {
            println!("{}", reachability.to_json());
        } else {
            print_report(&lab, &config, &reachability)?;
        }
        if args.keep {
            for node in 0..config.nodes.max(1) {
                eprintln!(
                    "node-{}: maps pinned under {} (try: bpftool map dump pinned {}/POLICY)",
                    node + 1,
                    lab.datapath(node).pin_dir().display(),
                    lab.datapath(node).pin_dir().display(),
                );
            }
            eprintln!("lab kept running; press Ctrl-C to tear it down");
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        lab.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

fn print_report(lab: &Lab, config: &LabConfig, reachability: &Reachability) -> anyhow::Result<()> {
    let pods = lab
        .hosts()
        .iter()
        .filter(|h| h.node_if.starts_with("pod"))
        .count();
    println!(
        "Lab: {} node(s), {pods} pod(s), {} external host(s). Rows: source; columns: destination.\n",
        config.nodes.max(1),
        config.externals.len()
    );
    print!("{}", reachability.render_table());
    let mut drops = std::collections::BTreeMap::<String, u64>::new();
    for node in 0..config.nodes.max(1) {
        for (key, value) in lab.datapath(node).stats()? {
            if key.verdict == Verdict::Drop as u8 {
                let dir = Direction::from_u8(key.direction).map_or("?", Direction::as_str);
                *drops
                    .entry(format!("{dir} {}", reason_name(key.verdict, key.reason)))
                    .or_default() += value.packets;
            }
        }
    }
    if !drops.is_empty() {
        let list: Vec<String> = drops.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!("Packets dropped by the datapath: {}", list.join(", "));
    }
    Ok(())
}
