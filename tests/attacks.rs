//! Attacks with real packets, one test per class of bypass once found in the datapath.
//!
//! An attacker (a pod or an outside host of the lab) sends crafted frames; a capture in the
//! target's namespace, after the target's `to_pod`, must see none of them. Every case first
//! shows that the policy denies the flow when it is tried honestly, and checks that the
//! attempt left a flow record with the attacker's real identity and the drop reason.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use policy_agent::{
    agent::flows::FlowRecord,
    lab::{Lab, LabConfig},
    model::{ObjectRef, Protocol},
    netns::NetNs,
    report::Family,
};
use policy_common::{
    maps::Direction,
    net::{ETH_P_IP, ETH_P_IPV6, icmp, icmpv6, proto},
    reason::{DropReason, Verdict},
};
use policy_tests::{
    block_on,
    packets::{Packet, SYN, TPID_8021AD, TPID_8021Q},
    records::Records,
    standard_with,
    wire::{Capture, Link, bound, mac_of, raw_ip_socket, send_raw},
};
use socket2::{Domain, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    time::timeout,
};

/// How long a capture waits for (more) frames.
const QUIET: Duration = Duration::from_millis(800);
/// How long a flow record may take to reach a subscriber.
const RECORD_WAIT: Duration = Duration::from_secs(3);
/// How long the agent may take to read a new tunnel device's port (it reads them every 2 s).
const TUNNEL_PORTS_READ: Duration = Duration::from_secs(10);
const E4: &str = "203.0.113.5";
const E6: &str = "2001:db8::5";
/// PadN filling a 6-byte extension-header body.
const PADN: [u8; 6] = [1, 4, 0, 0, 0, 0];
const FAMILIES: [Family; 2] = [Family::IPv4, Family::IPv6];

/// y/a accepts x/b only.
const Y_A_TRUSTS_X_B: &str = r#"
kind: NetworkPolicy
metadata: {name: trust-x-b, namespace: y}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchLabels: {app: b}}}]}]
"#;

/// x/a may send nothing.
const X_A_NO_EGRESS: &str = r#"
kind: NetworkPolicy
metadata: {name: no-egress, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Egress]}
"#;

fn with_externals() -> LabConfig {
    LabConfig {
        externals: [E4, E6].iter().map(|e| e.parse().unwrap()).collect(),
        ..LabConfig::default()
    }
}

/// Runs `test` on a lab of the standard model plus `policies`.
fn attack<F: Future<Output = ()>>(
    policies: &[&str],
    config: LabConfig,
    test: impl FnOnce(Lab) -> F,
) {
    let cluster = standard_with(&policies.join("\n---\n"));
    block_on(async {
        let lab = Lab::start(&cluster, &config).await.expect("lab starts");
        test(lab).await;
    });
}

fn addr(lab: &Lab, host: &str, family: Family) -> IpAddr {
    lab.host(host).unwrap().spec.ip(family).unwrap()
}

/// A marker no other traffic carries.
fn marker(case: &str, family: Family) -> Vec<u8> {
    format!("attack:{case}:{family:?}:{}", std::process::id()).into_bytes()
}

/// Asserts nothing carrying `marker` reached `target`.
async fn nothing_arrived(capture: &Capture, marker: &[u8], what: &str) {
    let arrived = capture.arrived_with(marker, QUIET).await;
    assert!(
        arrived.is_empty(),
        "{what}: {} frame(s) reached the target, the first: {:02x?}",
        arrived.len(),
        arrived[0]
    );
}

/// Asserts the honest flow is denied (the baseline every attack is measured against).
async fn denied(lab: &Lab, from: &str, to: &str, family: Family) {
    assert!(
        !lab.probe(from, to, 80, Protocol::Udp, family)
            .await
            .unwrap(),
        "baseline: {from} -> {to} UDP/80 {family:?} should be denied"
    );
}

/// The first drop record of `pod` in `direction` for `reason`.
async fn dropped(
    records: &Records,
    pod: &str,
    direction: Direction,
    reason: DropReason,
) -> FlowRecord {
    dropped_where(records, pod, direction, reason, |_| true).await
}

