//! The lab's network, entirely inside network namespaces: one per simulated node, one per
//! pod, one per external host, and with several nodes a fabric namespace whose bridge joins
//! them. Nothing is added to the root namespace.
//!
//! Pods get their network the way a node gives it: the container runtime's CNI calls
//! ([`super::runtime`]) run the reference `ptp` plugin (a routed veth pair, the node owning
//! the gateway address of the pod's subnet) or the `bridge` plugin (the pod's veth a port
//! of the node's bridge, which holds the gateway address of every pod subnet, as flannel's
//! `cni0` and kubenet's `cbr0` do) and, on an enforced lab, the policy plugin.
//!
//! On a bridge, pods of one subnet reach each other directly, frames bridged from port to
//! port. The lab takes pod addresses from the manifests, so one subnet may have pods on
//! several nodes (where flannel gives each node a subnet of its own): the bridge answers
//! neighbour resolution for the addresses the node routes elsewhere (proxy ARP, proxy NDP),
//! and such traffic is routed through the node as it would be between flannel subnets.
//! External hosts hang off their node by a veth pair the lab makes itself, routed like
//! Calico does it: a /32 (or /128) and a default route via a link-local gateway
//! (169.254.1.1, fe80::1) that the node owns. Every node routes the pods of other nodes
//! through a VXLAN overlay as flannel builds it (`flannel.1`, UDP 8472, over the fabric), and
//! their external hosts via the fabric.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Context as _;
use ipnet::IpNet;
use serde_json::Value;

use super::runtime::{CniRuntime, LAB_BRIDGE, POD_IFNAME, PluginTime, Sandbox};
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

/// The VXLAN device that carries pod traffic between nodes, named as flannel names it.
pub const OVERLAY_IF: &str = "flannel.1";
/// flannel's VXLAN network identifier.
const VXLAN_ID: &str = "1";
/// flannel's VXLAN UDP port (the kernel's, not IANA's 4789).
const VXLAN_PORT: &str = "8472";
/// MTU of the fabric links: a full-size pod packet plus VXLAN's 50 bytes of encapsulation,
/// so that pods keep their MTU of 1500 across nodes.
const FABRIC_MTU: &str = "1600";

/// The address of a node's VXLAN endpoint, the next hop of routes to its pods (flannel uses
/// the `.0` of the node's pod subnet; the lab's pod subnets may span nodes).
fn vtep_v4(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 254, node as u8 + 1)
}

fn vtep_v6(node: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xfe, node as u16 + 1)
}

/// The MAC address of a node's VXLAN device, which other nodes' forwarding tables map to
/// its fabric address (flannel publishes it in the Node's annotations).
fn vtep_mac(node: usize) -> String {
    format!("02:00:00:00:fe:{:02x}", node + 1)
}

/// Names of pods' host-side interfaces start with this (`ptp` names them `veth<hex>`).
pub const POD_INTERFACE_PREFIX: &str = "veth";
/// Prefix length of a pod's IPv4 subnet, whose gateway the node owns.
const POD_SUBNET_V4: u8 = 24;
/// Prefix length of a pod's IPv6 subnet.
const POD_SUBNET_V6: u8 = 64;

/// The interface that holds a node's own address, as a node's uplink would.
const NODE_IF: &str = "lo";
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

impl Node {
    /// The addresses other nodes and external hosts reach it at, as its Node object's
    /// `InternalIP`s: its fabric addresses, or, alone, the gateway its hosts use.
    pub fn internal_addresses(&self) -> Vec<IpAddr> {
        let fabric: Vec<IpAddr> = self
            .addresses
            .iter()
            .copied()
            .filter(|a| *a != IpAddr::from(GATEWAY_V4) && *a != IpAddr::from(GATEWAY_V6))
            .collect();
        if fabric.is_empty() {
            self.addresses.clone()
        } else {
            fabric
        }
    }
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
    /// A pod's sandbox, as its CNI ADD created it.
    pub sandbox: Option<PodSandbox>,
}

