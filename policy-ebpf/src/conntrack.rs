//! Connection tracking: the first packet of a flow is decided by policy, every later packet
//! in either direction by the entry it created. Every endpoint has its own table (see
//! `maps::CONNTRACK`), so the two pods of a node-local connection each keep their own
//! verdict, and no pod's flows can push another pod's connections out.

use policy_common::{
    maps::{
        CT_ECHO_PEER_ASKED, CT_ECHO_POD_ASKED, CT_FIN_FROM_POD, CT_FIN_TO_POD, CT_REPLY_SEEN,
        CT_RST, CtEntry, CtKey, Direction, ct_timeout,
    },
    net::{proto, sctp},
};

use aya_ebpf::bindings::BPF_NOEXIST;

use crate::{
    counters::{self, Counter},
    l4::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maps::{CONNTRACK, ConntrackTable},
    packet::{ECHO_NONE, ECHO_REQUEST, Flow},
};

/// An endpoint's table. The agent creates it before the endpoint entry that makes the
/// programs act for the endpoint, so it is missing only for an unknown endpoint. A decision
/// looks it up once and hands it to [`track`], [`create`] and [`is_tracked`]: a new flow
/// needs it twice, and each lookup is a hash of the id.
#[inline(always)]
pub fn table(endpoint_id: u32) -> Option<&'static ConntrackTable> {
    // SAFETY: the value is a map; the kernel keeps a table a program looked up alive until
    // the program is done with it, even if the agent removes it meanwhile.
    unsafe { CONNTRACK.get(&endpoint_id) }
}

/// The flow's key from the endpoint's point of view (the endpoint's `generation` of its
/// id): the same for both directions.
#[inline(always)]
pub fn key(generation: u32, dir: Direction, flow: &Flow) -> CtKey {
    let (local_addr, remote_addr, local_port, remote_port) = match dir {
        Direction::Egress => (flow.src, flow.dst, flow.sport, flow.dport),
        Direction::Ingress => (flow.dst, flow.src, flow.dport, flow.sport),
    };
    // A request leaving the pod, or a reply entering it, belongs to the pod's ping.
    let pod_asked = (flow.echo == ECHO_REQUEST) == (dir == Direction::Egress);
    CtKey {
        generation,
        local_addr,
        remote_addr,
        local_port,
        remote_port,
        family: flow.family,
        proto: flow.proto,
        echo: match flow.echo {
            ECHO_NONE => 0,
            _ if pod_asked => CT_ECHO_POD_ASKED,
            _ => CT_ECHO_PEER_ASKED,
        },
        _pad: 0,
    }
}

/// Whether the packet starts a TCP connection (a SYN without ACK).
#[inline(always)]
pub const fn is_tcp_start(flow: &Flow) -> bool {
    flow.proto == proto::TCP && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether the packet starts an SCTP association (an INIT chunk). Unlike a SYN, an INIT
/// is never part of a tracked association: on the ports of one it is a restart, which is a
/// new association that the policy of now decides.
#[inline(always)]
pub const fn is_sctp_start(flow: &Flow) -> bool {
    flow.proto == proto::SCTP && flow.sctp_chunk == sctp::CHUNK_INIT
}

/// Connection-state bits a TCP packet sets.
#[inline(always)]
fn tcp_state_bits(dir: Direction, flow: &Flow) -> u8 {
    if flow.proto != proto::TCP {
        return 0;
    }
    let mut bits = 0;
    if flow.tcp_flags & TCP_FIN != 0 {
        bits |= match dir {
            Direction::Egress => CT_FIN_FROM_POD,
            Direction::Ingress => CT_FIN_TO_POD,
        };
    }
    if flow.tcp_flags & TCP_RST != 0 {
        bits |= CT_RST;
    }
    bits
}

/// Whether the packet belongs to a live tracked connection of the endpoint; refreshes the
/// entry if so.
///
/// An expired entry does not count, and neither does a closed TCP connection that a new
/// SYN reopens on the same ports, nor any SCTP INIT: that is a new connection and the
/// policy decides it again.
#[inline(always)]
pub fn track(
    table: Option<&ConntrackTable>,
    key: &CtKey,
    dir: Direction,
    flow: &Flow,
    now: u64,
) -> bool {
    let Some(entry) = table.and_then(|t| t.get_ptr_mut(key)) else {
        return false;
    };
    // SAFETY: the pointer comes from a successful lookup; concurrent updates of the same
    // entry from another CPU can at worst lose a refresh, as in any BPF conntrack.
    let entry = unsafe { &mut *entry };
    if entry.is_expired(flow.proto, now) {
        return false;
    }
    if (is_tcp_start(flow) && entry.is_closing()) || is_sctp_start(flow) {
        return false;
    }
    let mut flags = entry.flags | tcp_state_bits(dir, flow);
    if dir as u8 != entry.origin {
        flags |= CT_REPLY_SEEN;
    }
    if flags != entry.flags || now.saturating_sub(entry.last_seen_ns) > ct_timeout::REFRESH_NS {
        entry.flags = flags;
        entry.last_seen_ns = now;
    }
    true
}

/// Whether the endpoint tracks a live connection with this key (for ICMP errors about it).
#[inline(always)]
pub fn is_tracked(table: Option<&ConntrackTable>, key: &CtKey, proto: u8, now: u64) -> bool {
    match table.and_then(|t| t.get_ptr(key)) {
        // SAFETY: the pointer comes from a successful lookup and is only read here.
        Some(entry) => !unsafe { &*entry }.is_expired(proto, now),
        None => false,
    }
}

/// Starts tracking a flow whose first packet was allowed, in `table`, the table of
/// `endpoint_id`.
#[inline(always)]
pub fn create(
    table: Option<&ConntrackTable>,
    endpoint_id: u32,
    key: &CtKey,
    dir: Direction,
    flow: &Flow,
    policy_id: u32,
    now: u64,
) {
    let Some(table) = table else {
        return;
    };
    let entry = CtEntry {
        last_seen_ns: now,
        created_ns: now,
        policy_id,
        origin: dir as u8,
        flags: tcp_state_bits(dir, flow),
        _pad: [0; 2],
    };
    // A full table evicts the endpoint's own least recently used entry; if that was a live
    // connection, its next packet is reported (`DropReason::UnknownConnection`). A new key
    // is counted (the agent's fill figure); an existing one (an expired or closed
    // connection opened again) is overwritten and was counted when it was made.
    if table.insert(key, entry, u64::from(BPF_NOEXIST)).is_ok() {
        counters::bump(endpoint_id, Counter::ConntrackCreated);
    } else {
        let _ = table.insert(key, entry, 0);
    }
}
