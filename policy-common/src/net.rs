//! Wire constants the datapath parses and the agent writes into keys.

/// EtherType of IPv4 (host byte order).
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6 (host byte order).
pub const ETH_P_IPV6: u16 = 0x86DD;
/// EtherType of ARP (host byte order).
pub const ETH_P_ARP: u16 = 0x0806;

/// Address family tag stored in keys and events.
pub const FAMILY_IPV4: u8 = 4;
/// Address family tag stored in keys and events.
pub const FAMILY_IPV6: u8 = 6;

/// Encapsulations a node unwraps: what a pod sends the node this way would be routed on
/// with whatever source the inner packet names.
pub mod tunnel {
    use super::proto;

    /// IP-in-IP.
    pub const IPIP: u8 = 4;
    /// IPv6 in IPv4 (6in4, SIT).
    pub const IPV6_IN_IPV4: u8 = 41;
    /// GRE.
    pub const GRE: u8 = 47;
    /// EtherIP.
    pub const ETHERIP: u8 = 97;
    /// L2TPv3 over IP.
    pub const L2TP: u8 = 115;
    /// VXLAN, IANA's port.
    pub const VXLAN: u16 = 4789;
    /// VXLAN as Linux and flannel configure it.
    pub const VXLAN_LINUX: u16 = 8472;
    /// VXLAN-GPE.
    pub const VXLAN_GPE: u16 = 4790;
    /// Geneve.
    pub const GENEVE: u16 = 6081;

    /// Whether a packet of `ip_proto` to `dport` is tunnel traffic.
    #[inline(always)]
    pub const fn is_tunnel(ip_proto: u8, dport: u16) -> bool {
        matches!(ip_proto, IPIP | IPV6_IN_IPV4 | GRE | ETHERIP | L2TP)
            || (ip_proto == proto::UDP && matches!(dport, VXLAN | VXLAN_LINUX | VXLAN_GPE | GENEVE))
    }
}

/// IP protocol numbers (IANA) the datapath distinguishes.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;

    /// IPv6 extension headers that the datapath walks over.
    pub const IPV6_HOP_BY_HOP: u8 = 0;
    /// IPv6 routing header.
    pub const IPV6_ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const IPV6_FRAGMENT: u8 = 44;
    /// IPsec authentication header (its length counts 4-byte words).
    pub const IPV6_AUTH: u8 = 51;
    /// IPv6 destination options.
    pub const IPV6_DEST_OPTS: u8 = 60;
    /// IPv6 "no next header".
    pub const IPV6_NONE: u8 = 59;

    /// True for protocols whose first four L4 bytes are source and destination ports.
    #[inline(always)]
    pub const fn has_ports(proto: u8) -> bool {
        matches!(proto, TCP | UDP | SCTP)
    }

    /// Name as NetworkPolicy spells it, for the protocols it knows.
    pub const fn name(proto: u8) -> &'static str {
        match proto {
            TCP => "TCP",
            UDP => "UDP",
            SCTP => "SCTP",
            ICMP => "ICMP",
            ICMPV6 => "ICMPv6",
            _ => "other",
        }
    }
}

/// SCTP (RFC 9260): what the datapath reads of a packet's first chunk.
pub mod sctp {
    /// Length of the common header (ports, verification tag, checksum).
    pub const COMMON_HEADER_LEN: usize = 12;
    /// INIT: starts an association, and is the only chunk of its packet (RFC 9260 §3.3.2).
    pub const CHUNK_INIT: u8 = 1;
    /// INIT ACK: the answer to an INIT.
    pub const CHUNK_INIT_ACK: u8 = 2;
    /// ABORT: what an SCTP stack answers an INIT that nobody listens for.
    pub const CHUNK_ABORT: u8 = 6;
}

/// ICMPv4 message types.
pub mod icmp {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable (an error that quotes the offending packet).
    pub const DEST_UNREACH: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded (an error that quotes the offending packet).
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem (an error that quotes the offending packet).
    pub const PARAM_PROBLEM: u8 = 12;

    /// Errors carry the IP header and first eight bytes of the packet that caused them.
    #[inline(always)]
    pub const fn is_error(ty: u8) -> bool {
        matches!(ty, DEST_UNREACH | TIME_EXCEEDED | PARAM_PROBLEM)
    }

    /// Echo messages carry an identifier that conntrack uses in place of ports.
    #[inline(always)]
    pub const fn is_echo(ty: u8) -> bool {
        matches!(ty, ECHO_REQUEST | ECHO_REPLY)
    }
}

/// IPv6 address scopes (RFC 4291), on addresses in network byte order.
pub mod ipv6 {
    /// `::`, the unspecified address.
    #[inline(always)]
    pub fn is_unspecified(a: &[u8; 16]) -> bool {
        *a == [0; 16]
    }

