//! kube-proxy's rules for the lab's Services, written into every lab node's namespace in
//! kube-proxy's own layouts:
//! - `iptables`: the chains `KUBE-SERVICES`, `KUBE-SVC-*` (a random choice of backend),
//!   `KUBE-SEP-*` (the DNAT, and masquerade for a pod that reaches itself), `KUBE-NODEPORTS`
//!   and `KUBE-EXT-*` (node ports; masquerade unless `externalTrafficPolicy: Local`),
//!   `KUBE-MARK-MASQ` and `KUBE-POSTROUTING`, loaded with `iptables-restore` (and
//!   `ip6tables-restore`);
//! - `nftables`: the table `kube-proxy` with the verdict maps `service-ips` and
//!   `service-nodeports`, chains `service-*`, `external-*` and `endpoint-*`, loaded with `nft`;
//! - `ipvs`: cluster IPs held by a `kube-ipvs0` device (so they are addresses of the node, as
//!   with IPVS), and, since this kernel has no IPVS, the iptables layout's DNAT doing what the
//!   IPVS virtual servers would.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{
    model::{Cluster, Protocol, Service, ServicePort},
    netns::NetNs,
    semantics::services::{Backend, backends},
};

/// How the lab's nodes forward Service traffic, as `kube-proxy --proxy-mode` would.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// kube-proxy's iptables rules (the default).
    #[default]
    Iptables,
    /// kube-proxy's nftables table.
    Nftables,
    /// Cluster IPs on the node (`kube-ipvs0`), forwarded with DNAT.
    Ipvs,
}

impl ProxyMode {
    /// As the flag spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::Ipvs => "ipvs",
        }
    }
}

/// The device IPVS mode puts cluster IPs on.
pub const IPVS_DEVICE: &str = "kube-ipvs0";
/// The mark that asks `KUBE-POSTROUTING` to masquerade (kube-proxy's default).
const MASQ_MARK: &str = "0x4000";

/// One Service port with its backends of one family.
struct Entry<'a> {
    service: &'a Service,
    port: &'a ServicePort,
    frontends: Vec<IpAddr>,
    backends: Vec<Backend>,
    /// Which of `backends` are on this node: those `externalTrafficPolicy: Local` sends
    /// node-port traffic to.
    local: Vec<usize>,
}

impl Entry<'_> {
    /// `namespace/name:port` as kube-proxy comments it.
    fn label(&self) -> String {
        if self.port.name.is_empty() {
            self.service.id.to_string()
        } else {
            format!("{}:{}", self.service.id, self.port.name)
        }
    }

    /// A short, stable hash of the Service port, as kube-proxy's chain names carry.
    fn hash(&self, v6: bool) -> String {
        let text = format!("{}{}{}", self.label(), self.port.protocol, v6);
        let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        format!("{h:016X}")
    }
}

