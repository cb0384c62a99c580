//! `policy-agent run`: the node agent.

use std::{
    net::IpAddr, net::SocketAddr, path::PathBuf, process::ExitCode, str::FromStr, time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};
use policy_agent::{
    agent::{self, AgentConfig, api},
    capacity::{MapSizeSetting, MapSizes},
    source::{Source, directory, kubernetes},
};
use tokio::signal::unix::{SignalKind, signal};

/// Where the cluster comes from.
#[derive(Clone, Debug)]
pub enum SourceArg {
    /// The Kubernetes API (in-cluster, or a kubeconfig).
    Kubernetes,
    /// A directory of manifests, re-read on change.
    Dir(PathBuf),
}

impl FromStr for SourceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "kubernetes" => Ok(Self::Kubernetes),
            Some(("dir", path)) if !path.is_empty() => Ok(Self::Dir(path.into())),
            _ => Err(format!("{s:?}: use `kubernetes` or `dir:PATH`")),
        }
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// `kubernetes` (in-cluster config, or --kubeconfig, KUBECONFIG, ~/.kube/config) or
    /// `dir:PATH` (a directory of manifests, re-read when it changes).
    #[arg(long, default_value = "kubernetes")]
    source: SourceArg,
    /// Kubeconfig to use instead of the in-cluster configuration.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name; its pods (spec.nodeName) are the ones enforced.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Name of the pin directory under /sys/fs/bpf/policy-agent/ (and of the socket): a
    /// DNS-1123 label.
    #[arg(long, default_value = "agent", value_parser = super::cleanup::instance_name)]
    instance: String,
    /// Network namespace (as `ip netns` names it) holding the pods' host-side interfaces;
    /// by default the agent's own (a DaemonSet on the host network).
    #[arg(long)]
    netns: Option<String>,
    /// Only interfaces whose names start with this are pods' (e.g. cali, lxc, veth).
    #[arg(long)]
    interface_prefix: Option<String>,
    /// Addresses of the node besides those of its interfaces (comma-separated).
    #[arg(long, value_delimiter = ',')]
    node_address: Vec<IpAddr>,
    /// Prometheus metrics, /healthz and /readyz; `none` to disable. The agent exits at
    /// startup if it cannot bind this address (e.g. the port is in use).
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_address: String,
    /// Local API socket for `status`, `flows` and the CNI plugin
    /// [default: /run/policy-agent/<instance>.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The node's CNI configuration directory, to show in `status` how the CNI plugin is
    /// chained (fail-closed or fail-open).
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// How often the maps are compared with what the agent wrote and corrected (anything
    /// that changed them behind its back), in seconds; 0 never.
    #[arg(long, default_value_t = agent::FULL_RESYNC.as_secs())]
    full_resync_seconds: u64,
    /// Entries of one map, MAP=ENTRIES (repeat, or separate with commas). MAP is one of
    /// endpoints (pods on the node) [1024], ipcache (pod addresses of the cluster plus the
    /// node's) [65536], policy [524288], cidr [262144], frontends [262144], service-policy
    /// [262144], conntrack (connections per pod) [16384], fragments (per pod) [512].
    /// Pinned maps of other sizes are replaced at start (tracked connections restart).
    #[arg(long = "map-size", value_name = "MAP=ENTRIES", value_delimiter = ',')]
    map_size: Vec<MapSizeSetting>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Before anything starts: a setting given twice is a mistake to fix, not to guess.
    let map_sizes = MapSizes::with(&args.map_size)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let metrics_address = match args.metrics_address.as_str() {
            "none" => None,
            a => Some(SocketAddr::from_str(a).with_context(|| format!("--metrics-address {a}"))?),
        };
        let (source, description): (Source, String) = match &args.source {
            SourceArg::Dir(dir) => (
                directory::watch(dir.clone())?.into(),
                format!("dir:{}", dir.display()),
            ),
            SourceArg::Kubernetes => {
                let config = match &args.kubeconfig {
                    Some(path) => {
                        let kubeconfig = Kubeconfig::read_from(path)
                            .with_context(|| format!("reading {}", path.display()))?;
                        kube::Config::from_custom_kubeconfig(
                            kubeconfig,
                            &KubeConfigOptions::default(),
                        )
                        .await?
                    }
                    None => kube::Config::infer()
                        .await
                        .context("no in-cluster configuration or kubeconfig found")?,
                };
                let description = format!("kubernetes ({})", config.cluster_url);
                let client = kube::Client::try_from(config)?;
                let source = Source {
                    events: kubernetes::watch(client.clone(), &args.node_name),
                    pods: Some(kubernetes::PodLookup::new(client)),
                };
                (source, description)
            }
        };
        if args.node_name.is_empty() {
            bail!("--node-name (or NODE_NAME) must name this node");
        }
        let config = AgentConfig {
            socket: Some(
                args.socket
                    .clone()
                    .unwrap_or_else(|| api::default_socket(&args.instance)),
            ),
            node_name: args.node_name,
            instance: args.instance,
            netns: args.netns,
            interface_prefix: args.interface_prefix,
            extra_node_addresses: args.node_address,
            metrics_address,
            source: description,
            cni_conf_dir: args.cni_conf_dir,
            full_resync: Duration::from_secs(args.full_resync_seconds),
            map_sizes,
        };
        tracing::info!(node = %config.node_name, source = %config.source, map_sizes = %config.map_sizes, "starting");
        let handle = agent::spawn(config, source)?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        handle.stop().await?;
        Ok(ExitCode::SUCCESS)
    })
}
