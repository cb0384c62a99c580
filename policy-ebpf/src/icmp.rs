//! ICMP specifics: neighbour and multicast listener discovery, and the packet an ICMP error
//! quotes.

use aya_ebpf::programs::TcContext;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use policy_common::{
    maps::{Direction, EP_HAS_IPV6, EndpointInfo, IDENTITY_HOST, IpKey},
    net::{
        FAMILY_IPV4, FAMILY_IPV6,
        icmpv6::{self, MLD_HOP_LIMIT, ND_HOP_LIMIT},
        ipv6 as scope, proto,
    },
    reason::DropReason,
};

use crate::{
    eth::ETH_HLEN,
    fib, ipcache, ipv6, l4,
    packet::{FRAG_LATER, FRAG_NONE, Flow, load},
};

/// ICMP header bytes before the quoted packet.
const QUOTE_OFF: usize = 8;
/// Where a neighbour solicitation or advertisement names its target (RFC 4861 §4.3, §4.4).
const ND_TARGET_OFF: usize = 8;
/// An IPv6 address.
const ND_TARGET_LEN: usize = 16;
/// The reserved field (an advertisement's flags) after type, code and checksum.
const ND_RESERVED_OFF: usize = 4;
/// The bits of an advertisement's flags field that are reserved (all but R, S, O).
const NA_RESERVED_MASK: u32 = 0x1fff_ffff;
/// A router solicitation without options (RFC 4861 §4.1).
const RS_LEN: usize = 8;
/// A neighbour solicitation without options (§4.3).
const NS_LEN: usize = 24;
/// A neighbour advertisement without options (§4.4).
const NA_LEN: usize = 24;
/// Every option a solicitation or advertisement may carry is 8 bytes on Ethernet: a
/// link-layer address (§4.6.1), or a 6-byte nonce (RFC 3971 §5.3.2, as RFC 7527 sends it).
const ND_OPT_LEN: usize = 8;
/// The most options a message may carry: a solicitation's source link-layer address and
/// nonce.
const ND_MAX_OPTIONS: usize = 2;
/// Where the fixed IPv6 header names its first next header.
const IPV6_NEXT_HEADER_OFF: usize = 6;
/// The Hop-by-Hop header MLD is sent with (RFC 2710 §3): ICMPv6 next, length 0, Router
/// Alert (type 5, length 2, value 0: MLD), PadN of no data.
const MLD_HBH: [u8; 8] = [proto::ICMPV6, 0, 5, 2, 0, 0, 1, 0];
/// MLDv1 query, report and done (RFC 2710 §3); also an MLDv1 query as MLDv2 reads it.
const MLD1_LEN: usize = 24;
/// An MLDv2 query without sources (RFC 3810 §5.1).
const MLD2_QUERY_LEN: usize = 28;
/// Where an MLDv2 query says how many sources follow.
const MLD2_QUERY_SOURCES_OFF: usize = 26;
/// An MLDv2 report's header: type, code, checksum, reserved, number of records (§5.2).
const MLD2_REPORT_HDR_LEN: usize = 8;
/// Where an MLDv2 report says how many records follow.
const MLD2_RECORDS_OFF: usize = 6;
/// A multicast address record without sources: type, aux length, sources, address.
const MLD2_RECORD_LEN: usize = 20;
/// MLDv2 record types (§5.2.12): mode is include or exclude, changes to either, allow or
/// block sources.
const MLD2_RECORD_TYPES: core::ops::RangeInclusive<u8> = 1..=6;
/// Records in one MLDv2 report: a pod listens to a few groups (its solicited-node groups,
/// what its applications join); a report with more is dropped rather than walked.
const MLD2_MAX_RECORDS: usize = 16;
/// Sources in one MLDv2 message, over all its records (source-specific joins are rare in
/// pods, and each source is 16 bytes of the sender's choosing).
const MLD2_MAX_SOURCES: usize = 16;

