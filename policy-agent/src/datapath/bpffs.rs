//! The BPF filesystem, where maps are pinned so that they outlive the agent process.

use std::{
    io,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The agent's directory in bpffs; each instance pins under a subdirectory.
pub const PIN_ROOT: &str = "/sys/fs/bpf/policy-agent";

/// Errors preparing bpffs.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    /// Mounting failed.
    #[error("mounting bpffs at {BPFFS} (needs root / CAP_SYS_ADMIN): {0}")]
    Mount(nix::Error),
    /// The pin directory could not be created.
    #[error("creating {path}: {source}")]
    Dir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

/// Mounts bpffs at [`BPFFS`] unless it already is (it is not at boot on every system).
pub fn ensure_mounted() -> Result<(), BpffsError> {
    let mounted = statfs(BPFFS).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC);
    if !mounted {
        tracing::info!("mounting bpffs at {BPFFS}");
        mount(
            Some("bpf"),
            BPFFS,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(BpffsError::Mount)?;
    }
    Ok(())
}

/// The pin directory of `instance`, created (with bpffs mounted) if needed.
pub fn instance_dir(instance: &str) -> Result<PathBuf, BpffsError> {
    ensure_mounted()?;
    let dir = Path::new(PIN_ROOT).join(instance);
    std::fs::create_dir_all(&dir).map_err(|source| BpffsError::Dir {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Unpins everything of an instance (maps and links) and removes its directory.
pub fn remove_instance_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove pin directory");
    }
}

/// Removes pin directories named `<prefix><pid>...` whose process is gone.
pub fn sweep_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(PIN_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if crate::netns::stale_owner(&name, prefix).is_some() {
            remove_instance_dir(&entry.path());
        }
    }
}
