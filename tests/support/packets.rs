//! Hand-built packets, byte by byte, for the cases a socket will not produce: IPv4
//! options, IPv6 extension headers, lone fragments, truncated headers, ICMP errors.

use std::net::IpAddr;

use policy_common::net::{ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, icmp, icmpv6, proto};

/// TCP SYN.
pub const SYN: u8 = 0x02;
/// TCP SYN+ACK.
pub const SYN_ACK: u8 = 0x12;
/// TCP ACK.
pub const ACK: u8 = 0x10;

const ETH_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const ETH_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// An IP packet under construction.
#[derive(Clone, Debug)]
pub struct Packet {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    l4: Vec<u8>,
    ttl: u8,
    ipv4_options: Vec<u8>,
    /// IPv6 extension headers before the Fragment header: (type, body after the
    /// next-header and length bytes).
    ext: Vec<(u8, Vec<u8>)>,
    /// IPv6 extension headers after the Fragment header: part of the fragmentable part, so
    /// only the first fragment carries them.
    ext_after_fragment: Vec<(u8, Vec<u8>)>,
    /// (offset in 8-byte units, more fragments, identification).
    fragment: Option<(u16, bool, u32)>,
    /// Bytes to cut from the end of the L4 header.
    truncate: usize,
}

fn family_of(a: IpAddr, b: IpAddr) -> bool {
    assert_eq!(a.is_ipv6(), b.is_ipv6(), "addresses of one family");
    a.is_ipv6()
}

impl Packet {
    fn new(src: IpAddr, dst: IpAddr, proto: u8, l4: Vec<u8>) -> Self {
        family_of(src, dst);
        Self {
            src,
            dst,
            proto,
            l4,
            ttl: 64,
            ipv4_options: Vec::new(),
            ext: Vec::new(),
            ext_after_fragment: Vec::new(),
            fragment: None,
            truncate: 0,
        }
    }

    /// A TCP segment with `flags` (20-byte header, no payload).
    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Self {
        let mut h = vec![0u8; 20];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[12] = 5 << 4;
        h[13] = flags;
        h[14..16].copy_from_slice(&64_240u16.to_be_bytes());
        Self::new(src, dst, proto::TCP, h)
    }

    /// A UDP datagram carrying `payload`.
    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Self {
        let mut h = Vec::with_capacity(8 + payload.len());
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(payload);
        Self::new(src, dst, proto::UDP, h)
    }

    /// An SCTP packet with an INIT chunk.
    pub fn sctp_init(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Self {
        let packet = policy_agent::lab::sctp::build(&policy_agent::lab::sctp::Packet {
            src_port: sport,
            dst_port: dport,
            vtag: 0,
            chunk: policy_agent::lab::sctp::CHUNK_INIT,
            initiate_tag: 0x1234_5678,
        });
        Self::new(src, dst, proto::SCTP, packet)
    }

    /// An SCTP packet whose only chunk is a bare chunk header of type `chunk` (what the
    /// datapath reads of an association's later packets: DATA, SACK, HEARTBEAT...).
    pub fn sctp_chunk(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, chunk: u8) -> Self {
        const CHUNK_HEADER_LEN: u16 = 4;
        const VERIFICATION_TAG: u32 = 0x1234_5678;
        let mut packet = Vec::with_capacity(16);
        packet.extend_from_slice(&sport.to_be_bytes());
        packet.extend_from_slice(&dport.to_be_bytes());
        packet.extend_from_slice(&VERIFICATION_TAG.to_be_bytes());
        packet.extend_from_slice(&[0; 4]); // checksum: the datapath does not check it
        packet.extend_from_slice(&[chunk, 0]);
        packet.extend_from_slice(&CHUNK_HEADER_LEN.to_be_bytes());
        Self::new(src, dst, proto::SCTP, packet)
    }

    /// An ICMP (or ICMPv6) echo request with identifier `id`.
    pub fn echo_request(src: IpAddr, dst: IpAddr, id: u16) -> Self {
        Self::echo(src, dst, id, true)
    }

    /// An ICMP (or ICMPv6) echo reply with identifier `id`.
    pub fn echo_reply(src: IpAddr, dst: IpAddr, id: u16) -> Self {
        Self::echo(src, dst, id, false)
    }

    fn echo(src: IpAddr, dst: IpAddr, id: u16, request: bool) -> Self {
        let (p, ty) = match (src.is_ipv6(), request) {
            (false, true) => (proto::ICMP, icmp::ECHO_REQUEST),
            (false, false) => (proto::ICMP, icmp::ECHO_REPLY),
            (true, true) => (proto::ICMPV6, icmpv6::ECHO_REQUEST),
            (true, false) => (proto::ICMPV6, icmpv6::ECHO_REPLY),
        };
        let mut h = vec![ty, 0, 0, 0];
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&1u16.to_be_bytes());
        Self::new(src, dst, p, h)
    }

