//! Keys, values, names and capacities of every BPF map.
//!
//! Both sides use these definitions: the eBPF programs declare their maps with them and the
//! agent writes and reads them through aya. Every struct is `#[repr(C)]` without implicit
//! padding (bytemuck checks it), so keys hash identically on both sides and `bpftool map dump`
//! prints the field names from BTF.

use bytemuck::{Pod, Zeroable};

use crate::net::{FAMILY_IPV4, FAMILY_IPV6};

/// Map names, as the eBPF object declares them and as they are pinned.
pub mod names {
    /// Interface index -> endpoint (the pod behind a host-side veth).
    pub const ENDPOINTS: &str = "ENDPOINTS";
    /// Pod and node address -> identity.
    pub const IPCACHE: &str = "IPCACHE";
    /// (ruleset, peer, protocol, port prefix) -> allowing policy. LPM trie.
    pub const POLICY: &str = "POLICY";
    /// (ruleset, address prefix) -> CIDR class. LPM trie.
    pub const CIDR: &str = "CIDR";
    /// Connection tracking: endpoint id -> that endpoint's own LRU hash of connections.
    /// Hash of maps.
    pub const CONNTRACK: &str = "CONNTRACK";
    /// First fragments, so that later fragments get the same verdict: endpoint id -> that
    /// endpoint's own LRU hash. Hash of maps.
    pub const FRAGMENTS: &str = "FRAGMENTS";
    /// Per-endpoint packet and byte counters by verdict and reason. Per-CPU hash.
    pub const STATS: &str = "STATS";
    /// Flow records for drops and new allowed flows. Ring buffer.
    pub const EVENTS: &str = "EVENTS";
    /// (address, protocol, port) a client dials -> the Service port or host port behind it.
    pub const FRONTENDS: &str = "FRONTENDS";
    /// (egress ruleset, frontend) -> whether the ruleset allows every backend, or some.
    pub const SERVICE_POLICY: &str = "SERVICE_POLICY";
    /// Endpoint id -> what the datapath created or lost for it (see [`super::EndpointCounters`]).
    pub const COUNTERS: &str = "COUNTERS";
    /// UDP ports the node's own tunnel devices listen on, one bit each (see
    /// [`super::tunnel_port_bit`]). Array.
    pub const TUNNEL_PORTS: &str = "TUNNEL_PORTS";

    /// Every map, in a stable order (for pinning and status output).
    pub const ALL: [&str; 12] = [
        ENDPOINTS,
        IPCACHE,
        POLICY,
        CIDR,
        CONNTRACK,
        FRAGMENTS,
        STATS,
        EVENTS,
        FRONTENDS,
        SERVICE_POLICY,
        COUNTERS,
        TUNNEL_PORTS,
    ];
}

/// Program names in the eBPF object.
pub mod programs {
    /// Attached to the TCX ingress hook of a pod's host-side veth: traffic leaving the pod.
    pub const FROM_POD: &str = "from_pod";
    /// Attached to the TCX egress hook of a pod's host-side veth: traffic entering the pod.
    pub const TO_POD: &str = "to_pod";
    /// Returns "pass" and nothing else: the baseline of the per-packet benchmarks.
    pub const BASELINE: &str = "bench_baseline";
}