/// Like [`dropped`], of a record that also satisfies `also`.
async fn dropped_where(
    records: &Records,
    pod: &str,
    direction: Direction,
    reason: DropReason,
    also: impl Fn(&FlowRecord) -> bool,
) -> FlowRecord {
    records
        .find(RECORD_WAIT, |r| {
            r.pod.as_deref() == Some(pod)
                && r.direction == direction.as_str()
                && r.verdict == Verdict::Drop.as_str()
                && r.reason == reason.as_str()
                && also(r)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no {} record of {pod}'s {reason:?} drop; records: {:#?}",
                direction.as_str(),
                records.all()
            )
        })
}

#[test]
fn vlan_tags_smuggle_no_forged_source() {
    attack(&[Y_A_TRUSTS_X_B], LabConfig::default(), |lab| async move {
        let records = Records::watch(&lab, 0).await;
        let link = Link::of(&lab, "x/a").unwrap();
        for family in FAMILIES {
            denied(&lab, "x/a", "y/a", family).await;
            // x/a, which no egress policy isolates, claims to be x/b, whom y/a trusts.
            let mark = marker("vlan", family);
            let forged = Packet::udp(
                addr(&lab, "x/b", family),
                addr(&lab, "y/a", family),
                5555,
                80,
                &mark,
            );
            let ether_type = if family == Family::IPv6 {
                ETH_P_IPV6
            } else {
                ETH_P_IP
            };
            let capture = Capture::start(lab.netns("y/a").unwrap()).unwrap();
            for tags in [
                &[(TPID_8021Q, 0), (TPID_8021Q, 0)][..],
                &[(TPID_8021Q, 0)],
                &[(TPID_8021AD, 0), (TPID_8021Q, 0)],
            ] {
                link.send(ether_type, tags, &forged.ip_packet()).unwrap();
            }
            nothing_arrived(&capture, &mark, "a forged source behind VLAN tags").await;
        }
        dropped(&records, "x/a", Direction::Egress, DropReason::NonIpFrame).await;
        lab.shutdown().await;
    });
}

/// An ICMP error from `from` to `to` quoting `quoted`, with `trailer` after the quote.
fn error_quoting(from: IpAddr, to: IpAddr, quoted: &Packet, trailer: &[u8]) -> Packet {
    let (ty, code) = if from.is_ipv6() {
        (icmpv6::DEST_UNREACH, 4)
    } else {
        (icmp::DEST_UNREACH, 3)
    };
    let mut body = vec![0u8; 4];
    body.extend_from_slice(&quoted.ip_packet());
    body.extend_from_slice(trailer);
    Packet::icmp_any(from, to, ty, code, &body)
}

#[test]
fn icmp_errors_are_no_tunnel_out_of_an_isolated_pod() {
    const X_A_SERVES_Y_B: &str = r#"
kind: NetworkPolicy
metadata: {name: serve-y-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: y}}, podSelector: {matchLabels: {app: b}}}]}]
"#;
    attack(&[X_A_SERVES_Y_B], LabConfig::default(), |lab| async move {
        let records = Records::watch(&lab, 0).await;
        for family in FAMILIES {
            denied(&lab, "x/a", "y/a", family).await;
            let (x_a, y_a, y_b) = (
                addr(&lab, "x/a", family),
                addr(&lab, "y/a", family),
                addr(&lab, "y/b", family),
            );
            // y/b sends x/a a datagram: a flow x/a tracks.
            let v6 = family == Family::IPv6;
            let sender = lab
                .netns("y/b")
                .unwrap()
                .run(move || bound(v6, Type::DGRAM, 0))
                .unwrap()
                .unwrap();
            let sender = UdpSocket::from_std(sender.into()).unwrap();
            let sport = sender.local_addr().unwrap().port();
            sender
                .send_to(b"hello", SocketAddr::new(x_a, 9))
                .await
                .unwrap();
            let datagram = Packet::udp(y_b, x_a, sport, 9, b"hello");
            tokio::time::sleep(Duration::from_millis(200)).await;

            // An "error" about it, sent anywhere but back to y/b, carrying x/a's data.
            let mark = marker("icmp-tunnel", family);
            let raw = raw_ip_socket(lab.netns("x/a").unwrap(), v6).unwrap();
            let capture = Capture::start(lab.netns("y/a").unwrap()).unwrap();
            send_raw(&raw, &error_quoting(x_a, y_a, &datagram, &mark), y_a).unwrap();
            nothing_arrived(&capture, &mark, "an ICMP error sent past its quoted sender").await;
            // Back to y/b it is the error the connection may get (the same bytes arrive).
            let capture = Capture::start(lab.netns("y/b").unwrap()).unwrap();
            send_raw(&raw, &error_quoting(x_a, y_b, &datagram, &mark), y_b).unwrap();
            assert!(
                !capture.arrived_with(&mark, QUIET).await.is_empty(),
                "control: an error back to the quoted sender passes"
            );
        }
        dropped_where(
            &records,
            "x/a",
            Direction::Egress,
            DropReason::PolicyDenied,
            |r| r.protocol.starts_with("ICMP") && r.remote_pod.as_deref() == Some("y/a"),
        )
        .await;
        lab.shutdown().await;
    });
}

