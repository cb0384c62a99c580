//! End to end: the lab's namespaces, the real datapath attached to every pod, real TCP, UDP
//! and SCTP exchanges between every pair of hosts, compared with the verdicts the
//! NetworkPolicy semantics demand. Pods are dual-stack, so every case runs over IPv4 and
//! IPv6.

use std::{net::SocketAddr, time::Duration};

use policy_agent::{
    lab::{Lab, LabConfig},
    model::Protocol,
    report::{Family, Probe},
};
use policy_common::{
    maps::Direction,
    reason::{DropReason, Verdict},
};
use policy_tests::{
    assert_reachability, block_on, ns,
    packets::Packet,
    standard_with, tcp, to_self, v6,
    wire::{bound, domain},
};
use socket2::{Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    time::timeout,
};

/// Runs the lab on the standard model plus `policies` and checks every probe.
fn check(policies: &str, config: LabConfig, expected: impl Fn(&Probe) -> bool) {
    let cluster = standard_with(policies);
    block_on(async {
        let lab = Lab::start(&cluster, &config).await.expect("lab starts");
        let reachability = lab.probe_all().await.expect("probes run");
        assert_reachability(&reachability, expected);
        lab.shutdown().await;
    });
}

fn with_externals(externals: &[&str]) -> LabConfig {
    LabConfig {
        externals: externals.iter().map(|e| e.parse().unwrap()).collect(),
        ..LabConfig::default()
    }
}

#[test]
fn pods_no_policy_selects_accept_everything() {
    check("", with_externals(&["203.0.113.5", "2001:db8::5"]), |_| {
        true
    });
}

#[test]
fn a_policy_added_later_applies_at_once() {
    let open = standard_with("");
    let isolated = standard_with(DENY_INGRESS_X);
    block_on(async {
        let mut lab = Lab::start(&open, &LabConfig::default()).await.unwrap();
        assert_reachability(&lab.probe_all().await.unwrap(), |_| true);
        lab.update(&isolated).await.unwrap();
        assert_reachability(&lab.probe_all().await.unwrap(), |p| {
            to_self(p) || ns(&p.to) != Some("x")
        });
        lab.update(&open).await.unwrap();
        assert_reachability(&lab.probe_all().await.unwrap(), |_| true);
        lab.shutdown().await;
    });
}

const DENY_INGRESS_X: &str = r#"
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}}
"#;

#[test]
fn ingress_deny_all_isolates_the_namespace() {
    check(DENY_INGRESS_X, LabConfig::default(), |p| {
        to_self(p) || ns(&p.to) != Some("x")
    });
}

#[test]
fn egress_deny_all_isolates_the_namespace() {
    check(
        r#"
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}
"#,
        with_externals(&["203.0.113.5"]),
        |p| to_self(p) || ns(&p.from) != Some("x"),
    );
}

#[test]
fn allow_from_a_namespace() {
    check(
        r#"
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: y}}}]}]
"#,
        LabConfig::default(),
        |p| p.to != "x/a" || to_self(p) || ns(&p.from) == Some("y"),
    );
}

#[test]
fn allow_from_a_pod_of_the_policy_namespace() {
    check(
        r#"
kind: NetworkPolicy
metadata: {name: from-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]
"#,
        LabConfig::default(),
        // podSelector alone: pods of the policy's own namespace only, not y/b.
        |p| p.to != "x/a" || to_self(p) || p.from == "x/b",
    );
}

#[test]
fn namespace_and_pod_in_one_peer_means_both() {
    check(
        r#"
kind: NetworkPolicy
metadata: {name: from-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: y}}, podSelector: {matchLabels: {app: b}}}]}]
"#,
        LabConfig::default(),
        |p| p.to != "x/a" || to_self(p) || p.from == "y/b",
    );
}

#[test]
fn namespace_or_pod_in_two_peers_means_either() {
    check(
        r#"
kind: NetworkPolicy
metadata: {name: from-y-or-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: y}}}, {podSelector: {matchLabels: {app: b}}}]}]
"#,
        LabConfig::default(),
        |p| p.to != "x/a" || to_self(p) || p.from == "x/b" || ns(&p.from) == Some("y"),
    );
}