/// Maximum entries of each map.
pub mod capacity {
    /// Pods on one node (also the number of per-endpoint tables in CONNTRACK and FRAGMENTS).
    pub const ENDPOINTS: u32 = 1024;
    /// Pod addresses in the cluster (two per dual-stack pod) plus node addresses.
    pub const IPCACHE: u32 = 65_536;
    /// Policy entries of all rulesets on the node.
    pub const POLICY: u32 = 524_288;
    /// CIDR prefixes of all rulesets on the node.
    pub const CIDR: u32 = 262_144;
    /// Tracked connections of one endpoint. Each endpoint has its own table, so no pod's
    /// traffic can evict another pod's connections.
    pub const CONNTRACK_PER_ENDPOINT: u32 = 16_384;
    /// Fragmented datagrams in flight to or from one endpoint.
    pub const FRAGMENTS_PER_ENDPOINT: u32 = 512;
    /// (endpoint, direction, verdict, reason) counters.
    pub const STATS: u32 = 16_384;
    /// Endpoints with counters in COUNTERS: every endpoint, and id 0 (interfaces with no
    /// endpoint). The agent sizes it with ENDPOINTS.
    pub const COUNTERS: u32 = ENDPOINTS + 1;
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 20;
    /// Service frontends (every address and port, node ports on every node's addresses).
    pub const FRONTENDS: u32 = 262_144;
    /// (egress ruleset, frontend) pairs where the ruleset allows a backend.
    pub const SERVICE_POLICY: u32 = 262_144;
    /// Words of the TUNNEL_PORTS bitmap: a bit for every UDP port.
    pub const TUNNEL_PORT_WORDS: u32 = (u16::MAX as u32 + 1) / u64::BITS;
}

/// Where UDP port `port` is in the TUNNEL_PORTS bitmap: the word's index and the bit's mask.
#[inline(always)]
pub const fn tunnel_port_bit(port: u16) -> (u32, u64) {
    (port as u32 / u64::BITS, 1 << (port as u32 % u64::BITS))
}

/// Direction of a packet relative to the pod it is enforced for.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Entering the pod: the pod's ingress policy applies.
    Ingress = 0,
    /// Leaving the pod: the pod's egress policy applies.
    Egress = 1,
}

impl Direction {
    /// Decodes the byte stored in keys and events.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Ingress),
            1 => Some(Self::Egress),
            _ => None,
        }
    }

    /// The other direction.
    pub const fn reverse(self) -> Self {
        match self {
            Self::Ingress => Self::Egress,
            Self::Egress => Self::Ingress,
        }
    }

    /// Lower-case name, as the CLI prints it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// Identity of a remote address that is not in the ipcache: anything outside the cluster.
pub const IDENTITY_WORLD: u32 = 0;
/// Identity of the local node's own addresses. Kubernetes always allows traffic between a
/// pod and the node it runs on ("traffic to and from the node where a Pod is running is
/// always allowed"), so policy lookups are skipped for it.
pub const IDENTITY_HOST: u32 = 1;
/// First identity the agent allocates for pods; lower values are reserved.
pub const FIRST_POD_IDENTITY: u32 = 256;

/// An IP address as stored in keys: IPv4 in the first four bytes, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct IpKey {
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Always zero.
    pub _pad: [u8; 3],
    /// Address in network byte order.
    pub addr: [u8; 16],
}

impl IpKey {
    /// Key of an IPv4 address.
    #[inline(always)]
    pub fn v4(octets: [u8; 4]) -> Self {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&octets);
        Self {
            family: FAMILY_IPV4,
            _pad: [0; 3],
            addr,
        }
    }

    /// Key of an IPv6 address.
    #[inline(always)]
    pub fn v6(octets: [u8; 16]) -> Self {
        Self {
            family: FAMILY_IPV6,
            _pad: [0; 3],
            addr: octets,
        }
    }
}

/// Value of [`names::IPCACHE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct IpcacheValue {
    /// Identity of the pod owning the address, or [`IDENTITY_HOST`].
    pub identity: u32,
}

/// The endpoint's ingress policy isolates it: only allowed flows may enter.
pub const EP_INGRESS_ISOLATED: u32 = 1 << 0;
/// The endpoint's egress policy isolates it: only allowed flows may leave.
pub const EP_EGRESS_ISOLATED: u32 = 1 << 1;
/// [`EndpointInfo::ipv4`] holds the pod's IPv4 address.
pub const EP_HAS_IPV4: u32 = 1 << 2;
/// [`EndpointInfo::ipv6`] holds the pod's IPv6 address.
pub const EP_HAS_IPV6: u32 = 1 << 3;
/// [`EndpointInfo::link_local`] holds the link-local address of the pod's interface.
pub const EP_HAS_LINK_LOCAL: u32 = 1 << 4;

