//! The node's routes, as the kernel's FIB answers them from a TC program.

use aya_ebpf::{
    EbpfContext as _, bindings::bpf_fib_lookup, helpers::generated, programs::TcContext,
};

/// `AF_INET6`.
const AF_INET6: u8 = 10;
/// `BPF_FIB_LOOKUP_SKIP_NEIGH`: the route is all we need, not the neighbour's address.
const SKIP_NEIGH: u32 = 1 << 2;
/// `BPF_FIB_LKUP_RET_SUCCESS`.
const SUCCESS: i64 = 0;

/// Whether the node reaches `dst` directly (no gateway) through the interface it reaches
/// `own` (the pod's address) through: `dst` is on the pod's link. On a bridge both go out
/// the bridge; with a routed veth each pod's address has its own veth, and nothing else is
/// on the pod's link.
#[inline(always)]
pub fn on_same_link_v6(ctx: &TcContext, own: &[u8; 16], dst: &[u8; 16]) -> bool {
    let Some((own_if, _)) = route_v6(ctx, own) else {
        return false;
    };
    matches!(route_v6(ctx, dst), Some((dst_if, true)) if dst_if == own_if)
}

/// The interface the node forwards a packet to `dst` through, coming in on the packet's
/// interface, and whether it goes straight to `dst` (no gateway).
#[inline(always)]
fn route_v6(ctx: &TcContext, dst: &[u8; 16]) -> Option<(u32, bool)> {
    // SAFETY: a plain C struct, for which all zeroes is a valid (empty) query.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET6;
    // SAFETY: the program's context pointer; ifindex is readable in TC programs.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let words = words(dst);
    params.__bindgen_anon_4.ipv6_dst = words;
    // SAFETY: `params` is a valid, initialised lookup of the size passed.
    let ret = unsafe {
        generated::bpf_fib_lookup(
            ctx.as_ptr(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            SKIP_NEIGH,
        )
    };
    if ret != SUCCESS {
        return None;
    }
    // A gateway replaces the destination with itself.
    // SAFETY: the union holds the IPv6 form, as written above and by the kernel.
    let direct = unsafe { params.__bindgen_anon_4.ipv6_dst } == words;
    Some((params.ifindex, direct))
}

/// An address as the lookup's `u32` words, in the same (network) byte order.
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    for (i, word) in out.iter_mut().enumerate() {
        *word = u32::from_ne_bytes([
            addr[4 * i],
            addr[4 * i + 1],
            addr[4 * i + 2],
            addr[4 * i + 3],
        ]);
    }
    out
}
