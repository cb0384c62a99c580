//! The real eBPF programs on crafted packets, through BPF_PROG_TEST_RUN: the headers a
//! socket will not send (options, extension headers, lone fragments, truncation, ICMP
//! errors, SCTP), each against maps written by the real compiler.
//!
//! The packet appears on the loopback interface (ifindex 1) of the test's namespace; the
//! pod under test is registered there. Nothing is attached anywhere.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicU32, Ordering},
};

use policy_agent::{
    compiler::{Compiled, Compiler, NodeConfig},
    datapath::{Datapath, bpffs},
    model::ObjectRef,
};
use policy_common::{
    maps::{Direction, programs},
    net::{icmp, icmpv6, proto},
    reason::{AllowReason, DropReason, TC_ACT_SHOT, TC_ACT_UNSPEC, Verdict},
};
use policy_tests::{
    cluster,
    packets::{ACK, Packet, SYN, SYN_ACK, arp_request, vlan_frame},
};

const ALLOW: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT;
/// Where test packets appear.
const LOOPBACK_IFINDEX: u32 = 1;
const NODE: &str = "test-node";
const PIN_PREFIX: &str = "ptest-";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The pod under test (`t/local`, on this node) and a remote pod (`t/peer`).
const PODS: &str = r#"
kind: Pod
metadata: {name: local, namespace: t, labels: {role: local}}
spec:
  nodeName: test-node
  containers: [{name: c, ports: [{containerPort: 80, name: http}, {containerPort: 53, protocol: UDP}, {containerPort: 9000, protocol: SCTP}]}]
status: {podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]}
---
kind: Pod
metadata: {name: peer, namespace: t, labels: {role: peer}}
spec: {nodeName: other-node, containers: [{name: c}]}
status: {podIPs: [{ip: 10.0.0.2}, {ip: "fd00::2"}]}
"#;

const LOCAL: &str = "10.0.0.1";
const PEER: &str = "10.0.0.2";
const LOCAL6: &str = "fd00::1";
const PEER6: &str = "fd00::2";
const WORLD: &str = "192.0.2.9";
const NODE_IP: &str = "10.0.0.254";

