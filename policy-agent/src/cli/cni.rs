//! `policy-agent cni install|uninstall`: chains the CNI plugin into the node's network
//! configuration (the DaemonSet's init container runs `install`), or takes it out.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use policy_agent::{
    agent::api,
    cni::{
        install::{self, InstallError, PluginSettings},
        spec::PLUGIN_TYPE,
    },
};

/// Where kubelets' runtimes keep network configurations.
const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// How often `install --wait` looks for the main plugin's configuration.
const WAIT_POLL: Duration = Duration::from_secs(1);

#[derive(Args)]
pub struct CniArgs {
    #[command(subcommand)]
    command: CniCommand,
}

#[derive(Subcommand)]
enum CniCommand {
    /// Copy the plugin into the CNI bin directory and chain it into the node's conflist
    /// (idempotent; the rest of the file stays as it was).
    Install(InstallArgs),
    /// Take the plugin out of the node's configuration (and its binary out of --bin-dir).
    Uninstall(UninstallArgs),
}

#[derive(Args)]
struct InstallArgs {
    /// The runtime's network configuration directory.
    #[arg(long, default_value = DEFAULT_CONF_DIR)]
    conf_dir: PathBuf,
    /// The runtime's CNI plugin directory, to copy the plugin binary into.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The agent's socket, as seen from the node [default: /run/policy-agent/<instance>.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The agent instance whose socket the plugin talks to.
    #[arg(long, default_value = "agent")]
    instance: String,
    /// Let pods start unprotected while the agent is unreachable (availability over
    /// isolation); by default they wait for the agent.
    #[arg(long, env = "POLICY_AGENT_CNI_FAIL_OPEN")]
    fail_open: bool,
    /// Wait for the main plugin's configuration to appear instead of failing.
    #[arg(long)]
    wait: bool,
}

#[derive(Args)]
struct UninstallArgs {
    /// The runtime's network configuration directory.
    #[arg(long, default_value = DEFAULT_CONF_DIR)]
    conf_dir: PathBuf,
    /// The CNI plugin directory to remove the binary from.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

pub fn run(args: CniArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CniCommand::Install(args) => install(args),
        CniCommand::Uninstall(args) => {
            uninstall(&args.conf_dir, args.bin_dir.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    if let Some(bin_dir) = &args.bin_dir {
        let plugin = std::env::current_exe()?.with_file_name(PLUGIN_TYPE);
        let to = install::install_binary(&plugin, bin_dir)
            .with_context(|| format!("installing {}", plugin.display()))?;
        println!("installed {}", to.display());
    }
    let settings = PluginSettings {
        socket: args
            .socket
            .unwrap_or_else(|| api::default_socket(&args.instance)),
        fail_open: args.fail_open,
    };
    let conflist = loop {
        match install::install(&args.conf_dir, &settings) {
            Err(InstallError::NoConfig(dir)) if args.wait => {
                tracing::info!(dir = %dir.display(), "waiting for the main CNI plugin's configuration");
                std::thread::sleep(WAIT_POLL);
            }
            result => break result?,
        }
    };
    println!(
        "chained {PLUGIN_TYPE} into {} ({})",
        conflist.display(),
        if settings.fail_open {
            "fail-open: pods start unprotected while the agent is unreachable"
        } else {
            "fail-closed: pods start only once the agent enforces them"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Takes the plugin out of `conf_dir` (and its binary out of `bin_dir`).
pub fn uninstall(
    conf_dir: &std::path::Path,
    bin_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let changed = install::uninstall(conf_dir)?;
    for file in &changed {
        println!("removed {PLUGIN_TYPE} from {}", file.display());
    }
    if changed.is_empty() {
        println!("{PLUGIN_TYPE} is not chained in {}", conf_dir.display());
    }
    if let Some(bin_dir) = bin_dir {
        let binary = bin_dir.join(PLUGIN_TYPE);
        match std::fs::remove_file(&binary) {
            Ok(()) => println!("removed {}", binary.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", binary.display())),
        }
    }
    Ok(())
}
