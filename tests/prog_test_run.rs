//! The real eBPF programs on crafted packets, through BPF_PROG_TEST_RUN: the headers a
//! socket will not send (options, extension headers, lone fragments, truncation, ICMP
//! errors, SCTP), each against maps written by the real compiler.
//!
//! The packet appears on the loopback interface (ifindex 1) of the test's namespace; the
//! pod under test is registered there. Nothing is attached anywhere.

use std::{collections::BTreeSet, net::IpAddr};

use policy_agent::{
    compiler::{Compiled, Compiler, NodeConfig},
    datapath::{Arrival, BpfDatapath, Datapath as _, TableSizes},
    model::ObjectRef,
};
use policy_common::{
    event::{FlowEvent, RINGBUF_HEADER_BYTES},
    maps::{Direction, EP_HAS_LINK_LOCAL, IDENTITY_WORLD, capacity, names, programs},
    net::{ETH_P_ARP, icmp, icmpv6, proto, sctp},
    reason::{AllowReason, DropReason, TC_ACT_SHOT, TC_ACT_UNSPEC, Verdict},
};
use policy_tests::{
    cluster,
    packets::{
        ACK, Packet, SYN, SYN_ACK, TPID_8021AD, TPID_8021Q, arp_request, tagged, vlan_frame,
        with_ether_type,
    },
    test_datapath,
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
---
kind: Pod
metadata: {name: other, namespace: u, labels: {role: other}}
spec: {nodeName: test-node, containers: [{name: c}]}
status: {podIPs: [{ip: 10.0.0.3}, {ip: "fd00::3"}]}
"#;

const LOCAL: &str = "10.0.0.1";
const PEER: &str = "10.0.0.2";
const LOCAL6: &str = "fd00::1";
/// The link-local address of t/local's interface.
const LOCAL_LL: &str = "fe80::2";
const PEER6: &str = "fd00::2";
const WORLD: &str = "192.0.2.9";
const NODE_IP: &str = "10.0.0.254";
const NODE_IP6: &str = "fd00::fe";

struct Fixture {
    datapath: BpfDatapath,
    compiled: Compiled,
}

impl Fixture {
    /// The pods plus `policies`, compiled and written to a fresh datapath.
    fn new(policies: &str) -> Self {
        Self::with_tables(policies, TableSizes::default())
    }

    /// Like [`Fixture::new`], with per-endpoint tables of `sizes`.
    fn with_tables(policies: &str, sizes: TableSizes) -> Self {
        let cluster = cluster(&format!("{PODS}\n---\n{policies}"));
        let compiled = Compiler::new().compile(
            &cluster,
            &NodeConfig {
                name: NODE.into(),
                addresses: vec![ip(NODE_IP), ip(NODE_IP6)],
                ..NodeConfig::default()
            },
        );
        assert!(compiled.rejected.is_empty(), "{:?}", compiled.rejected);
        // The link-local address the agent would have read from the pod's interface.
        let mut compiled = compiled;
        let local = compiled
            .endpoints
            .get_mut(&ObjectRef::new("t", "local"))
            .unwrap();
        local.link_local = LOCAL_LL.parse::<std::net::Ipv6Addr>().unwrap().octets();
        local.flags |= EP_HAS_LINK_LOCAL;
        let mut datapath = test_datapath(PIN_PREFIX, sizes);
        datapath.adopt_interface(&ObjectRef::new("t", "local"), LOOPBACK_IFINDEX);
        datapath.sync(&compiled).unwrap();
        let mut f = Self { datapath, compiled };
        // As the other endpoints are written (see `switch_to`): the entries of each stay
        // its own whichever is on the interface.
        f.switch_to("t", "local");
        f
    }

    /// Packet entering the pod.
    fn ingress(&self, p: &Packet) -> i32 {
        self.datapath
            .test_run(programs::TO_POD, &p.frame())
            .unwrap()
    }

    /// Packet leaving the pod.
    fn egress(&self, p: &Packet) -> i32 {
        self.egress_frame(&p.frame())
    }

    /// Frame leaving the pod.
    fn egress_frame(&self, frame: &[u8]) -> i32 {
        self.datapath.test_run(programs::FROM_POD, frame).unwrap()
    }

    /// Packet the node's own stack sends to the pod.
    fn sent_by_node(&self, p: &Packet) -> i32 {
        self.datapath
            .test_run_from_node(programs::TO_POD, &p.frame())
            .unwrap()
    }

    /// Makes `pod` (on this node) the endpoint behind the test interface.
    fn switch_to(&mut self, namespace: &str, name: &str) {
        let info = self.compiled.endpoints[&ObjectRef::new(namespace, name)];
        self.datapath.set_endpoint(LOOPBACK_IFINDEX, &info).unwrap();
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

const EGRESS_SCTP_ONLY: &str = r#"
kind: NetworkPolicy
metadata: {name: sctp-out, namespace: t}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  egress: [{ports: [{protocol: SCTP, port: 9000}]}]
"#;

#[test]
fn an_sctp_init_on_the_ports_of_an_association_is_decided_again() {
    /// SCTP's DATA chunk type (RFC 9260 §3.3.1).
    const CHUNK_DATA: u8 = 0;
    let f = Fixture::new(EGRESS_SCTP_ONLY);
    let (pod, peer) = (ip(LOCAL), ip(WORLD));
    // The pod starts an association; its peer answers and sends data on it.
    assert_eq!(f.egress(&Packet::sctp_init(pod, peer, 5000, 9000)), ALLOW);
    for chunk in [sctp::CHUNK_INIT_ACK, CHUNK_DATA] {
        assert_eq!(
            f.ingress(&Packet::sctp_chunk(peer, pod, 9000, 5000, chunk)),
            ALLOW
        );
    }
    // The peer starts one of its own on those ports: a new association, which the pod's
    // ingress (no rule) denies, not a packet of the tracked one.
    assert_eq!(f.ingress(&Packet::sctp_init(peer, pod, 9000, 5000)), DROP);
    assert_eq!(f.dropped(Direction::Ingress, DropReason::PolicyDenied), 1);
    // The pod restarting its own is decided again too, and allowed.
    assert_eq!(f.egress(&Packet::sctp_init(pod, peer, 5000, 9000)), ALLOW);
    assert_eq!(f.allowed(Direction::Egress, AllowReason::Policy), 2);
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

    // Solicitations for the pod's own address (duplicate address detection from `::`).
    let ns = |src, hop| solicitation_for(src, "ff02::1:ff00:1", LOCAL6, hop);
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
    let mut datapath = BpfDatapath::load(&format!("{PIN_PREFIX}{}-unknown", std::process::id()))
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
        f.sent_by_node(&Packet::tcp(ip(NODE_IP), ip(LOCAL), 1, 80, SYN)),
        ALLOW
    );
    assert_eq!(
        f.sent_by_node(&Packet::tcp(ip(NODE_IP6), ip(LOCAL6), 1, 80, SYN)),
        ALLOW
    );
    assert_eq!(
        f.egress(&Packet::tcp(ip(LOCAL), ip(NODE_IP), 1, 10250, SYN)),
        ALLOW
    );
    assert_eq!(f.allowed(Direction::Ingress, AllowReason::Host), 2);
}

#[test]
fn a_node_address_on_a_forwarded_packet_is_just_an_address() {
    let mut f = Fixture::new(DENY_ALL);
    f.datapath.drain_events();
    // Sent from outside with the node's address (Linux forwards IPv6 from local sources),
    // or masqueraded to it: the node did not send it.
    for (src, dst) in [(NODE_IP6, LOCAL6), (NODE_IP, LOCAL)] {
        assert_eq!(
            f.ingress(&Packet::tcp(ip(src), ip(dst), 1, 80, SYN)),
            DROP,
            "{src}"
        );
    }
    assert_eq!(f.dropped(Direction::Ingress, DropReason::PolicyDenied), 2);
    let events = f.datapath.drain_events();
    assert!(
        events.iter().all(|e| e.remote_identity == IDENTITY_WORLD),
        "recorded as the world, not the node: {events:?}"
    );
    // Not even an ICMP error the node sends: it would carry someone else's bytes in.
    let quoted = Packet::udp(ip(LOCAL), ip(WORLD), 1000, 53, b"q");
    let error = Packet::icmp_error(ip(NODE_IP), ip(LOCAL), icmp::DEST_UNREACH, 1, &quoted);
    assert_eq!(f.sent_by_node(&error), DROP);
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
fn conntrack_fill_is_what_the_datapath_created_without_walking_the_tables() {
    let sizes = TableSizes {
        conntrack: 512,
        fragments: 64,
    };
    let f = Fixture::with_tables(INGRESS_FROM_PEER_TCP_80, sizes);
    let conntrack = |f: &Fixture| {
        let fill = f.datapath.fill();
        let (_, entries, capacity) = fill
            .into_iter()
            .find(|(m, _, _)| *m == names::CONNTRACK)
            .unwrap();
        (entries, capacity)
    };
    let at_start = conntrack(&f).0;
    assert_eq!(at_start, f.datapath.conntrack_entries_walked());
    let flows = 100u16;
    for round in 0..2 {
        // The same flows again: answered from their entries, nothing new.
        for port in 0..flows {
            assert_eq!(
                f.egress(&Packet::udp(ip(LOCAL), ip(WORLD), 2000 + port, 53, b"x")),
                ALLOW,
                "round {round}"
            );
        }
        let (entries, _) = conntrack(&f);
        assert_eq!(entries, at_start + usize::from(flows), "round {round}");
        assert_eq!(
            entries,
            f.datapath.conntrack_entries_walked(),
            "round {round}"
        );
    }
    // Far more flows than the table holds: the table is full, never more.
    for port in 0..4 * sizes.conntrack as u16 {
        f.egress(&Packet::udp(ip(LOCAL), ip(WORLD), 10_000 + port, 53, b"x"));
    }
    let (entries, capacity) = conntrack(&f);
    let walked = f.datapath.conntrack_entries_walked();
    assert_eq!(
        entries - at_start,
        sizes.conntrack as usize,
        "the pod's table counts as full"
    );
    assert!(
        walked <= entries && entries as u64 <= capacity,
        "{walked} {entries} {capacity}"
    );
}

#[test]
fn records_the_ring_buffer_has_no_room_for_are_counted() {
    let mut f = Fixture::new(INGRESS_FROM_PEER_TCP_80);
    f.datapath.drain_events();
    let lost_before = f.datapath.events_lost();
    // Twice as many drops as the ring buffer holds, with nobody reading.
    let record = size_of::<FlowEvent>() as u32 + RINGBUF_HEADER_BYTES;
    let sent = 2 * capacity::EVENTS_BYTES / record;
    let denied = Packet::tcp(ip(WORLD), ip(LOCAL), 40001, 22, SYN);
    let (action, _) = f
        .datapath
        .test_run_repeat(programs::TO_POD, &denied.frame(), sent)
        .unwrap();
    assert_eq!(action, DROP);
    let read = f.datapath.drain_events().len() as u64;
    let lost = f.datapath.events_lost() - lost_before;
    assert!(read > 0 && lost > 0, "read {read}, lost {lost}");
    assert_eq!(
        read + lost,
        u64::from(sent),
        "every record read or counted lost"
    );
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

const EGRESS_DENY_ALL: &str = r#"
kind: NetworkPolicy
metadata: {name: no-egress, namespace: t}
spec: {podSelector: {}, policyTypes: [Egress]}
"#;

const INGRESS_FROM_PEER_ONLY: &str = r#"
kind: NetworkPolicy
metadata: {name: from-peer, namespace: t}
spec:
  podSelector: {matchLabels: {role: local}}
  ingress: [{from: [{podSelector: {matchLabels: {role: peer}}}]}]
"#;

#[test]
fn only_plain_ip_and_arp_frames_leave_a_pod() {
    // No policy at all: the pod is isolated in neither direction.
    let f = Fixture::new("");
    let spoofed = Packet::udp(ip(PEER), ip(WORLD), 1000, 53, b"forged").frame();
    let honest = Packet::udp(ip(LOCAL), ip(WORLD), 1000, 53, b"honest").frame();
    assert_eq!(f.egress_frame(&honest), ALLOW);
    for frame in [
        // Two priority tags: the kernel strips them after the hook and routes the inner
        // packet, spoofed source and all.
        tagged(&spoofed, &[(TPID_8021Q, 0), (TPID_8021Q, 0)]),
        tagged(&honest, &[(TPID_8021Q, 0)]),
        tagged(&honest, &[(TPID_8021AD, 7), (TPID_8021Q, 0)]),
        // Another EtherType, and an 802.3 length field.
        with_ether_type(&honest, 0x88b5),
        with_ether_type(&honest, 0x0100),
        // ARP that is not IPv4 over Ethernet.
        with_ether_type(&honest, ETH_P_ARP),
    ] {
        assert_eq!(f.egress_frame(&frame), DROP, "{frame:02x?}");
    }
    assert_eq!(f.dropped(Direction::Egress, DropReason::NonIpFrame), 6);
    // Entering a pod that nothing isolates, such frames are the kernel's business.
    assert_eq!(
        f.datapath
            .test_run(programs::TO_POD, &tagged(&honest, &[(TPID_8021Q, 0)]))
            .unwrap(),
        ALLOW
    );
}

#[test]
fn unreadable_ip_headers_from_a_pod_are_dropped_before_anything_else() {
    let f = Fixture::new("");
    // An IPv4 header whose length field lies, with a spoofed source.
    let mut lying = Packet::udp(ip(PEER), ip(WORLD), 1000, 53, b"q").frame();
    lying[14] = 0x44; // IHL 4: shorter than the fixed header
    assert_eq!(f.egress_frame(&lying), DROP);
    // Spoofed sources behind IPv6 chains the parser gives up on.
    let long = (0..9).fold(
        Packet::udp(ip(PEER6), ip("2001:db8::1"), 1000, 53, b"q"),
        |p, _| p.ext(proto::IPV6_DEST_OPTS, &PADN),
    );
    assert_eq!(f.egress(&long), DROP);
    let mut segments = vec![0u8; 22];
    segments[1] = 1;
    let routed = Packet::udp(ip(PEER6), ip("2001:db8::1"), 1000, 53, b"q")
        .ext(proto::IPV6_ROUTING, &segments);
    assert_eq!(f.egress(&routed), DROP);
    assert_eq!(f.dropped(Direction::Egress, DropReason::SpoofedSource), 2);
    assert_eq!(f.dropped(Direction::Egress, DropReason::Malformed), 1);
    // From its own address, a pod that nothing isolates may send what the kernel accepts.
    let own = (0..9).fold(
        Packet::udp(ip(LOCAL6), ip("2001:db8::1"), 1000, 53, b"q"),
        |p, _| p.ext(proto::IPV6_DEST_OPTS, &PADN),
    );
    assert_eq!(f.egress(&own), ALLOW);
}

#[test]
fn icmp_errors_are_related_only_when_they_go_back_to_the_quoted_sender() {
    let f = Fixture::new(&format!("{EGRESS_DENY_ALL}\n---\n{INGRESS_FROM_PEER_ONLY}"));
    // The peer's datagram to the pod: allowed and tracked.
    let datagram = Packet::udp(ip(PEER), ip(LOCAL), 5000, 53, b"q");
    assert_eq!(f.ingress(&datagram), ALLOW);
    // "Port unreachable" back to the peer: related.
    let back = Packet::icmp_error(ip(LOCAL), ip(PEER), icmp::DEST_UNREACH, 3, &datagram);
    assert_eq!(f.egress(&back), ALLOW);
    assert_eq!(f.allowed(Direction::Egress, AllowReason::Related), 1);
    // The same quote sent anywhere else: a tunnel out of an egress-isolated pod.
    let tunnel = Packet::icmp_error(ip(LOCAL), ip(WORLD), icmp::DEST_UNREACH, 3, &datagram);
    assert_eq!(f.egress(&tunnel), DROP);
    // IPv6 too.
    let datagram6 = Packet::udp(ip(PEER6), ip(LOCAL6), 5000, 53, b"q");
    assert_eq!(f.ingress(&datagram6), ALLOW);
    let back6 = Packet::icmp_error(ip(LOCAL6), ip(PEER6), icmpv6::DEST_UNREACH, 4, &datagram6);
    assert_eq!(f.egress(&back6), ALLOW);
    let tunnel6 = Packet::icmp_error(
        ip(LOCAL6),
        ip("2001:db8::66"),
        icmpv6::DEST_UNREACH,
        4,
        &datagram6,
    );
    assert_eq!(f.egress(&tunnel6), DROP);
    assert_eq!(f.dropped(Direction::Egress, DropReason::PolicyDenied), 2);
}

/// A neighbour solicitation of `src` for `target`, sent to `dst` with `hop_limit`.
fn solicitation(src: &str, dst: &str, hop_limit: u8) -> Packet {
    solicitation_for(src, dst, "fd00::fe", hop_limit)
}

/// A neighbour solicitation for `target`, with `options` after it.
fn solicitation_with(src: &str, dst: &str, target: &str, options: &[u8]) -> Packet {
    let mut body = vec![0u8; 4];
    body.extend_from_slice(&target.parse::<std::net::Ipv6Addr>().unwrap().octets());
    body.extend_from_slice(options);
    Packet::icmpv6_with(ip(src), ip(dst), icmpv6::NEIGHBOUR_SOLICIT, 0, &body)
        .ttl(icmpv6::ND_HOP_LIMIT)
}

fn solicitation_for(src: &str, dst: &str, target: &str, hop_limit: u8) -> Packet {
    solicitation_with(src, dst, target, &[]).ttl(hop_limit)
}

/// Router alert for MLD, in a hop-by-hop header: type 5, length 2, value 0, then PadN.
const ROUTER_ALERT: [u8; 6] = [5, 2, 0, 0, 1, 0];

/// An MLDv2 report to `dst` from `src` with `hop_limit` (one record: exclude nothing of
/// ff02::1:ff00:1), carrying `payload` after it.
fn listener_report(src: &str, dst: &str, hop_limit: u8, payload: &[u8]) -> Packet {
    let mut body = vec![0, 0, 0, 1, 2, 0, 0, 0];
    body.extend_from_slice(
        &"ff02::1:ff00:1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    body.extend_from_slice(payload);
    Packet::icmpv6_with(ip(src), ip(dst), icmpv6::MLD2_REPORT, 0, &body)
        .ttl(hop_limit)
        .ext(proto::IPV6_HOP_BY_HOP, &ROUTER_ALERT)
}

#[test]
fn discovery_is_link_control_only_as_the_rfcs_define_it() {
    let f = Fixture::new(DENY_ALL);
    let nd = icmpv6::ND_HOP_LIMIT;
    // What a pod needs: address resolution and DAD on the link, and its node's addresses.
    for ok in [
        solicitation(LOCAL_LL, "ff02::1:ff00:fe", nd),
        solicitation_with(
            LOCAL_LL,
            "ff02::1:ff00:fe",
            "fd00::fe",
            &[1, 1, 2, 0, 0, 0, 0, 1],
        ),
        // Duplicate address detection of its own addresses, with a nonce (RFC 7527).
        solicitation_for("::", "ff02::1:ff00:1", LOCAL6, nd),
        solicitation_with("::", "ff02::1:ff00:2", LOCAL_LL, &[14, 1, 9, 9, 9, 9, 9, 9]),
        solicitation(LOCAL6, NODE_IP6, nd),
        solicitation(LOCAL6, "fe80::1", nd),
        Packet::neighbour_advert(ip(LOCAL6), ip("fe80::1"), ip(LOCAL6)),
        Packet::neighbour_advert(ip("fe80::2"), ip("ff02::1"), ip("fe80::2")),
        listener_report("fe80::2", "ff02::16", 1, b""),
        listener_report("::", "ff02::16", 1, b""),
    ] {
        assert_eq!(f.egress(&ok), ALLOW, "{ok:?}");
    }
    // Discovery types that would leave the link, claim what is not the pod's, or come
    // from a router.
    for bad in [
        // To an address off the link: routed on, with whatever it carries.
        solicitation(LOCAL6, "2001:db8::1", nd),
        solicitation(LOCAL6, PEER6, nd),
        solicitation("fe80::2", "2001:db8::1", nd),
        // A hop limit that does not prove it stays on the link.
        solicitation(LOCAL6, "ff02::1:ff00:fe", 64),
        solicitation(LOCAL6, "ff02::1:ff00:fe", 1),
        // `::` outside duplicate address detection.
        solicitation("::", "fe80::1", nd),
        // Someone else's address advertised.
        Packet::neighbour_advert(ip(LOCAL6), ip("fe80::1"), ip(PEER6)),
        // Someone else's link-local address: another pod's, or the node's (an override
        // advertisement poisons every neighbour's cache), as target or as source.
        Packet::neighbour_advert(ip(LOCAL_LL), ip("ff02::1"), ip("fe80::9")),
        Packet::neighbour_advert(ip("fe80::9"), ip("ff02::1"), ip("fe80::9")),
        solicitation("fe80::9", "ff02::1:ff00:fe", nd),
        // Duplicate address detection of another's address fails it for its owner; of its
        // own, only to that address's solicited-node group; never with a link-layer address.
        solicitation_for("::", "ff02::1:ff00:fe", "fd00::fe", nd),
        solicitation_for("::", "ff02::1:ff00:fe", LOCAL6, nd),
        solicitation_with("::", "ff02::1:ff00:1", LOCAL6, &[1, 1, 2, 0, 0, 0, 0, 1]),
        // Bytes of the pod's choosing: an option nobody defined, one too long, a trailer.
        solicitation_with(
            LOCAL6,
            "fe80::1",
            "fd00::fe",
            &[0xfd, 1, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41],
        ),
        solicitation_with(
            LOCAL6,
            "fe80::1",
            "fd00::fe",
            &[1, 2, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        solicitation_with(LOCAL6, "fe80::1", "fd00::fe", &[0x41; 3]),
        listener_report(LOCAL_LL, "ff02::16", 1, &[0x41; 16]),
        // A pod is not a multicast router either.
        Packet::icmpv6_with(ip(LOCAL_LL), ip("ff02::1"), icmpv6::MLD_QUERY, 0, &[0; 20])
            .ttl(1)
            .ext(proto::IPV6_HOP_BY_HOP, &ROUTER_ALERT),
        // A router's messages.
        Packet::icmpv6_with(
            ip("fe80::2"),
            ip("ff02::1"),
            icmpv6::ROUTER_ADVERT,
            0,
            &[0; 12],
        )
        .ttl(nd),
        Packet::icmpv6_with(ip("fe80::2"), ip("fe80::1"), icmpv6::REDIRECT, 0, &[0; 36]).ttl(nd),
        // A code the RFC does not define.
        Packet::icmpv6_with(
            ip("fe80::2"),
            ip("ff02::1:ff00:fe"),
            icmpv6::NEIGHBOUR_SOLICIT,
            1,
            &[0; 20],
        )
        .ttl(nd),
        // Listener discovery that a router would forward: unicast, hop limit 2, a global
        // source.
        listener_report("fe80::2", PEER6, 1, b"payload"),
        listener_report("fe80::2", "ff02::16", 2, b""),
        listener_report(LOCAL6, "ff02::16", 1, b""),
    ] {
        assert_eq!(f.egress(&bad), DROP, "{bad:?}");
    }
    assert_eq!(
        f.dropped(Direction::Egress, DropReason::InvalidLinkControl),
        24
    );
    // Discovery with a spoofed global source is spoofing before it is discovery.
    assert_eq!(f.egress(&solicitation(PEER6, "ff02::1:ff00:fe", nd)), DROP);
    assert_eq!(f.dropped(Direction::Egress, DropReason::SpoofedSource), 1);

    // Into the pod: from the link only.
    assert_eq!(
        f.sent_by_node(&solicitation("fe80::1", "ff02::1:ff00:1", nd)),
        ALLOW
    );
    assert_eq!(
        f.ingress(&listener_report("fe80::1", "ff02::1", 1, b"")),
        ALLOW
    );
    // Sent with hop limit 2 from afar and forwarded once: hop limit 1 on arrival, but to a
    // unicast address from a global source.
    assert_eq!(
        f.ingress(&listener_report(PEER6, LOCAL6, 1, b"payload")),
        DROP
    );
    assert_eq!(f.ingress(&solicitation(PEER6, LOCAL6, 254)), DROP);
    // Router advertisements only from the node's own stack, never forwarded from anywhere.
    let ra = Packet::icmpv6_with(
        ip("fe80::1"),
        ip("ff02::1"),
        icmpv6::ROUTER_ADVERT,
        0,
        &[0; 12],
    )
    .ttl(nd);
    assert_eq!(f.sent_by_node(&ra), ALLOW);
    assert_eq!(f.ingress(&ra), DROP);
}

#[test]
fn an_echo_entry_admits_replies_only() {
    // Ingress-isolated, free to go out.
    let f = Fixture::new(INGRESS_FROM_PEER_TCP_80);
    for (local, world) in [(LOCAL, WORLD), (LOCAL6, "2001:db8::9")] {
        assert_eq!(
            f.egress(&Packet::echo_request(ip(local), ip(world), 7)),
            ALLOW
        );
        assert_eq!(
            f.ingress(&Packet::echo_reply(ip(world), ip(local), 7)),
            ALLOW
        );
        // The host pinged now sends its own request with that identifier.
        assert_eq!(
            f.ingress(&Packet::echo_request(ip(world), ip(local), 7)),
            DROP,
            "{world}"
        );
    }
    assert_eq!(f.allowed(Direction::Ingress, AllowReason::Established), 2);
    // ICMP other than echo pairs nothing with anything: no entry lets a peer's ICMP in.
    let timestamp = |src, dst, ty| Packet::icmp_any(ip(src), ip(dst), ty, 0, &[0; 16]);
    assert_eq!(f.egress(&timestamp(LOCAL, WORLD, 13)), ALLOW);
    assert_eq!(f.ingress(&timestamp(WORLD, LOCAL, 13)), DROP);
    assert_eq!(f.ingress(&timestamp(WORLD, LOCAL, 14)), DROP);
}

#[test]
fn no_pod_can_evict_another_pods_connections() {
    let sizes = TableSizes {
        conntrack: 512,
        fragments: 64,
    };
    let mut f = Fixture::with_tables(INGRESS_FROM_PEER_TCP_80, sizes);
    f.datapath.drain_events();
    // The isolated pod opens a connection out; the reply is tracked, nothing else gets in.
    assert_eq!(
        f.egress(&Packet::tcp(ip(LOCAL), ip(WORLD), 40000, 443, SYN)),
        ALLOW
    );
    // Another pod on the node, isolated by nothing, floods the node with new flows that
    // get answers (the kernel's LRU lets entries seen only once go first).
    f.switch_to("u", "other");
    for port in 0..4 * sizes.conntrack as u16 {
        let (other, sport) = (ip("10.0.0.3"), 1024 + port);
        assert_eq!(
            f.egress(&Packet::udp(other, ip(WORLD), sport, 53, b"x")),
            ALLOW
        );
        assert_eq!(
            f.ingress(&Packet::udp(ip(WORLD), other, 53, sport, b"x")),
            ALLOW
        );
    }
    f.switch_to("t", "local");
    assert_eq!(
        f.ingress(&Packet::tcp(ip(WORLD), ip(LOCAL), 443, 40000, SYN_ACK)),
        ALLOW,
        "the flood of another pod evicted this pod's connection"
    );

    // The pod's own flows evict its own entries, and the loss is reported. (The kernel's
    // LRU lets entries seen only once go first, so these flows get answers; how soon the
    // connection goes depends on which CPUs ran them.)
    let id = f.compiled.endpoints[&ObjectRef::new("t", "local")].endpoint_id;
    let tracked = |f: &Fixture| {
        let table = f.datapath.conntrack(id).unwrap();
        table
            .keys()
            .filter_map(Result::ok)
            .any(|k| k.proto == proto::TCP && k.local_port == 40000)
    };
    let mut sport = 1024u16;
    for _ in 0..32 {
        if !tracked(&f) {
            break;
        }
        for _ in 0..sizes.conntrack {
            f.egress(&Packet::udp(ip(LOCAL), ip(WORLD), sport, 53, b"x"));
            f.ingress(&Packet::udp(ip(WORLD), ip(LOCAL), 53, sport, b"x"));
            sport = sport.wrapping_add(1).max(1024);
        }
    }
    assert!(
        !tracked(&f),
        "the pod's own flows never evicted its connection"
    );
    f.datapath.drain_events();
    assert_eq!(
        f.ingress(&Packet::tcp(ip(WORLD), ip(LOCAL), 443, 40000, ACK)),
        DROP
    );
    assert_eq!(
        f.dropped(Direction::Ingress, DropReason::UnknownConnection),
        1
    );
    let events = f.datapath.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].reason, DropReason::UnknownConnection as u8);
}

#[test]
fn ipv6_fragments_match_whatever_follows_the_fragment_header() {
    let f = Fixture::new(INGRESS_DNS);
    let src = ip("2001:db8::9");
    let datagram = |port| {
        Packet::udp(src, ip(LOCAL6), 5353, port, &[0; 32])
            .ext_after_fragment(proto::IPV6_DEST_OPTS, &PADN)
    };
    assert_eq!(f.ingress(&datagram(53).fragment(0, true, 21)), ALLOW);
    assert_eq!(f.ingress(&datagram(53).fragment(6, false, 21)), ALLOW);
    // A denied datagram's later fragment inherits nothing.
    assert_eq!(f.ingress(&datagram(54).fragment(0, true, 22)), DROP);
    assert_eq!(f.ingress(&datagram(54).fragment(6, false, 22)), DROP);
    // Another datagram between the same hosts does not inherit either.
    assert_eq!(f.ingress(&datagram(53).fragment(6, false, 23)), DROP);
}

#[test]
fn an_unasked_echo_reply_opens_nothing() {
    // Open both ways for ICMP out, nothing in: the pod may send what it likes.
    let f = Fixture::new(INGRESS_FROM_PEER_TCP_80);
    for id in [0x4242, 0] {
        // The pod "replies" to a host that never pinged it...
        assert_eq!(
            f.egress(&Packet::echo_reply(ip(LOCAL), ip(WORLD), id)),
            ALLOW
        );
        // ...which gives that host's requests no way in.
        assert_eq!(
            f.ingress(&Packet::echo_request(ip(WORLD), ip(LOCAL), id)),
            DROP,
            "id {id}"
        );
        // Its own ping with identifier 0 is not the host's either.
        assert_eq!(
            f.egress(&Packet::echo_request(ip(LOCAL), ip(WORLD), id)),
            ALLOW
        );
        assert_eq!(
            f.ingress(&Packet::echo_reply(ip(WORLD), ip(LOCAL), id)),
            ALLOW
        );
        assert_eq!(
            f.ingress(&Packet::echo_request(ip(WORLD), ip(LOCAL), id)),
            DROP,
            "id {id}, after the pod's own ping"
        );
    }
}

#[test]
fn a_pod_cannot_make_the_node_unwrap_a_packet() {
    // Nothing isolates the pod: only the wrapper is at fault.
    let f = Fixture::new("");
    let inner = Packet::udp(ip(PEER), ip("10.0.0.3"), 5555, 80, b"forged").ip_packet();
    for (p, dst) in [(4u8, NODE_IP), (47, NODE_IP), (41, NODE_IP)] {
        assert_eq!(
            f.egress(&Packet::raw(ip(LOCAL), ip(dst), p, &inner)),
            DROP,
            "protocol {p}"
        );
    }
    for port in [4789u16, 8472, 6081] {
        let vxlan = Packet::udp(ip(LOCAL), ip(NODE_IP), 40000, port, &inner);
        assert_eq!(f.egress(&vxlan), DROP, "UDP {port}");
        let vxlan6 = Packet::udp(ip(LOCAL6), ip(NODE_IP6), 40000, port, &inner);
        assert_eq!(f.egress(&vxlan6), DROP, "UDP {port} over IPv6");
    }
    assert_eq!(f.dropped(Direction::Egress, DropReason::TunnelToNode), 9);
    // Tunnels to anyone else are the policy's business, and DNS to the node is fine.
    assert_eq!(
        f.egress(&Packet::raw(ip(LOCAL), ip(WORLD), 47, &inner)),
        ALLOW
    );
    assert_eq!(
        f.egress(&Packet::udp(ip(LOCAL), ip(NODE_IP), 40000, 53, b"q")),
        ALLOW
    );
}

#[test]
fn the_ports_of_the_nodes_own_tunnel_devices_are_tunnels_too() {
    let mut f = Fixture::new("");
    let inner = Packet::udp(ip(PEER), ip("10.0.0.3"), 5555, 80, b"forged").ip_packet();
    let to_node = |port| Packet::udp(ip(LOCAL), ip(NODE_IP), 40000, port, &inner);
    let to_node6 = |port| Packet::udp(ip(LOCAL6), ip(NODE_IP6), 40000, port, &inner);
    // A VXLAN device on a port of its own (Calico's, Cilium's and flannel's are settings):
    // plain UDP until the agent reads it from the node's links.
    assert_eq!(f.egress(&to_node(9999)), ALLOW);
    f.datapath
        .set_tunnel_ports(&BTreeSet::from([9999, u16::MAX]))
        .unwrap();
    for port in [9999, u16::MAX] {
        assert_eq!(f.egress(&to_node(port)), DROP, "UDP {port}");
        assert_eq!(f.egress(&to_node6(port)), DROP, "UDP {port} over IPv6");
    }
    assert_eq!(f.dropped(Direction::Egress, DropReason::TunnelToNode), 4);
    // Its neighbours, TCP on that port and the same port elsewhere are not.
    assert_eq!(f.egress(&to_node(9998)), ALLOW);
    assert_eq!(f.egress(&to_node(10_000)), ALLOW);
    assert_eq!(
        f.egress(&Packet::tcp(ip(LOCAL), ip(NODE_IP), 40000, 9999, SYN)),
        ALLOW
    );
    assert_eq!(
        f.egress(&Packet::udp(ip(LOCAL), ip(WORLD), 40000, 9999, &inner)),
        ALLOW
    );
    // A device that goes takes its port with it; the well-known ports stay.
    f.datapath.set_tunnel_ports(&BTreeSet::new()).unwrap();
    assert_eq!(f.egress(&to_node(9999)), ALLOW);
    assert_eq!(f.egress(&to_node(8472)), DROP);
}

#[test]
fn errors_quoting_extension_headers_are_matched_and_fragments_only_once() {
    let f = Fixture::new(EGRESS_HTTPS_ONLY);
    // Path MTU discovery for a fragmented flow: the quote has a Fragment header.
    let world = ip("2001:db8::9");
    let first = Packet::tcp(ip(LOCAL6), world, 40000, 443, SYN).fragment(0, true, 31);
    assert_eq!(f.egress(&first), ALLOW);
    let too_big = Packet::icmp_error(world, ip(LOCAL6), icmpv6::PACKET_TOO_BIG, 0, &first);
    assert_eq!(f.ingress(&too_big), ALLOW);
    assert_eq!(f.allowed(Direction::Ingress, AllowReason::Related), 1);
    // Two Fragment headers: two identities for one datagram.
    let twice = Packet::tcp(ip(LOCAL6), world, 40001, 443, SYN)
        .ext(proto::IPV6_FRAGMENT, &[0, 0, 0, 0, 0, 9])
        .fragment(0, true, 32);
    assert_eq!(f.egress(&twice), DROP);
    assert_eq!(
        f.dropped(Direction::Egress, DropReason::UnsupportedHeader),
        1
    );
}

/// Services: one whose only backend is the peer (port 8080 behind 80, and a node port), one
/// whose backends are the peer and a second pod, the DNS Service, and a host port of
/// u/other's.
const SERVICES: &str = r#"
kind: Pod
metadata: {name: peer2, namespace: t, labels: {role: peer2}}
spec: {nodeName: other-node, containers: [{name: c}]}
status: {podIPs: [{ip: 10.0.0.4}]}
---
kind: Pod
metadata: {name: dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {nodeName: other-node, containers: [{name: c, ports: [{containerPort: 53, protocol: UDP, name: dns}]}]}
status: {podIPs: [{ip: 10.0.0.53}]}
---
kind: Pod
metadata: {name: hostport, namespace: u, labels: {role: hostport}}
spec: {nodeName: test-node, containers: [{name: c, ports: [{containerPort: 8080, hostPort: 18080}]}]}
status: {podIPs: [{ip: 10.0.0.5}]}
---
kind: Service
metadata: {name: peer, namespace: t}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  selector: {role: peer}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
kind: Service
metadata: {name: two, namespace: t}
spec:
  clusterIP: 10.96.0.11
  ports: [{port: 80, targetPort: 8080}]
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: two-1, namespace: t, labels: {kubernetes.io/service-name: two}}
addressType: IPv4
ports: [{port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.0.0.2]}, {addresses: [10.0.0.4]}]
---
kind: Service
metadata: {name: local, namespace: t}
spec:
  clusterIP: 10.96.0.12
  selector: {role: local}
  ports: [{port: 80}]
---
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.53
  selector: {k8s-app: kube-dns}
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: dns}]
"#;

/// The local pod may reach the peer on 8080 and the DNS pods on 53, nothing else.
const EGRESS_TO_PEER_AND_DNS: &str = r#"
kind: NetworkPolicy
metadata: {name: to-peer, namespace: t}
spec:
  podSelector: {matchLabels: {role: local}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {role: peer}}}]
    ports: [{port: 8080}]
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{port: 53, protocol: UDP}]
"#;