struct Fixture {
    datapath: Datapath,
    compiled: Compiled,
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

impl Fixture {
    /// The pods plus `policies`, compiled and written to a fresh datapath.
    fn new(policies: &str) -> Self {
        bpffs::sweep_stale(PIN_PREFIX);
        let cluster = cluster(&format!("{PODS}\n---\n{policies}"));
        let compiled = Compiler::new().compile(
            &cluster,
            &NodeConfig {
                name: NODE.into(),
                addresses: vec![ip(NODE_IP)],
            },
        );
        assert!(compiled.rejected.is_empty(), "{:?}", compiled.rejected);
        let instance = format!(
            "{PIN_PREFIX}{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let mut datapath = Datapath::load(&instance).unwrap().unpin_on_drop();
        datapath.adopt_interface(&ObjectRef::new("t", "local"), LOOPBACK_IFINDEX);
        datapath.sync(&compiled).unwrap();
        Self { datapath, compiled }
    }

    /// Packet entering the pod.
    fn ingress(&self, p: &Packet) -> i32 {
        self.datapath
            .test_run(programs::TO_POD, &p.frame())
            .unwrap()
    }

    /// Packet leaving the pod.
    fn egress(&self, p: &Packet) -> i32 {
        self.datapath
            .test_run(programs::FROM_POD, &p.frame())
            .unwrap()
    }

    /// Packets counted for `dir` with this verdict and reason.
    fn counted(&self, dir: Direction, verdict: Verdict, reason: u8) -> u64 {
        self.datapath
            .stats()
            .unwrap()
            .iter()
            .filter(|(k, _)| {
                k.direction == dir as u8 && k.verdict == verdict as u8 && k.reason == reason
            })
            .map(|(_, v)| v.packets)
            .sum()
    }

    fn dropped(&self, dir: Direction, reason: DropReason) -> u64 {
        self.counted(dir, Verdict::Drop, reason as u8)
    }

    fn allowed(&self, dir: Direction, reason: AllowReason) -> u64 {
        self.counted(dir, Verdict::Allow, reason as u8)
    }
}

const INGRESS_FROM_PEER_TCP_80: &str = r#"
kind: NetworkPolicy
metadata: {name: from-peer, namespace: t}
spec:
  podSelector: {matchLabels: {role: local}}
  ingress: [{from: [{podSelector: {matchLabels: {role: peer}}}], ports: [{port: 80}]}]
"#;

const DENY_ALL: &str = r#"
kind: NetworkPolicy
metadata: {name: deny-all, namespace: t}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"#;

#[test]
fn tcp_is_decided_by_peer_and_port() {
    let f = Fixture::new(INGRESS_FROM_PEER_TCP_80);
    assert_eq!(
        f.ingress(&Packet::tcp(ip(PEER), ip(LOCAL), 40000, 80, SYN)),
        ALLOW
    );
    assert_eq!(
        f.ingress(&Packet::tcp(ip(PEER), ip(LOCAL), 40001, 81, SYN)),
        DROP
    );
    assert_eq!(
        f.ingress(&Packet::tcp(ip(WORLD), ip(LOCAL), 40000, 80, SYN)),
        DROP
    );
    assert_eq!(
        f.ingress(&Packet::tcp(ip(PEER6), ip(LOCAL6), 40000, 80, SYN)),
        ALLOW
    );
    assert_eq!(f.dropped(Direction::Ingress, DropReason::PolicyDenied), 2);
    assert_eq!(f.allowed(Direction::Ingress, AllowReason::Policy), 2);
}

#[test]
fn truncated_headers_are_dropped_for_isolated_pods_only() {
    let isolated = Fixture::new(INGRESS_FROM_PEER_TCP_80);
    let cut_tcp = Packet::tcp(ip(PEER), ip(LOCAL), 40000, 80, SYN).truncated(8);
    assert_eq!(isolated.ingress(&cut_tcp), DROP);
    // An IPv4 header claiming more bytes than the frame has.
    let mut lying = Packet::tcp(ip(PEER), ip(LOCAL), 40000, 80, SYN).frame();
    let claimed = u16::from_be_bytes([lying[16], lying[17]]) + 100;
    lying[16..18].copy_from_slice(&claimed.to_be_bytes());
    assert_eq!(
        isolated
            .datapath
            .test_run(programs::TO_POD, &lying)
            .unwrap(),
        DROP
    );
    let cut_udp = Packet::udp(ip(PEER6), ip(LOCAL6), 5353, 53, &[]).truncated(2);
    assert_eq!(isolated.ingress(&cut_udp), DROP);
    assert_eq!(
        isolated.dropped(Direction::Ingress, DropReason::Malformed),
        3
    );

    // Not isolated: not ours to judge; the kernel drops what it cannot use.
    let open = Fixture::new("");
    assert_eq!(open.ingress(&cut_tcp), ALLOW);
}

#[test]
fn ipv4_options_do_not_hide_the_ports() {
    let f = Fixture::new(INGRESS_FROM_PEER_TCP_80);
    // Record route (type 7, length 11, pointer 4) and padding: 12 option bytes.
    let record_route = [7u8, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0];
    let allowed = Packet::tcp(ip(PEER), ip(LOCAL), 40000, 80, SYN).ipv4_options(&record_route);
    let denied = Packet::tcp(ip(PEER), ip(LOCAL), 40000, 81, SYN).ipv4_options(&record_route);
    assert_eq!(f.ingress(&allowed), ALLOW);
    assert_eq!(f.ingress(&denied), DROP);
}

/// PadN option filling a 6-byte extension-header body.
const PADN: [u8; 6] = [1, 4, 0, 0, 0, 0];

#[test]
fn ipv6_extension_headers_are_walked_and_bounded() {
    let f = Fixture::new(INGRESS_FROM_PEER_TCP_80);
    let with_ext = |port| {
        Packet::tcp(ip(PEER6), ip(LOCAL6), 40000, port, SYN)
            .ext(proto::IPV6_HOP_BY_HOP, &PADN)
            .ext(proto::IPV6_DEST_OPTS, &PADN)
    };
    assert_eq!(f.ingress(&with_ext(80)), ALLOW);
    assert_eq!(f.ingress(&with_ext(81)), DROP);

    // A routing header with segments left would deliver the packet elsewhere.
    let routing = |segments_left: u8| {
        let mut body = vec![0u8; 22];
        body[1] = segments_left;
        Packet::tcp(ip(PEER6), ip(LOCAL6), 40001, 80, SYN).ext(proto::IPV6_ROUTING, &body)
    };
    assert_eq!(f.ingress(&routing(0)), ALLOW);
    assert_eq!(f.ingress(&routing(1)), DROP);

    // A chain longer than any real traffic uses fails closed.
    let long = (0..9).fold(
        Packet::tcp(ip(PEER6), ip(LOCAL6), 40002, 80, SYN),
        |p, _| p.ext(proto::IPV6_DEST_OPTS, &PADN),
    );
    assert_eq!(f.ingress(&long), DROP);
    assert_eq!(
        f.dropped(Direction::Ingress, DropReason::UnsupportedHeader),
        2
    );
}

#[test]
fn sctp_is_decided_by_port() {
    let f = Fixture::new(
        r#"
kind: NetworkPolicy
metadata: {name: sctp, namespace: t}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: SCTP, port: 9000}]}]
"#,
    );
    assert_eq!(
        f.ingress(&Packet::sctp_init(ip(WORLD), ip(LOCAL), 5000, 9000)),
        ALLOW
    );
    assert_eq!(
        f.ingress(&Packet::sctp_init(ip(WORLD), ip(LOCAL), 5000, 9001)),
        DROP
    );
    assert_eq!(
        f.ingress(&Packet::tcp(ip(WORLD), ip(LOCAL), 5000, 9000, SYN)),
        DROP
    );
    assert_eq!(
        f.ingress(&Packet::sctp_init(ip(PEER6), ip(LOCAL6), 5000, 9000)),
        ALLOW
    );
}