/// Value of [`names::ENDPOINTS`], keyed by the ifindex of the pod's host-side interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct EndpointInfo {
    /// Agent-assigned id, stable for the pod's life; keys the conntrack and fragment tables,
    /// stats and events. Ids are reused once a pod is gone.
    pub endpoint_id: u32,
    /// Which pod holds `endpoint_id` now: a new value each time the id goes to another
    /// interface. It is part of every conntrack and fragment key, so nothing a previous
    /// holder of the id left in its tables ever matches.
    pub generation: u32,
    /// Ruleset that decides traffic entering the pod (when ingress-isolated).
    pub ingress_ruleset: u32,
    /// Ruleset that decides traffic leaving the pod (when egress-isolated).
    pub egress_ruleset: u32,
    /// `EP_*` bits.
    pub flags: u32,
    /// The pod's IPv4 address (anti-spoofing), valid with [`EP_HAS_IPV4`].
    pub ipv4: [u8; 4],
    /// The pod's IPv6 address (anti-spoofing), valid with [`EP_HAS_IPV6`].
    pub ipv6: [u8; 16],
    /// The link-local address of the pod's interface, valid with [`EP_HAS_LINK_LOCAL`]: the
    /// only link-local address the pod may use as the source of neighbour discovery or
    /// claim in it. The agent reads it from the interface when it attaches (before the
    /// pod's containers run), not from anything the pod sends.
    pub link_local: [u8; 16],
}

impl EndpointInfo {
    /// Whether policy isolates the pod in `dir`.
    #[inline(always)]
    pub const fn is_isolated(&self, dir: Direction) -> bool {
        let bit = match dir {
            Direction::Ingress => EP_INGRESS_ISOLATED,
            Direction::Egress => EP_EGRESS_ISOLATED,
        };
        self.flags & bit != 0
    }

    /// Ruleset deciding `dir`.
    #[inline(always)]
    pub const fn ruleset(&self, dir: Direction) -> u32 {
        match dir {
            Direction::Ingress => self.ingress_ruleset,
            Direction::Egress => self.egress_ruleset,
        }
    }

    /// Whether `addr` (an [`IpKey`]-style address) is one of the pod's own.
    #[inline(always)]
    pub fn owns(&self, family: u8, addr: &[u8; 16]) -> bool {
        if family == FAMILY_IPV4 {
            self.flags & EP_HAS_IPV4 != 0 && addr[..4] == self.ipv4
        } else {
            self.flags & EP_HAS_IPV6 != 0 && *addr == self.ipv6
        }
    }

    /// Whether `addr` is the link-local address of the pod's interface (never, until the
    /// agent knows it).
    #[inline(always)]
    pub fn owns_link_local(&self, addr: &[u8; 16]) -> bool {
        self.flags & EP_HAS_LINK_LOCAL != 0 && *addr == self.link_local
    }
}

/// Peer kinds in [`PolicyKey::peer_kind`].
pub mod peer_kind {
    /// [`super::PolicyKey::peer`] is a pod identity from the ipcache.
    pub const IDENTITY: u8 = 1;
    /// [`super::PolicyKey::peer`] is a CIDR class from the CIDR trie.
    pub const CIDR: u8 = 2;
}

