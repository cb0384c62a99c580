//! Transport headers: ports, TCP flags, ICMP type and echo identifier.

use aya_ebpf::programs::TcContext;
use policy_common::{
    net::{icmp, icmpv6, proto},
    reason::DropReason,
};

use crate::packet::{FRAG_LATER, Flow, load};

const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const SCTP_HLEN: usize = 12;
const ICMP_HLEN: usize = 8;
const TCP_FLAGS_OFF: usize = 13;
/// What an ICMP error must quote of the offending packet's L4 header (RFC 792).
pub const QUOTED_L4_LEN: usize = 8;

/// TCP FIN flag.
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// Reads the complete transport header of `flow`. A header that does not fit in the IP
/// payload is malformed: that is how a tiny first fragment would hide the TCP flags or
/// ports, and Ethernet padding must not be read as header bytes.
#[inline(always)]
pub fn parse(ctx: &TcContext, flow: &mut Flow) -> Result<(), DropReason> {
    if flow.frag == FRAG_LATER {
        return Ok(());
    }
    let off = flow.l4_off as usize;
    let fits = |len: usize| {
        if off + len <= flow.l3_end as usize {
            Ok(())
        } else {
            Err(DropReason::Malformed)
        }
    };
    match flow.proto {
        proto::TCP => {
            fits(TCP_HLEN)?;
            let hdr: [u8; TCP_HLEN] = load(ctx, off)?;
            set_ports(flow, [hdr[0], hdr[1], hdr[2], hdr[3]]);
            flow.tcp_flags = hdr[TCP_FLAGS_OFF];
        }
        proto::UDP => {
            fits(UDP_HLEN)?;
            let hdr: [u8; UDP_HLEN] = load(ctx, off)?;
            set_ports(flow, [hdr[0], hdr[1], hdr[2], hdr[3]]);
        }
        proto::SCTP => {
            fits(SCTP_HLEN)?;
            let hdr: [u8; SCTP_HLEN] = load(ctx, off)?;
            set_ports(flow, [hdr[0], hdr[1], hdr[2], hdr[3]]);
        }
        proto::ICMP | proto::ICMPV6 => {
            fits(ICMP_HLEN)?;
            let hdr: [u8; ICMP_HLEN] = load(ctx, off)?;
            set_icmp(flow, hdr);
        }
        _ => {}
    }
    Ok(())
}

/// Reads what an ICMP error quotes of a transport header: only its first eight bytes.
#[inline(always)]
pub fn parse_quoted(ctx: &TcContext, flow: &mut Flow) -> Result<(), DropReason> {
    let hdr: [u8; QUOTED_L4_LEN] = load(ctx, flow.l4_off as usize)?;
    if proto::has_ports(flow.proto) {
        set_ports(flow, [hdr[0], hdr[1], hdr[2], hdr[3]]);
    } else if is_icmp(flow) {
        set_icmp(flow, hdr);
    }
    Ok(())
}

/// Whether the flow is ICMP of its own family.
#[inline(always)]
pub const fn is_icmp(flow: &Flow) -> bool {
    matches!(
        (flow.family, flow.proto),
        (policy_common::net::FAMILY_IPV4, proto::ICMP)
            | (policy_common::net::FAMILY_IPV6, proto::ICMPV6)
    )
}

/// Whether the flow is an ICMP error, which quotes the packet it reports on.
#[inline(always)]
pub const fn is_icmp_error(flow: &Flow) -> bool {
    is_icmp(flow)
        && if flow.proto == proto::ICMP {
            icmp::is_error(flow.icmp_type)
        } else {
            icmpv6::is_error(flow.icmp_type)
        }
}

#[inline(always)]
fn set_ports(flow: &mut Flow, ports: [u8; 4]) {
    flow.sport = u16::from_be_bytes([ports[0], ports[1]]);
    flow.dport = u16::from_be_bytes([ports[2], ports[3]]);
}

/// ICMP has no ports; echo request and reply carry an identifier instead, which stands in
/// for both ports so that the reply finds the request's conntrack entry.
#[inline(always)]
fn set_icmp(flow: &mut Flow, hdr: [u8; ICMP_HLEN]) {
    if !is_icmp(flow) {
        return;
    }
    flow.icmp_type = hdr[0];
    let echo = if flow.proto == proto::ICMP {
        icmp::is_echo(hdr[0])
    } else {
        icmpv6::is_echo(hdr[0])
    };
    if echo {
        let id = u16::from_be_bytes([hdr[4], hdr[5]]);
        flow.sport = id;
        flow.dport = id;
    }
}