const EGRESS_HTTPS_ONLY: &str = r#"
kind: NetworkPolicy
metadata: {name: https-out, namespace: t}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  egress: [{ports: [{port: 443}]}]
"#;

#[test]
fn replies_and_related_icmp_errors_of_tracked_flows_pass() {
    let f = Fixture::new(EGRESS_HTTPS_ONLY);
    let syn = Packet::tcp(ip(LOCAL), ip(WORLD), 40000, 443, SYN);
    assert_eq!(f.egress(&syn), ALLOW);
    // The reply passes although ingress is deny-all; a new connection from there does not.
    assert_eq!(
        f.ingress(&Packet::tcp(ip(WORLD), ip(LOCAL), 443, 40000, SYN_ACK)),
        ALLOW
    );
    assert_eq!(
        f.egress(&Packet::tcp(ip(LOCAL), ip(WORLD), 40000, 443, ACK)),
        ALLOW
    );
    assert_eq!(
        f.ingress(&Packet::tcp(ip(WORLD), ip(LOCAL), 443, 40001, SYN)),
        DROP
    );
    assert_eq!(f.allowed(Direction::Ingress, AllowReason::Established), 1);

    // "Destination unreachable" from a router on the way, about that SYN: related.
    let router = ip("198.51.100.1");
    let unreachable = Packet::icmp_error(router, ip(LOCAL), icmp::DEST_UNREACH, 3, &syn);
    assert_eq!(f.ingress(&unreachable), ALLOW);
    assert_eq!(f.allowed(Direction::Ingress, AllowReason::Related), 1);
    // The same error about a connection that was never made: dropped.
    let other = Packet::tcp(ip(LOCAL), ip(WORLD), 40000, 444, SYN);
    let forged = Packet::icmp_error(router, ip(LOCAL), icmp::DEST_UNREACH, 3, &other);
    assert_eq!(f.ingress(&forged), DROP);

    // IPv6: packet too big about a tracked flow (path MTU discovery must work).
    let syn6 = Packet::tcp(ip(LOCAL6), ip("2001:db8::9"), 40000, 443, SYN);
    assert_eq!(f.egress(&syn6), ALLOW);
    let too_big = Packet::icmp_error(
        ip("2001:db8::1"),
        ip(LOCAL6),
        icmpv6::PACKET_TOO_BIG,
        0,
        &syn6,
    );
    assert_eq!(f.ingress(&too_big), ALLOW);
}

