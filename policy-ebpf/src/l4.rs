//! Transport headers: ports, TCP flags, ICMP type and echo identifier.

use aya_ebpf::programs::TcContext;
use policy_common::{
    maps::tunnel_port_bit,
    net::{icmp, icmpv6, proto, sctp, tunnel},
    reason::DropReason,
};

use crate::{
    maps::TUNNEL_PORTS,
    packet::{ECHO_NONE, ECHO_REPLY, ECHO_REQUEST, FRAG_LATER, Flow, load, read},
};

const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
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
    let end = flow.l3_end as usize;
    let fits = |len: usize| {
        if off + len <= end {
            Ok(())
        } else {
            Err(DropReason::Malformed)
        }
    };
    match flow.proto {
        proto::TCP => {
            fits(TCP_HLEN)?;
            let hdr: [u8; TCP_HLEN] = read(ctx, off)?;
            set_ports(flow, [hdr[0], hdr[1], hdr[2], hdr[3]]);
            flow.tcp_flags = hdr[TCP_FLAGS_OFF];
        }
        proto::UDP => {
            fits(UDP_HLEN)?;
            let hdr: [u8; UDP_HLEN] = read(ctx, off)?;
            set_ports(flow, [hdr[0], hdr[1], hdr[2], hdr[3]]);
        }
        proto::SCTP => {
            fits(sctp::COMMON_HEADER_LEN)?;
            let hdr: [u8; sctp::COMMON_HEADER_LEN] = load(ctx, off)?;
            set_ports(flow, [hdr[0], hdr[1], hdr[2], hdr[3]]);
            // The first chunk's type tells an INIT (a new association, which the policy
            // decides even on the ports of a tracked one) from the rest.
            if fits(sctp::COMMON_HEADER_LEN + 1).is_ok() {
                let [chunk]: [u8; 1] = load(ctx, off + sctp::COMMON_HEADER_LEN)?;
                flow.sctp_chunk = chunk;
            }
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

/// Reads what an ICMP error quotes of a transport header: only its first eight bytes, which
/// must lie within the error's payload (`flow.l3_end`).
#[inline(always)]
pub fn parse_quoted(ctx: &TcContext, flow: &mut Flow) -> Result<(), DropReason> {
    if flow.l4_off as usize + QUOTED_L4_LEN > flow.l3_end as usize {
        return Err(DropReason::Malformed);
    }
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
/// for both ports so that a reply finds its request's conntrack entry (which also records
/// which side asked).
#[inline(always)]
fn set_icmp(flow: &mut Flow, hdr: [u8; ICMP_HLEN]) {
    if !is_icmp(flow) {
        return;
    }
    flow.icmp_type = hdr[0];
    flow.icmp_code = hdr[1];
    let (request, reply) = if flow.proto == proto::ICMP {
        (icmp::ECHO_REQUEST, icmp::ECHO_REPLY)
    } else {
        (icmpv6::ECHO_REQUEST, icmpv6::ECHO_REPLY)
    };
    flow.echo = if hdr[0] == request {
        ECHO_REQUEST
    } else if hdr[0] == reply {
        ECHO_REPLY
    } else {
        return;
    };
    let id = u16::from_be_bytes([hdr[4], hdr[5]]);
    flow.sport = id;
    flow.dport = id;
}

/// Whether conntrack may track the flow. ICMP messages other than echo have nothing that
/// pairs a reply with its request, so an entry for one would admit any ICMP from the peer;
/// they are decided one by one (errors are matched to the connection they quote instead).
#[inline(always)]
pub const fn is_trackable(flow: &Flow) -> bool {
    !is_icmp(flow) || flow.echo != ECHO_NONE
}

/// Whether an allowed packet of a flow no entry tracks starts one. An echo reply never
/// does: nothing asked for it, and its entry would admit the peer's requests.
#[inline(always)]
pub const fn opens_connection(flow: &Flow) -> bool {
    is_trackable(flow) && flow.echo != ECHO_REPLY
}

/// Whether the flow is tunnel traffic: an encapsulation a node may unwrap (see
/// `policy_common::net::tunnel`), or UDP to a port one of the node's own tunnel devices
/// listens on (a VXLAN or Geneve device may take any port).
#[inline(always)]
pub fn is_tunnel(flow: &Flow) -> bool {
    tunnel::is_tunnel(flow.proto, flow.dport)
        || (flow.proto == proto::UDP && is_node_tunnel_port(flow.dport))
}

#[inline(always)]
fn is_node_tunnel_port(port: u16) -> bool {
    let (word, bit) = tunnel_port_bit(port);
    TUNNEL_PORTS.get(word).is_some_and(|w| w & bit != 0)
}
