//! Flow records for user space: every drop, and the first packet of every allowed flow.
//!
//! The agent is not woken for every record: a record is submitted without a wakeup unless
//! it makes the records waiting cross a multiple of [`WAKEUP_BYTES`] (the agent also drains
//! the ring buffer on a short timer), so a burst of new connections costs the agent one
//! wakeup per batch instead of one per record. Only the crossing wakes: a forced wakeup
//! queues the kernel's irq_work (a self-interrupt, dear in a VM), and forcing one for every
//! record while a batch waits cost each record microseconds. A record the ring buffer has
//! no room for is counted in COUNTERS.

use core::ptr;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_ringbuf_query,
};
use policy_common::{
    event::{FlowEvent, RINGBUF_HEADER_BYTES, WAKEUP_BYTES},
    maps::Direction,
};

use crate::{
    counters::{self, Counter},
    enforce::Decision,
    maps::EVENTS,
    packet::Flow,
};

/// What one record takes in the ring buffer.
const RECORD_BYTES: u64 = size_of::<FlowEvent>() as u64 + RINGBUF_HEADER_BYTES as u64;

/// Writes a record to the ring buffer; if it is full the record is lost and counted (the
/// counters in STATS still see the packet).
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
        counters::bump(endpoint_id, Counter::EventLost);
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
    // Bytes not yet consumed, this record included (it is reserved, so counted).
    // SAFETY: EVENTS is a ring buffer map; the helper only reads its positions.
    let waiting = unsafe {
        bpf_ringbuf_query(
            ptr::from_ref(&EVENTS).cast_mut().cast(),
            u64::from(BPF_RB_AVAIL_DATA),
        )
    };
    // Records reserved on other CPUs meanwhile can hide a crossing; the agent's timer
    // collects what a missed wakeup leaves, and the next crossing wakes it.
    let before = waiting.saturating_sub(RECORD_BYTES);
    let wakeup = if waiting / u64::from(WAKEUP_BYTES) != before / u64::from(WAKEUP_BYTES) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(wakeup));
}
