//! `policy-agent lab`.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use std::time::Duration;

use policy_agent::{
    agent::{self, AgentConfig, api},
    datapath::bpffs,
    lab::{
        self, Lab, LabConfig,
        config::{CniKind, ProxyMode},
        topology,
    },
    report::{Reachability, escape, escape_text},
    source::directory,
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
    /// How the nodes forward Service traffic, as kube-proxy's `--proxy-mode`
    /// [default: from lab.toml, else iptables].
    #[arg(long, value_enum)]
    proxy_mode: Option<ProxyMode>,
    /// The CNI plugin that gives pods their network [default: from lab.toml, else ptp].
    #[arg(long, value_enum)]
    cni: Option<CniKind>,
    /// Run the cluster's DNS: a DNS server (dnsmasq) in pod kube-system/kube-dns-0 (labelled
    /// k8s-app: kube-dns) behind Service kube-system/kube-dns, added where the manifests
    /// have none; every pod's resolver points at it, and probes to it are real lookups
    /// [default: from lab.toml's `dns`, else off].
    #[arg(long)]
    dns: bool,
    /// Print the JSON contract instead of tables.
    #[arg(long)]
    json: bool,
    /// After probing, keep the lab running (maps pinned, programs attached) until Ctrl-C,
    /// to inspect it with bpftool.
    #[arg(long)]
    keep: bool,
    /// Enforce with the node agent itself (one per node, `run --source dir:DIR`), which
    /// re-reads the directory when a file changes; probe again after every change it
    /// applies and print what changed, until Ctrl-C. `policy-agent flows` and `status`
    /// work against these agents.
    #[arg(long, conflicts_with = "keep")]
    watch: bool,
    /// With --watch: node N's agent serves metrics on 127.0.0.1:<PORT+N-1>.
    #[arg(long, default_value_t = 9090)]
    metrics_port: u16,
}

pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    let scenario = args.scenario.load()?;
    let rejected = scenario.report_policies(&scenario.loaded.cluster, |_| None);
    let (loaded, mut config) = (scenario.loaded, scenario.config);
    if let Some(n) = args.nodes {
        config.nodes = n;
    }
    config.proxy_mode = args.proxy_mode.unwrap_or(config.proxy_mode);
    config.cni = args.cni.unwrap_or(config.cni);
    config.dns |= args.dns;

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    if args.watch {
        runtime.block_on(watch(
            &loaded.cluster,
            &config,
            args.scenario.manifests.clone(),
            args.metrics_port,
        ))?;
        // As the manifests were when the lab started: the agents' `status` follows edits.
        return Ok(super::ran(rejected));
    }
    runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let work = async {
            let lab = Lab::start(&loaded.cluster, &config).await?;
            // Warnings about each node's pods (rejected policies were reported above).
            for status in (0..lab.nodes()).filter_map(|node| lab.status(node)) {
                for w in &status.not_enforced {
                    eprintln!("warning: {}", escape_text(w));
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
            print_table(&lab, &config, &reachability)?;
        }
        if args.keep {
            for node in 0..config.nodes.max(1) {
                eprintln!(
                    "node-{}: maps pinned under {} (try: bpftool map dump pinned {}/POLICY)",
                    node + 1,
                    lab.pin_dir(node).display(),
                    lab.pin_dir(node).display(),
                );
            }
            let first_pod = lab.hosts().iter().find(|h| h.spec.pod.is_some());
            if let (Some(dns), Some(pod)) = (lab.dns(), first_pod) {
                eprintln!(
                    "pods resolve cluster names through kube-dns (try: ip netns exec {} getent \
                     hosts {})",
                    pod.netns.name(),
                    dns.lookup().name
                );
            }
            eprintln!("lab kept running; press Ctrl-C to tear it down");
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        lab.shutdown().await;
        Ok(super::ran(rejected))
    })
}

