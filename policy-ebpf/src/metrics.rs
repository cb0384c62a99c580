//! Per-endpoint packet and byte counters by direction, verdict and reason.

use aya_ebpf::bindings::BPF_NOEXIST;
use policy_common::maps::{Direction, StatsKey, StatsValue};

use crate::{enforce::Decision, maps::STATS};

/// Counts one packet of `len` bytes.
#[inline(always)]
pub fn count(endpoint_id: u32, dir: Direction, decision: &Decision, len: u32) {
    if cfg!(feature = "bench-no-stats") {
        return;
    }
    let key = StatsKey {
        endpoint_id,
        direction: dir as u8,
        verdict: decision.verdict as u8,
        reason: decision.reason,
        _pad: 0,
    };
    match STATS.get_ptr_mut(key) {
        Some(value) => {
            // SAFETY: per-CPU value of a successful lookup; no other CPU writes it.
            let value = unsafe { &mut *value };
            value.packets += 1;
            value.bytes += u64::from(len);
        }
        None => {
            let first = StatsValue {
                packets: 1,
                bytes: u64::from(len),
            };
            let _ = STATS.insert(key, first, u64::from(BPF_NOEXIST));
        }
    }
}