const EGRESS_DENY_LOCAL: &str = r#"
kind: NetworkPolicy
metadata: {name: no-egress, namespace: t}
spec: {podSelector: {matchLabels: {role: local}}, policyTypes: [Egress]}
"#;

#[test]
fn a_service_frontend_is_decided_as_its_backends() {
    let mut f = Fixture::new(&format!("{SERVICES}\n---\n{EGRESS_TO_PEER_AND_DNS}"));
    f.datapath.drain_events();
    let syn =
        |dst: &str, port: u16| Packet::tcp(ip(LOCAL), ip(dst), 40000 + port % 10_000, port, SYN);
    // Through the cluster IP to the peer's 8080: allowed, and its replies come back from
    // the frontend, as the proxy rewrites them.
    assert_eq!(f.egress(&syn("10.96.0.10", 80)), ALLOW);
    assert_eq!(
        f.ingress(&Packet::tcp(
            ip("10.96.0.10"),
            ip(LOCAL),
            80,
            40080,
            SYN_ACK
        )),
        ALLOW
    );
    // The canonical "allow DNS to the kube-dns pods" policy allows DNS through its Service.
    let query = Packet::udp(ip(LOCAL), ip("10.96.0.53"), 40053, 53, b"q");
    assert_eq!(f.egress(&query), ALLOW);
    // The same Service on the node's address: a node port, decided the same way.
    assert_eq!(f.egress(&syn(NODE_IP, 30080)), ALLOW);
    // A port no Service has on a cluster IP leads nowhere.
    assert_eq!(f.egress(&syn("10.96.0.10", 81)), DROP);
    // Backends the policy does not all allow: the proxy picks after we decided.
    assert_eq!(f.egress(&syn("10.96.0.11", 80)), DROP);
    assert_eq!(
        f.dropped(Direction::Egress, DropReason::ServiceBackendsDiffer),
        1
    );
    // u/other's host port on this node: its backend (port 8080 of u/hostport) is not the peer.
    assert_eq!(f.egress(&syn(NODE_IP, 18080)), DROP);
    // Other ports of the node are the node's.
    assert_eq!(f.egress(&syn(NODE_IP, 22)), ALLOW);
    let events = f.datapath.drain_events();
    let allowed = events
        .iter()
        .filter(|e| e.verdict == Verdict::Allow as u8 && e.reason == AllowReason::Policy as u8)
        .count();
    assert_eq!(
        allowed, 3,
        "cluster IP, DNS and node port, by policy: {events:?}"
    );
}