#[test]
fn ip_block_with_except_also_matches_pod_addresses() {
    check(
        r#"
kind: NetworkPolicy
metadata: {name: office, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from:
    - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.2.0/24]}
    - ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:2::/48"]}
    - ipBlock: {cidr: 10.100.0.2/32}
"#,
        with_externals(&[
            "192.168.1.10",
            "192.168.2.10",
            "2001:db8:1::10",
            "2001:db8:2::10",
        ]),
        |p| {
            p.to != "x/a"
                || to_self(p)
                || ["192.168.1.10", "2001:db8:1::10"].contains(&p.from.as_str())
                // x/b's IPv4 address is in the last block; its IPv6 address is in none.
                || (p.from == "x/b" && p.family == Family::IPv4)
        },
    );
}

#[test]
fn port_specific_rules_admit_only_their_port() {
    check(
        r#"
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{ports: [{port: 81}]}]
"#,
        with_externals(&["203.0.113.5"]),
        |p| p.to != "x/a" || to_self(p) || tcp(p, 81),
    );
}

#[test]
fn udp_and_sctp_rules_admit_only_their_protocol() {
    check(
        r#"
kind: NetworkPolicy
metadata: {name: dns, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: UDP, port: 80}, {protocol: SCTP, port: 80}]}]
"#,
        LabConfig::default(),
        |p| ns(&p.to) != Some("x") || to_self(p) || p.protocol != Protocol::Tcp,
    );
}

#[test]
fn two_nodes_enforce_cross_node_traffic_the_same_way() {
    let config = LabConfig {
        nodes: 2,
        ..with_externals(&["203.0.113.5", "2001:db8::5"])
    };
    check(
        r#"
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: y}}}]}]
---
kind: NetworkPolicy
metadata: {name: b-egress-tcp-only, namespace: y}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Egress]
  egress: [{ports: [{protocol: TCP}]}]
"#,
        config,
        |p| {
            // x/a and y/a are on node-1, x/b and y/b on node-2.
            let into_x = ns(&p.to) != Some("x") || ns(&p.from) == Some("y");
            let from_y_b = p.from != "y/b" || p.protocol == Protocol::Tcp;
            to_self(p) || (into_x && from_y_b)
        },
    );
}

/// Packets node `node` of `lab` sent through its VXLAN device.
fn overlay_tx_packets(lab: &Lab, node: usize) -> u64 {
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            lab.node_netns_name(node),
            "-s",
            "-j",
            "link",
            "show",
            "dev",
        ])
        .arg(policy_agent::lab::topology::OVERLAY_IF)
        .output()
        .expect("ip runs");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j prints JSON");
    links[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no overlay device on node {node}: {links}"))
}

#[test]
fn pods_of_two_nodes_talk_over_the_vxlan_overlay() {
    let config = LabConfig {
        nodes: 2,
        ..LabConfig::default()
    };
    let cluster = standard_with("");
    block_on(async {
        let lab = Lab::start(&cluster, &config).await.expect("lab starts");
        let before = overlay_tx_packets(&lab, 0);
        // x/a is on node-1, x/b on node-2.
        for family in [Family::IPv4, Family::IPv6] {
            assert!(
                lab.probe("x/a", "x/b", 80, Protocol::Tcp, family)
                    .await
                    .expect("probe runs"),
                "x/a reaches x/b on the other node over {family:?}"
            );
        }
        let sent = overlay_tx_packets(&lab, 0) - before;
        lab.shutdown().await;
        assert!(
            sent >= 4,
            "the connections did not cross the overlay ({sent} packets sent through it)"
        );
    });
}

const Y_A_SERVES_X_A_ONLY: &str = r#"
kind: NetworkPolicy
metadata: {name: serve-x-a, namespace: y}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchLabels: {app: a}}}]
    ports: [{port: 80}, {port: 8080}, {protocol: UDP, port: 80}, {protocol: UDP, port: 9000}]
