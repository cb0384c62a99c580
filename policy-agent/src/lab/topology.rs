//! The lab's network, entirely inside network namespaces: one per simulated node, one per
//! pod, one per external host, and with several nodes a fabric namespace whose bridge joins
//! them. Nothing is added to the root namespace.
//!
//! Pods and external hosts hang off their node by a veth pair, routed like Calico does it:
//! the host has its address as a /32 (or /128) and a default route via a link-local
//! gateway (169.254.1.1, fe80::1) that the node owns on every pod-facing interface; the
//! node routes each address to its interface, and addresses of other nodes via the fabric.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{
    netns::{NetNs, NetnsError},
    plan,
};

/// Prefix of every namespace a lab creates, followed by the creating process id.
pub const NETNS_PREFIX: &str = "polagent-";
/// Prefix of every pin directory a lab creates, followed by the creating process id.
pub const PIN_PREFIX: &str = "lab-";

/// The node's address on every pod-facing interface, the hosts' IPv4 gateway.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The hosts' IPv6 gateway, on every pod-facing interface of the node.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

fn fabric_v4(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 255, node as u8 + 1)
}

fn fabric_v6(node: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xff, node as u16 + 1)
}

/// Names of pods' host-side interfaces start with this.
pub const POD_INTERFACE_PREFIX: &str = "pod";

/// The interface of a node on the fabric.
const FABRIC_IF: &str = "fabric";
/// A host's interface.
const HOST_IF: &str = "eth0";

/// A simulated node.
#[derive(Debug)]
pub struct Node {
    /// Name, used as the pods' `spec.nodeName`.
    pub name: String,
    /// Its namespace.
    pub netns: NetNs,
    /// Its own addresses (traffic with them is the node's).
    pub addresses: Vec<IpAddr>,
}

/// A pod or external host, built.
#[derive(Debug)]
pub struct Host {
    /// What it is: label, pod, addresses, served ports.
    pub spec: plan::Host,
    /// Its namespace.
    pub netns: NetNs,
    /// Index of its node.
    pub node: usize,
    /// Name of its interface on the node side.
    pub node_if: String,
}

/// The built network. Dropping it deletes every namespace (and with them every veth).
#[derive(Debug)]
pub struct Topology {
    /// `<pid>-<sequence>`: unique to this lab, and tells a later run whether its creator
    /// is still alive.
    pub id: String,
    /// [`NETNS_PREFIX`] and `id`: the start of every namespace name of this lab.
    pub prefix: String,
    /// Pods and external hosts (dropped first).
    pub hosts: Vec<Host>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// The fabric joining nodes, if there are several.
    pub fabric: Option<NetNs>,
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// An id unique to this process and call: `<pid>-<sequence>`.
pub fn unique_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    )
}

/// Name of lab node `i` (0-based), as pods' `spec.nodeName`.
pub fn node_name(i: usize) -> String {
    format!("node-{}", i + 1)
}

/// Sysctls every lab namespace gets before its interfaces exist: no duplicate address
/// detection (addresses are usable at once), no reverse-path filter (the datapath, not
/// rp_filter, must be what drops spoofed packets).
fn prepare(ns: &NetNs) -> Result<(), NetnsError> {
    for (key, value) in [
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ] {
        ns.sysctl(key, value)?;
    }
    Ok(())
}

fn host_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

impl Topology {
    /// Builds `nodes` nodes and the given hosts. On error, whatever was built is torn down.
    /// Each host comes with the index of its node.
    pub fn build(nodes: usize, hosts: Vec<(plan::Host, usize)>) -> Result<Self, NetnsError> {
        let id = unique_id();
        let mut topo = Self {
            prefix: format!("{NETNS_PREFIX}{id}"),
            id,
            hosts: Vec::new(),
            nodes: Vec::new(),
            fabric: None,
        };
        for i in 0..nodes.max(1) {
            topo.add_node(i)?;
        }
        if topo.nodes.len() > 1 {
            topo.add_fabric()?;
        }
        for (i, (spec, node)) in hosts.into_iter().enumerate() {
            topo.add_host(i, spec, node)?;
        }
        Ok(topo)
    }