#[test]
fn discovery_messages_carry_nothing_off_the_link() {
    attack(
        &[Y_A_TRUSTS_X_B, X_A_NO_EGRESS],
        LabConfig::default(),
        |lab| async move {
            let records = Records::watch(&lab, 0).await;
            denied(&lab, "x/a", "y/a", Family::IPv6).await;
            denied(&lab, "x/a", "y/b", Family::IPv6).await;
            let (x_a, y_a, y_b) = (
                addr(&lab, "x/a", Family::IPv6),
                addr(&lab, "y/a", Family::IPv6),
                addr(&lab, "y/b", Family::IPv6),
            );
            let raw = raw_ip_socket(lab.netns("x/a").unwrap(), true).unwrap();
            let unroutable: IpAddr = "2001:db8:dead::1".parse().unwrap();
            let (ns, report) = (icmpv6::NEIGHBOUR_SOLICIT, icmpv6::MLD2_REPORT);
            for (case, ty, src, dst, hop_limit, target) in [
                // Neighbour discovery from the egress-isolated pod to a pod off its link.
                ("ns-off-link", ns, x_a, y_b, 255, "y/b"),
                // A listener report with hop limit 2: forwarded once, hop limit 1 on arrival.
                ("mld-hop-2", report, x_a, y_a, 2, "y/a"),
                // With y/a's address as source, to nowhere or with hop limit 1: the node would
                // answer y/a with an error quoting these bytes, as "node traffic".
                ("reflect-unroutable", ns, y_a, unroutable, 255, "y/a"),
                ("reflect-hop-1", report, y_a, y_b, 1, "y/a"),
            ] {
                let mark = marker(case, Family::IPv6);
                let body = [&[0u8; 20][..], &mark].concat();
                let packet = Packet::icmpv6_with(src, dst, ty, 0, &body).ttl(hop_limit);
                let capture = Capture::start(lab.netns(target).unwrap()).unwrap();
                send_raw(&raw, &packet, dst).unwrap();
                nothing_arrived(&capture, &mark, case).await;
            }
            dropped(
                &records,
                "x/a",
                Direction::Egress,
                DropReason::InvalidLinkControl,
            )
            .await;
            dropped(
                &records,
                "x/a",
                Direction::Egress,
                DropReason::SpoofedSource,
            )
            .await;
            lab.shutdown().await;
        },
    );
}

/// The node's address on the link to `pod` (the gateway its CNI result names), of `family`.
fn gateway(lab: &Lab, pod: &str, family: Family) -> IpAddr {
    let (ns, name) = pod.split_once('/').unwrap();
    let sandbox = lab
        .sandbox(&ObjectRef::new(ns, name))
        .expect("a running pod");
    sandbox.result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["gateway"].as_str()?.parse::<IpAddr>().ok())
        .find(|ip| Family::of(ip) == family)
        .expect("the CNI result names a gateway")
}