    /// An ICMP error of `ty`/`code` quoting `quoted` (an IP packet, trimmed to what routers
    /// quote: its header and 8 bytes).
    pub fn icmp_error(src: IpAddr, dst: IpAddr, ty: u8, code: u8, quoted: &Packet) -> Self {
        let p = if src.is_ipv6() {
            proto::ICMPV6
        } else {
            proto::ICMP
        };
        let mut h = vec![ty, code, 0, 0, 0, 0, 0, 0];
        let inner = quoted.ip_packet();
        let keep = quoted.l4_offset() + 8;
        h.extend_from_slice(&inner[..keep.min(inner.len())]);
        Self::new(src, dst, p, h)
    }

    /// An ICMPv6 message of type `ty` (e.g. neighbour solicitation) with an empty body.
    pub fn icmpv6(src: IpAddr, dst: IpAddr, ty: u8) -> Self {
        Self::new(src, dst, proto::ICMPV6, vec![ty, 0, 0, 0, 0, 0, 0, 0])
    }

    /// An ICMPv6 message of type `ty` and `code` whose body (after the 4-byte header) is
    /// `body`: neighbour discovery with a target, or anything an attacker puts there.
    pub fn icmpv6_with(src: IpAddr, dst: IpAddr, ty: u8, code: u8, body: &[u8]) -> Self {
        let mut h = vec![ty, code, 0, 0];
        h.extend_from_slice(body);
        Self::new(src, dst, proto::ICMPV6, h)
    }

    /// A neighbour advertisement (hop limit 255) claiming `target`.
    pub fn neighbour_advert(src: IpAddr, dst: IpAddr, target: IpAddr) -> Self {
        let IpAddr::V6(target) = target else {
            panic!("neighbour discovery is IPv6");
        };
        let mut body = vec![0x60, 0, 0, 0]; // solicited, override
        body.extend_from_slice(&target.octets());
        Self::icmpv6_with(src, dst, icmpv6::NEIGHBOUR_ADVERT, 0, &body).ttl(icmpv6::ND_HOP_LIMIT)
    }

    /// An ICMP or ICMPv6 message of any type and code with `body` after its 4-byte header.
    pub fn icmp_any(src: IpAddr, dst: IpAddr, ty: u8, code: u8, body: &[u8]) -> Self {
        let p = if src.is_ipv6() {
            proto::ICMPV6
        } else {
            proto::ICMP
        };
        let mut h = vec![ty, code, 0, 0];
        h.extend_from_slice(body);
        Self::new(src, dst, p, h)
    }

    /// A packet of any IP protocol carrying `payload` as its upper-layer bytes.
    pub fn raw(src: IpAddr, dst: IpAddr, ip_proto: u8, payload: &[u8]) -> Self {
        Self::new(src, dst, ip_proto, payload.to_vec())
    }

