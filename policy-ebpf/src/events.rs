//! Flow records for user space: every drop, and the first packet of every allowed flow.

use policy_common::{event::FlowEvent, maps::Direction};

use crate::{enforce::Decision, maps::EVENTS, packet::Flow};

/// Writes a record to the ring buffer; if it is full the record is lost (the counters in
/// STATS still see the packet).
#[inline(always)]
pub fn report(
    ifindex: u32,
    endpoint_id: u32,
    dir: Direction,
    decision: &Decision,
    flow: &Flow,
    len: u32,
    now: u64,
) {
    if cfg!(feature = "bench-no-records") {
        return;
    }
    let Some(mut entry) = EVENTS.reserve(0) else {
        return;
    };
    let (local_addr, remote_addr, local_port, remote_port) = match dir {
        Direction::Egress => (flow.src, flow.dst, flow.sport, flow.dport),
        Direction::Ingress => (flow.dst, flow.src, flow.dport, flow.sport),
    };
    entry.write(FlowEvent {
        timestamp_ns: now,
        endpoint_id,
        policy_id: decision.policy_id,
        ifindex,
        packet_len: len,
        remote_identity: decision.remote_identity,
        local_addr,
        remote_addr,
        local_port,
        remote_port,
        family: flow.family,
        proto: flow.proto,
        direction: dir as u8,
        verdict: decision.verdict as u8,
        reason: decision.reason,
        _pad: [0; 3],
    });
    entry.submit(0);
}
