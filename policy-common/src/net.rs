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
    /// MLDv1 done (last MLDv1 type).
    pub const MLD_DONE: u8 = 132;
    /// MLDv2 report.
    pub const MLD2_REPORT: u8 = 143;
    /// Router solicitation (first neighbour-discovery type).
    pub const ROUTER_SOLICIT: u8 = 133;
    /// Redirect (last neighbour-discovery type).
    pub const REDIRECT: u8 = 137;

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