"#;

#[test]
fn replies_pass_but_the_reverse_connection_is_denied() {
    // y/a is egress-isolated with no egress rule: it can answer x/a, never call it.
    check(Y_A_SERVES_X_A_ONLY, LabConfig::default(), |p| {
        let into_y_a =
            p.to != "y/a" || (p.from == "x/a" && p.port == 80 && p.protocol != Protocol::Sctp);
        to_self(p) || (p.from != "y/a" && into_y_a)
    });

    // And an established connection carries data both ways.
    let cluster = standard_with(Y_A_SERVES_X_A_ONLY);
    block_on(async {
        let lab = Lab::start(&cluster, &LabConfig::default()).await.unwrap();
        for family in [Family::IPv4, Family::IPv6] {
            let v6 = family == Family::IPv6;
            let server_ip = lab.host("y/a").unwrap().spec.ips[usize::from(v6)];
            let listener = lab
                .netns("y/a")
                .unwrap()
                .run(move || bound(v6, Type::STREAM, 8080))
                .unwrap()
                .unwrap();
            let listener = TcpListener::from_std(listener.into()).unwrap();
            let echo = tokio::spawn(async move {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                conn.read_exact(&mut buf).await.unwrap();
                conn.write_all(&buf).await.unwrap();
            });
            let client = lab
                .netns("x/a")
                .unwrap()
                .run(move || Socket::new(domain(v6), Type::STREAM, None))
                .unwrap()
                .unwrap();
            client.set_nonblocking(true).unwrap();
            let client = tokio::net::TcpSocket::from_std_stream(client.into());
            let mut conn: TcpStream = timeout(
                Duration::from_secs(5),
                client.connect(SocketAddr::new(server_ip, 8080)),
            )
            .await
            .expect("connects in time")
            .unwrap();
            let sent: Vec<u8> = (0..64 * 1024).map(|i| i as u8).collect();
            conn.write_all(&sent).await.unwrap();
            let mut got = vec![0u8; sent.len()];
            timeout(Duration::from_secs(5), conn.read_exact(&mut got))
                .await
                .expect("echo in time")
                .unwrap();
            assert_eq!(got, sent, "{family:?}: the whole stream came back");
            echo.await.unwrap();
        }
        lab.shutdown().await;
    });
}

/// Counts of the datapath's drops for `reason` in `dir` on node 0.
fn drops(lab: &Lab, dir: Direction, reason: DropReason) -> u64 {
    lab.stats(0)
        .unwrap()
        .iter()
        .filter(|(k, _)| {
            k.direction == dir as u8 && k.verdict == Verdict::Drop as u8 && k.reason == reason as u8
        })
        .map(|(_, v)| v.packets)
        .sum()
}

