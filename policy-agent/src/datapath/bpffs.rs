//! The BPF filesystem, where maps are pinned so that they outlive the agent process.

use std::{
    io,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use policy_common::maps::{names, programs};

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
    /// An instance name that is not a DNS-1123 label (it would not stay under the pin root).
    #[error(
        "instance name {name:?} {why}: an instance is named by a DNS-1123 label (at most \
         {MAX_INSTANCE_NAME} lowercase letters, digits and '-', starting and ending with a \
         letter or digit)"
    )]
    InstanceName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An instance's directory holds something that is not one of its pins: nothing is
    /// removed.
    #[error(
        "{dir} holds what is not a pin of policy-agent, refusing to remove anything: {}",
        .unexpected.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotOurs {
        /// The instance's directory.
        dir: PathBuf,
        /// What is not ours.
        unexpected: Vec<PathBuf>,
    },
    /// Reading or removing a pin failed.
    #[error("removing {path}: {source}")]
    Remove {
        /// The pin or directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

/// Longest instance name (a DNS-1123 label's limit).
pub const MAX_INSTANCE_NAME: usize = 63;

/// Checks that `name` can name an instance: a DNS-1123 label, so a single path component
/// under [`PIN_ROOT`] (and a socket name), never `..`, an absolute path or empty.
pub fn check_instance_name(name: &str) -> Result<(), BpffsError> {
    let fail = |why| {
        Err(BpffsError::InstanceName {
            name: name.to_owned(),
            why,
        })
    };
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return fail("is empty");
    }
    if bytes.len() > MAX_INSTANCE_NAME {
        return fail("is too long");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return fail("has a character other than a-z, 0-9 and '-'");
    }
    if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return fail("starts or ends with '-'");
    }
    Ok(())
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
    check_instance_name(instance)?;
    ensure_mounted()?;
    let dir = Path::new(PIN_ROOT).join(instance);
    std::fs::create_dir_all(&dir).map_err(|source| BpffsError::Dir {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// What an instance's directory holds.
#[derive(Debug, Default)]
pub struct InstancePins {
    /// Its pinned maps.
    pub maps: Vec<PathBuf>,
    /// Its pinned links, `<ifindex>-<program>`.
    pub links: Vec<PathBuf>,
    /// Anything else.
    pub unexpected: Vec<PathBuf>,
}

impl InstancePins {
    /// Sorts what `dir` holds: the maps of [`names::ALL`], the links under
    /// [`super::LINKS_DIR`], and the rest. Nothing is followed out of `dir` (symbolic links
    /// are the rest).
    pub fn of(dir: &Path) -> Result<Self, BpffsError> {
        let read = |d: &Path| {
            std::fs::read_dir(d).map_err(|source| BpffsError::Remove {
                path: d.to_owned(),
                source,
            })
        };
        let is = |e: &std::fs::DirEntry, dir: bool| {
            e.file_type()
                .is_ok_and(|t| if dir { t.is_dir() } else { t.is_file() })
        };
        let mut pins = Self::default();
        for entry in read(dir)?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if is(&entry, false) && names::ALL.contains(&name.as_ref()) {
                pins.maps.push(entry.path());
            } else if is(&entry, true) && name == super::LINKS_DIR {
                for link in read(&entry.path())?.flatten() {
                    let link_name = link.file_name();
                    if is(&link, false) && is_link_pin(&link_name.to_string_lossy()) {
                        pins.links.push(link.path());
                    } else {
                        pins.unexpected.push(link.path());
                    }
                }
            } else {
                pins.unexpected.push(entry.path());
            }
        }
        Ok(pins)
    }
}

/// Whether `name` is a link pin's name, `<ifindex>-<program>`.
fn is_link_pin(name: &str) -> bool {
    name.split_once('-').is_some_and(|(ifindex, program)| {
        ifindex.parse::<u32>().is_ok() && [programs::FROM_POD, programs::TO_POD].contains(&program)
    })
}

/// Unpins everything of instance `instance` (maps and links: detaching its programs) and
/// removes its directory, if that holds nothing but its pins; otherwise removes nothing and
/// says what is not ours. `Ok(None)`: the instance has no directory.
pub fn remove_instance(instance: &str) -> Result<Option<InstancePins>, BpffsError> {
    check_instance_name(instance)?;
    let dir = Path::new(PIN_ROOT).join(instance);
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(BpffsError::Remove { path: dir, source }),
        Ok(m) if !m.is_dir() => {
            return Err(BpffsError::NotOurs {
                unexpected: vec![dir.clone()],
                dir,
            });
        }
        Ok(_) => {}
    }
    let pins = InstancePins::of(&dir)?;
    if !pins.unexpected.is_empty() {
        return Err(BpffsError::NotOurs {
            dir,
            unexpected: pins.unexpected,
        });
    }
    let remove = |path: &Path, dir: bool| {
        let removed = if dir {
            std::fs::remove_dir(path)
        } else {
            std::fs::remove_file(path)
        };
        removed.map_err(|source| BpffsError::Remove {
            path: path.to_owned(),
            source,
        })
    };
    for pin in pins.links.iter().chain(&pins.maps) {
        remove(pin, false)?;
    }
    let links = dir.join(super::LINKS_DIR);
    if links.exists() {
        remove(&links, true)?;
    }
    remove(&dir, true)?;
    Ok(Some(pins))
}

/// Unpins everything of the instance whose directory is `dir` (maps and links) and removes
/// the directory; anything in it that is not one of our pins stays, and is logged.
pub fn remove_instance_dir(dir: &Path) {
    let Some(instance) = dir
        .strip_prefix(PIN_ROOT)
        .ok()
        .and_then(|i| i.to_str())
        .filter(|i| check_instance_name(i).is_ok())
    else {
        tracing::warn!(dir = %dir.display(), "not an instance's pin directory: left alone");
        return;
    };
    if let Err(e) = remove_instance(instance) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_dns_labels_never_paths() {
        for ok in ["agent", "lab-123-0-n1", "a", &"a".repeat(MAX_INSTANCE_NAME)] {
            assert!(check_instance_name(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/etc",
            "a/b",
            "Agent",
            "a_b",
            "-a",
            "a-",
            "a\nb",
            &"a".repeat(MAX_INSTANCE_NAME + 1),
        ] {
            assert!(check_instance_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn link_pins_are_told_from_strangers() {
        assert!(is_link_pin("12-from_pod") && is_link_pin("7-to_pod"));
        for stranger in ["x-from_pod", "12-other", "12", "-to_pod", "12-to_pod-x"] {
            assert!(!is_link_pin(stranger), "{stranger:?}");
        }
    }
}
