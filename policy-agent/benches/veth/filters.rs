//! The filters compared, each enforcing the same rules on the node: the server pod admits
//! `rules` (peer, protocol, port) pairs, the client's three measured flows last, and nothing
//! else. The netfilter variants follow kube-router's layout: a chain per pod that accepts
//! established and related packets first, drops invalid ones, then walks the pod's policy
//! rules, and drops what none of them accepted.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    process::Command,
};

use anyhow::bail;
use policy_agent::{lab::proxy::run_with_input as run, netns::NetNs};
use serde::Serialize;

use crate::load::{PORT_CONNECT, PORT_STREAM, PORT_UDP};

/// The variants, in the order the first repetition runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Nothing filters.
    NoFilter,
    /// This project's eBPF programs, loaded by a real agent.
    Datapath,
    /// A rule per peer and port in the pod's chain, the allowed ones last.
    Iptables,
    /// The pod's chain matches one `hash:ip,port` ipset holding every pair.
    Ipset,
    /// An nftables chain matching one set of (address, protocol, port) concatenations.
    Nftables,
}

impl Variant {
    /// Every variant.
    pub const ALL: [Self; 5] = [
        Self::NoFilter,
        Self::Datapath,
        Self::Iptables,
        Self::Ipset,
        Self::Nftables,
    ];

    /// As the table and the JSON name it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::NoFilter => "no filter",
            Self::Datapath => "this datapath",
            Self::Iptables => "iptables",
            Self::Ipset => "ipset",
            Self::Nftables => "nftables set",
        }
    }
}

/// First address of the peers that fill the rules (none is in the lab).
const FILLER_BASE: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 0);
/// First port of the filler rules, and how many distinct ports they cycle through.
const FILLER_PORT_BASE: u16 = 30_000;
const FILLER_PORTS: usize = 2_000;
/// The measured flows the client is admitted for, as the last rules.
pub const ALLOWED: [(&str, u16); 3] = [
    ("tcp", PORT_STREAM),
    ("udp", PORT_UDP),
    ("tcp", PORT_CONNECT),
];
/// The ipset (in the lab node's own namespace, so no other process sees it).
const IPSET: &str = "bench-allowed";
/// The nftables table.
const NFT_TABLE: &str = "bench";

