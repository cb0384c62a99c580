//! IPv6: addresses, and the extension-header chain up to the upper-layer protocol.

use aya_ebpf::programs::TcContext;
use network_types::ip::Ipv6Hdr;
use policy_common::{
    net::{FAMILY_IPV6, proto},
    reason::DropReason,
};

use crate::{
    eth::ETH_HLEN,
    packet::{FRAG_FIRST, FRAG_LATER, Flow, load},
};

const VERSION: u8 = 6;
/// Extension headers walked before giving up. Real traffic has one or two; a longer chain
/// is how attackers push the L4 header out of a filter's sight (RFC 7112), so it fails closed.
const MAX_EXT_HEADERS: usize = 8;
const FRAG_OFFSET_SHIFT: u16 = 3;
const FRAG_MORE: u16 = 1;

/// Parses the IPv6 header and its extension headers.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Flow, DropReason> {
    let hdr: Ipv6Hdr = load(ctx, ETH_HLEN)?;
    let end = ETH_HLEN + Ipv6Hdr::LEN + usize::from(u16::from_be_bytes(hdr.payload_len));
    if hdr.vcf[0] >> 4 != VERSION || end > ctx.len() as usize {
        return Err(DropReason::Malformed);
    }

    let mut flow = Flow::new(FAMILY_IPV6, hdr.next_hdr, hdr.hop_limit, 0, end as u32);
    flow.src = hdr.src_addr;
    flow.dst = hdr.dst_addr;

    let mut off = ETH_HLEN + Ipv6Hdr::LEN;
    let mut next = hdr.next_hdr;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            proto::IPV6_HOP_BY_HOP | proto::IPV6_DEST_OPTS | proto::IPV6_ROUTING => {
                // [next header, length in 8-octet units beyond the first, type, segments left]
                let ext: [u8; 4] = load(ctx, off)?;
                // A routing header with segments left sends the packet on to an address
                // that is not its destination field: we cannot decide on it.
                if next == proto::IPV6_ROUTING && ext[3] != 0 {
                    return Err(DropReason::UnsupportedHeader);
                }
                next = ext[0];
                off += (usize::from(ext[1]) + 1) * 8;
            }
            proto::IPV6_AUTH => {
                // The AH length counts 4-octet units, minus two.
                let ext: [u8; 2] = load(ctx, off)?;
                next = ext[0];
                off += (usize::from(ext[1]) + 2) * 4;
            }
            proto::IPV6_FRAGMENT => {
                // [next header, reserved, offset(13) res(2) M(1), identification(32)]
                let ext: [u8; 8] = load(ctx, off)?;
                next = ext[0];
                off += ext.len();
                let offset_flags = u16::from_be_bytes([ext[2], ext[3]]);
                flow.frag_id = u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]);
                if offset_flags >> FRAG_OFFSET_SHIFT != 0 {
                    // Nothing after this header is an upper-layer header.
                    flow.frag = FRAG_LATER;
                    flow.proto = next;
                    flow.l4_off = off as u32;
                    return Ok(flow);
                }
                if offset_flags & FRAG_MORE != 0 {
                    flow.frag = FRAG_FIRST;
                }
            }
            _ => {
                flow.proto = next;
                flow.l4_off = off as u32;
                return Ok(flow);
            }
        }
    }
    Err(DropReason::UnsupportedHeader)
}