#[test]
fn a_new_syn_after_a_reset_is_decided_again() {
    let f = Fixture::new(EGRESS_HTTPS_ONLY);
    assert_eq!(
        f.egress(&Packet::tcp(ip(LOCAL), ip(WORLD), 40000, 443, SYN)),
        ALLOW
    );
    const RST: u8 = 0x04;
    assert_eq!(
        f.ingress(&Packet::tcp(ip(WORLD), ip(LOCAL), 443, 40000, RST)),
        ALLOW
    );
    // The peer now opens a connection on the same ports: a new flow, denied by ingress.
    assert_eq!(
        f.ingress(&Packet::tcp(ip(WORLD), ip(LOCAL), 443, 40000, SYN)),
        DROP
    );
}

const INGRESS_DNS: &str = r#"
kind: NetworkPolicy
metadata: {name: dns, namespace: t}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}, {ipBlock: {cidr: "::/0"}}], ports: [{protocol: UDP, port: 53}]}]
"#;

#[test]
fn later_fragments_follow_their_first_fragment() {
    let f = Fixture::new(INGRESS_DNS);
    for (src, dst) in [(WORLD, LOCAL), ("2001:db8::9", LOCAL6)] {
        let (src, dst) = (ip(src), ip(dst));
        let allowed = Packet::udp(src, dst, 5353, 53, &[0; 32]);
        let denied = Packet::udp(src, dst, 5353, 54, &[0; 32]);
        assert_eq!(f.ingress(&allowed.clone().fragment(0, true, 7)), ALLOW);
        assert_eq!(f.ingress(&allowed.clone().fragment(6, false, 7)), ALLOW);
        // A later fragment whose first fragment never came.
        assert_eq!(f.ingress(&allowed.clone().fragment(6, false, 8)), DROP);
        // The fragments of a denied datagram.
        assert_eq!(f.ingress(&denied.clone().fragment(0, true, 9)), DROP);
        assert_eq!(f.ingress(&denied.clone().fragment(6, false, 9)), DROP);
    }
    assert_eq!(
        f.dropped(Direction::Ingress, DropReason::UnknownFragment),
        4
    );
    assert_eq!(f.dropped(Direction::Ingress, DropReason::PolicyDenied), 2);
}

#[test]
fn icmp_echo_needs_a_rule_without_ports() {
    let with_ports = Fixture::new(INGRESS_FROM_PEER_TCP_80);
    assert_eq!(
        with_ports.ingress(&Packet::echo_request(ip(PEER), ip(LOCAL), 7)),
        DROP
    );
    assert_eq!(
        with_ports.ingress(&Packet::echo_request(ip(PEER6), ip(LOCAL6), 7)),
        DROP
    );

    let without_ports = Fixture::new(
        r#"
kind: NetworkPolicy
metadata: {name: from-peer, namespace: t}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {matchLabels: {role: peer}}}]}]
"#,
    );
    assert_eq!(
        without_ports.ingress(&Packet::echo_request(ip(PEER), ip(LOCAL), 7)),
        ALLOW
    );
    assert_eq!(
        without_ports.ingress(&Packet::echo_request(ip(PEER6), ip(LOCAL6), 7)),
        ALLOW
    );
    // The reply leaves through the egress-isolated pod on the tracked flow.
    assert_eq!(
        without_ports.egress(&Packet::echo_reply(ip(LOCAL), ip(PEER), 7)),
        ALLOW
    );
    assert_eq!(
        without_ports.allowed(Direction::Egress, AllowReason::Established),
        1
    );
}

