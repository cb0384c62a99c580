//! The facts parsers extract from a packet, and the one way they read it.

use aya_ebpf::programs::TcContext;
use policy_common::reason::DropReason;

/// Not a fragment, or an atomic one.
pub const FRAG_NONE: u8 = 0;
/// First fragment: carries the L4 header, later ones do not.
pub const FRAG_FIRST: u8 = 1;
/// Non-first fragment: no L4 header, its ports come from the first fragment.
pub const FRAG_LATER: u8 = 2;

/// Not an ICMP echo message.
pub const ECHO_NONE: u8 = 0;
/// An ICMP echo request.
pub const ECHO_REQUEST: u8 = 1;
/// An ICMP echo reply.
pub const ECHO_REPLY: u8 = 2;

/// An IP packet as the decisions see it. Ports are in host byte order; for ICMP echo
/// messages both hold the echo identifier, and `echo` says request or reply.
#[derive(Clone, Copy)]
pub struct Flow {
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// Upper-layer protocol (after IPv6 extension headers).
    pub proto: u8,
    /// One of `FRAG_*`.
    pub frag: u8,
    /// TCP flags byte (TCP only).
    pub tcp_flags: u8,
    /// Type of the first chunk (SCTP only; 0 when the packet has none).
    pub sctp_chunk: u8,
    /// ICMP or ICMPv6 type (ICMP only).
    pub icmp_type: u8,
    /// ICMP or ICMPv6 code (ICMP only).
    pub icmp_code: u8,
    /// One of `ECHO_*`.
    pub echo: u8,
    /// TTL or hop limit.
    pub hop_limit: u8,
    /// Fragment identification (fragments only).
    pub frag_id: u32,
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: u32,
    /// Offset of the end of the IP payload (Ethernet padding may follow).
    pub l3_end: u32,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Source address (IPv4 in the first four bytes).
    pub src: [u8; 16],
    /// Destination address (IPv4 in the first four bytes).
    pub dst: [u8; 16],
}

impl Flow {
    /// A flow with only the network-layer fields known.
    #[inline(always)]
    pub const fn new(family: u8, proto: u8, hop_limit: u8, l4_off: u32, l3_end: u32) -> Self {
        Self {
            family,
            proto,
            frag: FRAG_NONE,
            tcp_flags: 0,
            sctp_chunk: 0,
            icmp_type: 0,
            icmp_code: 0,
            echo: ECHO_NONE,
            hop_limit,
            frag_id: 0,
            l4_off,
            l3_end,
            sport: 0,
            dport: 0,
            src: [0; 16],
            dst: [0; 16],
        }
    }
}

/// Reads a `T` at `offset` from the start of the frame with `bpf_skb_load_bytes`.
///
/// The helper checks bounds, also for non-linear skbs, so no parser does pointer
/// arithmetic that the verifier must follow, and a read past the end is simply a truncated
/// (malformed) packet. The headers every packet has go through [`read`] instead.
#[inline(always)]
pub fn load<T>(ctx: &TcContext, offset: usize) -> Result<T, DropReason> {
    ctx.load::<T>(offset).map_err(|_| DropReason::Malformed)
}

/// How far into the frame [`read`] reads the packet directly: past every header of an
/// ordinary packet (Ethernet, IPv4 with options, IPv6 with a few extension headers, TCP),
/// and small enough that the verifier can bound a pointer at a variable offset.
const DIRECT_READ_LIMIT: usize = 512;

/// Reads a `T` at `offset`, as [`load`] does, but straight from the packet when it lies in
/// the skb's linear part: the headers of every packet of a connection are read this way,
/// and one bounds check costs less than a helper call. A header beyond the linear part
/// (or beyond [`DIRECT_READ_LIMIT`]) goes through the helper, so the outcome is the same.
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Result<T, DropReason> {
    let start = ctx.data();
    if offset < DIRECT_READ_LIMIT && start + offset + size_of::<T>() <= ctx.data_end() {
        // SAFETY: the bytes lie between `data` and `data_end`, checked just above (the
        // verifier checks it again); `read_unaligned` needs no alignment.
        return Ok(unsafe { core::ptr::read_unaligned((start + offset) as *const T) });
    }
    load(ctx, offset)
}

/// The skb's GSO segment size: non-zero for a GSO packet, which may be larger than what its
/// IP header's length field can say.
#[inline(always)]
pub fn gso_size(ctx: &TcContext) -> u32 {
    // SAFETY: the program's context pointer; gso_size is readable in TC programs.
    unsafe { (*ctx.skb.skb).gso_size }
}
