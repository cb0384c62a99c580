//! IPv4: addresses, protocol, fragments; options are skipped via the header length.

use aya_ebpf::programs::TcContext;
use network_types::ip::Ipv4Hdr;
use policy_common::{net::FAMILY_IPV4, reason::DropReason};

use crate::{
    eth::ETH_HLEN,
    packet::{FRAG_FIRST, FRAG_LATER, FRAG_NONE, Flow, gso_size, read},
};

const VERSION: u8 = 4;
const FRAG_OFFSET_MASK: u16 = 0x1fff;
const FRAG_MORE: u16 = 0x2000;

/// Parses the IPv4 header that follows the Ethernet header, options included, into `flow`
/// (filled in place: a `Flow` returned by value would be one more copy on the stack).
#[inline(always)]
pub fn parse(ctx: &TcContext, flow: &mut Flow) -> Result<(), DropReason> {
    let hdr: Ipv4Hdr = read(ctx, ETH_HLEN)?;
    let ihl = usize::from(hdr.vihl & 0x0f) * 4;
    let mut total = usize::from(u16::from_be_bytes(hdr.tot_len));
    // BIG TCP: a GSO packet larger than 64 KiB says 0 and means the whole skb.
    if total == 0 && gso_size(ctx) != 0 {
        total = ctx.len() as usize - ETH_HLEN;
    }
    // A header that lies about its own size could hide the L4 header from us.
    if hdr.vihl >> 4 != VERSION
        || ihl < Ipv4Hdr::LEN
        || total < ihl
        || ETH_HLEN + total > ctx.len() as usize
    {
        return Err(DropReason::Malformed);
    }
    *flow = Flow::new(
        FAMILY_IPV4,
        hdr.proto,
        hdr.ttl,
        (ETH_HLEN + ihl) as u32,
        (ETH_HLEN + total) as u32,
    );
    flow.src[..4].copy_from_slice(&hdr.src_addr);
    flow.dst[..4].copy_from_slice(&hdr.dst_addr);

    let frags = u16::from_be_bytes(hdr.frags);
    if frags & FRAG_OFFSET_MASK != 0 {
        flow.frag = FRAG_LATER;
    } else if frags & FRAG_MORE != 0 {
        flow.frag = FRAG_FIRST;
    }
    if flow.frag != FRAG_NONE {
        flow.frag_id = u32::from(u16::from_be_bytes(hdr.id));
    }
    Ok(())
}