/// Receives one datagram within a second, or none.
async fn receive(socket: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    match timeout(Duration::from_secs(1), socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

#[test]
fn a_spoofed_source_address_is_dropped() {
    let cluster = standard_with("");
    block_on(async {
        let lab = Lab::start(&cluster, &LabConfig::default()).await.unwrap();
        for v6 in [false, true] {
            let x_a = lab.host("x/a").unwrap().spec.ips[usize::from(v6)];
            let x_b = lab.host("x/b").unwrap().spec.ips[usize::from(v6)];
            let y_a = lab.host("y/a").unwrap().spec.ips[usize::from(v6)];
            let receiver = lab
                .netns("y/a")
                .unwrap()
                .run(move || bound(v6, Type::DGRAM, 9999));
            let receiver = UdpSocket::from_std(receiver.unwrap().unwrap().into()).unwrap();

            let raw = lab
                .netns("x/a")
                .unwrap()
                .run(move || -> std::io::Result<Socket> {
                    // IPPROTO_RAW: we write the IP header, source address included.
                    let s = Socket::new(domain(v6), Type::RAW, Some(socket2::Protocol::from(255)))?;
                    if v6 {
                        s.set_header_included_v6(true)?;
                    }
                    Ok(s)
                })
                .unwrap()
                .unwrap();
            let send = |src, payload: &[u8]| {
                let packet = Packet::udp(src, y_a, 5555, 9999, payload).ip_packet();
                raw.send_to(&packet, &SocketAddr::new(y_a, 0).into())
                    .unwrap();
            };

            send(x_a, b"honest");
            assert_eq!(
                receive(&receiver).await.as_deref(),
                Some(&b"honest"[..]),
                "control packet"
            );
            send(x_b, b"spoofed");
            assert_eq!(
                receive(&receiver).await,
                None,
                "a packet claiming to be x/b got through"
            );
        }
        assert!(drops(&lab, Direction::Egress, DropReason::SpoofedSource) >= 2);
        lab.shutdown().await;
    });
}

#[test]
fn fragments_of_a_denied_flow_are_dropped() {
    let cluster = standard_with(Y_A_SERVES_X_A_ONLY);
    block_on(async {
        let lab = Lab::start(&cluster, &LabConfig::default()).await.unwrap();
        // Larger than the 1500-byte MTU: the sender's kernel fragments it.
        let datagram: Vec<u8> = (0..4000).map(|i| i as u8).collect();
        for v6 in [false, true] {
            let y_a = lab.host("y/a").unwrap().spec.ips[usize::from(v6)];
            let receiver = lab
                .netns("y/a")
                .unwrap()
                .run(move || bound(v6, Type::DGRAM, 9000));
            let receiver = UdpSocket::from_std(receiver.unwrap().unwrap().into()).unwrap();
            for (from, allowed) in [("x/a", true), ("x/b", false)] {
                let sender = lab
                    .netns(from)
                    .unwrap()
                    .run(move || bound(v6, Type::DGRAM, 0));
                let sender = UdpSocket::from_std(sender.unwrap().unwrap().into()).unwrap();
                sender
                    .send_to(&datagram, SocketAddr::new(y_a, 9000))
                    .await
                    .unwrap();
                let got = receive(&receiver).await;
                if allowed {
                    assert_eq!(
                        got.as_deref(),
                        Some(&datagram[..]),
                        "{from} v6={v6}: reassembled"
                    );
                } else {
                    assert_eq!(
                        got, None,
                        "{from} v6={v6}: no fragment of a denied flow passes"
                    );
                }
            }
        }
        // Every fragment of the two denied datagrams (three each) was dropped: later ones
        // get their datagram's ports from the first fragment (seen leaving x/b) and meet
        // the same policy, or have no first fragment to inherit from.
        let dropped = drops(&lab, Direction::Ingress, DropReason::PolicyDenied)
            + drops(&lab, Direction::Ingress, DropReason::UnknownFragment);
        assert!(dropped >= 6, "{dropped} fragments dropped");
        lab.shutdown().await;
    });
}

#[test]
fn ipv6_only_rules_leave_ipv4_denied() {
    check(
        r#"
kind: NetworkPolicy
metadata: {name: v6-only, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{ipBlock: {cidr: "::/0"}}]}]
"#,
        with_externals(&["203.0.113.5", "2001:db8::5"]),
        |p| p.to != "x/a" || to_self(p) || v6(p),
    );
}

#[test]
fn a_finished_pod_never_takes_a_running_pods_address() {
    // A Job pod finished; its status still shows the address x/b has now, and its name
    // sorts after x/b's.
    check(
        r#"
kind: Pod
metadata: {name: zz-job, namespace: x, labels: {app: job}, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {containers: [{name: c}]}
status: {phase: Succeeded, podIPs: [{ip: 10.100.0.2}, {ip: "fd00:100::2"}]}
---
kind: NetworkPolicy
metadata: {name: from-x-b, namespace: y}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchLabels: {app: b}}}]}]
"#,
        LabConfig::default(),
        |p| p.to != "y/a" || to_self(p) || p.from == "x/b",
    );
}
