//! Per-CPU room for the packet's facts: the BPF stack holds 512 bytes, and the decision
//! pipeline, inlined into one function, needs most of them for its keys, helper buffers and
//! spilled registers. The flows live here instead.
//!
//! One slot per CPU is enough: TC programs run with bottom halves disabled (also on
//! PREEMPT_RT, where that holds a per-CPU lock), so on one CPU a program runs to its end
//! before the next starts, and every run overwrites the slot before reading it.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};

use crate::packet::Flow;

/// What one run keeps outside the stack.
pub struct Scratch {
    /// The packet's own flow.
    pub flow: Flow,
    /// The packet an ICMP error quotes.
    pub quoted: Flow,
}

/// The only slot of [`SCRATCH`].
const SLOT: u32 = 0;

/// This CPU's [`Scratch`]; not pinned: nothing outside a run reads it.
#[btf_map]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// This CPU's scratch space, its flows reset to "nothing parsed yet". `None` cannot
/// happen (the slot exists from the map's creation); callers fail closed anyway.
#[inline(always)]
pub fn get() -> Option<&'static mut Scratch> {
    let slot = SCRATCH.get_ptr_mut(SLOT)?;
    // SAFETY: a successful lookup of this CPU's slot, which no other run uses while this
    // one runs (see the module's comment).
    let scratch = unsafe { &mut *slot };
    scratch.flow = Flow::new(0, 0, 0, 0, 0);
    Some(scratch)
}
