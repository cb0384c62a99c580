//! `policy-agent cleanup`: what an uninstall leaves behind on a node.
//!
//! The agent keeps its programs attached and its maps pinned when it stops, so that a
//! restarted agent takes over without a gap. Removing the agent for good therefore takes
//! one more step on each node: unpinning the links detaches the programs. With
//! `--cni-conf-dir`, the CNI plugin is taken out of the node's configuration first, so
//! that new pods no longer wait for an agent that is gone.

use std::{collections::BTreeSet, path::Path, process::ExitCode};

use anyhow::bail;
use clap::Args;
use policy_agent::{
    agent::{api, endpoints},
    datapath::bpffs,
};

#[derive(Args)]
pub struct CleanupArgs {
    /// The instance to remove (its pins are under /sys/fs/bpf/policy-agent/<INSTANCE>): a
    /// DNS-1123 label. Only its own pins are removed; anything else there is an error.
    #[arg(long, default_value = "agent", value_parser = instance_name)]
    instance: String,
    /// Also take the CNI plugin out of the network configurations in this directory.
    #[arg(long)]
    cni_conf_dir: Option<std::path::PathBuf>,
    /// And remove the plugin binary from this CNI bin directory.
    #[arg(long, requires = "cni_conf_dir")]
    cni_bin_dir: Option<std::path::PathBuf>,
}

/// Parses an instance name (see [`bpffs::check_instance_name`]).
pub fn instance_name(name: &str) -> Result<String, String> {
    bpffs::check_instance_name(name)
        .map(|()| name.to_owned())
        .map_err(|e| e.to_string())
}

pub fn run(args: CleanupArgs) -> anyhow::Result<ExitCode> {
    let socket = api::default_socket(&args.instance);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if runtime.block_on(api::status(&socket)).is_ok() {
        bail!(
            "the agent {:?} is running (it answers on {}): stop it first",
            args.instance,
            socket.display()
        );
    }
    if let Some(conf_dir) = &args.cni_conf_dir {
        super::cni::uninstall(conf_dir, args.cni_bin_dir.as_deref())?;
    }
    let _ = std::fs::remove_file(endpoints::sandboxes_file(&socket));
    let dir = Path::new(bpffs::PIN_ROOT).join(&args.instance);
    let Some(pins) = bpffs::remove_instance(&args.instance)? else {
        println!("nothing to clean up: {} does not exist", dir.display());
        return Ok(ExitCode::SUCCESS);
    };
    // Links are pinned as `<ifindex>-<program>`.
    let interfaces: BTreeSet<String> = pins
        .links
        .iter()
        .filter_map(|l| Some(l.file_name()?.to_str()?.split_once('-')?.0.to_owned()))
        .collect();
    println!(
        "removed {}: programs detached from {} interface(s), {} map(s) unpinned",
        dir.display(),
        interfaces.len(),
        pins.maps.len()
    );
    Ok(ExitCode::SUCCESS)
}