/// Data part of a [`names::POLICY`] LPM-trie key.
///
/// The trie matches `ruleset`, `peer` and `peer_kind` exactly (they are always inside the
/// prefix) and then `proto` and `port` by prefix: a rule without ports stops the prefix
/// before `proto` ([`POLICY_PREFIX_ANY_PROTO`]), a rule with a protocol but no port stops it
/// before `port` ([`POLICY_PREFIX_ANY_PORT`]), and an `endPort` range becomes a few port
/// prefixes. One longest-prefix lookup per peer then answers "does any rule allow it".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct PolicyKey {
    /// Ruleset of the endpoint and direction being decided.
    pub ruleset: u32,
    /// Identity or CIDR class of the remote side, per `peer_kind`.
    pub peer: u32,
    /// One of [`peer_kind`].
    pub peer_kind: u8,
    /// IP protocol of the flow.
    pub proto: u8,
    /// Destination port of the flow's first packet, in network byte order so that port
    /// prefixes are bit prefixes. Zero for protocols without ports.
    pub port_be: u16,
}

/// Prefix length of a [`PolicyKey`] that matches every protocol and port.
pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
/// Prefix length of a [`PolicyKey`] that matches every port of one protocol.
pub const POLICY_PREFIX_ANY_PORT: u32 = 80;
/// Prefix length of a [`PolicyKey`] that matches one protocol and port exactly.
pub const POLICY_PREFIX_FULL: u32 = 96;

impl PolicyKey {
    /// Lookup key for a flow (always used with [`POLICY_PREFIX_FULL`]).
    #[inline(always)]
    pub const fn new(ruleset: u32, peer_kind: u8, peer: u32, proto: u8, port: u16) -> Self {
        Self {
            ruleset,
            peer,
            peer_kind,
            proto,
            port_be: port.to_be(),
        }
    }
}

/// Value of [`names::POLICY`].
///
/// Under a selector peer every entry allows (`allowed_from == key_len`). Under a CIDR class,
/// whose entries say only where its trie node differs from the node it refines (see
/// [`CidrValue::parent_len`]), an entry may also take away what the enclosing nodes allow:
/// `crate::decide` walks from the longest node outwards and reads these fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct PolicyValue {
    /// Agent-assigned id of a NetworkPolicy whose rule allows the entry's flows here (for
    /// events), or [`POLICY_ID_NONE`]: no rule of this node allows them.
    pub policy_id: u32,
    /// Prefix length of the entry's own key (`POLICY_PREFIX_ANY_PROTO..=POLICY_PREFIX_FULL`):
    /// the walk learns from it which keys of the enclosing nodes this entry overrides.
    pub key_len: u8,
    /// Prefix length of the key whose rule allows the flows: `key_len` itself, or a
    /// shorter key of the same node that still covers them where the rules of this key
    /// are gone; 0 with [`POLICY_ID_NONE`].
    pub allowed_from: u8,
    /// Always zero.
    pub _pad: [u8; 2],
}

/// [`PolicyValue::policy_id`] of an entry that allows nothing (policy ids start at 1).
pub const POLICY_ID_NONE: u32 = 0;

impl PolicyValue {
    /// An entry whose own key `key_len` long is allowed by `policy_id`.
    #[inline(always)]
    pub const fn allow(policy_id: u32, key_len: u32) -> Self {
        Self::covered(policy_id, key_len, key_len)
    }

    /// An entry `key_len` long whose rules are gone, covered instead by a shorter key
    /// `allowed_from` long of `policy_id`.
    #[inline(always)]
    pub const fn covered(policy_id: u32, key_len: u32, allowed_from: u32) -> Self {
        Self {
            policy_id,
            key_len: key_len as u8,
            allowed_from: allowed_from as u8,
            _pad: [0; 2],
        }
    }

    /// An entry `key_len` long whose rules are gone, with nothing shorter to cover it.
    #[inline(always)]
    pub const fn gone(key_len: u32) -> Self {
        Self::covered(POLICY_ID_NONE, key_len, 0)
    }
}