/// What a packet is as IPv6 link control.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LinkControl {
    /// Not neighbour or multicast listener discovery.
    No,
    /// Discovery as the RFCs define it: it stays on the link, so it passes whatever the
    /// policy says (the pod could not reach anything without it).
    Valid,
    /// A discovery type that breaks the rules (hop limit, scope, addresses), which could
    /// carry anything anywhere if it passed as link control.
    Invalid,
}

/// Classifies ICMPv6 neighbour discovery (RFC 4861) and multicast listener discovery
/// (RFC 2710, RFC 3810) seen on `ep`'s interface in `dir`.
#[inline(always)]
pub fn link_control(
    ctx: &TcContext,
    ep: &EndpointInfo,
    dir: Direction,
    flow: &Flow,
) -> LinkControl {
    if flow.family != FAMILY_IPV6 || flow.proto != proto::ICMPV6 {
        return LinkControl::No;
    }
    let nd = icmpv6::is_neighbour_discovery(flow.icmp_type);
    if !nd && !icmpv6::is_multicast_listener(flow.icmp_type) {
        return LinkControl::No;
    }
    // Neither is ever fragmented (RFC 6980), and every defined message has code 0.
    let valid = flow.frag == FRAG_NONE
        && flow.icmp_code == 0
        && if nd {
            neighbour_discovery(ctx, ep, dir, flow)
        } else {
            multicast_listener(ctx, dir, flow)
        };
    if valid {
        LinkControl::Valid
    } else {
        LinkControl::Invalid
    }
}

/// Hop limit 1 to a multicast group from a link-local source: no router forwards it, in
/// either direction. Reports may come from `::` before the interface has an address. A pod
/// is a listener, not a router: it never queries. And only the message itself, at the size
/// the RFCs give it: it passes whatever the policy says, so it must carry nothing else.
#[inline(always)]
fn multicast_listener(ctx: &TcContext, dir: Direction, flow: &Flow) -> bool {
    let query = flow.icmp_type == icmpv6::MLD_QUERY;
    if query && dir == Direction::Egress {
        return false;
    }
    flow.hop_limit == MLD_HOP_LIMIT
        && scope::is_multicast(&flow.dst)
        && (scope::is_link_local(&flow.src) || (!query && scope::is_unspecified(&flow.src)))
        && mld_headers(ctx, flow)
        && mld_length(ctx, flow)
}

/// The IPv6 header, then the message or a Hop-by-Hop header holding a Router Alert (RFC
/// 2711) and padding, as MLD is sent (RFC 2710 §3, RFC 3810 §5): nothing else to hide bytes
/// in.
#[inline(always)]
fn mld_headers(ctx: &TcContext, flow: &Flow) -> bool {
    let fixed = ETH_HLEN + Ipv6Hdr::LEN;
    let l4 = flow.l4_off as usize;
    if l4 == fixed {
        return true;
    }
    if l4 != fixed + MLD_HBH.len() {
        return false;
    }
    // Which header it is: the fixed header's next-header field.
    let first: u8 = match load(ctx, ETH_HLEN + IPV6_NEXT_HEADER_OFF) {
        Ok(next) => next,
        Err(_) => return false,
    };
    match load::<[u8; 8]>(ctx, fixed) {
        // PadN of no data, or two Pad1.
        Ok(hbh) => {
            first == proto::IPV6_HOP_BY_HOP
                && hbh[..6] == MLD_HBH[..6]
                && (hbh[6..] == MLD_HBH[6..] || hbh[6..] == [0, 0])
        }
        Err(_) => false,
    }
}

/// MLDv1 messages are 24 bytes (RFC 2710 §3); an MLDv2 query is 28 bytes and its sources
/// (RFC 3810 §5.1); an MLDv2 report is its records and nothing more (§5.2), within bounds.
#[inline(always)]
fn mld_length(ctx: &TcContext, flow: &Flow) -> bool {
    let off = flow.l4_off as usize;
    let len = (flow.l3_end - flow.l4_off) as usize;
    match flow.icmp_type {
        icmpv6::MLD_QUERY if len == MLD1_LEN => true,
        icmpv6::MLD_QUERY => match load::<[u8; 2]>(ctx, off + MLD2_QUERY_SOURCES_OFF) {
            Ok(n) => {
                let sources = usize::from(u16::from_be_bytes(n));
                sources <= MLD2_MAX_SOURCES && len == MLD2_QUERY_LEN + sources * ND_TARGET_LEN
            }
            Err(_) => false,
        },
        icmpv6::MLD2_REPORT => mld2_report_length(ctx, off, len),
        // MLDv1 report and done.
        _ => len == MLD1_LEN,
    }
}