#[test]
fn a_node_address_does_not_make_an_outsider_the_node() {
    attack(&[Y_A_TRUSTS_X_B], with_externals(), |lab| async move {
        let records = Records::watch(&lab, 0).await;
        let family = Family::IPv6;
        let (node, y_a) = (gateway(&lab, "y/a", family), addr(&lab, "y/a", family));
        assert!(
            !lab.probe(E6, "y/a", 80, Protocol::Udp, family)
                .await
                .unwrap(),
            "baseline: the outside host is not trusted"
        );
        // The outside host sends from the node's address (Linux forwards IPv6 from a local
        // source; IPv4 it drops as a martian).
        let mark = marker("node-spoof", family);
        let capture = Capture::start(lab.netns("y/a").unwrap()).unwrap();
        let link = Link::of(&lab, E6).unwrap();
        link.send_packet(&Packet::udp(node, y_a, 5555, 80, &mark))
            .unwrap();
        link.send_packet(&Packet::tcp(node, y_a, 5556, 80, SYN))
            .unwrap();
        nothing_arrived(&capture, &mark, "an outsider with the node's address").await;
        let r = dropped(
            &records,
            "y/a",
            Direction::Ingress,
            DropReason::PolicyDenied,
        )
        .await;
        assert_eq!(r.remote_pod, None, "{r:?}");
        // The node itself is always let in.
        let node_ns = lab.node_netns_name(0).to_owned();
        let from_node = NetNs::open(&node_ns)
            .unwrap()
            .run(move || bound(true, Type::DGRAM, 0))
            .unwrap()
            .unwrap();
        let from_node = UdpSocket::from_std(from_node.into()).unwrap();
        let capture = Capture::start(lab.netns("y/a").unwrap()).unwrap();
        from_node
            .send_to(&mark, SocketAddr::new(y_a, 80))
            .await
            .unwrap();
        assert!(
            !capture.arrived_with(&mark, QUIET).await.is_empty(),
            "control: the node's own packet reaches the pod"
        );
        lab.shutdown().await;
    });
}

#[test]
fn a_tunnel_to_the_node_unwraps_no_forged_source() {
    tunnel_to_the_node(8472);
}

/// The node's VXLAN device on a port of its own (Calico's, Cilium's and flannel's ports
/// are settings): the agent reads it from the node's links.
#[test]
fn a_tunnel_on_a_port_of_its_own_unwraps_no_forged_source_either() {
    tunnel_to_the_node(9999);
}