    /// Sets the TTL / hop limit.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// Adds IPv4 options (padded to 4 bytes with end-of-options).
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = options.to_vec();
        while !self.ipv4_options.len().is_multiple_of(4) {
            self.ipv4_options.push(0);
        }
        self
    }

    /// Adds an IPv6 extension header of `ty` with `body` (which must make the header a
    /// multiple of 8 bytes together with its 2-byte start).
    pub fn ext(mut self, ty: u8, body: &[u8]) -> Self {
        assert_eq!(
            (body.len() + 2) % 8,
            0,
            "extension headers are multiples of 8 bytes"
        );
        self.ext.push((ty, body.to_vec()));
        self
    }

    /// Adds an IPv6 extension header after the Fragment header (only a first fragment, or
    /// an unfragmented packet, carries it).
    pub fn ext_after_fragment(mut self, ty: u8, body: &[u8]) -> Self {
        assert_eq!(
            (body.len() + 2) % 8,
            0,
            "extension headers are multiples of 8 bytes"
        );
        self.ext_after_fragment.push((ty, body.to_vec()));
        self
    }

    /// Marks the packet as a fragment at `offset` (8-byte units). A non-zero offset also
    /// drops the L4 header, as a later fragment has none.
    pub fn fragment(mut self, offset: u16, more: bool, id: u32) -> Self {
        self.fragment = Some((offset, more, id));
        self
    }

    /// Cuts `n` bytes off the end of the L4 header.
    pub fn truncated(mut self, n: usize) -> Self {
        self.truncate = n;
        self
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut l4 = self.l4.clone();
        if let Some((offset, _, _)) = self.fragment
            && offset != 0
        {
            // A later fragment carries payload bytes, not the L4 header.
            l4 = vec![0xab; 16];
        }
        l4.truncate(l4.len().saturating_sub(self.truncate));
        l4
    }

    fn is_later_fragment(&self) -> bool {
        self.fragment.is_some_and(|(offset, _, _)| offset != 0)
    }

    fn l4_offset(&self) -> usize {
        match self.src {
            IpAddr::V4(_) => 20 + self.ipv4_options.len(),
            IpAddr::V6(_) => self.chain().iter().map(|(_, b)| b.len() + 2).sum::<usize>() + 40,
        }
    }

    /// The IPv6 extension headers in order: those before the Fragment header, the Fragment
    /// header, then (first fragments only) those after it.
    fn chain(&self) -> Vec<(u8, Vec<u8>)> {
        let mut chain: Vec<(u8, Vec<u8>)> = self.ext.clone();
        if let Some((offset, more, id)) = self.fragment {
            let mut body = Vec::new();
            body.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
            body.extend_from_slice(&id.to_be_bytes());
            chain.push((proto::IPV6_FRAGMENT, body));
        }
        if !self.is_later_fragment() {
            chain.extend(self.ext_after_fragment.iter().cloned());
        }
        chain
    }

    /// The L4 bytes with a valid TCP or UDP checksum (real receivers check it).
    fn l4_with_checksum(&self) -> Vec<u8> {
        let mut l4 = self.l4_bytes();
        let at = match self.proto {
            proto::TCP => 16,
            proto::UDP => 6,
            proto::ICMP | proto::ICMPV6 => 2,
            _ => return l4,
        };
        if self.fragment.is_some() || self.truncate > 0 || l4.len() < at + 2 {
            return l4;
        }
        if self.proto == proto::ICMP {
            // ICMP for IPv4 sums the message alone.
            let sum = checksum(&l4);
            l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
            return l4;
        }
        let mut pseudo = Vec::new();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&[0, self.proto]);
                pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, self.proto]);
            }
            _ => unreachable!("checked in new"),
        }
        pseudo.extend_from_slice(&l4);
        let sum = match checksum(&pseudo) {
            0 => 0xffff,
            s => s,
        };
        l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        l4
    }

    /// The IP packet (no Ethernet header).
    pub fn ip_packet(&self) -> Vec<u8> {
        let l4 = self.l4_with_checksum();
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let ihl = 20 + self.ipv4_options.len();
                let mut h = vec![0u8; ihl];
                h[0] = 0x40 | (ihl / 4) as u8;
                h[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
                if let Some((offset, more, id)) = self.fragment {
                    h[4..6].copy_from_slice(&(id as u16).to_be_bytes());
                    let flags = offset | if more { 0x2000 } else { 0 };
                    h[6..8].copy_from_slice(&flags.to_be_bytes());
                }
                h[8] = self.ttl;
                h[9] = self.proto;
                h[12..16].copy_from_slice(&src.octets());
                h[16..20].copy_from_slice(&dst.octets());
                h[20..].copy_from_slice(&self.ipv4_options);
                let sum = checksum(&h);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                h.extend_from_slice(&l4);
                h
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let chain = self.chain();
                // A later fragment's Fragment header names the first header of the
                // fragmentable part, as its first fragment's does.
                let after_last = match self.ext_after_fragment.first() {
                    Some((ty, _)) if self.is_later_fragment() => *ty,
                    _ => self.proto,
                };
                let mut exts = Vec::new();
                for (i, (ty, body)) in chain.iter().enumerate() {
                    let next = chain.get(i + 1).map_or(after_last, |(t, _)| *t);
                    exts.push(next);
                    // Fragment headers have a reserved byte where others have a length.
                    if *ty == proto::IPV6_FRAGMENT {
                        exts.push(0);
                    } else {
                        exts.push(((body.len() + 2) / 8 - 1) as u8);
                    }
                    exts.extend_from_slice(body);
                }
                let first = chain.first().map_or(self.proto, |(t, _)| *t);
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&((exts.len() + l4.len()) as u16).to_be_bytes());
                h[6] = first;
                h[7] = self.ttl;
                h[8..24].copy_from_slice(&src.octets());
                h[24..40].copy_from_slice(&dst.octets());
                h.extend_from_slice(&exts);
                h.extend_from_slice(&l4);
                h
            }
            _ => unreachable!("checked in new"),
        }
    }

    /// The Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        let ether_type = if self.src.is_ipv6() {
            ETH_P_IPV6
        } else {
            ETH_P_IP
        };
        let mut f = ethernet(ether_type);
        f.extend_from_slice(&self.ip_packet());
        f
    }
}

fn ethernet(ether_type: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&ETH_DST);
    f.extend_from_slice(&ETH_SRC);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

/// An ARP request whose sender claims `sender`.
pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = ethernet(ETH_P_ARP);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&ETH_SRC);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// A frame of an EtherType the datapath does not parse (here 802.1Q VLAN).
pub fn vlan_frame() -> Vec<u8> {
    let mut f = ethernet(0x8100);
    f.extend_from_slice(&[0; 46]);
    f
}

/// 802.1Q tag protocol identifier.
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ) service tag protocol identifier.
pub const TPID_8021AD: u16 = 0x88a8;

/// `frame` with VLAN tags `(tpid, tci)` inserted after its addresses, outermost first.
/// A tag with VID 0 is a priority tag, which the kernel strips and then routes what it
/// carried.
pub fn tagged(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&frame[12..]);
    f
}

/// `frame` with its EtherType replaced.
pub fn with_ether_type(frame: &[u8], ether_type: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[12..14].copy_from_slice(&ether_type.to_be_bytes());
    f
}

/// The Internet checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