#[test]
fn node_ports_and_ipvs_addresses_are_not_the_node() {
    // In IPVS mode every cluster IP is an address of the node (kube-ipvs0).
    let cluster = cluster(&format!(
        "{PODS}\n---\n{SERVICES}\n---\n{EGRESS_DENY_LOCAL}"
    ));
    let compiled = Compiler::new().compile(
        &cluster,
        &NodeConfig {
            name: NODE.into(),
            addresses: vec![ip(NODE_IP), ip("10.96.0.10"), ip("10.96.0.11")],
            ..NodeConfig::default()
        },
    );
    let mut datapath = test_datapath(PIN_PREFIX, TableSizes::default());
    datapath.sync(&compiled).unwrap();
    datapath
        .set_endpoint(
            LOOPBACK_IFINDEX,
            &compiled.endpoints[&ObjectRef::new("t", "local")],
        )
        .unwrap();
    let egress = |dst: &str, port| {
        let p = Packet::tcp(ip(LOCAL), ip(dst), 40000 + port % 10_000, port, SYN);
        datapath.test_run(programs::FROM_POD, &p.frame()).unwrap()
    };
    // Under egress deny-all: the Service on its cluster IP, any other port there, and the
    // node port on the node's own address are all denied.
    assert_eq!(egress("10.96.0.10", 80), DROP);
    assert_eq!(egress("10.96.0.10", 22), DROP);
    assert_eq!(egress(NODE_IP, 30080), DROP);
    // The node itself is still the node.
    assert_eq!(egress(NODE_IP, 10250), ALLOW);
    let denied: u64 = datapath
        .stats()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.reason == DropReason::PolicyDenied as u8)
        .map(|(_, v)| v.packets)
        .sum();
    assert_eq!(denied, 3, "denied by policy, not for another reason");
}

