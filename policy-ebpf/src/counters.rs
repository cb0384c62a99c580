//! Per-endpoint counters of what the agent cannot see cheaply: keys created in the
//! endpoint's tables (their fill, without walking them) and flow records lost.

use aya_ebpf::bindings::BPF_NOEXIST;
use policy_common::maps::EndpointCounters;

use crate::maps::COUNTERS;

/// An endpoint's first counters, inserted from read-only data: the programs' stack has no
/// room left for another value.
static ZERO: EndpointCounters = EndpointCounters {
    conntrack_created: 0,
    fragments_created: 0,
    events_lost: 0,
};

/// Which counter of [`EndpointCounters`].
#[derive(Clone, Copy)]
pub enum Counter {
    /// A key created in the conntrack table.
    ConntrackCreated,
    /// A key created in the fragment table.
    FragmentsCreated,
    /// A flow record the ring buffer had no room for.
    EventLost,
}

/// Adds one to `counter` of `endpoint_id` (on this CPU: no other CPU writes it).
#[inline(always)]
pub fn bump(endpoint_id: u32, counter: Counter) {
    let value = match COUNTERS.get_ptr_mut(endpoint_id) {
        Some(value) => value,
        None => {
            // Raced by another CPU's first: its entry is as good. Full (more ids than
            // endpoints): the count is missed, and the agent's fill figure is one low.
            // By reference on purpose: by value, the helper would get a copy on the stack.
            #[allow(clippy::needless_borrows_for_generic_args)]
            let _ = COUNTERS.insert(endpoint_id, &ZERO, u64::from(BPF_NOEXIST));
            match COUNTERS.get_ptr_mut(endpoint_id) {
                Some(value) => value,
                None => return,
            }
        }
    };
    // SAFETY: per-CPU value of a successful lookup; no other CPU writes it.
    let value = unsafe { &mut *value };
    match counter {
        Counter::ConntrackCreated => value.conntrack_created += 1,
        Counter::FragmentsCreated => value.fragments_created += 1,
        Counter::EventLost => value.events_lost += 1,
    }
}
