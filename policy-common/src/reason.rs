//! Why a packet passed or was dropped: the one list both sides use.

/// Outcome of a packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// The packet continues.
    Allow = 0,
    /// The packet is dropped (`TC_ACT_SHOT`).
    Drop = 1,
}

impl Verdict {
    /// Decodes the byte stored in stats keys and events.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Allow),
            1 => Some(Self::Drop),
            _ => None,
        }
    }

    /// Lower-case name, as the CLI prints it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Drop => "drop",
        }
    }
}

/// Why a packet was allowed.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AllowReason {
    /// No policy isolates the pod in this direction (the Kubernetes default).
    NotIsolated = 1,
    /// A policy rule allowed the first packet of a new flow.
    Policy = 2,
    /// The packet belongs to a tracked connection whose first packet was allowed.
    Established = 3,
    /// An ICMP error about a tracked connection.
    Related = 4,
    /// ARP, IPv6 neighbour and multicast listener discovery: what the pod needs to reach
    /// anything, and which never leaves the link.
    LinkControl = 5,
    /// Traffic between the pod and the node it runs on, always allowed by Kubernetes.
    Host = 6,
    /// The pod's own traffic, back through a Service whose backend it is (hairpin): a pod
    /// can always reach itself.
    Hairpin = 7,
}

/// Why a packet was dropped.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// The pod is isolated in this direction and no rule allows the flow.
    PolicyDenied = 1,
    /// The packet left the pod with a source address that is not the pod's.
    SpoofedSource = 2,
    /// A non-first fragment whose first fragment was not seen or not allowed.
    UnknownFragment = 3,
    /// Truncated or inconsistent headers.
    Malformed = 4,
    /// An IP header the datapath does not decide on (an IPv6 routing header with segments
    /// left, too long an extension-header chain) to or from an isolated pod.
    UnsupportedHeader = 5,
    /// The interface has no endpoint entry (yet): fail closed.
    UnknownEndpoint = 6,
    /// A frame that is not plain, untagged IPv4, IPv6 or ARP: always when it leaves a pod
    /// (the kernel would strip VLAN tags and route what they hide), and when it enters an
    /// isolated pod.
    NonIpFrame = 7,
    /// ICMPv6 neighbour or multicast listener discovery that breaks the RFCs' rules (hop
    /// limit, scope, addresses, options, sizes), that claims an address the pod does not
    /// own, or a router's message sent by a pod (or not by the node's own stack).
    InvalidLinkControl = 8,
    /// A TCP segment that does not start a connection, of no connection the pod tracks
    /// (evicted, expired or never allowed), which the policy does not allow as a new flow.
    UnknownConnection = 9,
    /// Tunnel traffic (IP-in-IP, GRE, VXLAN, Geneve, ...) from a pod to the node, which
    /// would unwrap it and route what it carried, forged source and all.
    TunnelToNode = 10,
    /// A connection to a Service frontend whose backends the pod's egress policy does not
    /// all allow: the node's proxy picks one after the datapath decided.
    ServiceBackendsDiffer = 11,
}

impl AllowReason {
    /// Decodes the byte stored in stats keys and events.
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::NotIsolated,
            2 => Self::Policy,
            3 => Self::Established,
            4 => Self::Related,
            5 => Self::LinkControl,
            6 => Self::Host,
            7 => Self::Hairpin,
            _ => return None,
        })
    }

    /// Kebab-case name, as the CLI and metrics print it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotIsolated => "not-isolated",
            Self::Policy => "policy",
            Self::Established => "established",
            Self::Related => "related",
            Self::LinkControl => "link-control",
            Self::Host => "host",
            Self::Hairpin => "hairpin",
        }
    }
}

impl DropReason {
    /// Decodes the byte stored in stats keys and events.
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::PolicyDenied,
            2 => Self::SpoofedSource,
            3 => Self::UnknownFragment,
            4 => Self::Malformed,
            5 => Self::UnsupportedHeader,
            6 => Self::UnknownEndpoint,
            7 => Self::NonIpFrame,
            8 => Self::InvalidLinkControl,
            9 => Self::UnknownConnection,
            10 => Self::TunnelToNode,
            11 => Self::ServiceBackendsDiffer,
            _ => return None,
        })
    }

    /// Kebab-case name, as the CLI and metrics print it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PolicyDenied => "policy-denied",
            Self::SpoofedSource => "spoofed-source",
            Self::UnknownFragment => "unknown-fragment",
            Self::Malformed => "malformed",
            Self::UnsupportedHeader => "unsupported-header",
            Self::UnknownEndpoint => "unknown-endpoint",
            Self::NonIpFrame => "non-ip-frame",
            Self::InvalidLinkControl => "invalid-link-control",
            Self::UnknownConnection => "unknown-connection",
            Self::TunnelToNode => "tunnel-to-node",
            Self::ServiceBackendsDiffer => "service-backends-differ",
        }
    }
}

/// Name of the reason byte stored with `verdict`, or "unknown".
pub const fn reason_name(verdict: u8, reason: u8) -> &'static str {
    match Verdict::from_u8(verdict) {
        Some(Verdict::Allow) => match AllowReason::from_u8(reason) {
            Some(r) => r.as_str(),
            None => "unknown",
        },
        Some(Verdict::Drop) => match DropReason::from_u8(reason) {
            Some(r) => r.as_str(),
            None => "unknown",
        },
        None => "unknown",
    }
}

/// TC return code: pass the packet now, skipping later programs on the hook.
pub const TC_ACT_OK: i32 = 0;
/// TC return code: no opinion; later programs on the hook decide, and with none the
/// packet passes (TCX calls it "next"). The datapath's "allow".
pub const TC_ACT_UNSPEC: i32 = -1;
/// TC return code: drop the packet.
pub const TC_ACT_SHOT: i32 = 2;