#[test]
fn a_pod_reaches_itself_through_its_service() {
    let f = Fixture::new(&format!("{SERVICES}\n---\n{DENY_ALL}"));
    // Out through its own Service, the only backend being itself...
    assert_eq!(
        f.egress(&Packet::tcp(ip(LOCAL), ip("10.96.0.12"), 40000, 80, SYN)),
        ALLOW
    );
    assert_eq!(f.allowed(Direction::Egress, AllowReason::Hairpin), 1);
    // ...and back in, masqueraded to the node's address by the proxy, through the very
    // interface it left by.
    let back = Packet::tcp(ip(NODE_IP), ip(LOCAL), 61000, 80, SYN).frame();
    let run = |arrival| {
        f.datapath
            .test_run_arriving(programs::TO_POD, &back, arrival)
            .unwrap()
    };
    assert_eq!(run(Arrival::Hairpin), ALLOW);
    assert_eq!(f.allowed(Direction::Ingress, AllowReason::Hairpin), 1);
    // The same packet forwarded from elsewhere is an outsider with the node's address.
    let other = Packet::tcp(ip(NODE_IP), ip(LOCAL), 61001, 80, SYN).frame();
    assert_eq!(
        f.datapath
            .test_run_arriving(programs::TO_POD, &other, Arrival::Forwarded)
            .unwrap(),
        DROP
    );
}
