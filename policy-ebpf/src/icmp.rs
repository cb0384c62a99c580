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
    fib, ipcache, ipv6, l4,
    packet::{FRAG_LATER, FRAG_NONE, Flow, load},
};

/// ICMP header bytes before the quoted packet.
const QUOTE_OFF: usize = 8;
/// Where a neighbour advertisement names the address it claims (RFC 4861 §4.4).
const ND_TARGET_OFF: usize = 8;
/// An IPv6 address.
const ND_TARGET_LEN: usize = 16;

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
            multicast_listener(flow)
        };
    if valid {
        LinkControl::Valid
    } else {
        LinkControl::Invalid
    }
}

/// Hop limit 1 to a multicast group from a link-local source: no router forwards it, in
/// either direction. Reports may come from `::` before the interface has an address.
#[inline(always)]
fn multicast_listener(flow: &Flow) -> bool {
    let unspecified_ok = flow.icmp_type != icmpv6::MLD_QUERY;
    flow.hop_limit == MLD_HOP_LIMIT
        && scope::is_multicast(&flow.dst)
        && (scope::is_link_local(&flow.src) || (unspecified_ok && scope::is_unspecified(&flow.src)))
}

/// Hop limit 255 (so it never crossed a router), and addresses of the link.
#[inline(always)]
fn neighbour_discovery(ctx: &TcContext, ep: &EndpointInfo, dir: Direction, flow: &Flow) -> bool {
    if flow.hop_limit != ND_HOP_LIMIT {
        return false;
    }
    let ty = flow.icmp_type;
    let (src, dst) = (&flow.src, &flow.dst);
    let unspecified = scope::is_unspecified(src);
    match dir {
        Direction::Egress => {
            // A pod is not a router (RFC 6105, router advertisement guard).
            if ty == icmpv6::ROUTER_ADVERT || ty == icmpv6::REDIRECT {
                return false;
            }
            // Its own or a link-local address; `::` only while it has none (router
            // solicitation, duplicate address detection).
            let src_ok = ep.owns(FAMILY_IPV6, src)
                || scope::is_link_local(src)
                || (unspecified
                    && (ty == icmpv6::ROUTER_SOLICIT
                        || (ty == icmpv6::NEIGHBOUR_SOLICIT && scope::is_solicited_node(dst))));
            // The link: link-local addresses and groups, the node, which receives what is
            // addressed to it, or, on a bridge, a neighbour on the pod's link (sent to the
            // node instead, it is routed back onto that link, its hop limit no longer that of
            // discovery). Anything else would be routed on, hop limit and all.
            let dst_ok = scope::is_link_local(dst)
                || scope::is_link_scope_multicast(dst)
                || ipcache::identity(&IpKey::v6(*dst)) == IDENTITY_HOST
                || (ep.flags & EP_HAS_IPV6 != 0 && fib::on_same_link_v6(ctx, &ep.ipv6, dst));
            src_ok
                && dst_ok
                && (ty != icmpv6::NEIGHBOUR_ADVERT || advertises_own_address(ctx, ep, flow))
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

/// Whether a neighbour advertisement claims an address the pod may claim: its own, or a
/// link-local one. Anything else poisons its neighbours' caches, as spoofed ARP would.
#[inline(always)]
fn advertises_own_address(ctx: &TcContext, ep: &EndpointInfo, flow: &Flow) -> bool {
    let at = flow.l4_off as usize + ND_TARGET_OFF;
    if at + ND_TARGET_LEN > flow.l3_end as usize {
        return false;
    }
    match load::<[u8; ND_TARGET_LEN]>(ctx, at) {
        Ok(target) => ep.owns(FAMILY_IPV6, &target) || scope::is_link_local(&target),
        Err(_) => false,
    }
}

/// The packet an ICMP error reports on, as quoted in its payload: addresses, protocol and
/// ports (or echo identifier). It travelled in the opposite direction of the error.
#[inline(always)]
pub fn quoted_flow(ctx: &TcContext, error: &Flow) -> Result<Flow, DropReason> {
    // The quote is read within the error's payload: its end is the quote's end.
    let off = error.l4_off as usize + QUOTE_OFF;
    let mut inner = if error.family == FAMILY_IPV4 {
        let hdr: Ipv4Hdr = load(ctx, off)?;
        let ihl = usize::from(hdr.vihl & 0x0f) * 4;
        if ihl < Ipv4Hdr::LEN {
            return Err(DropReason::Malformed);
        }
        let mut inner = Flow::new(
            FAMILY_IPV4,
            hdr.proto,
            hdr.ttl,
            (off + ihl) as u32,
            error.l3_end,
        );
        inner.src[..4].copy_from_slice(&hdr.src_addr);
        inner.dst[..4].copy_from_slice(&hdr.dst_addr);
        inner
    } else {
        let hdr: Ipv6Hdr = load(ctx, off)?;
        let mut inner = Flow::new(
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
        ipv6::extensions(ctx, &mut inner)?;
        inner
    };
    // A quoted later fragment has no ports to match a connection by.
    if inner.frag == FRAG_LATER {
        return Err(DropReason::UnknownFragment);
    }
    l4::parse_quoted(ctx, &mut inner)?;
    Ok(inner)
}

/// Whether an ICMP error goes back the way its quoted packet came: to the quoted packet's
/// source and, when it leaves a pod (an end host, not a router), from its destination.
/// Otherwise a pod could wrap anything in an "error" about one of its connections and send
/// it anywhere.
#[inline(always)]
pub fn answers(error: &Flow, quoted: &Flow, dir: Direction) -> bool {
    error.dst == quoted.src && (dir == Direction::Ingress || error.src == quoted.dst)
}
