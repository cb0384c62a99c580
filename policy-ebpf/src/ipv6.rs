//! IPv6: the fixed header (addresses first, so that anti-spoofing never depends on the
//! rest), then the extension-header chain up to the upper-layer protocol.

use aya_ebpf::programs::TcContext;
use network_types::ip::Ipv6Hdr;
use policy_common::{
    net::{FAMILY_IPV6, proto},
    reason::DropReason,
};

use crate::{
    eth::ETH_HLEN,
    packet::{FRAG_FIRST, FRAG_LATER, Flow, gso_size, load, read},
};

const VERSION: u8 = 6;
/// Extension headers walked before giving up. Real traffic has one or two; a longer chain
/// is how attackers push the L4 header out of a filter's sight (RFC 7112), so it fails closed.
const MAX_EXT_HEADERS: usize = 8;
const FRAG_OFFSET_SHIFT: u16 = 3;
const FRAG_MORE: u16 = 1;

/// Parses the fixed IPv6 header: addresses, hop limit, the first next-header value and
/// where the payload ends, into `flow` (in place, as `ipv4::parse`). [`extensions`] finds
/// the upper-layer protocol.
#[inline(always)]
pub fn parse(ctx: &TcContext, flow: &mut Flow) -> Result<(), DropReason> {
    let hdr: Ipv6Hdr = read(ctx, ETH_HLEN)?;
    let payload_len = u16::from_be_bytes(hdr.payload_len);
    let mut end = ETH_HLEN + Ipv6Hdr::LEN + usize::from(payload_len);
    // BIG TCP: a GSO packet larger than 64 KiB says 0 and means the whole skb.
    if payload_len == 0 && gso_size(ctx) != 0 {
        end = ctx.len() as usize;
    }
    if hdr.vcf[0] >> 4 != VERSION || end > ctx.len() as usize {
        return Err(DropReason::Malformed);
    }

    *flow = Flow::new(
        FAMILY_IPV6,
        hdr.next_hdr,
        hdr.hop_limit,
        (ETH_HLEN + Ipv6Hdr::LEN) as u32,
        end as u32,
    );
    flow.src = hdr.src_addr;
    flow.dst = hdr.dst_addr;
    Ok(())
}

/// Walks the extension headers from `flow.l4_off` and leaves `flow.proto` and `flow.l4_off`
/// at the upper-layer header. Every header must lie within the payload (`flow.l3_end`).
#[inline(always)]
pub fn extensions(ctx: &TcContext, flow: &mut Flow) -> Result<(), DropReason> {
    let mut off = flow.l4_off as usize;
    let mut next = flow.proto;
    let end = flow.l3_end as usize;
    let mut fragmented = false;
    // One step per extension header, and one more to reach the upper-layer header.
    for _ in 0..=MAX_EXT_HEADERS {
        let len = match next {
            proto::IPV6_HOP_BY_HOP | proto::IPV6_DEST_OPTS | proto::IPV6_ROUTING => {
                // [next header, length in 8-octet units beyond the first, type, segments left]
                let ext: [u8; 4] = load(ctx, off)?;
                // A routing header with segments left sends the packet on to an address
                // that is not its destination field: we cannot decide on it.
                if next == proto::IPV6_ROUTING && ext[3] != 0 {
                    return Err(DropReason::UnsupportedHeader);
                }
                next = ext[0];
                (usize::from(ext[1]) + 1) * 8
            }
            proto::IPV6_AUTH => {
                // The AH length counts 4-octet units, minus two.
                let ext: [u8; 2] = load(ctx, off)?;
                next = ext[0];
                (usize::from(ext[1]) + 2) * 4
            }
            proto::IPV6_FRAGMENT => {
                // A datagram is fragmented once; a second Fragment header would give its
                // fragments two identities.
                if fragmented {
                    return Err(DropReason::UnsupportedHeader);
                }
                fragmented = true;
                // [next header, reserved, offset(13) res(2) M(1), identification(32)]
                let ext: [u8; 8] = load(ctx, off)?;
                next = ext[0];
                let offset_flags = u16::from_be_bytes([ext[2], ext[3]]);
                flow.frag_id = u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]);
                if offset_flags >> FRAG_OFFSET_SHIFT != 0 {
                    // Nothing after this header is a header: a later fragment's upper-layer
                    // protocol and ports are its first fragment's (see `ipfrag`).
                    if off + ext.len() > end {
                        return Err(DropReason::Malformed);
                    }
                    flow.frag = FRAG_LATER;
                    flow.proto = next;
                    flow.l4_off = (off + ext.len()) as u32;
                    return Ok(());
                }
                if offset_flags & FRAG_MORE != 0 {
                    flow.frag = FRAG_FIRST;
                }
                ext.len()
            }
            _ => {
                flow.proto = next;
                flow.l4_off = off as u32;
                return Ok(());
            }
        };
        off += len;
        if off > end {
            return Err(DropReason::Malformed);
        }
    }
    Err(DropReason::UnsupportedHeader)
}