    fn add_node(&mut self, i: usize) -> Result<(), NetnsError> {
        let netns = NetNs::create(&format!("{}-n{}", self.prefix, i + 1))?;
        prepare(&netns)?;
        netns.sysctl("net.ipv4.ip_forward", "1")?;
        netns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        self.nodes.push(Node {
            name: node_name(i),
            netns,
            addresses: vec![GATEWAY_V4.into(), GATEWAY_V6.into()],
        });
        Ok(())
    }

    fn add_fabric(&mut self) -> Result<(), NetnsError> {
        let fabric = NetNs::create(&format!("{}-fab", self.prefix))?;
        prepare(&fabric)?;
        fabric.ip(&["link", "add", "br0", "type", "bridge"])?;
        fabric.ip(&["link", "set", "br0", "up"])?;
        self.fabric = Some(fabric);
        let fabric = self.fabric.as_ref().expect("just set");
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let port = format!("port{}", i + 1);
            fabric.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                FABRIC_IF,
                "netns",
                node.netns.name(),
            ])?;
            fabric.ip(&["link", "set", &port, "master", "br0", "up"])?;
            let (v4, v6) = (fabric_v4(i), fabric_v6(i));
            let node_ns = &node.netns;
            node_ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", FABRIC_IF])?;
            node_ns.ip(&[
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                FABRIC_IF,
                "nodad",
            ])?;
            node_ns.ip(&["link", "set", FABRIC_IF, "up"])?;
            node.addresses.extend([IpAddr::from(v4), IpAddr::from(v6)]);
        }
        Ok(())
    }

    fn add_host(&mut self, index: usize, spec: plan::Host, node: usize) -> Result<(), NetnsError> {
        let (tag, node_if) = match spec.pod {
            Some(_) => ("p", format!("{POD_INTERFACE_PREFIX}{index}")),
            None => ("x", format!("ext{index}")),
        };
        let netns = NetNs::create(&format!("{}-{tag}{index}", self.prefix))?;
        prepare(&netns)?;
        let node_ns = &self.nodes[node].netns;
        node_ns.ip(&[
            "link",
            "add",
            &node_if,
            "type",
            "veth",
            "peer",
            "name",
            HOST_IF,
            "netns",
            netns.name(),
        ])?;
        node_ns.ip(&["addr", "add", &format!("{GATEWAY_V4}/32"), "dev", &node_if])?;
        node_ns.ip(&[
            "addr",
            "add",
            &format!("{GATEWAY_V6}/64"),
            "dev",
            &node_if,
            "nodad",
        ])?;
        node_ns.ip(&["link", "set", &node_if, "up"])?;
        netns.ip(&["link", "set", HOST_IF, "up"])?;

        for &ip in &spec.ips {
            let host = host_prefix(ip);
            let mut add = vec!["addr", "add", host.as_str(), "dev", HOST_IF];
            if ip.is_ipv6() {
                add.push("nodad");
            }
            netns.ip(&add)?;
            node_ns.ip(&["route", "add", &host, "dev", &node_if])?;
            for (i, other) in self.nodes.iter().enumerate() {
                if i == node {
                    continue;
                }
                let via = match ip {
                    IpAddr::V4(_) => fabric_v4(node).to_string(),
                    IpAddr::V6(_) => fabric_v6(node).to_string(),
                };
                other
                    .netns
                    .ip(&["route", "add", &host, "via", &via, "dev", FABRIC_IF])?;
            }
        }
        if spec.ips.iter().any(IpAddr::is_ipv4) {
            let gw = GATEWAY_V4.to_string();
            netns.ip(&["route", "add", &gw, "dev", HOST_IF, "scope", "link"])?;
            netns.ip(&["route", "add", "default", "via", &gw, "dev", HOST_IF])?;
        }
        if spec.ips.iter().any(IpAddr::is_ipv6) {
            let gw = GATEWAY_V6.to_string();
            netns.ip(&["-6", "route", "add", "default", "via", &gw, "dev", HOST_IF])?;
        }

        self.hosts.push(Host {
            spec,
            netns,
            node,
            node_if,
        });
        Ok(())
    }
}