#[test]
fn arp_and_neighbour_discovery_pass_but_cannot_be_spoofed() {
    let f = Fixture::new(DENY_ALL);
    let run = |prog, frame: Vec<u8>| f.datapath.test_run(prog, &frame).unwrap();
    assert_eq!(
        run(
            programs::FROM_POD,
            arp_request([10, 0, 0, 1], [10, 0, 0, 254])
        ),
        ALLOW
    );
    assert_eq!(
        run(programs::FROM_POD, arp_request([0, 0, 0, 0], [10, 0, 0, 1])),
        ALLOW
    );
    assert_eq!(
        run(
            programs::TO_POD,
            arp_request([10, 0, 0, 254], [10, 0, 0, 1])
        ),
        ALLOW
    );
    assert_eq!(
        run(
            programs::FROM_POD,
            arp_request([10, 0, 0, 77], [10, 0, 0, 254])
        ),
        DROP
    );

    const NEIGHBOUR_SOLICIT: u8 = 135;
    let ns = |src, hop| Packet::icmpv6(ip(src), ip("ff02::1:ff00:1"), NEIGHBOUR_SOLICIT).ttl(hop);
    assert_eq!(f.egress(&ns("fe80::2", 255)), ALLOW);
    assert_eq!(f.egress(&ns("::", 255)), ALLOW);
    assert_eq!(f.ingress(&ns("fe80::1", 255)), ALLOW);
    // A forwarded "neighbour solicitation" is not one.
    assert_eq!(f.ingress(&ns("2001:db8::1", 64)), DROP);
    assert_eq!(f.dropped(Direction::Egress, DropReason::SpoofedSource), 1);
}

#[test]
fn spoofed_sources_are_dropped_even_without_policy() {
    let f = Fixture::new("");
    assert_eq!(
        f.egress(&Packet::udp(ip(LOCAL), ip(WORLD), 1000, 53, b"q")),
        ALLOW
    );
    assert_eq!(
        f.egress(&Packet::udp(ip("10.0.0.99"), ip(WORLD), 1000, 53, b"q")),
        DROP
    );
    assert_eq!(
        f.egress(&Packet::udp(ip(PEER), ip(WORLD), 1000, 53, b"q")),
        DROP
    );
    assert_eq!(
        f.egress(&Packet::udp(
            ip("fd00::99"),
            ip("2001:db8::1"),
            1000,
            53,
            b"q"
        )),
        DROP
    );
    assert_eq!(f.dropped(Direction::Egress, DropReason::SpoofedSource), 3);
}

#[test]
fn other_ethertypes_reach_only_pods_that_are_not_isolated() {
    let isolated = Fixture::new(DENY_ALL);
    assert_eq!(
        isolated
            .datapath
            .test_run(programs::TO_POD, &vlan_frame())
            .unwrap(),
        DROP
    );
    assert_eq!(
        isolated
            .datapath
            .test_run(programs::FROM_POD, &vlan_frame())
            .unwrap(),
        DROP
    );
    let open = Fixture::new("");
    assert_eq!(
        open.datapath
            .test_run(programs::TO_POD, &vlan_frame())
            .unwrap(),
        ALLOW
    );
}

#[test]
fn unknown_interfaces_fail_closed() {
    let f = Fixture::new("");
    let mut datapath = Datapath::load(&format!("{PIN_PREFIX}{}-unknown", std::process::id()))
        .unwrap()
        .unpin_on_drop();
    // Same maps' contents but no endpoint for the interface.
    datapath.sync(&f.compiled).unwrap();
    let p = Packet::tcp(ip(WORLD), ip(LOCAL), 1, 80, SYN).frame();
    assert_eq!(datapath.test_run(programs::TO_POD, &p).unwrap(), DROP);
}

