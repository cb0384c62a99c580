//! Command-line interface (see the CLI contract in the README).

mod cleanup;
mod cni;
mod explain;
mod lab;
mod matrix;
mod observe;
mod run;
mod scenario;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::{EnvFilter, fmt};

/// Enforces Kubernetes NetworkPolicy with eBPF.
#[derive(Parser)]
#[command(name = "policy-agent", version)]
pub struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The node agent: watch the cluster (or a manifest directory) and enforce the
    /// NetworkPolicies of this node's pods.
    Run(run::RunArgs),
    /// Stream the flow records of a running agent (drops, and new allowed flows).
    Flows(observe::FlowsArgs),
    /// What a running agent enforces: endpoints, maps, last sync, rejected policies.
    Status(observe::StatusArgs),
    /// Build a simulated node from network namespaces, enforce the manifests with the real
    /// datapath, probe every pair of hosts and print who reaches whom. Root only.
    Lab(lab::LabArgs),
    /// Compile the manifests and evaluate every ordered pair of hosts on every port the
    /// destination declares, without touching the kernel; prints what `lab` would.
    Matrix(matrix::MatrixArgs),
    /// The verdict on one flow, and why: which policies isolate each side, which rule
    /// allowed it, or that none did.
    Explain(explain::ExplainArgs),
    /// Detach and unpin what a stopped agent left on this node (after an uninstall: a
    /// stopped agent's programs keep enforcing, so that a restart has no gap).
    Cleanup(cleanup::CleanupArgs),
    /// Install or uninstall the chained CNI plugin that hands new pods to the agent
    /// before their containers start.
    Cni(cni::CniArgs),
}

/// Logs to stderr; `RUST_LOG` filters (default: warnings and errors).
pub fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs a command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Flows(args) => observe::flows(args),
        Command::Status(args) => observe::status(args),
        Command::Lab(args) => lab::run(args),
        Command::Matrix(args) => matrix::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Cleanup(args) => cleanup::run(args),
        Command::Cni(args) => cni::run(args),
    }
}
