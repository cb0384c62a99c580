//! Fragments: later fragments carry no upper-layer header, so they inherit the protocol and
//! ports of their datagram's first fragment, which passed the policy. A later fragment whose
//! first fragment was not allowed (or not seen) has nothing to inherit and cannot get past
//! an isolated pod.
//!
//! Each endpoint keeps its own table (see `maps::FRAGMENTS`), filled by the first fragments
//! it allowed itself: both ends of a node-local datagram decide it with their own policy.

use aya_ebpf::bindings::BPF_NOEXIST;
use policy_common::{
    maps::{EndpointInfo, FRAG_TIMEOUT_NS, FragKey, FragValue},
    net::FAMILY_IPV4,
};

use crate::{
    counters::{self, Counter},
    maps::{FRAGMENTS, FragmentTable},
    packet::Flow,
};

#[inline(always)]
fn table(endpoint_id: u32) -> Option<&'static FragmentTable> {
    // SAFETY: the value is a map; the kernel keeps a table a program looked up alive until
    // the program is done with it, even if the agent removes it meanwhile.
    unsafe { FRAGMENTS.get(&endpoint_id) }
}

/// What every fragment of the datagram carries alike (RFC 791, RFC 8200), in the table
/// of the endpoint's `generation` of its id.
#[inline(always)]
fn key(generation: u32, flow: &Flow) -> FragKey {
    FragKey {
        generation,
        family: flow.family,
        // IPv6 fragments agree only on the Fragment header's identification: what follows
        // it differs between the first fragment and the others.
        proto: if flow.family == FAMILY_IPV4 {
            flow.proto
        } else {
            0
        },
        _pad: [0; 2],
        id: flow.frag_id,
        src: flow.src,
        dst: flow.dst,
    }
}

/// Records the protocol and ports of an allowed first fragment for the fragments that
/// follow it.
#[inline(always)]
pub fn remember_first(ep: &EndpointInfo, flow: &Flow, now: u64) {
    let Some(table) = table(ep.endpoint_id) else {
        return;
    };
    let value = FragValue {
        seen_ns: now,
        src_port: flow.sport,
        dst_port: flow.dport,
        proto: flow.proto,
        icmp_type: flow.icmp_type,
        _pad: [0; 2],
    };
    // If the table is full the LRU evicts the endpoint's own oldest datagram; at worst one
    // of its later fragments is then dropped.
    let key = key(ep.generation, flow);
    // New keys are counted for the agent's fill figure (see `conntrack::create`).
    if table.insert(key, value, u64::from(BPF_NOEXIST)).is_ok() {
        counters::bump(ep.endpoint_id, Counter::FragmentsCreated);
    } else {
        let _ = table.insert(key, value, 0);
    }
}

/// Gives a later fragment the protocol, ports and ICMP type of its first fragment; false if
/// there is none.
#[inline(always)]
pub fn inherit(ep: &EndpointInfo, flow: &mut Flow, now: u64) -> bool {
    let Some(first) = table(ep.endpoint_id).and_then(|t| t.get_ptr(key(ep.generation, flow)))
    else {
        return false;
    };
    // SAFETY: the pointer comes from a successful lookup and is only read here.
    let first = unsafe { *first };
    if now.saturating_sub(first.seen_ns) > FRAG_TIMEOUT_NS {
        return false;
    }
    flow.proto = first.proto;
    flow.icmp_type = first.icmp_type;
    flow.sport = first.src_port;
    flow.dport = first.dst_port;
    true
}