    /// Link-local unicast, `fe80::/10`: never forwarded by a router.
    #[inline(always)]
    pub const fn is_link_local(a: &[u8; 16]) -> bool {
        a[0] == 0xfe && a[1] & 0xc0 == 0x80
    }

    /// Any multicast address, `ff00::/8`.
    #[inline(always)]
    pub const fn is_multicast(a: &[u8; 16]) -> bool {
        a[0] == 0xff
    }

    /// Multicast of link-local scope (`ff02::/16`, and `ff12::/16`... with flags set).
    #[inline(always)]
    pub const fn is_link_scope_multicast(a: &[u8; 16]) -> bool {
        const LINK_LOCAL_SCOPE: u8 = 2;
        a[0] == 0xff && a[1] & 0x0f == LINK_LOCAL_SCOPE
    }

    /// Solicited-node multicast, `ff02::1:ff00:0/104`, where address resolution and
    /// duplicate address detection send their solicitations.
    #[inline(always)]
    pub fn is_solicited_node(a: &[u8; 16]) -> bool {
        a[..13] == [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff]
    }

    /// Whether `group` is the solicited-node group of `addr` (its low 24 bits under
    /// `ff02::1:ff00:0/104`, RFC 4291 §2.7.1): where duplicate address detection for `addr`
    /// is sent.
    #[inline(always)]
    pub fn is_solicited_node_of(group: &[u8; 16], addr: &[u8; 16]) -> bool {
        is_solicited_node(group) && group[13..] == addr[13..]
    }
}

/// ICMPv6 message types.
pub mod icmpv6 {
    /// Destination unreachable.
    pub const DEST_UNREACH: u8 = 1;
    /// Packet too big (path MTU discovery depends on it).
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// Parameter problem.
    pub const PARAM_PROBLEM: u8 = 4;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
    /// Multicast listener query (first MLDv1 type).
    pub const MLD_QUERY: u8 = 130;
    /// MLDv1 report.
    pub const MLD_REPORT: u8 = 131;
    /// MLDv1 done (last MLDv1 type).
    pub const MLD_DONE: u8 = 132;
    /// MLDv2 report.
    pub const MLD2_REPORT: u8 = 143;
    /// Router solicitation (first neighbour-discovery type).
    pub const ROUTER_SOLICIT: u8 = 133;
    /// Router advertisement.
    pub const ROUTER_ADVERT: u8 = 134;
    /// Neighbour solicitation.
    pub const NEIGHBOUR_SOLICIT: u8 = 135;
    /// Neighbour advertisement.
    pub const NEIGHBOUR_ADVERT: u8 = 136;
    /// Redirect (last neighbour-discovery type).
    pub const REDIRECT: u8 = 137;

    /// Hop limit of every neighbour-discovery message (RFC 4861 §6.1, §7.1): a router
    /// decrements it, so 255 proves the message never crossed one.
    pub const ND_HOP_LIMIT: u8 = 255;
    /// Hop limit of every multicast listener discovery message (RFC 2710 §3, RFC 3810 §5).
    pub const MLD_HOP_LIMIT: u8 = 1;

    /// Neighbour discovery option: source link-layer address (RFC 4861 §4.6.1).
    pub const ND_OPT_SOURCE_LL: u8 = 1;
    /// Neighbour discovery option: target link-layer address (RFC 4861 §4.6.1).
    pub const ND_OPT_TARGET_LL: u8 = 2;
    /// Neighbour discovery option: nonce (RFC 3971 §5.3.2, used by RFC 7527's enhanced
    /// duplicate address detection).
    pub const ND_OPT_NONCE: u8 = 14;

    /// Errors quote the packet that caused them.
    #[inline(always)]
    pub const fn is_error(ty: u8) -> bool {
        matches!(
            ty,
            DEST_UNREACH | PACKET_TOO_BIG | TIME_EXCEEDED | PARAM_PROBLEM
        )
    }

    /// Echo messages carry an identifier that conntrack uses in place of ports.
    #[inline(always)]
    pub const fn is_echo(ty: u8) -> bool {
        matches!(ty, ECHO_REQUEST | ECHO_REPLY)
    }

    /// Neighbour discovery (RFC 4861): the IPv6 equivalent of ARP.
    #[inline(always)]
    pub const fn is_neighbour_discovery(ty: u8) -> bool {
        ty >= ROUTER_SOLICIT && ty <= REDIRECT
    }

    /// Multicast listener discovery (RFC 2710, RFC 3810), which every IPv6 interface
    /// speaks with its router.
    #[inline(always)]
    pub const fn is_multicast_listener(ty: u8) -> bool {
        (ty >= MLD_QUERY && ty <= MLD_DONE) || ty == MLD2_REPORT
    }
}