/// One rule: (peer, protocol, port).
pub type Rule = (Ipv4Addr, &'static str, u16);

/// The `count` rules: fillers from peers outside the lab, then the client's flows.
pub fn rules(count: usize, client: Ipv4Addr) -> Vec<Rule> {
    let fillers = count.saturating_sub(ALLOWED.len());
    (0..fillers)
        .map(|i| {
            let peer = Ipv4Addr::from(u32::from(FILLER_BASE) + i as u32 + 1);
            (peer, "tcp", FILLER_PORT_BASE + (i % FILLER_PORTS) as u16)
        })
        .chain(ALLOWED.iter().map(|&(proto, port)| (client, proto, port)))
        .collect()
}

/// The same rules as a NetworkPolicy for the agent: one ingress rule per pair, the filler
/// peers as /32 ipBlocks, the client by its labels.
pub fn policy_yaml(rules: &[Rule], client: Ipv4Addr) -> String {
    let mut y = String::from(
        "---\nkind: NetworkPolicy\nmetadata: {name: bench, namespace: bench}\nspec:\n  \
         podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n  ingress:\n",
    );
    for &(peer, proto, port) in rules {
        let from = if peer == client {
            "{podSelector: {matchLabels: {app: client}}}".to_owned()
        } else {
            format!("{{ipBlock: {{cidr: {peer}/32}}}}")
        };
        let _ = writeln!(
            y,
            "  - from: [{from}]\n    ports: [{{port: {port}, protocol: {}}}]",
            proto.to_uppercase()
        );
    }
    y
}

/// kube-router's chains around the pod's policy chain, whose rules `policy` gives.
fn iptables_script(server: Ipv4Addr, policy: &str) -> String {
    format!(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :KUBE-ROUTER-FORWARD - [0:0]\n:KUBE-POD-FW-BENCH - [0:0]\n:KUBE-NWPLCY-BENCH - [0:0]\n\
         -A FORWARD -j KUBE-ROUTER-FORWARD\n\
         -A KUBE-ROUTER-FORWARD -d {server}/32 -j KUBE-POD-FW-BENCH\n\
         -A KUBE-ROUTER-FORWARD -s {server}/32 -j KUBE-POD-FW-BENCH\n\
         -A KUBE-POD-FW-BENCH -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A KUBE-POD-FW-BENCH -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-POD-FW-BENCH -d {server}/32 -j KUBE-NWPLCY-BENCH\n\
         -A KUBE-POD-FW-BENCH -s {server}/32 -j ACCEPT\n\
         -A KUBE-POD-FW-BENCH -j DROP\n\
         {policy}COMMIT\n"
    )
}

/// An empty filter table.
const IPTABLES_EMPTY: &str =
    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

/// Installs a netfilter variant in the node's namespace `node` (the datapath's agent is the
/// bench's business).
pub fn install(
    variant: Variant,
    node: &NetNs,
    server: Ipv4Addr,
    rules: &[Rule],
) -> anyhow::Result<()> {
    match variant {
        Variant::NoFilter | Variant::Datapath => Ok(()),
        Variant::Iptables => {
            let mut policy = String::new();
            for (peer, proto, port) in rules {
                let _ = writeln!(
                    policy,
                    "-A KUBE-NWPLCY-BENCH -s {peer}/32 -p {proto} -m {proto} --dport {port} -j ACCEPT"
                );
            }
            run(
                node,
                "iptables-restore",
                &[],
                &iptables_script(server, &policy),
            )
        }
        Variant::Ipset => {
            let mut set = format!(
                "create {IPSET} hash:ip,port family inet maxelem {}\n",
                rules.len().next_power_of_two().max(1024)
            );
            for (peer, proto, port) in rules {
                let _ = writeln!(set, "add {IPSET} {peer},{proto}:{port}");
            }
            run(node, "ipset", &["restore"], &set)?;
            let policy =
                format!("-A KUBE-NWPLCY-BENCH -m set --match-set {IPSET} src,dst -j ACCEPT\n");
            run(
                node,
                "iptables-restore",
                &[],
                &iptables_script(server, &policy),
            )
        }
        Variant::Nftables => {
            let elements: Vec<String> = rules
                .iter()
                .map(|(peer, proto, port)| format!("{peer} . {proto} . {port}"))
                .collect();
            let script = format!(
                "table ip {NFT_TABLE} {{\n\
                 set allowed {{ type ipv4_addr . inet_proto . inet_service; elements = {{ {} }} }}\n\
                 chain forward {{ type filter hook forward priority filter; policy accept;\n\
                 ip daddr {server} jump pod_fw\nip saddr {server} jump pod_fw\n}}\n\
                 chain pod_fw {{\nct state established,related accept\nct state invalid drop\n\
                 ip daddr {server} ip saddr . meta l4proto . th dport @allowed accept\n\
                 ip saddr {server} accept\ndrop\n}}\n}}\n",
                elements.join(", ")
            );
            run(node, "nft", &["-f", "-"], &script)
        }
    }
}

/// Removes what [`install`] installed.
pub fn remove(variant: Variant, node: &NetNs) -> anyhow::Result<()> {
    match variant {
        Variant::NoFilter | Variant::Datapath => Ok(()),
        Variant::Iptables => run(node, "iptables-restore", &[], IPTABLES_EMPTY),
        Variant::Ipset => {
            // The rule that references the set goes first.
            run(node, "iptables-restore", &[], IPTABLES_EMPTY)?;
            run(node, "ipset", &["destroy", IPSET], "")
        }
        Variant::Nftables => run(node, "nft", &["delete", "table", "ip", NFT_TABLE], ""),
    }
}

/// The programs the netfilter variants need, by the Debian package that has them.
pub const TOOLS: [(&str, &str); 3] = [
    ("iptables-restore", "iptables"),
    ("ipset", "ipset"),
    ("nft", "nftables"),
];

/// Fails with what to install when a tool is missing.
pub fn check_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| Command::new(tool).arg("--version").output().is_err())
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        bail!(
            "the veth bench compares against netfilter and needs the Debian packages {} \
             (`cargo xtask bench veth` installs them; or apt-get install them)",
            missing.join(" ")
        );
    }
    Ok(())
}

/// What `tool --version` says (recorded in the report: iptables' backend matters).
pub fn version(tool: &str) -> String {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The server's IPv4 address (the bench is IPv4 only, as the netfilter scripts are).
pub fn v4(ip: IpAddr) -> anyhow::Result<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(_) => bail!("the bench's pods are IPv4"),
    }
}
