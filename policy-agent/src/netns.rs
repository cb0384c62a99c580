//! Named network namespaces, and running code inside one.
//!
//! The agent stays in the root mount namespace (where bpffs is mounted) and enters a network
//! namespace only on a short-lived thread, with `setns(CLONE_NEWNET)`, for what must happen
//! there: sockets (which stay in the namespace they were created in, whatever thread uses
//! them later), interface lookups and program attachment.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
    process::Command,
};

use nix::sched::{CloneFlags, setns};

/// Where `ip netns add` binds named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Errors of namespace operations.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {stderr}")]
    Ip {
        /// The arguments.
        args: String,
        /// What it printed.
        stderr: String,
    },
    /// The `ip` tool could not be run.
    #[error("cannot run `ip` (install iproute2): {0}")]
    NoIp(io::Error),
    /// Opening or entering the namespace failed.
    #[error("entering network namespace {name}: {source}")]
    Enter {
        /// Namespace.
        name: String,
        /// Cause.
        source: io::Error,
    },
    /// A sysctl could not be written.
    #[error("setting {key} in network namespace {name}: {source}")]
    Sysctl {
        /// Namespace.
        name: String,
        /// The sysctl.
        key: String,
        /// Cause.
        source: io::Error,
    },
}

impl From<NetnsError> for io::Error {
    fn from(e: NetnsError) -> Self {
        io::Error::other(e)
    }
}

/// Runs `ip` with `args`; on failure returns its stderr.
pub fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(NetnsError::NoIp)?;
    if !out.status.success() {
        return Err(NetnsError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// A named network namespace; deleted on drop if this handle created it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    owned: bool,
}

impl NetNs {
    /// Creates the namespace `name` (`ip netns add`), with loopback up.
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on an existing namespace `name` (one `ip netns add` made), which dropping
    /// leaves alone.
    pub fn open(name: &str) -> Result<Self, NetnsError> {
        let ns = Self {
            name: name.to_owned(),
            owned: false,
        };
        File::open(ns.path()).map_err(|source| NetnsError::Enter {
            name: name.to_owned(),
            source,
        })?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that keeps the namespace alive.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) -> Result<(), NetnsError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a thread that has entered the namespace, and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let file = File::open(self.path()).map_err(|source| NetnsError::Enter {
            name: self.name.clone(),
            source,
        })?;
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter {
                    name: self.name.clone(),
                    source: e.into(),
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Writes a sysctl of the namespace (`key` as in `net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))?
            .map_err(|source| NetnsError::Sysctl {
                name: self.name.clone(),
                key: key.to_owned(),
                source,
            })
    }

    /// Index of interface `name` inside the namespace.
    pub fn ifindex(&self, name: &str) -> Result<u32, NetnsError> {
        let name = name.to_owned();
        self.run(move || nix::net::if_::if_nametoindex(name.as_str()))?
            .map_err(|e| NetnsError::Enter {
                name: self.name.clone(),
                source: e.into(),
            })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // Interfaces inside (our veths) go with the namespace.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            tracing::warn!(netns = %self.name, error = %e, "could not delete network namespace");
        }
    }
}

/// Deletes named namespaces starting with `prefix` whose creating process (the decimal
/// number right after the prefix) no longer runs: leftovers of a run that was killed.
pub fn sweep_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = stale_owner(&name, prefix) {
            tracing::info!(netns = %name, pid, "deleting a stale lab namespace");
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// The pid encoded after `prefix` in `name`, if that process is gone.
pub fn stale_owner(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let pid: u32 = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    (!Path::new("/proc").join(pid.to_string()).exists()).then_some(pid)
}