/// Data part of a [`names::CIDR`] LPM-trie key.
///
/// `ruleset` and `family` are always inside the prefix ([`CIDR_PREFIX_BASE`] bits), so
/// one trie holds the ipBlock prefixes of every ruleset, and a prefix of one family never
/// matches an address of the other.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct CidrKey {
    /// Ruleset of the endpoint and direction being decided.
    pub ruleset: u32,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Always zero.
    pub _pad: [u8; 3],
    /// Address in network byte order (IPv4 in the first four bytes).
    pub addr: [u8; 16],
}

/// Bits of a [`CidrKey`] before the address.
pub const CIDR_PREFIX_BASE: u32 = 64;

impl CidrKey {
    /// Key for `addr/prefix` in `ruleset`; returns the key data and its LPM prefix length.
    #[inline(always)]
    pub const fn new(ruleset: u32, ip: IpKey, prefix: u32) -> (u32, Self) {
        (
            CIDR_PREFIX_BASE + prefix,
            Self {
                ruleset,
                family: ip.family,
                _pad: [0; 3],
                addr: ip.addr,
            },
        )
    }
}

/// Value of [`names::CIDR`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct CidrValue {
    /// CIDR class: the policy entries of this node, keyed like identities. With a parent,
    /// only where the node differs from it; without one, everything it allows.
    /// [`CIDR_CLASS_NONE`] for a node that allows nothing (an `except` hole).
    pub class: u32,
    /// Key prefix length (`CIDR_PREFIX_BASE` plus the prefix's bits) of the enclosing node
    /// this one refines: what the class does not say, that node's class (and its own
    /// parent's) decides. [`CIDR_NO_PARENT`] when the class says everything.
    pub parent_len: u32,
}

/// CIDR class of a prefix that no rule allows.
pub const CIDR_CLASS_NONE: u32 = 0;

/// [`CidrValue::parent_len`] of a node that refines none (a real key is never this short).
pub const CIDR_NO_PARENT: u32 = 0;

/// The most CIDR nodes one decision visits: a node and the chain of nodes it refines are
/// never longer (the agent stores a node in full rather). Each is a CIDR and a POLICY
/// lookup, and the verifier follows each turn of the loop.
pub const MAX_CIDR_WALK: u32 = 8;

/// Key of an endpoint's table in [`names::CONNTRACK`]: one connection as that endpoint sees
/// it, whichever way the packet goes (`local` is the pod's side). Both ends of a node-local
/// connection have their own entry, in their own table, so each end's policy applies.
///
/// ICMP echo has no ports: the identifier stands in for both, and `echo` says which side
/// sent the request, so a request and its reply share a key, but a request in the other
/// direction does not.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct CtKey {
    /// [`EndpointInfo::generation`] of the endpoint whose table it is in.
    pub generation: u32,
    /// The pod's address.
    pub local_addr: [u8; 16],
    /// The peer's address.
    pub remote_addr: [u8; 16],
    /// The pod's port (ICMP echo: the identifier).
    pub local_port: u16,
    /// The peer's port (ICMP echo: the identifier).
    pub remote_port: u16,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// IP protocol.
    pub proto: u8,
    /// ICMP echo: [`CT_ECHO_POD_ASKED`] or [`CT_ECHO_PEER_ASKED`]; 0 otherwise.
    pub echo: u8,
    /// Always zero.
    pub _pad: u8,
}

/// [`CtKey::echo`]: the pod sent the echo request.
pub const CT_ECHO_POD_ASKED: u8 = 1;
/// [`CtKey::echo`]: the peer sent the echo request.
pub const CT_ECHO_PEER_ASKED: u8 = 2;

/// A TCP FIN left the pod.
pub const CT_FIN_FROM_POD: u8 = 1 << 0;
/// A TCP FIN entered the pod.
pub const CT_FIN_TO_POD: u8 = 1 << 1;
/// A TCP RST was seen.
pub const CT_RST: u8 = 1 << 2;
/// A packet in the reply direction was seen.
pub const CT_REPLY_SEEN: u8 = 1 << 3;

