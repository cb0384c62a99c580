//! What the kernel makes of a frame, read from its bytes without the datapath's code: the
//! fuzzer's independent view of every frame it sends.
//!
//! It assumes the most a receiver could take from the frame (every extension header is
//! walked, however many or in whatever order; an IPsec header is stepped over), so that the
//! invariants judged on it are as strict as can be.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policy_common::net::{ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, icmp, icmpv6, proto, sctp};

/// The frame, as the kernel sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A VLAN tag or an EtherType other than IPv4, IPv6 and ARP.
    NotIp,
    /// ARP: the sender address it claims, if it is IPv4 over Ethernet ARP.
    Arp(Option<Ipv4Addr>),
    /// An IP packet whose fixed header cannot be read or lies about its size.
    BadIpHeader {
        /// The source address field, if the frame holds it.
        src: Option<IpAddr>,
    },
    /// An IP packet.
    Ip(Box<Ip>),
}

/// An IP packet's addresses and what follows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ip {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// TTL or hop limit.
    pub hop_limit: u8,
    /// IPv6 extension headers before the upper-layer header.
    pub ext_headers: usize,
    /// IPv6: the fixed header's next-header field, and the bytes of the extension headers
    /// walked before the upper-layer header.
    pub ext: (u8, Vec<u8>),
    /// What the payload is.
    pub payload: Payload,
}

/// An IP packet's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Nothing a receiver could tell the flow from: a header that does not fit, or an IPv6
    /// routing header that still has segments to visit (the real destination is elsewhere).
    Unreadable,
    /// A non-first fragment: the datagram it belongs to.
    LaterFragment(Datagram),
    /// An upper-layer header.
    Transport {
        /// What it is.
        l4: L4,
        /// If this is a first fragment, its datagram.
        first_fragment: Option<Datagram>,
    },
}

/// What identifies a datagram's fragments (RFC 791, RFC 8200).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Datagram {
    /// Source.
    pub src: IpAddr,
    /// Destination.
    pub dst: IpAddr,
    /// Identification.
    pub id: u32,
    /// IPv4: the protocol field; IPv6: none.
    pub v4_proto: Option<u8>,
}

/// The upper-layer header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4 {
    /// IP protocol.
    pub proto: u8,
    /// Ports (TCP, UDP, SCTP).
    pub ports: Option<(u16, u16)>,
    /// TCP flags.
    pub tcp_flags: u8,
    /// SCTP: the first chunk's type, if the packet has one.
    pub sctp_chunk: Option<u8>,
    /// ICMP (of the packet's family): type, code, and what the rest holds.
    pub icmp: Option<Icmp>,
}

/// An ICMP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Icmp {
    /// Type.
    pub ty: u8,
    /// Code.
    pub code: u8,
    /// Echo identifier (echo request and reply).
    pub echo_id: Option<u16>,
    /// For errors: the packet quoted, if its IP header and 8 bytes are there.
    pub quoted: Option<Quoted>,
    /// Neighbour discovery: the target address field, if present.
    pub nd_target: Option<Ipv6Addr>,
    /// The whole message, from its type to the end of the IP payload.
    pub message: Vec<u8>,
}

/// The packet an ICMP error quotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quoted {
    /// Its source.
    pub src: IpAddr,
    /// Its destination.
    pub dst: IpAddr,
    /// Its protocol (after no extension headers: a quote with any is not matched).
    pub proto: u8,
    /// Its ports.
    pub ports: Option<(u16, u16)>,
    /// ICMP type and echo identifier, if it is ICMP.
    pub icmp: Option<(u8, Option<u16>)>,
}

const ETH_HLEN: usize = 14;
const TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn v4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

fn v6(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let o: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(o))
}

/// Reads a frame.
pub fn read(frame: &[u8]) -> Frame {
    let Some(ether_type) = be16(frame, 12) else {
        return Frame::NotIp;
    };
    if TPIDS.contains(&ether_type) {
        return Frame::NotIp;
    }
    match ether_type {
        ETH_P_ARP => {
            let ipv4_over_ethernet = frame.get(ETH_HLEN..ETH_HLEN + 6) == Some(&[0, 1, 8, 0, 6, 4]);
            Frame::Arp(
                ipv4_over_ethernet
                    .then(|| v4(frame, ETH_HLEN + 14))
                    .flatten(),
            )
        }
        ETH_P_IP => read_v4(&frame[ETH_HLEN..]),
        ETH_P_IPV6 => read_v6(&frame[ETH_HLEN..]),
        _ => Frame::NotIp,
    }
}

