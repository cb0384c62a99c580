//! Fragments: later fragments carry no ports, so they inherit those of their datagram's
//! first fragment, which passed the policy. A later fragment whose first fragment was not
//! allowed (or not seen) has nothing to inherit and cannot get past an isolated pod.
//!
//! The table is node-wide: a first fragment allowed anywhere on the node (say, leaving its
//! sender) teaches its datagram's ports; each endpoint still decides the later fragments
//! with those ports, by its own conntrack and policy.

use policy_common::maps::{FRAG_TIMEOUT_NS, FragKey, FragValue};

use crate::{maps::FRAGMENTS, packet::Flow};

#[inline(always)]
fn key(flow: &Flow) -> FragKey {
    FragKey {
        family: flow.family,
        proto: flow.proto,
        _pad: [0; 2],
        id: flow.frag_id,
        src: flow.src,
        dst: flow.dst,
    }
}

/// Records the ports of an allowed first fragment for the fragments that follow it.
#[inline(always)]
pub fn remember_first(flow: &Flow, now: u64) {
    let value = FragValue {
        seen_ns: now,
        src_port: flow.sport,
        dst_port: flow.dport,
        _pad: [0; 4],
    };
    // Best effort: if the map is full the LRU evicts, at worst a later fragment is dropped.
    let _ = FRAGMENTS.insert(key(flow), value, 0);
}

/// Gives a later fragment the ports of its first fragment; false if there is none.
#[inline(always)]
pub fn inherit_ports(flow: &mut Flow, now: u64) -> bool {
    let Some(first) = FRAGMENTS.get_ptr(key(flow)) else {
        return false;
    };
    // SAFETY: the pointer comes from a successful lookup and is only read here.
    let first = unsafe { *first };
    if now.saturating_sub(first.seen_ns) > FRAG_TIMEOUT_NS {
        return false;
    }
    flow.sport = first.src_port;
    flow.dport = first.dst_port;
    true
}