impl Host {
    /// The subnet of `ip` as the pod's CNI result gives it (`None` for external hosts, or
    /// an address the result lacks).
    pub fn subnet_of(&self, ip: IpAddr) -> Option<IpNet> {
        self.sandbox.as_ref()?.result["ips"]
            .as_array()?
            .iter()
            .filter_map(|entry| entry["address"].as_str()?.parse::<IpNet>().ok())
            .find(|net| net.addr() == ip)
            .map(|net| net.trunc())
    }
}

/// What the runtime keeps of a pod's sandbox, to CHECK and DEL it later.
#[derive(Clone, Debug)]
pub struct PodSandbox {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_ARGS`.
    pub args: Vec<(String, String)>,
    /// The result of ADD.
    pub result: Value,
    /// How long each plugin's ADD took.
    pub add_times: Vec<PluginTime>,
    /// The runtime's capability values (the pod's host ports).
    pub runtime_config: Value,
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
    /// Every address of the lab's hosts (gateways must be none of them).
    taken: BTreeSet<IpAddr>,
    /// Hosts made so far (names namespaces).
    made: usize,
    /// Nodes whose pods hang off [`LAB_BRIDGE`] (a pod's CNI result named it).
    bridged: BTreeSet<usize>,
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
    /// Builds `nodes` nodes and the given external hosts, each with the index of its node;
    /// `taken` are all the addresses pods will have. On error, whatever was built is torn
    /// down.
    pub fn build(
        nodes: usize,
        externals: Vec<(plan::Host, usize)>,
        taken: BTreeSet<IpAddr>,
    ) -> Result<Self, NetnsError> {
        let id = unique_id();
        let mut topo = Self {
            prefix: format!("{NETNS_PREFIX}{id}"),
            id,
            hosts: Vec::new(),
            nodes: Vec::new(),
            fabric: None,
            taken,
            made: 0,
            bridged: BTreeSet::new(),
        };
        for i in 0..nodes.max(1) {
            topo.add_node(i)?;
        }
        if topo.nodes.len() > 1 {
            topo.add_fabric()?;
        }
        for (spec, node) in externals {
            topo.taken.extend(&spec.ips);
            topo.add_external(spec, node)?;
        }
        Ok(topo)
    }

    /// Creates a pod's sandbox on `node` and runs the CNI ADD of `runtime` for it, asking
    /// for the pod's addresses. If ADD fails, the sandbox is deleted again.
    pub fn add_pod(
        &mut self,
        spec: plan::Host,
        uid: Option<&str>,
        node: usize,
        runtime: &CniRuntime,
        runtime_config: Value,
    ) -> anyhow::Result<&Host> {
        let pod = spec.pod.clone().context("not a pod")?;
        // A node's IPAM never hands out one address twice; `static` IPAM does what it is
        // told, so the lab refuses the clash itself instead of misrouting one of the pods.
        if let Some((ip, other)) = spec.ips.iter().find_map(|ip| {
            self.hosts
                .iter()
                .find(|h| h.spec.ips.contains(ip))
                .map(|h| (ip, &h.spec.label))
        }) {
            anyhow::bail!("pod {pod} has address {ip}, which {other} already has");
        }
        let index = self.next_index();
        let netns = NetNs::create(&format!("{}-p{index}", self.prefix))?;
        prepare(&netns)?;
        let container_id = format!("{}-{index}", self.prefix);
        let subnets: Vec<(String, IpAddr)> = spec
            .ips
            .iter()
            .map(|&ip| pod_address(ip, &self.taken))
            .collect();
        let addresses: Vec<String> = subnets.iter().map(|(cidr, _)| cidr.clone()).collect();
        let gateways: Vec<String> = subnets.iter().map(|(_, gw)| gw.to_string()).collect();
        let mut args = vec![
            ("IgnoreUnknown".to_owned(), "1".to_owned()),
            ("K8S_POD_NAMESPACE".to_owned(), pod.namespace.clone()),
            ("K8S_POD_NAME".to_owned(), pod.name.clone()),
            (
                "K8S_POD_INFRA_CONTAINER_ID".to_owned(),
                container_id.clone(),
            ),
        ];
        if let Some(uid) = uid {
            args.push(("K8S_POD_UID".to_owned(), uid.to_owned()));
        }
        // What a runtime passes `static` IPAM for addresses it chose.
        args.push(("IP".to_owned(), addresses.join(",")));
        args.push(("GATEWAY".to_owned(), gateways.join(",")));
        let sandbox = Sandbox {
            node: &self.nodes[node].netns,
            netns: &netns,
            container_id: container_id.clone(),
            args: args.clone(),
            runtime_config: &runtime_config,
        };
        let added = runtime
            .add(&sandbox)
            .with_context(|| format!("creating the sandbox of pod {pod}"))?;
        let result = added.result;
        let host_side = host_interfaces(&result);
        // A bridge plugin lists the bridge before the pod's own veth; a result that names
        // no veth leaves the pod's side to tell.
        let node_if = host_side
            .iter()
            .find(|name| *name != LAB_BRIDGE)
            .cloned()
            .or_else(|| peer_of_pod_interface(&self.nodes[node].netns, &netns))
            .with_context(|| format!("the CNI result for {pod} names no host interface"))?;
        if host_side.iter().any(|name| name == LAB_BRIDGE) {
            self.bridge_holds_gateways(node, &subnets)?;
            self.bridge_answers_for_others(node)?;
        }
        self.route_from_other_nodes(node, &spec.ips, true)?;
        self.hosts.push(Host {
            spec,
            netns,
            node,
            node_if,
            sandbox: Some(PodSandbox {
                container_id,
                args,
                result,
                add_times: added.times,
                runtime_config,
            }),
        });
        Ok(self.hosts.last().expect("just pushed"))
    }

    /// Runs the CNI DEL of `runtime` for the pod `label` and deletes its sandbox.
    pub fn remove_pod(&mut self, label: &str, runtime: &CniRuntime) -> anyhow::Result<()> {
        let i = self
            .hosts
            .iter()
            .position(|h| h.spec.label == label)
            .with_context(|| format!("no pod {label} in the lab"))?;
        let host = self.hosts.remove(i);
        if let Some(sandbox) = &host.sandbox {
            runtime.del(
                &Sandbox {
                    node: &self.nodes[host.node].netns,
                    netns: &host.netns,
                    container_id: sandbox.container_id.clone(),
                    args: sandbox.args.clone(),
                    runtime_config: &sandbox.runtime_config,
                },
                Some(&sandbox.result),
            )?;
        }
        Ok(())
    }

    fn next_index(&mut self) -> usize {
        self.made += 1;
        self.made - 1
    }

    fn add_node(&mut self, i: usize) -> Result<(), NetnsError> {
        let netns = NetNs::create(&format!("{}-n{}", self.prefix, i + 1))?;
        prepare(&netns)?;
        netns.sysctl("net.ipv4.ip_forward", "1")?;
        netns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // The node's own address whatever links it has (external hosts' links hold it
        // too): what its Node object reports, where node ports and host ports answer. On
        // the loopback device, as this kernel has no dummy devices.
        netns.ip(&["addr", "add", &format!("{GATEWAY_V4}/32"), "dev", NODE_IF])?;
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
            for (ns, link) in [(fabric, port.as_str()), (node_ns, FABRIC_IF)] {
                ns.ip(&["link", "set", link, "mtu", FABRIC_MTU])?;
            }
            node_ns.ip(&["link", "set", FABRIC_IF, "up"])?;
            node.addresses.extend([IpAddr::from(v4), IpAddr::from(v6)]);
        }
        self.add_overlay()
    }

    /// Joins the nodes' pod networks with VXLAN, as flannel's `vxlan` backend does: a
    /// `flannel.1` device per node (no learning), and on every node, per other node, a
    /// permanent neighbour entry for its endpoint address and a forwarding entry sending its
    /// device's MAC to its fabric address. Pods' routes then go via the endpoint addresses.
    fn add_overlay(&self) -> Result<(), NetnsError> {
        for (i, node) in self.nodes.iter().enumerate() {
            let ns = &node.netns;
            let local = fabric_v4(i).to_string();
            ns.ip(&[
                "link",
                "add",
                OVERLAY_IF,
                "type",
                "vxlan",
                "id",
                VXLAN_ID,
                "local",
                &local,
                "dev",
                FABRIC_IF,
                "dstport",
                VXLAN_PORT,
                "nolearning",
            ])?;
            ns.ip(&["link", "set", OVERLAY_IF, "address", &vtep_mac(i), "up"])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/32", vtep_v4(i)),
                "dev",
                OVERLAY_IF,
            ])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/128", vtep_v6(i)),
                "dev",
                OVERLAY_IF,
                "nodad",
            ])?;
            for j in (0..self.nodes.len()).filter(|j| *j != i) {
                let mac = vtep_mac(j);
                for vtep in [vtep_v4(j).to_string(), vtep_v6(j).to_string()] {
                    ns.ip(&[
                        "neigh",
                        "replace",
                        &vtep,
                        "lladdr",
                        &mac,
                        "dev",
                        OVERLAY_IF,
                        "nud",
                        "permanent",
                    ])?;
                }
                crate::netns::ip(&[
                    "netns",
                    "exec",
                    ns.name(),
                    "bridge",
                    "fdb",
                    "append",
                    &mac,
                    "dev",
                    OVERLAY_IF,
                    "dst",
                    &fabric_v4(j).to_string(),
                ])?;
            }
        }
        Ok(())
    }

    fn add_external(&mut self, spec: plan::Host, node: usize) -> Result<(), NetnsError> {
        let index = self.next_index();
        let node_if = format!("ext{index}");
        let netns = NetNs::create(&format!("{}-x{index}", self.prefix))?;
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
            if self.bridged.contains(&node) {
                proxy_neighbour(node_ns, ip)?;
            }
        }
        self.route_from_other_nodes(node, &spec.ips, false)?;
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
            sandbox: None,
        });
        Ok(())
    }

    /// Puts the gateway of each of a pod's subnets (`ip/prefix` and gateway, as IPAM was
    /// asked for them) on the bridge of `node`, with the subnet's prefix: the node's address
    /// on the pods' link, as flannel's `cni0` holds its node's subnet gateway.
    fn bridge_holds_gateways(
        &self,
        node: usize,
        subnets: &[(String, IpAddr)],
    ) -> Result<(), NetnsError> {
        let ns = &self.nodes[node].netns;
        for (cidr, gateway) in subnets {
            let prefix = cidr.rsplit_once('/').map_or("", |(_, p)| p);
            let address = format!("{gateway}/{prefix}");
            let mut replace = vec!["addr", "replace", address.as_str(), "dev", LAB_BRIDGE];
            if gateway.is_ipv6() {
                replace.push("nodad");
            }
            ns.ip(&replace)?;
        }
        Ok(())
    }

    /// Makes the bridge of `node` (once its first pod hangs off it) answer neighbour
    /// resolution for every address the node routes elsewhere: hosts of other nodes, and
    /// the node's external hosts. Pods on the bridge answer for themselves.
    fn bridge_answers_for_others(&mut self, node: usize) -> Result<(), NetnsError> {
        if !self.bridged.insert(node) {
            return Ok(());
        }
        let ns = &self.nodes[node].netns;
        for (key, value) in [
            (format!("net.ipv4.conf.{LAB_BRIDGE}.proxy_arp"), "1"),
            (format!("net.ipv6.conf.{LAB_BRIDGE}.proxy_ndp"), "1"),
            // Answer at once, as a neighbour would (the default delays proxied answers).
            (format!("net.ipv4.neigh.{LAB_BRIDGE}.proxy_delay"), "0"),
            (format!("net.ipv6.neigh.{LAB_BRIDGE}.proxy_delay"), "0"),
        ] {
            ns.sysctl(&key, value)?;
        }
        let elsewhere = self
            .hosts
            .iter()
            .filter(|h| h.node != node || h.sandbox.is_none())
            .flat_map(|h| h.spec.ips.iter().copied());
        for ip in elsewhere {
            proxy_neighbour(ns, ip)?;
        }
        Ok(())
    }

    /// Routes the addresses of a host on `node` from every other node: a pod's through the
    /// VXLAN overlay, an external host's over the fabric (it is outside the pod network).
    fn route_from_other_nodes(
        &self,
        node: usize,
        ips: &[IpAddr],
        pod: bool,
    ) -> Result<(), NetnsError> {
        for &ip in ips {
            let host = host_prefix(ip);
            let (via, dev) = match (ip, pod) {
                (IpAddr::V4(_), true) => (vtep_v4(node).to_string(), OVERLAY_IF),
                (IpAddr::V6(_), true) => (vtep_v6(node).to_string(), OVERLAY_IF),
                (IpAddr::V4(_), false) => (fabric_v4(node).to_string(), FABRIC_IF),
                (IpAddr::V6(_), false) => (fabric_v6(node).to_string(), FABRIC_IF),
            };
            for (i, other) in self.nodes.iter().enumerate() {
                if i != node {
                    // Replaced: a pod whose sandbox is made again still has its route.
                    other
                        .netns
                        .ip(&["route", "replace", &host, "via", &via, "dev", dev, "onlink"])?;
                    if self.bridged.contains(&i) {
                        proxy_neighbour(&other.netns, ip)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The host-side interfaces a CNI result lists (those without a `sandbox`), in its order.
fn host_interfaces(result: &Value) -> Vec<String> {
    result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i.get("sandbox").is_none())
        .filter_map(|i| i["name"].as_str().map(str::to_owned))
        .collect()
}

/// The node-side end of the veth whose pod side is the pod's interface in `pod_ns`.
fn peer_of_pod_interface(node_ns: &NetNs, pod_ns: &NetNs) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-n", pod_ns.name(), "-j", "link", "show", "dev", POD_IFNAME])
        .output()
        .ok()?;
    let links: Value = serde_json::from_slice(&out.stdout).ok()?;
    let index = u32::try_from(links.get(0)?.get("link_index")?.as_u64()?).ok()?;
    let name = node_ns
        .run(|| nix::net::if_::if_indextoname(index).ok())
        .ok()??;
    name.into_string().ok()
}

/// Lets the bridge of `node_ns` answer neighbour solicitations for `ip`, which the node
/// routes elsewhere (IPv4 needs no entry: proxy ARP answers for whatever is routed through
/// another interface).
fn proxy_neighbour(node_ns: &NetNs, ip: IpAddr) -> Result<(), NetnsError> {
    match ip {
        IpAddr::V4(_) => Ok(()),
        IpAddr::V6(v6) => node_ns.ip(&[
            "-6",
            "neigh",
            "replace",
            "proxy",
            &v6.to_string(),
            "dev",
            LAB_BRIDGE,
        ]),
    }
}

/// A pod address as the runtime asks IPAM for it (`ip/prefix` of the pod's subnet), and
/// the subnet's gateway: its highest address that no host of the lab has.
fn pod_address(ip: IpAddr, taken: &BTreeSet<IpAddr>) -> (String, IpAddr) {
    let (prefix, net) = match ip {
        IpAddr::V4(_) => (POD_SUBNET_V4, ipnet::IpNet::new(ip, POD_SUBNET_V4)),
        IpAddr::V6(_) => (POD_SUBNET_V6, ipnet::IpNet::new(ip, POD_SUBNET_V6)),
    };
    let last = net.expect("valid prefix lengths").broadcast();
    // Below the broadcast address (IPv4) or the subnet's last address (IPv6).
    let gateway = (1..=u8::MAX.into())
        .map(|down: u32| match last {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) - down)),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) - u128::from(down))),
        })
        .find(|g| !taken.contains(g) && *g != ip)
        .expect("a /24 or /64 has room for a gateway");
    (format!("{ip}/{prefix}"), gateway)
}
