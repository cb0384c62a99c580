//! ICMP specifics: neighbour discovery, and the packet an ICMP error quotes.

use aya_ebpf::programs::TcContext;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use policy_common::{
    net::{FAMILY_IPV4, FAMILY_IPV6, icmpv6, proto},
    reason::DropReason,
};

use crate::{
    l4,
    packet::{Flow, load},
};

/// ICMP header bytes before the quoted packet.
const QUOTE_OFF: usize = 8;
/// Neighbour discovery is only valid with this hop limit (RFC 4861 §6.1): it proves the
/// packet was not forwarded, so it cannot have come from beyond the link.
const ND_HOP_LIMIT: u8 = 255;
/// Multicast listener discovery is sent with this hop limit (RFC 3810 §5), so no router
/// forwards it off the link.
const MLD_HOP_LIMIT: u8 = 1;

/// Whether the packet is IPv6 link control (neighbour discovery, multicast listener
/// discovery) that never crossed, and will never cross, a router. Such packets use
/// link-local or unspecified sources and carry nothing a policy could be about.
#[inline(always)]
pub fn is_link_control(flow: &Flow) -> bool {
    flow.family == FAMILY_IPV6
        && flow.proto == proto::ICMPV6
        && ((icmpv6::is_neighbour_discovery(flow.icmp_type) && flow.hop_limit == ND_HOP_LIMIT)
            || (icmpv6::is_multicast_listener(flow.icmp_type) && flow.hop_limit == MLD_HOP_LIMIT))
}

/// The packet an ICMP error reports on, as quoted in its payload: addresses, protocol and
/// ports (or echo identifier). It travelled in the opposite direction of the error.
#[inline(always)]
pub fn quoted_flow(ctx: &TcContext, error: &Flow) -> Result<Flow, DropReason> {
    let off = error.l4_off as usize + QUOTE_OFF;
    let mut inner = if error.family == FAMILY_IPV4 {
        let hdr: Ipv4Hdr = load(ctx, off)?;
        let ihl = usize::from(hdr.vihl & 0x0f) * 4;
        if ihl < Ipv4Hdr::LEN {
            return Err(DropReason::Malformed);
        }
        let mut inner = Flow::new(FAMILY_IPV4, hdr.proto, hdr.ttl, (off + ihl) as u32, 0);
        inner.src[..4].copy_from_slice(&hdr.src_addr);
        inner.dst[..4].copy_from_slice(&hdr.dst_addr);
        inner
    } else {
        // Quoted extension headers are not walked: such an error is not matched to a
        // connection and falls back to the policy for ICMP.
        let hdr: Ipv6Hdr = load(ctx, off)?;
        let mut inner = Flow::new(
            FAMILY_IPV6,
            hdr.next_hdr,
            hdr.hop_limit,
            (off + Ipv6Hdr::LEN) as u32,
            0,
        );
        inner.src = hdr.src_addr;
        inner.dst = hdr.dst_addr;
        inner
    };
    l4::parse_quoted(ctx, &mut inner)?;
    Ok(inner)
}