/// An MLDv2 report's length is what its records say: each a known record type, no
/// auxiliary data (RFC 3810 §5.2.6: MLDv2 defines none), a multicast address, and its
/// sources; at most [`MLD2_MAX_RECORDS`] records and [`MLD2_MAX_SOURCES`] sources in all.
#[inline(always)]
fn mld2_report_length(ctx: &TcContext, off: usize, len: usize) -> bool {
    let records = match load::<[u8; 2]>(ctx, off + MLD2_RECORDS_OFF) {
        Ok(n) => usize::from(u16::from_be_bytes(n)),
        Err(_) => return false,
    };
    if records == 0 || records > MLD2_MAX_RECORDS {
        return false;
    }
    let mut at = MLD2_REPORT_HDR_LEN;
    let mut sources = 0;
    for i in 0..MLD2_MAX_RECORDS {
        if i == records {
            break;
        }
        // [record type, aux data length, number of sources (2)], then the address.
        let record: [u8; 5] = match load(ctx, off + at) {
            Ok(r) => r,
            Err(_) => return false,
        };
        sources += usize::from(u16::from_be_bytes([record[2], record[3]]));
        if !MLD2_RECORD_TYPES.contains(&record[0]) || record[1] != 0 || record[4] != 0xff {
            return false;
        }
        if sources > MLD2_MAX_SOURCES {
            return false;
        }
        at += MLD2_RECORD_LEN + usize::from(u16::from_be_bytes([record[2], record[3]])) * 16;
        if at > len {
            return false;
        }
    }
    at == len
}

/// Hop limit 255 (so it never crossed a router), addresses of the link, and only the
/// pod's own addresses claimed.
#[inline(always)]
fn neighbour_discovery(ctx: &TcContext, ep: &EndpointInfo, dir: Direction, flow: &Flow) -> bool {
    if flow.hop_limit != ND_HOP_LIMIT {
        return false;
    }
    let ty = flow.icmp_type;
    let (src, dst) = (&flow.src, &flow.dst);
    let unspecified = scope::is_unspecified(src);
    // A pod is not a router (RFC 6105, router advertisement guard): router advertisements
    // and redirects come from the node's own stack (no ingress interface), never from a pod
    // and never through the node from anywhere else. Being the node's, their options are
    // not ours to judge.
    if ty == icmpv6::ROUTER_ADVERT || ty == icmpv6::REDIRECT {
        return dir == Direction::Ingress
            && sent_by_node(ctx)
            && !unspecified
            && !scope::is_multicast(src)
            && (ep.owns(FAMILY_IPV6, dst)
                || scope::is_link_local(dst)
                || scope::is_link_scope_multicast(dst));
    }
    if !nd_format(ctx, flow, unspecified) {
        return false;
    }
    match dir {
        Direction::Egress => {
            if ty == icmpv6::ROUTER_SOLICIT {
                return egress_source_ok(ep, flow) && egress_destination_ok(ctx, ep, dst);
            }
            let Some(target) = nd_target(ctx, flow) else {
                return false;
            };
            // Duplicate address detection (RFC 4862 §5.4.2): from `::`, only for an
            // address the pod may hold, to that address's solicited-node group. Probing
            // another's address would fail it.
            if unspecified {
                return ty == icmpv6::NEIGHBOUR_SOLICIT
                    && claimable(ep, &target)
                    && scope::is_solicited_node_of(dst, &target);
            }
            egress_source_ok(ep, flow)
                && egress_destination_ok(ctx, ep, dst)
                // An advertisement claims its target, as ARP claims its sender: only the
                // pod's own, or it poisons its neighbours' caches.
                && (ty != icmpv6::NEIGHBOUR_ADVERT || claimable(ep, &target))
        }
        // From the link: the node or, on a bridge, a neighbour (whose own interface checked
        // it on the way out).
        Direction::Ingress => {
            !scope::is_multicast(src)
                && (!unspecified || ty == icmpv6::NEIGHBOUR_SOLICIT)
                && (ep.owns(FAMILY_IPV6, dst)
                    || scope::is_link_local(dst)
                    || scope::is_link_scope_multicast(dst))
        }
    }
}

