//! Lab settings: defaults, an optional `lab.toml` next to the manifests, and flags.
//!
//! ```toml
//! # examples/torchpod/lab.toml
//! nodes = 1
//! external = ["192.168.0.10", "172.17.4.8"]
//! external-ports = ["22", "80", "443", "53/udp"]
//! proxy-mode = "iptables"   # or "nftables", "ipvs"
//! cni = "ptp"               # or "bridge"
//! services = "on"           # or "off", "per-pod" (default: on when there are Services)
//! dns = true                # the cluster DNS behind kube-system/kube-dns (default: false)
//! ```
//!
//! `dns` may also be a section, `[dns]` (on unless it says `enabled = false`), the place of
//! DNS settings to come. See [`super::dns`] for what the cluster DNS adds.

use std::{net::IpAddr, path::Path};

use anyhow::Context as _;
use serde::Deserialize;

pub use super::proxy::ProxyMode;
use crate::model::{ObjectRef, Protocol};
pub use crate::plan::ServiceProbes;

/// File the lab reads from the manifest directory, if present.
pub const LAB_FILE: &str = "lab.toml";

/// What external hosts serve unless told otherwise: SSH, HTTP, HTTPS and DNS.
pub const DEFAULT_EXTERNAL_PORTS: [(Protocol, u16); 4] = [
    (Protocol::Tcp, 22),
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 443),
    (Protocol::Udp, 53),
];

/// How the lab's nodes give pods their network, as the node's CNI configuration would.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CniKind {
    /// The reference `ptp` plugin: a routed veth per pod (as Calico and Cilium do).
    #[default]
    Ptp,
    /// The reference `bridge` plugin: every pod's veth a port of the node's bridge (as
    /// flannel and kubenet do).
    Bridge,
}

impl CniKind {
    /// As the flag spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ptp => "ptp",
            Self::Bridge => "bridge",
        }
    }
}

/// How to build a lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabConfig {
    /// Simulated nodes; pods are spread over them in name order.
    pub nodes: usize,
    /// Hosts outside the cluster, each in its own namespace behind a node.
    pub externals: Vec<IpAddr>,
    /// Ports every external host serves.
    pub external_ports: Vec<(Protocol, u16)>,
    /// Whether the nodes' CNI configuration lets pods start while their agent is down.
    pub fail_open: bool,
    /// Pods the lab does not create at start ([`super::Lab::start_pod`] does, later).
    pub deferred: Vec<ObjectRef>,
    /// How kube-proxy forwards Service traffic on the nodes.
    pub proxy_mode: ProxyMode,
    /// How pods get their network.
    pub cni: CniKind,
    /// Which Services to probe through; `None`: all of them, if there are any.
    pub services: Option<ServiceProbes>,
    /// Whether the lab runs the cluster's DNS: a DNS server pod behind Service
    /// `kube-system/kube-dns`, every pod's resolver pointed at it, and DNS lookups as the
    /// probes to it (see [`super::dns`]). Off by default: it adds a pod and a Service to the
    /// manifests' cluster.
    pub dns: bool,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self {
            nodes: 1,
            externals: Vec::new(),
            external_ports: DEFAULT_EXTERNAL_PORTS.to_vec(),
            fail_open: false,
            deferred: Vec::new(),
            proxy_mode: ProxyMode::default(),
            cni: CniKind::default(),
            services: None,
            dns: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct LabFile {
    nodes: Option<usize>,
    external: Option<Vec<IpAddr>>,
    external_ports: Option<Vec<String>>,
    proxy_mode: Option<ProxyMode>,
    cni: Option<CniKind>,
    services: Option<ServiceProbes>,
    dns: Option<DnsFile>,
}

/// lab.toml's `dns`: a switch, or a section.
#[derive(Deserialize)]
#[serde(untagged)]
enum DnsFile {
    /// `dns = true`.
    Switch(bool),
    /// `[dns]`.
    Section(DnsSection),
}

/// lab.toml's `[dns]` section.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsSection {
    /// Whether the cluster DNS runs [default: true, as the section is there].
    enabled: Option<bool>,
}

impl DnsFile {
    /// Whether the cluster DNS runs.
    fn enabled(&self) -> bool {
        match self {
            Self::Switch(on) => *on,
            Self::Section(section) => section.enabled.unwrap_or(true),
        }
    }
}

impl LabConfig {
    /// Defaults, overridden by `dir/lab.toml` when it exists.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let mut config = Self::default();
        let path = dir.join(LAB_FILE);
        if !path.exists() {
            return Ok(config);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let file: LabFile = toml::from_str(&text)
            .with_context(|| format!("{}: invalid lab settings", path.display()))?;
        if let Some(n) = file.nodes {
            config.nodes = n;
        }
        if let Some(ext) = file.external {
            config.externals = ext;
        }
        config.proxy_mode = file.proxy_mode.unwrap_or(config.proxy_mode);
        config.cni = file.cni.unwrap_or(config.cni);
        config.services = file.services.or(config.services);
        config.dns = file.dns.map_or(config.dns, |d| d.enabled());
        if let Some(ports) = file.external_ports {
            config.external_ports = ports
                .iter()
                .map(|p| parse_port(p))
                .collect::<Result<_, _>>()
                .with_context(|| format!("{}: external-ports", path.display()))?;
        }
        Ok(config)
    }
}

/// Parses `PORT` (TCP) or `PORT/PROTOCOL`, e.g. `22`, `53/udp`, `9000/SCTP`.
pub fn parse_port(s: &str) -> anyhow::Result<(Protocol, u16)> {
    let (port, protocol) = match s.split_once('/') {
        Some((port, proto)) => (
            port,
            Protocol::parse(&proto.to_ascii_uppercase())
                .with_context(|| format!("{s:?}: protocol must be tcp, udp or sctp"))?,
        ),
        None => (s, Protocol::Tcp),
    };
    let port: u16 = port
        .trim()
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .with_context(|| format!("{s:?}: not a port number (1-65535)"))?;
    Ok((protocol, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_port("22").unwrap(), (Protocol::Tcp, 22));
        assert_eq!(parse_port("53/udp").unwrap(), (Protocol::Udp, 53));
        assert_eq!(parse_port("9/SCTP").unwrap(), (Protocol::Sctp, 9));
        assert!(parse_port("0").is_err());
        assert!(parse_port("80/icmp").is_err());
    }

    /// The settings of a lab.toml holding `text`.
    fn settings(text: &str) -> anyhow::Result<LabConfig> {
        let dir = std::env::temp_dir().join(format!(
            "lab-config-{}",
            super::super::topology::unique_id()
        ));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(LAB_FILE), text)?;
        let config = LabConfig::from_dir(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        config
    }

    #[test]
    fn dns_is_a_switch_or_a_section() {
        assert!(!settings("").unwrap().dns, "off by default");
        assert!(settings("dns = true").unwrap().dns);
        assert!(!settings("dns = false").unwrap().dns);
        assert!(settings("[dns]").unwrap().dns);
        assert!(!settings("[dns]\nenabled = false").unwrap().dns);
        assert!(settings("[dns]\nbogus = 1").is_err());
        assert!(settings("dns = \"yes\"").is_err());
    }
}