/// The Service ports of `cluster` with their backends of `v6`'s family, as node `node`
/// sees them.
fn entries<'a>(cluster: &'a Cluster, v6: bool, node: &str) -> Vec<Entry<'a>> {
    let mut out = Vec::new();
    for service in cluster.services.values() {
        for port in &service.ports {
            let frontends: Vec<IpAddr> = service
                .frontend_ips()
                .filter(|ip| ip.is_ipv6() == v6)
                .collect();
            let backends: Vec<Backend> = backends(cluster, service, port)
                .into_iter()
                .filter(|b| b.address.is_ipv6() == v6)
                .collect();
            if frontends.is_empty() && port.node_port.is_none() {
                continue;
            }
            let local = (0..backends.len())
                .filter(|&i| backends[i].node.as_deref() == Some(node))
                .collect();
            out.push(Entry {
                service,
                port,
                frontends,
                backends,
                local,
            });
        }
    }
    out
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// `address:port` as DNAT targets spell it.
fn target(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// A random choice among `n` rules, the `i`th of which is being written, as kube-proxy
/// spreads connections: each rule takes its share of what the ones before left.
fn random_choice(i: usize, n: usize) -> String {
    if i + 1 < n {
        format!(
            " -m statistic --mode random --probability {:.10}",
            1.0 / (n - i) as f64
        )
    } else {
        String::new()
    }
}

/// The `nat` table of kube-proxy's iptables mode for one family on node `node`, in
/// `iptables-restore` format.
pub fn iptables_rules(cluster: &Cluster, v6: bool, node: &str) -> String {
    let entries = entries(cluster, v6, node);
    let mut chains = vec![
        "KUBE-SERVICES".to_owned(),
        "KUBE-NODEPORTS".to_owned(),
        "KUBE-POSTROUTING".to_owned(),
        "KUBE-MARK-MASQ".to_owned(),
    ];
    let mut rules = Vec::new();
    let mut push = |r: String| rules.push(r);
    push(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
    );
    push("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into());
    push(
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
            .into(),
    );
    push(format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"));
    push(format!(
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    ));
    push(format!(
        "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"
    ));
    push("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".into());
    for e in &entries {
        let (hash, p, label) = (e.hash(v6), proto(e.port.protocol), e.label());
        let svc = format!("KUBE-SVC-{hash}");
        chains.push(svc.clone());
        for ip in &e.frontends {
            push(format!(
                "-A KUBE-SERVICES -d {} -p {p} -m comment --comment \"{label} cluster IP\" -m {p} --dport {} -j {svc}",
                host(*ip),
                e.port.port
            ));
        }
        if let Some(node_port) = e.port.node_port {
            let ext = format!("KUBE-EXT-{hash}");
            chains.push(ext.clone());
            push(format!(
                "-A KUBE-NODEPORTS -p {p} -m comment --comment \"{label}\" -m {p} --dport {node_port} -j {ext}"
            ));
            if e.service.external_traffic_local {
                // Only to this node's backends, keeping the client's address; without one,
                // nothing forwards the connection.
                let svl = format!("KUBE-SVL-{hash}");
                chains.push(svl.clone());
                push(format!("-A {ext} -j {svl}"));
                for (k, &i) in e.local.iter().enumerate() {
                    let b = &e.backends[i];
                    push(format!(
                        "-A {svl} -m comment --comment \"{label} -> {}\"{} -j KUBE-SEP-{}{i:02}",
                        target(b.address, b.port),
                        random_choice(k, e.local.len()),
                        &hash[..14]
                    ));
                }
            } else {
                // With externalTrafficPolicy: Cluster the client's address is lost on the way.
                push(format!(
                    "-A {ext} -m comment --comment \"masquerade traffic for {label} external destinations\" -j KUBE-MARK-MASQ"
                ));
                push(format!("-A {ext} -j {svc}"));
            }
        }
        let n = e.backends.len();
        for (i, b) in e.backends.iter().enumerate() {
            let sep = format!("KUBE-SEP-{}{i:02}", &hash[..14]);
            chains.push(sep.clone());
            let choice = random_choice(i, n);
            push(format!(
                "-A {svc} -m comment --comment \"{label} -> {}\"{choice} -j {sep}",
                target(b.address, b.port)
            ));
            // A pod reaching itself through its Service is masqueraded (hairpin).
            push(format!(
                "-A {sep} -s {} -m comment --comment \"{label}\" -j KUBE-MARK-MASQ",
                host(b.address)
            ));
            push(format!(
                "-A {sep} -p {p} -m comment --comment \"{label}\" -m {p} -j DNAT --to-destination {}",
                target(b.address, b.port)
            ));
        }
    }
    rules.push("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".into());
    let mut out = String::from("*nat\n");
    for c in &chains {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for r in rules {
        let _ = writeln!(out, "{r}");
    }
    out.push_str("COMMIT\n");
    out
}

/// kube-proxy's nftables table for one family on node `node`, as an `nft -f` script.
pub fn nftables_rules(cluster: &Cluster, v6: bool, node: &str) -> String {
    let entries = entries(cluster, v6, node);
    let (family, addr_type, saddr) = if v6 {
        ("ip6", "ipv6_addr", "ip6 saddr")
    } else {
        ("ip", "ipv4_addr", "ip saddr")
    };
    let daddr = if v6 { "ip6 daddr" } else { "ip daddr" };
    let mut chains = String::new();
    let mut service_ips = Vec::new();
    let mut node_ports = Vec::new();
    for e in &entries {
        let (hash, p, label) = (e.hash(v6), proto(e.port.protocol), e.label());
        let svc = format!("service-{hash}");
        for ip in &e.frontends {
            let ip = match ip {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => a.to_string(),
            };
            service_ips.push(format!("{ip} . {p} . {} : goto {svc}", e.port.port));
        }
        if let Some(node_port) = e.port.node_port {
            let ext = format!("external-{hash}");
            node_ports.push(format!("{p} . {node_port} : goto {ext}"));
            let body = if e.service.external_traffic_local {
                // Only to this node's backends, keeping the client's address.
                let local: Vec<String> = e
                    .local
                    .iter()
                    .enumerate()
                    .map(|(k, i)| format!("{k} : goto endpoint-{}-{i:02}", &hash[..14]))
                    .collect();
                if local.is_empty() {
                    "\t\tdrop\n".to_owned()
                } else {
                    format!(
                        "\t\tnumgen random mod {} vmap {{ {} }}\n",
                        local.len(),
                        local.join(", ")
                    )
                }
            } else {
                format!("\t\tjump mark-for-masquerade\n\t\tgoto {svc}\n")
            };
            let _ = write!(
                chains,
                "\tchain {ext} {{\n\t\tcomment \"{label} external destinations\"\n{body}\t}}\n"
            );
        }
        let mut choices = Vec::new();
        for (i, b) in e.backends.iter().enumerate() {
            let ep = format!("endpoint-{}-{i:02}", &hash[..14]);
            choices.push(format!("{i} : goto {ep}"));
            let addr = match b.address {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => a.to_string(),
            };
            let _ = write!(
                chains,
                "\tchain {ep} {{\n\t\t{saddr} {addr} jump mark-for-masquerade\n\t\tmeta l4proto {p} dnat to {}\n\t}}\n",
                target(b.address, b.port)
            );
        }
        let body = if choices.is_empty() {
            // No backend: kube-proxy rejects such connections.
            "\t\treject\n".to_owned()
        } else {
            format!(
                "\t\tnumgen random mod {} vmap {{ {} }}\n",
                choices.len(),
                choices.join(", ")
            )
        };
        let _ = write!(
            chains,
            "\tchain {svc} {{\n\t\tcomment \"{label}\"\n{body}\t}}\n"
        );
    }
    let elements = |v: &[String]| {
        if v.is_empty() {
            String::new()
        } else {
            format!("\t\telements = {{ {} }}\n", v.join(", "))
        }
    };
    format!(
        "table {family} kube-proxy {{\n\
         \tcomment \"rules for kube-proxy\"\n\
         \tmap service-ips {{\n\t\ttype {addr_type} . inet_proto . inet_service : verdict\n{}\t}}\n\
         \tmap service-nodeports {{\n\t\ttype inet_proto . inet_service : verdict\n{}\t}}\n\
         \tchain nat-prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}}\n\
         \tchain nat-output {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}}\n\
         \tchain nat-postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tjump masquerading\n\t}}\n\
         \tchain masquerading {{\n\t\tmeta mark & {MASQ_MARK} == 0 return\n\t\tmeta mark set meta mark ^ {MASQ_MARK}\n\t\tmasquerade fully-random\n\t}}\n\
         \tchain mark-for-masquerade {{\n\t\tmeta mark set meta mark | {MASQ_MARK}\n\t}}\n\
         \tchain services {{\n\t\t{daddr} . meta l4proto . th dport vmap @service-ips\n\t\tfib daddr type local meta l4proto . th dport vmap @service-nodeports\n\t}}\n\
         {chains}}}\n",
        elements(&service_ips),
        elements(&node_ports),
    )
}

/// Runs `program args` in `netns` with `input` on its standard input (rule sets for
/// `iptables-restore`, `nft -f -`, `ipset restore`).
pub fn run_with_input(
    netns: &NetNs,
    program: &str,
    args: &[&str],
    input: &str,
) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns.name(), program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} (install iptables and nftables)"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} in {}: {}\n{input}",
            netns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Loads the iptables layout of both families into the namespace of node `name`.
fn install_iptables(node: &NetNs, name: &str, cluster: &Cluster) -> anyhow::Result<()> {
    for (v6, restore) in [(false, "iptables-restore"), (true, "ip6tables-restore")] {
        let rules = iptables_rules(cluster, v6, name);
        run_with_input(node, restore, &["--noflush"], &rules)?;
    }
    Ok(())
}

/// Writes `cluster`'s Services into the namespace of node `name`, replacing what was there.
pub fn install(mode: ProxyMode, node: &NetNs, name: &str, cluster: &Cluster) -> anyhow::Result<()> {
    match mode {
        ProxyMode::Iptables => {
            install_iptables(node, name, cluster)?;
        }
        ProxyMode::Nftables => {
            for v6 in [false, true] {
                let family = if v6 { "ip6" } else { "ip" };
                // Replace the table whole, as kube-proxy's own transactions do.
                let script = format!(
                    "add table {family} kube-proxy\ndelete table {family} kube-proxy\n{}",
                    nftables_rules(cluster, v6, name)
                );
                run_with_input(node, "nft", &["-f", "-"], &script)?;
            }
        }
        ProxyMode::Ipvs => {
            if node.ip(&["link", "show", IPVS_DEVICE]).is_err() {
                // IPVS uses a dummy device; this kernel has none, and a bridge without ports
                // holds addresses just as well.
                node.ip(&["link", "add", IPVS_DEVICE, "type", "bridge"])?;
                node.ip(&["link", "set", IPVS_DEVICE, "up"])?;
            }
            for ip in cluster.services.values().flat_map(|s| s.cluster_ips.iter()) {
                let address = host(*ip);
                let mut add = vec!["addr", "replace", address.as_str(), "dev", IPVS_DEVICE];
                if ip.is_ipv6() {
                    add.push("nodad");
                }
                node.ip(&add)?;
            }
            install_iptables(node, name, cluster)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EndpointSlice, ObjectRef, SliceEndpoint, SlicePort, TargetPort};

    fn cluster() -> Cluster {
        let mut c = Cluster::default();
        c.add_service(Service {
            id: ObjectRef::new("x", "web"),
            cluster_ips: vec![
                "10.96.0.10".parse().unwrap(),
                "fd00:96::10".parse().unwrap(),
            ],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: Some(30080),
                target_port: TargetPort::Number(8080),
            }],
            ..Service::default()
        });
        c.add_endpoint_slice(EndpointSlice {
            id: ObjectRef::new("x", "web-1"),
            service: "web".into(),
            ports: vec![SlicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            }],
            endpoints: ["10.0.0.1", "10.0.0.2", "fd00::1"]
                .iter()
                .map(|a| SliceEndpoint {
                    addresses: vec![a.parse().unwrap()],
                    ready: true,
                    node: None,
                    pod: None,
                })
                .collect(),
        });
        c
    }

    #[test]
    fn every_mode_loads_into_a_node() {
        let c = cluster();
        for mode in [ProxyMode::Iptables, ProxyMode::Nftables, ProxyMode::Ipvs] {
            let ns = NetNs::create(&format!(
                "polagent-{}-proxy-{}",
                std::process::id(),
                mode.as_str()
            ))
            .expect("a namespace (run as root)");
            install(mode, &ns, "n1", &c).unwrap_or_else(|e| panic!("{mode:?}: {e:#}"));
            let listing = |program: &str, args: &[&str]| {
                let out = Command::new("ip")
                    .args(["netns", "exec", ns.name(), program])
                    .args(args)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            match mode {
                ProxyMode::Nftables => {
                    let table = listing("nft", &["list", "table", "ip", "kube-proxy"]);
                    assert!(table.contains("10.96.0.10 . tcp . 80"), "{table}");
                    assert!(table.contains("dnat to 10.0.0.2:8080"), "{table}");
                }
                _ => {
                    let nat = listing("iptables-save", &["-t", "nat"]);
                    assert!(nat.contains("--to-destination 10.0.0.1:8080"), "{nat}");
                    assert!(nat.contains("--dport 30080"), "{nat}");
                    let nat6 = listing("ip6tables-save", &["-t", "nat"]);
                    assert!(nat6.contains("--to-destination [fd00::1]:8080"), "{nat6}");
                }
            }
            if mode == ProxyMode::Ipvs {
                let out = Command::new("ip")
                    .args(["-n", ns.name(), "addr", "show", "dev", IPVS_DEVICE])
                    .output()
                    .unwrap();
                assert!(String::from_utf8_lossy(&out.stdout).contains("10.96.0.10/32"));
            }
        }
    }
}