/// The source of discovery leaving a pod: one of its own addresses (a solicitation names
/// its source as the address to answer, with the link-layer address to answer at), or `::`
/// for a router solicitation before it has one.
#[inline(always)]
fn egress_source_ok(ep: &EndpointInfo, flow: &Flow) -> bool {
    claimable(ep, &flow.src)
        || (flow.icmp_type == icmpv6::ROUTER_SOLICIT && scope::is_unspecified(&flow.src))
}

/// The link: link-local addresses and groups, the node, which receives what is addressed
/// to it, or, on a bridge, a neighbour on the pod's link (sent to the node instead, it is
/// routed back onto that link, its hop limit no longer that of discovery). Anything else
/// would be routed on, hop limit and all.
#[inline(always)]
fn egress_destination_ok(ctx: &TcContext, ep: &EndpointInfo, dst: &[u8; 16]) -> bool {
    scope::is_link_local(dst)
        || scope::is_link_scope_multicast(dst)
        || ipcache::identity(&IpKey::v6(*dst)) == IDENTITY_HOST
        || (ep.flags & EP_HAS_IPV6 != 0 && fib::on_same_link_v6(ctx, &ep.ipv6, dst))
}

/// Whether the pod may claim `addr` in discovery: its IPv6 address or the link-local
/// address the agent read from its interface (until the agent knows it, no link-local
/// address at all), and never one of the node's, whatever the pod was given.
#[inline(always)]
fn claimable(ep: &EndpointInfo, addr: &[u8; 16]) -> bool {
    (ep.owns(FAMILY_IPV6, addr) || ep.owns_link_local(addr))
        && ipcache::identity(&IpKey::v6(*addr)) != IDENTITY_HOST
}

/// Whether the node's own stack made the packet: it has no ingress interface. A packet
/// the node forwarded (from another pod, from outside) came in somewhere.
#[inline(always)]
fn sent_by_node(ctx: &TcContext) -> bool {
    // SAFETY: the program's context pointer; ingress_ifindex is readable in TC programs.
    unsafe { (*ctx.skb.skb).ingress_ifindex == 0 }
}

/// Router and neighbour solicitations and advertisements as RFC 4861 §4.1-4.4 lay them
/// out, and nothing more: right after the IPv6 header, reserved bits zero, then only the
/// options the message uses, each once and of its Ethernet size (a source link-layer
/// address, never from `::`; a target link-layer address; a nonce, RFC 7527). Discovery
/// passes whatever the policy says: an unknown option or a long message would carry any
/// bytes between pods that policy isolates.
#[inline(always)]
fn nd_format(ctx: &TcContext, flow: &Flow, unspecified: bool) -> bool {
    let off = flow.l4_off as usize;
    if off != ETH_HLEN + Ipv6Hdr::LEN {
        return false;
    }
    let (fixed, allowed): (usize, &[u8]) = match flow.icmp_type {
        icmpv6::ROUTER_SOLICIT => (RS_LEN, &[icmpv6::ND_OPT_SOURCE_LL]),
        icmpv6::NEIGHBOUR_SOLICIT => (NS_LEN, &[icmpv6::ND_OPT_SOURCE_LL, icmpv6::ND_OPT_NONCE]),
        icmpv6::NEIGHBOUR_ADVERT => (NA_LEN, &[icmpv6::ND_OPT_TARGET_LL]),
        _ => return false,
    };
    let len = (flow.l3_end - flow.l4_off) as usize;
    if len < fixed
        || !(len - fixed).is_multiple_of(ND_OPT_LEN)
        || (len - fixed) / ND_OPT_LEN > allowed.len()
    {
        return false;
    }
    // The reserved field after the checksum; an advertisement's first three bits are its
    // router, solicited and override flags.
    let reserved_mask = if flow.icmp_type == icmpv6::NEIGHBOUR_ADVERT {
        NA_RESERVED_MASK
    } else {
        u32::MAX
    };
    match load::<[u8; 4]>(ctx, off + ND_RESERVED_OFF) {
        Ok(r) if u32::from_be_bytes(r) & reserved_mask == 0 => {}
        _ => return false,
    }
    let options = (len - fixed) / ND_OPT_LEN;
    let mut seen = 0u8;
    for i in 0..ND_MAX_OPTIONS {
        if i == options {
            break;
        }
        // [type, length in units of 8 bytes]
        let opt: [u8; 2] = match load(ctx, off + fixed + i * ND_OPT_LEN) {
            Ok(o) => o,
            Err(_) => return false,
        };
        if opt[1] != 1 || !allowed.contains(&opt[0]) || opt[0] == seen {
            return false;
        }
        if unspecified && opt[0] == icmpv6::ND_OPT_SOURCE_LL {
            return false;
        }
        seen = opt[0];
    }
    true
}

