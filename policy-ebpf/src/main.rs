//! NetworkPolicy enforcement on pods' host-side interfaces.
//!
//! `from_pod` runs on the TCX ingress hook of a pod's host-side veth (packets the pod sends),
//! `to_pod` on its TCX egress hook (packets delivered to the pod). Both run the pipeline in
//! [`enforce`]; one module per concern, as in Cilium's bpf/lib.
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod enforce;
mod eth;
mod events;
mod fib;
mod icmp;
mod ipcache;
mod ipfrag;
mod ipv4;
mod ipv6;
mod l4;
mod maps;
mod metrics;
mod packet;
mod policy;
mod scratch;

use aya_ebpf::{macros::classifier, programs::TcContext};
use policy_common::{maps::Direction, reason::TC_ACT_OK};

/// Packets leaving the pod: its egress policy, and anti-spoofing.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    enforce::enforce(&ctx, Direction::Egress)
}

/// Packets entering the pod: its ingress policy.
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    enforce::enforce(&ctx, Direction::Ingress)
}

/// An empty program: the baseline that per-packet benchmarks subtract.
#[classifier]
pub fn bench_baseline(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
