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
    #[command(after_help = LAB_EXIT_CODES_HELP)]
    Lab(lab::LabArgs),
    /// Compile the manifests and evaluate every ordered pair of hosts on every port the
    /// destination declares, without touching the kernel; prints what `lab` would.
    #[command(after_help = EXIT_CODES_HELP)]
    Matrix(matrix::MatrixArgs),
    /// The verdict on one flow, and why: which policies isolate each side, which rule
    /// allowed it, or that none did.
    #[command(after_help = EXIT_CODES_HELP)]
    Explain(explain::ExplainArgs),
    /// Detach and unpin what a stopped agent left on this node (after an uninstall: a
    /// stopped agent's programs keep enforcing, so that a restart has no gap).
    Cleanup(cleanup::CleanupArgs),
    /// Install or uninstall the chained CNI plugin that hands new pods to the agent
    /// before their containers start.
    Cni(cni::CniArgs),
}

/// Exit status of `matrix`, `explain` and `lab` when they ran and printed their results,
/// but some objects of the manifests were rejected (reported on stderr, and left out of the
/// results): a script or CI job must not take a partial answer for a whole one. Not 2,
/// which clap uses for an invalid command line.
pub const EXIT_REJECTED: u8 = 3;

/// The exit codes of the commands that read manifests, for their `--help`, followed by
/// `$more` (lines of codes only some of them have).
macro_rules! exit_codes {
    ($more:literal) => {
        concat!(
            "Exit status:\n",
            "  0    done; every object of the manifests was used\n",
            "  1    error: the results are missing or incomplete (message on stderr)\n",
            "  2    invalid command line\n",
            "  3    done and the results printed, but some objects were rejected (reported on\n",
            "       stderr and left out of the results)",
            $more
        )
    };
}

/// `matrix` and `explain`'s exit codes.
const EXIT_CODES_HELP: &str = exit_codes!("");
/// `lab`'s exit codes: those of `matrix`, and an interrupt.
const LAB_EXIT_CODES_HELP: &str = exit_codes!(
    "\n  130  interrupted (Ctrl-C or SIGTERM) before the results were printed; the lab is torn down"
);

/// The exit status of a command that ran: success, or [`EXIT_REJECTED`] when `rejected`
/// objects were left out.
pub fn ran(rejected: usize) -> ExitCode {
    if rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_REJECTED)
    }
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