/// The address a neighbour solicitation or advertisement is about (RFC 4861 §4.3, §4.4):
/// [`nd_format`] checked it is there.
#[inline(always)]
fn nd_target(ctx: &TcContext, flow: &Flow) -> Option<[u8; ND_TARGET_LEN]> {
    let at = flow.l4_off as usize + ND_TARGET_OFF;
    if at + ND_TARGET_LEN > flow.l3_end as usize {
        return None;
    }
    load::<[u8; ND_TARGET_LEN]>(ctx, at).ok()
}

/// The packet an ICMP error reports on, as quoted in its payload, into `inner`:
/// addresses, protocol and ports (or echo identifier). It travelled in the opposite
/// direction of the error. Filled in place, as the IP parsers fill the packet's own flow.
#[inline(always)]
pub fn quoted_flow(ctx: &TcContext, error: &Flow, inner: &mut Flow) -> Result<(), DropReason> {
    // The quote is read within the error's payload: its end is the quote's end.
    let off = error.l4_off as usize + QUOTE_OFF;
    if error.family == FAMILY_IPV4 {
        let hdr: Ipv4Hdr = load(ctx, off)?;
        let ihl = usize::from(hdr.vihl & 0x0f) * 4;
        if ihl < Ipv4Hdr::LEN {
            return Err(DropReason::Malformed);
        }
        *inner = Flow::new(
            FAMILY_IPV4,
            hdr.proto,
            hdr.ttl,
            (off + ihl) as u32,
            error.l3_end,
        );
        inner.src[..4].copy_from_slice(&hdr.src_addr);
        inner.dst[..4].copy_from_slice(&hdr.dst_addr);
    } else {
        let hdr: Ipv6Hdr = load(ctx, off)?;
        *inner = Flow::new(
            FAMILY_IPV6,
            hdr.next_hdr,
            hdr.hop_limit,
            (off + Ipv6Hdr::LEN) as u32,
            error.l3_end,
        );
        inner.src = hdr.src_addr;
        inner.dst = hdr.dst_addr;
        // The quoted packet's own extension headers (a Fragment header, say, for "packet
        // too big" about fragmented UDP), as far as they are quoted.
        ipv6::extensions(ctx, inner)?;
    }
    // A quoted later fragment has no ports to match a connection by.
    if inner.frag == FRAG_LATER {
        return Err(DropReason::UnknownFragment);
    }
    l4::parse_quoted(ctx, inner)
}

/// Whether an ICMP error goes back the way its quoted packet came: to the quoted packet's
/// source and, when it leaves a pod (an end host, not a router), from its destination.
/// Otherwise a pod could wrap anything in an "error" about one of its connections and send
/// it anywhere.
#[inline(always)]
pub fn answers(error: &Flow, quoted: &Flow, dir: Direction) -> bool {
    error.dst == quoted.src && (dir == Direction::Ingress || error.src == quoted.dst)
}
