//! `policy-agent lab`.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use policy_agent::{
    lab::{Lab, LabConfig},
    report::Reachability,
};
use policy_common::{
    maps::Direction,
    reason::{Verdict, reason_name},
};
use tokio::signal::unix::{SignalKind, signal};

use super::scenario::ScenarioArgs;

/// Exit status after an interrupt (128 + SIGINT), as shells report it.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Args)]
pub struct LabArgs {
    #[command(flatten)]
    scenario: ScenarioArgs,
    /// Simulated nodes to spread the pods over [default: from lab.toml, else 1].
    #[arg(long)]
    nodes: Option<usize>,
    /// Print the JSON contract instead of tables.
    #[arg(long)]
    json: bool,
    /// After probing, keep the lab running (maps pinned, programs attached) until Ctrl-C,
    /// to inspect it with bpftool.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    let scenario = args.scenario.load()?;
    scenario.report_policies();
    let (loaded, mut config) = (scenario.loaded, scenario.config);
    if let Some(n) = args.nodes {
        config.nodes = n;
    }

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let work = async {
            let lab = Lab::start(&loaded.cluster, &config).await?;
            // Warnings about each node's pods (rejected policies were reported above).
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
    let pods = lab.hosts().iter().filter(|h| h.spec.pod.is_some()).count();
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