#[test]
fn a_cidr_of_one_family_never_matches_the_other() {
    let f = Fixture::new(
        r#"
kind: NetworkPolicy
metadata: {name: v4-only, namespace: t}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}]}]
"#,
    );
    assert_eq!(
        f.ingress(&Packet::tcp(ip(WORLD), ip(LOCAL), 1, 80, SYN)),
        ALLOW
    );
    assert_eq!(
        f.ingress(&Packet::tcp(ip("2001:db8::9"), ip(LOCAL6), 1, 80, SYN)),
        DROP
    );
    // ::ffff:192.0.2.9 is an IPv6 address, whatever it embeds.
    assert_eq!(
        f.ingress(&Packet::tcp(ip("::ffff:192.0.2.9"), ip(LOCAL6), 1, 80, SYN)),
        DROP
    );
}

#[test]
fn the_node_always_reaches_its_pods() {
    let f = Fixture::new(DENY_ALL);
    assert_eq!(
        f.ingress(&Packet::tcp(ip(NODE_IP), ip(LOCAL), 1, 80, SYN)),
        ALLOW
    );
    assert_eq!(
        f.egress(&Packet::tcp(ip(LOCAL), ip(NODE_IP), 1, 10250, SYN)),
        ALLOW
    );
    assert_eq!(f.allowed(Direction::Ingress, AllowReason::Host), 1);
}

#[test]
fn flow_records_say_who_allowed_or_dropped_what() {
    let mut f = Fixture::new(INGRESS_FROM_PEER_TCP_80);
    f.datapath.drain_events();
    assert_eq!(
        f.ingress(&Packet::tcp(ip(PEER), ip(LOCAL), 40000, 80, SYN)),
        ALLOW
    );
    assert_eq!(
        f.ingress(&Packet::tcp(ip(PEER), ip(LOCAL), 40000, 80, ACK)),
        ALLOW
    );
    assert_eq!(
        f.ingress(&Packet::tcp(ip(WORLD), ip(LOCAL), 40001, 22, SYN)),
        DROP
    );
    let events = f.datapath.drain_events();
    assert_eq!(
        events.len(),
        2,
        "one new flow and one drop, not the established packet: {events:?}"
    );

    let allowed = &events[0];
    assert_eq!(allowed.verdict, Verdict::Allow as u8);
    assert_eq!(allowed.reason, AllowReason::Policy as u8);
    assert_eq!(
        f.compiled.policy_names[&allowed.policy_id],
        ObjectRef::new("t", "from-peer")
    );
    assert_eq!((allowed.local_port, allowed.remote_port), (80, 40000));
    assert_eq!(allowed.remote_addr[..4], [10, 0, 0, 2]);
    assert_eq!(
        allowed.remote_identity,
        f.compiled.pod_identities[&ObjectRef::new("t", "peer")]
    );

    let dropped = &events[1];
    assert_eq!(dropped.verdict, Verdict::Drop as u8);
    assert_eq!(dropped.reason, DropReason::PolicyDenied as u8);
    assert_eq!(dropped.direction, Direction::Ingress as u8);
    assert_eq!(dropped.local_port, 22);
    assert_eq!(dropped.proto, proto::TCP);
}

#[test]
fn pinned_maps_dump_with_their_field_names() {
    let f = Fixture::new(INGRESS_FROM_PEER_TCP_80);
    let dump = |map: &str| -> serde_json::Value {
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(f.datapath.pin_dir().join(map))
            .output()
            .expect("bpftool runs (`cargo xtask test` installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // With BTF, bpftool adds the typed form of each entry under "formatted".
    let endpoints = dump("ENDPOINTS");
    let entry = &endpoints[0]["formatted"];
    assert_eq!(entry["key"], LOOPBACK_IFINDEX, "{endpoints}");
    assert!(entry["value"]["endpoint_id"].is_u64(), "{endpoints}");
    let policy = dump("POLICY");
    let key = &policy[0]["formatted"]["key"];
    assert_eq!(key["prefix_len"], 96, "{policy}");
    assert_eq!(key["data"]["proto"], proto::TCP, "{policy}");
    assert_eq!(key["data"]["port_be"], 80u16.to_be(), "{policy}");
}