/// Value of [`names::CONNTRACK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns` of the last packet (refreshed at most every [`ct_timeout::REFRESH_NS`]).
    pub last_seen_ns: u64,
    /// `bpf_ktime_get_ns` of the first packet.
    pub created_ns: u64,
    /// Policy that allowed the first packet (0 if the direction was not isolated).
    pub policy_id: u32,
    /// [`Direction`] of the first packet.
    pub origin: u8,
    /// `CT_*` bits.
    pub flags: u8,
    /// Always zero.
    pub _pad: [u8; 2],
}

/// Conntrack lifetimes, as in Cilium's defaults.
pub mod ct_timeout {
    const SEC: u64 = 1_000_000_000;
    /// TCP connection that has seen a reply and no FIN/RST.
    pub const TCP_ESTABLISHED_NS: u64 = 21_600 * SEC;
    /// TCP connection that has not seen a reply yet.
    pub const TCP_SYN_NS: u64 = 60 * SEC;
    /// TCP connection after RST, or FIN in both directions.
    pub const TCP_CLOSE_NS: u64 = 10 * SEC;
    /// UDP, SCTP, ICMP and other protocols.
    pub const OTHER_NS: u64 = 60 * SEC;
    /// How often `last_seen_ns` is rewritten: saves a write per packet.
    pub const REFRESH_NS: u64 = SEC;
}

impl CtEntry {
    /// Lifetime after the last packet, from the protocol and state.
    #[inline(always)]
    pub const fn lifetime_ns(&self, proto: u8) -> u64 {
        if proto != crate::net::proto::TCP {
            return ct_timeout::OTHER_NS;
        }
        let both_fins = CT_FIN_FROM_POD | CT_FIN_TO_POD;
        if self.flags & CT_RST != 0 || self.flags & both_fins == both_fins {
            ct_timeout::TCP_CLOSE_NS
        } else if self.flags & CT_REPLY_SEEN != 0 {
            ct_timeout::TCP_ESTABLISHED_NS
        } else {
            ct_timeout::TCP_SYN_NS
        }
    }

    /// Whether the entry has outlived its lifetime at `now_ns`.
    #[inline(always)]
    pub const fn is_expired(&self, proto: u8, now_ns: u64) -> bool {
        now_ns > self.last_seen_ns + self.lifetime_ns(proto)
    }

    /// Whether a TCP connection has ended (a new SYN on the same tuple is a new flow).
    #[inline(always)]
    pub const fn is_closing(&self) -> bool {
        self.flags & (CT_RST | CT_FIN_FROM_POD | CT_FIN_TO_POD) != 0
    }
}

/// Key of an endpoint's table in [`names::FRAGMENTS`]: what identifies a datagram's
/// fragments (RFC 791: addresses, protocol and identification; RFC 8200: addresses and the
/// Fragment header's identification, whatever headers follow it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct FragKey {
    /// [`EndpointInfo::generation`] of the endpoint whose table it is in.
    pub generation: u32,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// IPv4: the header's protocol, which every fragment carries. IPv6: zero (later
    /// fragments name only the first header of the fragmentable part).
    pub proto: u8,
    /// Always zero.
    pub _pad: [u8; 2],
    /// IPv4 identification (16 bits) or IPv6 fragment identification (32 bits).
    pub id: u32,
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
}

/// Value of [`names::FRAGMENTS`]: what the first fragment said.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct FragValue {
    /// When the first fragment passed.
    pub seen_ns: u64,
    /// Source port of the datagram.
    pub src_port: u16,
    /// Destination port of the datagram.
    pub dst_port: u16,
    /// Upper-layer protocol of the datagram (IPv6: after every extension header).
    pub proto: u8,
    /// ICMP type of the datagram (ICMP only), which decides whether conntrack applies.
    pub icmp_type: u8,
    /// Always zero.
    pub _pad: [u8; 2],
}