/// x/a wraps a packet "from" x/b, whom y/a trusts, in VXLAN to the node's device on UDP
/// `port`.
fn tunnel_to_the_node(port: u16) {
    attack(&[Y_A_TRUSTS_X_B], LabConfig::default(), |lab| async move {
        let records = Records::watch(&lab, 0).await;
        let family = Family::IPv4;
        denied(&lab, "x/a", "y/a", family).await;
        // The node runs a VXLAN device, as flannel's nodes do.
        let node_name = lab.node_netns_name(0).to_owned();
        let node = NetNs::open(&node_name).unwrap();
        let vni = "42";
        node.ip(&[
            "link",
            "add",
            "vxlab",
            "type",
            "vxlan",
            "id",
            vni,
            "dstport",
            &port.to_string(),
            "nolearning",
        ])
        .unwrap();
        node.ip(&["link", "set", "vxlab", "up"]).unwrap();
        let known = tokio::time::timeout(TUNNEL_PORTS_READ, async {
            while !lab
                .status(0)
                .is_some_and(|s| s.tunnel_ports.contains(&port))
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        known.await.expect("the agent reads the device's port");
        let vtep = mac_of(&node_name, "vxlab").unwrap();
        // x/a wraps a packet "from" x/b, whom y/a trusts, and sends it to the node.
        let mark = marker("vxlan", family);
        let (x_a, x_b, y_a) = (
            addr(&lab, "x/a", family),
            addr(&lab, "x/b", family),
            addr(&lab, "y/a", family),
        );
        let mut inner = vtep.to_vec();
        inner.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
        inner.extend_from_slice(&ETH_P_IP.to_be_bytes());
        inner.extend_from_slice(&Packet::udp(x_b, y_a, 5555, 80, &mark).ip_packet());
        let mut payload = vec![0x08, 0, 0, 0, 0, 0, 42, 0]; // VXLAN: flags, VNI 42
        payload.extend_from_slice(&inner);
        let capture = Capture::start(lab.netns("y/a").unwrap()).unwrap();
        let link = Link::of(&lab, "x/a").unwrap();
        link.send_packet(&Packet::udp(
            x_a,
            gateway(&lab, "x/a", family),
            40000,
            port,
            &payload,
        ))
        .unwrap();
        nothing_arrived(&capture, &mark, "a forged packet unwrapped by the node").await;
        dropped(&records, "x/a", Direction::Egress, DropReason::TunnelToNode).await;
        lab.shutdown().await;
    });
}

#[test]
fn extension_chains_the_parser_gives_up_on_still_meet_anti_spoofing() {
    attack(&[], LabConfig::default(), |lab| async move {
        let records = Records::watch(&lab, 0).await;
        let family = Family::IPv6;
        let (x_a, x_b, y_b) = (
            addr(&lab, "x/a", family),
            addr(&lab, "x/b", family),
            addr(&lab, "y/b", family),
        );
        let link = Link::of(&lab, "x/a").unwrap();
        let long = |src, mark: &[u8]| {
            (0..9).fold(Packet::udp(src, y_b, 5555, 80, mark), |p, _| {
                p.ext(proto::IPV6_DEST_OPTS, &PADN)
            })
        };
        // The chain is deliverable: from x/a's own address it reaches y/b, which nothing
        // isolates.
        let own = marker("chain-own", family);
        let capture = Capture::start(lab.netns("y/b").unwrap()).unwrap();
        link.send_packet(&long(x_a, &own)).unwrap();
        assert!(
            !capture.arrived_with(&own, QUIET).await.is_empty(),
            "control"
        );
        // With x/b's address it is an impersonation, however long the chain.
        let forged = marker("chain-forged", family);
        let capture = Capture::start(lab.netns("y/b").unwrap()).unwrap();
        link.send_packet(&long(x_b, &forged)).unwrap();
        nothing_arrived(&capture, &forged, "a forged source behind a long chain").await;
        dropped(
            &records,
            "x/a",
            Direction::Egress,
            DropReason::SpoofedSource,
        )
        .await;
        lab.shutdown().await;
    });
}

#[test]
fn an_echo_entry_lets_in_replies_only() {
    attack(&[Y_A_TRUSTS_X_B], with_externals(), |lab| async move {
        let records = Records::watch(&lab, 0).await;
        for (family, outsider) in [(Family::IPv4, E4), (Family::IPv6, E6)] {
            let (y_a, e) = (addr(&lab, "y/a", family), addr(&lab, outsider, family));
            let v6 = family == Family::IPv6;
            let (request, reply) = if v6 {
                (icmpv6::ECHO_REQUEST, icmpv6::ECHO_REPLY)
            } else {
                (icmp::ECHO_REQUEST, icmp::ECHO_REPLY)
            };
            const ID: [u8; 2] = [0x42, 0x42];
            let echo = |ty, src, dst, mark: &[u8]| {
                Packet::icmp_any(src, dst, ty, 0, &[&ID[..], &[0, 1], mark].concat())
            };
            // Baseline: the outsider's ping is denied.
            let mark = marker("echo-baseline", family);
            let capture = Capture::start(lab.netns("y/a").unwrap()).unwrap();
            let outside = raw_ip_socket(lab.netns(outsider).unwrap(), v6).unwrap();
            send_raw(&outside, &echo(request, e, y_a, &mark), y_a).unwrap();
            nothing_arrived(&capture, &mark, "baseline: an unsolicited ping").await;
            // y/a pings the outsider: the reply comes back.
            let mark = marker("echo-reply", family);
            let capture = Capture::start(lab.netns("y/a").unwrap()).unwrap();
            let inside = raw_ip_socket(lab.netns("y/a").unwrap(), v6).unwrap();
            send_raw(&inside, &echo(request, y_a, e, &mark), e).unwrap();
            let replies = capture.arrived_with(&mark, QUIET).await;
            assert!(
                replies.iter().any(|f| f.contains(&reply)),
                "control: the reply to y/a's ping arrives"
            );
            // The outsider's own request with that identifier is not a reply.
            let mark = marker("echo-request", family);
            let capture = Capture::start(lab.netns("y/a").unwrap()).unwrap();
            send_raw(&outside, &echo(request, e, y_a, &mark), y_a).unwrap();
            nothing_arrived(&capture, &mark, "a request riding a ping's entry").await;
        }
        dropped(
            &records,
            "y/a",
            Direction::Ingress,
            DropReason::PolicyDenied,
        )
        .await;
        lab.shutdown().await;
    });
}

/// A TCP connection from `from` to a listener of the test's own on `to` (both lab hosts):
/// the client's and the server's ends.
async fn connection(lab: &Lab, from: &str, to: &str, port: u16) -> (TcpStream, TcpStream) {
    let server_ip = addr(lab, to, Family::IPv4);
    let listener = lab
        .netns(to)
        .unwrap()
        .run(move || bound(false, Type::STREAM, port))
        .unwrap()
        .unwrap();
    let listener = TcpListener::from_std(listener.into()).unwrap();
    let client = lab
        .netns(from)
        .unwrap()
        .run(|| Socket::new(Domain::IPV4, Type::STREAM, None))
        .unwrap()
        .unwrap();
    client.set_nonblocking(true).unwrap();
    let client = tokio::net::TcpSocket::from_std_stream(client.into());
    let (client, server) = tokio::join!(
        timeout(
            Duration::from_secs(5),
            client.connect(SocketAddr::new(server_ip, port))
        ),
        listener.accept()
    );
    (
        client.expect("connects in time").unwrap(),
        server.unwrap().0,
    )
}

/// SYNs from `from` to `to` (an external host) from every source port, to `dports`, with a
/// raw socket: flows the peer answers (with a reset), so each is looked up after its
/// creation and counts for the LRU as a live connection would.
fn syn_flood(lab: &Lab, from: &str, to: &str, dports: &[u16], count: usize) {
    let (src, dst) = (addr(lab, from, Family::IPv4), addr(lab, to, Family::IPv4));
    let raw = raw_ip_socket(lab.netns(from).unwrap(), false).unwrap();
    let flows = dports
        .iter()
        .flat_map(|&d| (1024..=u16::MAX).map(move |s| (s, d)))
        .take(count);
    for (sport, dport) in flows {
        send_raw(&raw, &Packet::tcp(src, dst, sport, dport, SYN), dst).unwrap();
    }
}

/// More flows than the old node-wide table had entries (65,536).
const FLOOD: usize = 70_000;

#[test]
fn no_pod_evicts_another_pods_connections_and_losses_are_reported() {
    attack(&[Y_A_TRUSTS_X_B], with_externals(), |lab| async move {
        let records = Records::watch(&lab, 0).await;
        denied(&lab, E4, "y/a", Family::IPv4).await;
        // y/a, isolated for ingress, keeps a connection to the outside host open: what
        // comes back on it passes only by conntrack.
        let (mut client, mut server) = connection(&lab, "y/a", E4, 7000).await;
        server.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        timeout(Duration::from_secs(2), client.read_exact(&mut buf))
            .await
            .expect("control: data on the connection arrives")
            .unwrap();
        // x/b, which nothing isolates, floods the node with answered flows.
        syn_flood(&lab, "x/b", E4, &[7001, 7002], FLOOD);
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.write_all(b"still").await.unwrap();
        timeout(Duration::from_secs(2), client.read_exact(&mut buf))
            .await
            .expect("another pod's flood cut y/a's connection")
            .unwrap();
        assert_eq!(&buf, b"still");

        // y/a's own flood does evict its own connection (how soon depends on which CPUs ran
        // the flows: the kernel's LRU is per CPU in part): the next segment is dropped, and
        // the loss is counted and recorded, not passed off as policy.
        let unknown = |r: &FlowRecord| {
            r.pod.as_deref() == Some("y/a")
                && r.reason == DropReason::UnknownConnection.as_str()
                && r.protocol == "TCP"
        };
        for _ in 0..4 {
            syn_flood(&lab, "y/a", E4, &[7001, 7002], FLOOD);
            tokio::time::sleep(Duration::from_millis(500)).await;
            server.write_all(b"lost?").await.unwrap();
            if records.find(RECORD_WAIT, unknown).await.is_some() {
                break;
            }
        }
        assert!(
            records.all().iter().any(unknown),
            "no unknown-connection record of y/a; records: {:#?}",
            records.all()
        );
        lab.shutdown().await;
    });
}

/// Two fragments of a UDP datagram from `src` to `dst`, with a Destination Options header
/// after the Fragment header (so in the first fragment only): the second one carries
/// `mark`.
fn fragments_with_options(
    src: IpAddr,
    dst: IpAddr,
    dport: u16,
    id: u32,
    mark: &[u8],
) -> [Vec<u8>; 2] {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
        panic!("IPv6 fragments");
    };
    // Fragmentable part: options (8), UDP header (8) and 16 payload bytes, then `mark`.
    let mut tail = mark.to_vec();
    tail.resize(mark.len().div_ceil(8) * 8, 0);
    let payload_len = 16 + tail.len();
    let mut first_part = vec![proto::UDP, 0];
    first_part.extend_from_slice(&PADN);
    first_part.extend_from_slice(&5555u16.to_be_bytes());
    first_part.extend_from_slice(&dport.to_be_bytes());
    first_part.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    first_part.extend_from_slice(&[0, 0]); // no checksum: the capture is what counts
    first_part.extend_from_slice(&[0x11; 16]);
    let fragment = |offset_units: u16, more: bool, part: &[u8]| {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&((8 + part.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[proto::IPV6_FRAGMENT, 64]);
        p.extend_from_slice(&s.octets());
        p.extend_from_slice(&d.octets());
        p.extend_from_slice(&[proto::IPV6_DEST_OPTS, 0]);
        p.extend_from_slice(&((offset_units << 3) | u16::from(more)).to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(part);
        p
    };
    let second_offset = (first_part.len() / 8) as u16;
    [
        fragment(0, true, &first_part),
        fragment(second_offset, false, &tail),
    ]
}

#[test]
fn ipv6_fragments_pass_whatever_follows_the_fragment_header() {
    attack(&[Y_A_TRUSTS_X_B], LabConfig::default(), |lab| async move {
        let records = Records::watch(&lab, 0).await;
        let family = Family::IPv6;
        let y_a = addr(&lab, "y/a", family);
        for (from, allowed, id) in [("x/b", true, 0x5151), ("x/a", false, 0x5252)] {
            let mark = marker(&format!("fragments-{from}"), family);
            let capture = Capture::start(lab.netns("y/a").unwrap()).unwrap();
            let link = Link::of(&lab, from).unwrap();
            for f in fragments_with_options(addr(&lab, from, family), y_a, 80, id, &mark) {
                link.send_ip(&f).unwrap();
            }
            let arrived = capture.arrived_with(&mark, QUIET).await;
            if allowed {
                assert_eq!(
                    arrived.len(),
                    1,
                    "{from}: the later fragment of an allowed datagram arrives"
                );
            } else {
                assert!(
                    arrived.is_empty(),
                    "{from}: no fragment of a denied datagram arrives"
                );
            }
        }
        dropped_where(
            &records,
            "y/a",
            Direction::Ingress,
            DropReason::PolicyDenied,
            |r| r.remote_pod.as_deref() == Some("x/a"),
        )
        .await;
        lab.shutdown().await;
    });
}