fn read_v4(p: &[u8]) -> Frame {
    let src = v4(p, 12).map(IpAddr::from);
    let (Some(&vihl), Some(total)) = (p.first(), be16(p, 2)) else {
        return Frame::BadIpHeader { src };
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    let total = usize::from(total);
    if vihl >> 4 != 4 || ihl < 20 || total < ihl || total > p.len() {
        return Frame::BadIpHeader { src };
    }
    let (src, dst) = (v4(p, 12).unwrap(), v4(p, 16).unwrap());
    let packet = &p[..total];
    let frags = be16(p, 6).unwrap();
    let (offset, more) = (frags & 0x1fff, frags & 0x2000 != 0);
    let ip_proto = p[9];
    let datagram = Datagram {
        src: src.into(),
        dst: dst.into(),
        id: u32::from(be16(p, 4).unwrap()),
        v4_proto: Some(ip_proto),
    };
    let payload = if offset != 0 {
        Payload::LaterFragment(datagram)
    } else {
        match transport(ip_proto, &packet[ihl..], false) {
            Some(l4) => Payload::Transport {
                l4,
                first_fragment: more.then_some(datagram),
            },
            None => Payload::Unreadable,
        }
    };
    Frame::Ip(Box::new(Ip {
        src: src.into(),
        dst: dst.into(),
        hop_limit: p[8],
        ext_headers: 0,
        ext: (ip_proto, Vec::new()),
        payload,
    }))
}

fn read_v6(p: &[u8]) -> Frame {
    let src = v6(p, 8).map(IpAddr::from);
    let (Some(&first), Some(len)) = (p.first(), be16(p, 4)) else {
        return Frame::BadIpHeader { src };
    };
    let end = 40 + usize::from(len);
    if first >> 4 != 6 || end > p.len() {
        return Frame::BadIpHeader { src };
    }
    let (src, dst) = (v6(p, 8).unwrap(), v6(p, 24).unwrap());
    let packet = &p[..end];
    let mut next = p[6];
    let mut off = 40;
    let mut first_fragment = None;
    let mut ext_headers = 0;
    let mut fragment_headers = 0;
    let mut upper_at = 40;
    let payload = loop {
        let header = |len: usize| packet.get(off..off + len);
        match next {
            proto::IPV6_HOP_BY_HOP | proto::IPV6_DEST_OPTS | proto::IPV6_ROUTING => {
                let Some(h) = header(8) else {
                    break Payload::Unreadable;
                };
                if next == proto::IPV6_ROUTING && h[3] != 0 {
                    break Payload::Unreadable;
                }
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            proto::IPV6_AUTH => {
                let Some(h) = header(8) else {
                    break Payload::Unreadable;
                };
                next = h[0];
                off += (usize::from(h[1]) + 2) * 4;
            }
            proto::IPV6_FRAGMENT => {
                let Some(h) = header(8) else {
                    break Payload::Unreadable;
                };
                if first_fragment.is_some() || fragment_headers > 0 {
                    // Fragmented twice: no single identity to reassemble by.
                    break Payload::Unreadable;
                }
                fragment_headers += 1;
                let datagram = Datagram {
                    src: src.into(),
                    dst: dst.into(),
                    id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                    v4_proto: None,
                };
                let offset_flags = u16::from_be_bytes([h[2], h[3]]);
                if offset_flags >> 3 != 0 {
                    break Payload::LaterFragment(datagram);
                }
                if offset_flags & 1 != 0 {
                    first_fragment = Some(datagram);
                }
                next = h[0];
                off += 8;
            }
            upper => {
                upper_at = off;
                break match packet
                    .get(off..)
                    .and_then(|rest| transport(upper, rest, true))
                {
                    Some(l4) => Payload::Transport { l4, first_fragment },
                    None => Payload::Unreadable,
                };
            }
        }
        ext_headers += 1;
        if off > packet.len() {
            break Payload::Unreadable;
        }
    };
    Frame::Ip(Box::new(Ip {
        src: src.into(),
        dst: dst.into(),
        hop_limit: p[7],
        ext_headers,
        ext: (p[6], packet[40..upper_at.min(packet.len())].to_vec()),
        payload,
    }))
}

/// The upper-layer header in `l4`, if whole.
fn transport(ip_proto: u8, l4: &[u8], ipv6: bool) -> Option<L4> {
    let need = match ip_proto {
        proto::TCP => 20,
        proto::UDP => 8,
        proto::SCTP => sctp::COMMON_HEADER_LEN,
        proto::ICMP if !ipv6 => 8,
        proto::ICMPV6 if ipv6 => 8,
        _ => 0,
    };
    if l4.len() < need {
        return None;
    }
    let ports = proto::has_ports(ip_proto).then(|| (be16(l4, 0).unwrap(), be16(l4, 2).unwrap()));
    let icmp = (need == 8 && !proto::has_ports(ip_proto)).then(|| read_icmp(l4, ipv6));
    Some(L4 {
        proto: ip_proto,
        ports,
        tcp_flags: if ip_proto == proto::TCP { l4[13] } else { 0 },
        sctp_chunk: if ip_proto == proto::SCTP {
            l4.get(sctp::COMMON_HEADER_LEN).copied()
        } else {
            None
        },
        icmp,
    })
}

fn read_icmp(m: &[u8], ipv6: bool) -> Icmp {
    let (ty, code) = (m[0], m[1]);
    let (echo, error) = if ipv6 {
        (icmpv6::is_echo(ty), icmpv6::is_error(ty))
    } else {
        (icmp::is_echo(ty), icmp::is_error(ty))
    };
    Icmp {
        ty,
        code,
        echo_id: echo.then(|| be16(m, 4).unwrap()),
        quoted: if error { quoted(&m[8..], ipv6) } else { None },
        nd_target: (ipv6 && icmpv6::is_neighbour_discovery(ty))
            .then(|| v6(m, 8))
            .flatten(),
        message: m.to_vec(),
    }
}

fn quoted(q: &[u8], ipv6: bool) -> Option<Quoted> {
    let (src, dst, ip_proto, l4): (IpAddr, IpAddr, u8, &[u8]) = if ipv6 {
        let (ip_proto, at) = quoted_chain(q)?;
        (v6(q, 8)?.into(), v6(q, 24)?.into(), ip_proto, q.get(at..)?)
    } else {
        let ihl = usize::from(q.first()? & 0x0f) * 4;
        if ihl < 20 {
            return None;
        }
        (
            v4(q, 12)?.into(),
            v4(q, 16)?.into(),
            *q.get(9)?,
            q.get(ihl..)?,
        )
    };
    if l4.len() < 8 {
        return None;
    }
    let is_icmp = ip_proto == if ipv6 { proto::ICMPV6 } else { proto::ICMP };
    Some(Quoted {
        src,
        dst,
        proto: ip_proto,
        ports: proto::has_ports(ip_proto).then(|| (be16(l4, 0).unwrap(), be16(l4, 2).unwrap())),
        icmp: is_icmp.then(|| {
            let echo = if ipv6 {
                icmpv6::is_echo(l4[0])
            } else {
                icmp::is_echo(l4[0])
            };
            (l4[0], echo.then(|| be16(l4, 4).unwrap()))
        }),
    })
}

/// The upper-layer protocol of a quoted IPv6 packet and where its header starts, past the
/// extension headers that are quoted; `None` for a later fragment or a cut-off chain.
fn quoted_chain(q: &[u8]) -> Option<(u8, usize)> {
    let mut next = *q.get(6)?;
    let mut at = 40;
    loop {
        match next {
            proto::IPV6_HOP_BY_HOP | proto::IPV6_DEST_OPTS | proto::IPV6_ROUTING => {
                let h = q.get(at..at + 2)?;
                next = h[0];
                at += (usize::from(h[1]) + 1) * 8;
            }
            proto::IPV6_AUTH => {
                let h = q.get(at..at + 2)?;
                next = h[0];
                at += (usize::from(h[1]) + 2) * 4;
            }
            proto::IPV6_FRAGMENT => {
                let h = q.get(at..at + 8)?;
                if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                    return None;
                }
                next = h[0];
                at += 8;
            }
            upper => return Some((upper, at)),
        }
    }
}