/// Fragments of one datagram must arrive within this time of the first (Linux's ipfrag_time).
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;

/// Key of [`names::STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct StatsKey {
    /// Endpoint counted (0 for packets on an interface with no endpoint).
    pub endpoint_id: u32,
    /// [`Direction`].
    pub direction: u8,
    /// [`crate::reason::Verdict`].
    pub verdict: u8,
    /// [`crate::reason::AllowReason`] or [`crate::reason::DropReason`], per `verdict`.
    pub reason: u8,
    /// Always zero.
    pub _pad: u8,
}

/// Value of [`names::STATS`] (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct StatsValue {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted (skb length, L2 included).
    pub bytes: u64,
}

/// Value of [`names::COUNTERS`] (per CPU, keyed by endpoint id): what the datapath did that
/// the agent would otherwise have to find out by walking tables or could not see at all.
///
/// The datapath never deletes a table entry (expired ones stay until the table's LRU
/// pushes them out), so the entries of an endpoint's table are the keys it created, up to
/// the table's size: the agent counts fill from these instead of walking every key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct EndpointCounters {
    /// Keys created in the endpoint's conntrack table (not counted: an existing key
    /// overwritten, e.g. an expired connection reopened).
    pub conntrack_created: u64,
    /// Keys created in the endpoint's fragment table.
    pub fragments_created: u64,
    /// Flow records of the endpoint the ring buffer had no room for.
    pub events_lost: u64,
}

/// Key of [`names::FRONTENDS`]: what a client dials. An entry with protocol and port 0 marks
/// an address that only Services answer on (a cluster IP, say): a port no Service has there
/// leads nowhere.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct FrontendKey {
    /// The address dialled.
    pub addr: IpKey,
    /// IP protocol (0: any, in a Service address's own entry).
    pub proto: u8,
    /// Always zero.
    pub _pad: u8,
    /// The port dialled (host byte order; 0 with `proto` 0).
    pub port: u16,
}

impl FrontendKey {
    /// The frontend `addr`, `proto`, `port`.
    #[inline(always)]
    pub const fn new(addr: IpKey, proto: u8, port: u16) -> Self {
        Self {
            addr,
            proto,
            _pad: 0,
            port,
        }
    }

    /// The entry that marks `addr` as a Service's.
    #[inline(always)]
    pub const fn address(addr: IpKey) -> Self {
        Self::new(addr, 0, 0)
    }
}

/// Value of [`names::FRONTENDS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct FrontendValue {
    /// Agent-assigned id of the Service port (or host port) and address family behind the
    /// frontend; [`FRONTEND_NONE`] for a Service address's own entry.
    pub frontend: u32,
    /// The frontend's only backend, if it has exactly one (else all zero): a pod dialling a
    /// Service whose only backend is itself reaches itself, which it always may.
    pub only_backend: IpKey,
}

/// [`FrontendValue::frontend`] of an address's own entry: no Service port there.
pub const FRONTEND_NONE: u32 = 0;

/// Key of [`names::SERVICE_POLICY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct ServicePolicyKey {
    /// Egress ruleset of the client.
    pub ruleset: u32,
    /// The frontend dialled.
    pub frontend: u32,
}

/// [`ServicePolicyValue::verdict`]: the ruleset allows the connection to every backend.
pub const SERVICE_ALLOWED: u8 = 1;
/// [`ServicePolicyValue::verdict`]: it allows some backends and not others, and the proxy
/// picks one after the datapath decided: never allowed, and reported.
pub const SERVICE_BACKENDS_DIFFER: u8 = 2;

/// Value of [`names::SERVICE_POLICY`] (absent: no backend is allowed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct ServicePolicyValue {
    /// A policy whose rule allows it (for flow records), when allowed.
    pub policy_id: u32,
    /// [`SERVICE_ALLOWED`] or [`SERVICE_BACKENDS_DIFFER`].
    pub verdict: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}