fn print_table(lab: &Lab, config: &LabConfig, reachability: &Reachability) -> anyhow::Result<()> {
    let pods = lab.hosts().iter().filter(|h| h.spec.pod.is_some()).count();
    println!(
        "Lab: {} node(s), {pods} pod(s), {} external host(s). Rows: source; columns: destination.\n",
        config.nodes.max(1),
        config.externals.len()
    );
    print_dns(lab);
    print!("{}", reachability.render_table());
    let mut drops = std::collections::BTreeMap::<String, u64>::new();
    let enforcing = if lab.enforced() { lab.nodes() } else { 0 };
    for node in 0..enforcing {
        for (key, value) in lab.stats(node)? {
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

/// What the cluster DNS is, when the lab runs it.
fn print_dns(lab: &Lab) {
    let Some(dns) = lab.dns() else {
        return;
    };
    let servers: Vec<String> = dns
        .server_pids()
        .into_keys()
        .map(|p| p.to_string())
        .collect();
    let nameservers: Vec<String> = dns.nameservers().iter().map(ToString::to_string).collect();
    println!(
        "Cluster DNS: {} at {} (dnsmasq in {}); probes to port {} of it look up {}.\n",
        lab::dns::service_ref(),
        nameservers.join(", "),
        servers.join(", "),
        lab::dns::PORT,
        dns.lookup().name,
    );
}

/// `lab --watch`: the real agent on every node, following the manifest directory.
async fn watch(
    cluster: &policy_agent::model::Cluster,
    config: &LabConfig,
    dir: std::path::PathBuf,
    metrics_port: u16,
) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let lab = Lab::network(cluster, config).await?;
    let mut agents = Vec::new();
    let mut pins = Vec::new();
    let outcome = async {
        for node in 0..lab.nodes() {
            let instance = format!("{}{}-n{}", topology::PIN_PREFIX, lab.id(), node + 1);
            // The agents keep their pins when they stop, as a node agent must; the lab's go.
            pins.push(bpffs::PIN_ROOT.to_owned() + "/" + &instance);
            let socket = api::default_socket(&instance);
            let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port + node as u16));
            let agent = agent::spawn(
                AgentConfig {
                    node_name: topology::node_name(node),
                    instance: instance.clone(),
                    netns: Some(lab.node_netns_name(node).to_owned()),
                    interface_prefix: Some(topology::POD_INTERFACE_PREFIX.to_owned()),
                    extra_node_addresses: Vec::new(),
                    socket: Some(socket.clone()),
                    metrics_address: Some(metrics),
                    source: format!("dir:{}", dir.display()),
                    cni_conf_dir: None,
                    full_resync: policy_agent::agent::FULL_RESYNC,
                    map_sizes: policy_agent::capacity::MapSizes::default(),
                },
                lab.place(directory::watch(dir.clone())?),
            )?;
            eprintln!(
                "{}: agent socket {} (policy-agent flows --socket ...), metrics http://{metrics}/metrics",
                topology::node_name(node),
                socket.display()
            );
            agents.push(agent);
        }
        for agent in &mut agents {
            agent.ready(Duration::from_secs(30)).await?;
        }
        let mut previous = lab.probe_all().await?;
        print_table(&lab, config, &previous)?;
        eprintln!("\nwatching {}: edit a manifest to see the verdicts change; Ctrl-C to stop", dir.display());
        let mut syncs: Vec<_> = agents.iter().map(|a| a.status.clone()).collect();
        loop {
            let changed = futures::future::select_all(syncs.iter_mut().map(|s| {
                let seen = s.borrow().last_sync.clone();
                Box::pin(async move {
                    let _ = s.wait_for(|now| now.last_sync != seen).await;
                })
            }));
            tokio::select! {
                _ = changed => {}
                _ = interrupt.recv() => return anyhow::Ok(()),
                _ = terminate.recv() => return anyhow::Ok(()),
            }
            let now = lab.probe_all().await?;
            let changes: Vec<String> = now
                .probes
                .iter()
                .zip(&previous.probes)
                .filter(|(a, b)| a.allowed != b.allowed)
                .map(|(p, _)| {
                    format!(
                        "  {} -> {} {}/{} {:?}: now {}",
                        escape(&p.from),
                        escape(&p.to),
                        p.protocol,
                        p.port,
                        p.family,
                        if p.allowed { "allowed" } else { "denied" }
                    )
                })
                .collect();
            if !changes.is_empty() {
                println!("\n{} verdict(s) changed:\n{}", changes.len(), changes.join("\n"));
                print_table(&lab, config, &now)?;
                previous = now;
            }
        }
    }
    .await;
    for agent in agents {
        agent.stop().await?;
    }
    for pin in pins {
        bpffs::remove_instance_dir(std::path::Path::new(&pin));
    }
    lab.shutdown().await;
    outcome
}
