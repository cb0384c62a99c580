//! The decision pipeline both programs run, in the order a packet meets it:
//! endpoint -> frame -> IP header -> anti-spoofing -> the other headers -> link control ->
//! fragments -> related ICMP errors -> conntrack -> policy for a new flow; then counters and
//! a flow record.
//!
//! What leaves a pod is checked before anything can wave it through: the frame must be plain
//! IPv4, IPv6 or ARP, and the IP source must be the pod's, whatever the policy and however
//! odd the rest of the packet. What enters a pod is left to the kernel unless the pod is
//! isolated.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use policy_common::{
    decide::{self, ServiceFlow},
    maps::{Direction, EndpointInfo, IDENTITY_HOST, IDENTITY_WORLD, IpKey},
    net::{ETH_P_IP, ETH_P_IPV6, FAMILY_IPV4, FAMILY_IPV6, ipv6 as scope, proto},
    reason::{AllowReason, DropReason, TC_ACT_SHOT, TC_ACT_UNSPEC, Verdict},
};

use crate::{
    conntrack, eth, events,
    icmp::{self, LinkControl},
    ipcache, ipfrag, ipv4, ipv6, l4,
    maps::{ConntrackTable, ENDPOINTS},
    metrics,
    packet::{FRAG_FIRST, FRAG_LATER, Flow},
    policy::KernelMaps,
    scratch::{self, Scratch},
};

/// What happens to a packet, and what the counters and flow record say about it.
pub struct Decision {
    /// Allow or drop.
    pub verdict: Verdict,
    /// An `AllowReason` or `DropReason` byte, per `verdict`.
    pub reason: u8,
    /// Policy whose rule allowed a new flow (0 otherwise).
    pub policy_id: u32,
    /// Identity of the remote address, once looked up (see `identity_known`).
    pub remote_identity: u32,
    /// Whether `remote_identity` was looked up; a record looks it up if not.
    pub identity_known: bool,
    /// Whether to write a flow record: drops and new flows.
    pub report: bool,
}

impl Decision {
    #[inline(always)]
    const fn allow(reason: AllowReason) -> Self {
        Self {
            verdict: Verdict::Allow,
            reason: reason as u8,
            policy_id: 0,
            remote_identity: IDENTITY_WORLD,
            identity_known: false,
            report: false,
        }
    }

    #[inline(always)]
    const fn new_flow(reason: AllowReason, policy_id: u32, remote_identity: u32) -> Self {
        Self {
            verdict: Verdict::Allow,
            reason: reason as u8,
            policy_id,
            remote_identity,
            identity_known: true,
            report: true,
        }
    }

    #[inline(always)]
    const fn drop(reason: DropReason) -> Self {
        Self {
            verdict: Verdict::Drop,
            reason: reason as u8,
            policy_id: 0,
            remote_identity: IDENTITY_WORLD,
            identity_known: false,
            report: true,
        }
    }

    /// A packet the datapath cannot decide on (malformed, unsupported, an orphan
    /// fragment): dropped for an isolated pod, left alone for one that policy does not isolate.
    #[inline(always)]
    const fn unless_isolated(isolated: bool, reason: DropReason) -> Self {
        if isolated {
            Self::drop(reason)
        } else {
            Self::allow(AllowReason::NotIsolated)
        }
    }

    /// A frame or IP header the datapath cannot read: always dropped when it leaves a pod
    /// (nothing unreadable may get past anti-spoofing), as [`Self::unless_isolated`] when it
    /// enters one.
    #[inline(always)]
    const fn unreadable(dir: Direction, isolated: bool, reason: DropReason) -> Self {
        match dir {
            Direction::Egress => Self::drop(reason),
            Direction::Ingress => Self::unless_isolated(isolated, reason),
        }
    }

    /// Allowed packets continue to any later program on the hook (TCX "next"); with none
    /// they pass.
    #[inline(always)]
    const fn tc_action(&self) -> i32 {
        match self.verdict {
            Verdict::Allow => TC_ACT_UNSPEC,
            Verdict::Drop => TC_ACT_SHOT,
        }
    }
}

/// Decides a packet seen on a pod's host-side interface, going in `dir` for that pod.
#[inline(always)]
pub fn enforce(ctx: &TcContext, dir: Direction) -> i32 {
    // SAFETY: `ctx.skb.skb` is the program's context pointer; ifindex is readable in TC programs.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = ctx.len();
    let now = if cfg!(feature = "bench-no-ktime") {
        0
    } else {
        // SAFETY: a helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    };
    // The flow lives outside the stack (see `scratch`). Its slot always exists; fail
    // closed all the same.
    let Some(Scratch { flow, quoted }) = scratch::get() else {
        return TC_ACT_SHOT;
    };

    let (endpoint_id, mut decision) = match ENDPOINTS.get_ptr(ifindex) {
        // SAFETY: the pointer comes from a successful lookup; the entry is copied out.
        Some(ep) => {
            let ep = unsafe { *ep };
            (ep.endpoint_id, decide(ctx, &ep, dir, flow, quoted, now))
        }
        // Attached before the agent wrote the endpoint, or left behind: fail closed.
        None => (0, Decision::drop(DropReason::UnknownEndpoint)),
    };

    metrics::count(endpoint_id, dir, &decision, len);
    if decision.report {
        // A drop before the policy is still reported with who the remote side is.
        if !decision.identity_known && flow.family != 0 {
            decision.remote_identity = remote_identity(ctx, dir, flow);
        }
        events::report(ifindex, endpoint_id, dir, &decision, flow, len, now);
    }
    decision.tc_action()
}

/// Where the source address of a packet leaving a pod puts it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Entering the pod, or leaving it from one of its addresses.
    Checked,
    /// Leaving it from a link-local or unspecified IPv6 address, which only neighbour and
    /// multicast listener discovery may use.
    DiscoveryOnly,
}

#[inline(always)]
fn decide(
    ctx: &TcContext,
    ep: &EndpointInfo,
    dir: Direction,
    flow: &mut Flow,
    quoted: &mut Flow,
    now: u64,
) -> Decision {
    let isolated = ep.is_isolated(dir);

    // The frame: plain IPv4, IPv6 or ARP. A VLAN tag, or any other EtherType, hides what
    // the kernel will route once it strips the tag after us.
    let ether_type = match eth::ether_type(ctx) {
        Ok(t) if eth::is_plain(ctx, t) => t,
        Ok(_) => return Decision::unreadable(dir, isolated, DropReason::NonIpFrame),
        Err(reason) => return Decision::unreadable(dir, isolated, reason),
    };
    let parsed = match ether_type {
        ETH_P_IP => ipv4::parse(ctx, flow),
        ETH_P_IPV6 => ipv6::parse(ctx, flow),
        t if eth::is_arp(t) => return arp(ctx, ep, dir),
        _ => return Decision::unreadable(dir, isolated, DropReason::NonIpFrame),
    };
    if let Err(reason) = parsed {
        return Decision::unreadable(dir, isolated, reason);
    }

    // Anti-spoofing, before anything else may return.
    let Some(source) = source(ep, dir, flow) else {
        return Decision::drop(DropReason::SpoofedSource);
    };
    // Headers past the fixed one: a packet whose source is not the pod's own must turn out
    // to be discovery, so whatever stops us from reading that far condemns it.
    let rest = if flow.family == FAMILY_IPV6 {
        ipv6::extensions(ctx, flow)
    } else {
        Ok(())
    }
    .and_then(|()| l4::parse(ctx, flow));
    if let Err(reason) = rest {
        return match source {
            Source::DiscoveryOnly => Decision::drop(DropReason::SpoofedSource),
            Source::Checked => Decision::unless_isolated(isolated, reason),
        };
    }

    match icmp::link_control(ctx, ep, dir, flow) {
        LinkControl::Valid => return Decision::allow(AllowReason::LinkControl),
        LinkControl::Invalid => return Decision::drop(DropReason::InvalidLinkControl),
        LinkControl::No if source == Source::DiscoveryOnly => {
            return Decision::drop(DropReason::SpoofedSource);
        }
        LinkControl::No => {}
    }

    if flow.frag == FRAG_LATER && !ipfrag::inherit(ep, flow, now) {
        return Decision::unless_isolated(isolated, DropReason::UnknownFragment);
    }

    if is_tunnel_to_node(dir, flow) {
        return Decision::drop(DropReason::TunnelToNode);
    }

    let decision = decide_flow(ctx, ep, dir, flow, quoted, now);
    if flow.frag == FRAG_FIRST && decision.verdict == Verdict::Allow {
        ipfrag::remember_first(ep, flow, now);
    }
    decision
}

/// What leaves a pod comes from one of its addresses; `None` if it does not. Discovery's
/// link-local and unspecified sources are settled once the ICMPv6 header has been read.
#[inline(always)]
fn source(ep: &EndpointInfo, dir: Direction, flow: &Flow) -> Option<Source> {
    match dir {
        Direction::Ingress => Some(Source::Checked),
        Direction::Egress if ep.owns(flow.family, &flow.src) => Some(Source::Checked),
        Direction::Egress
            if flow.family == FAMILY_IPV6
                && (scope::is_link_local(&flow.src) || scope::is_unspecified(&flow.src)) =>
        {
            Some(Source::DiscoveryOnly)
        }
        Direction::Egress => None,
    }
}

/// A pod has no business making the node unwrap a packet: like a VLAN tag, a tunnel header
/// to the node hides a packet the node routes on with whatever source it names.
#[inline(always)]
fn is_tunnel_to_node(dir: Direction, flow: &Flow) -> bool {
    dir == Direction::Egress
        && l4::is_tunnel(flow)
        && ipcache::identity(&remote(dir, flow)) == IDENTITY_HOST
}

/// Conntrack, then policy for a packet that starts a new flow. `quoted` is room for the
/// packet an ICMP error quotes.
#[inline(always)]
fn decide_flow(
    ctx: &TcContext,
    ep: &EndpointInfo,
    dir: Direction,
    flow: &Flow,
    quoted: &mut Flow,
    now: u64,
) -> Decision {
    // The pod's conntrack table, once for the whole decision (a new flow misses, then
    // inserts).
    let table = conntrack::table(ep.endpoint_id);

    // An ICMP error about a connection of this pod (say, "port unreachable" or "packet too
    // big") passes like the connection's own packets, if it goes back the way the quoted
    // packet came. A later fragment has no quote to read.
    let icmp_error = flow.frag != FRAG_LATER && l4::is_icmp_error(flow);
    if icmp_error && is_related(ctx, ep, table, dir, flow, quoted, now) {
        return Decision::allow(AllowReason::Related);
    }

    let trackable = l4::is_trackable(flow);
    let key = conntrack::key(ep.generation, dir, flow);
    if trackable && conntrack::track(table, &key, dir, flow, now) {
        return Decision::allow(AllowReason::Established);
    }

    // A Service frontend is decided as the backend the proxy will pick: never by its own
    // address, and never as "the node" (IPVS puts cluster IPs on the node; node ports are on
    // its addresses).
    let remote_addr = remote(dir, flow);
    if dir == Direction::Egress
        && !icmp_error
        && let Some(frontend) = decide::frontend(&KernelMaps, &remote_addr, flow.proto, flow.dport)
    {
        return match decide::service_flow(&KernelMaps, ep, &frontend) {
            ServiceFlow::Allowed(reason, policy_id) => {
                if l4::opens_connection(flow) {
                    conntrack::create(table, ep.endpoint_id, &key, dir, flow, policy_id, now);
                }
                Decision::new_flow(reason, policy_id, IDENTITY_WORLD)
            }
            ServiceFlow::Denied => Decision::drop(denial(flow)),
            ServiceFlow::BackendsDiffer => Decision::drop(DropReason::ServiceBackendsDiffer),
        };
    }

    // The pod's own packet coming back (through a Service whose backend it is): it went
    // out through this very interface, past anti-spoofing and its egress policy, and a pod
    // can always reach itself. The proxy's masquerade hides that in the addresses.
    if dir == Direction::Ingress && is_own_packet(ctx) {
        if l4::opens_connection(flow) {
            conntrack::create(table, ep.endpoint_id, &key, dir, flow, 0, now);
        }
        return Decision::new_flow(AllowReason::Hairpin, 0, IDENTITY_WORLD);
    }

    // An error about nothing this pod tracks is never the node's say-so, whoever sent it:
    // it would carry another packet's bytes in as "node traffic".
    let node_itself = !icmp_error && node_itself(ctx, dir);
    let decided = decide::new_flow(
        &KernelMaps,
        ep,
        dir,
        &remote_addr,
        flow.proto,
        flow.dport,
        node_itself,
    );
    match decided.allowed {
        Some((reason, policy_id)) => {
            if l4::opens_connection(flow) {
                conntrack::create(table, ep.endpoint_id, &key, dir, flow, policy_id, now);
            }
            Decision::new_flow(reason, policy_id, decided.remote_identity)
        }
        None => {
            let mut denied = Decision::drop(denial(flow));
            denied.remote_identity = decided.remote_identity;
            denied.identity_known = true;
            denied
        }
    }
}

/// Whether an ICMP error quotes a packet of a live connection of the pod (read into
/// `quoted`) and goes back the way that packet came.
#[inline(always)]
fn is_related(
    ctx: &TcContext,
    ep: &EndpointInfo,
    table: Option<&ConntrackTable>,
    dir: Direction,
    error: &Flow,
    quoted: &mut Flow,
    now: u64,
) -> bool {
    icmp::quoted_flow(ctx, error, quoted).is_ok()
        && icmp::answers(error, quoted, dir)
        && conntrack::is_tracked(
            table,
            &conntrack::key(ep.generation, dir.reverse(), quoted),
            quoted.proto,
            now,
        )
}

/// Why the policy's "no" drops a packet that no entry tracks: a TCP segment in the middle of
/// a connection had its entry evicted or expired (or never had one), which must not look
/// like policy.
#[inline(always)]
fn denial(flow: &Flow) -> DropReason {
    let mid_connection =
        flow.proto == proto::TCP && flow.frag != FRAG_LATER && !conntrack::is_tcp_start(flow);
    if mid_connection {
        DropReason::UnknownConnection
    } else {
        DropReason::PolicyDenied
    }
}

/// The remote side's address: the destination of what leaves the pod, the source of what
/// enters it.
#[inline(always)]
fn remote(dir: Direction, flow: &Flow) -> IpKey {
    IpKey {
        family: flow.family,
        _pad: [0; 3],
        addr: match dir {
            Direction::Egress => flow.dst,
            Direction::Ingress => flow.src,
        },
    }
}

/// Whether a node address on the remote side is the node itself: when the pod sends to it
/// (the node receives what is addressed to it), and when the node's own stack made the
/// packet. A packet the node made has no ingress interface (`skb_iif`) and belongs to one of
/// its sockets; a forwarded one came in somewhere and has no socket (IPv6 fragments the
/// node cuts from a forwarded datagram lose `skb_iif`, but never get a socket). A forwarded
/// packet with a node address as its source is spoofed or masqueraded, and is decided as
/// what it is.
#[inline(always)]
fn node_itself(ctx: &TcContext, dir: Direction) -> bool {
    match dir {
        Direction::Egress => true,
        // SAFETY: the program's context pointer; both fields are readable in TC programs.
        Direction::Ingress => unsafe {
            (*ctx.skb.skb).ingress_ifindex == 0 && !(*ctx.skb.skb).__bindgen_anon_2.sk.is_null()
        },
    }
}

/// Whether a packet about to enter the pod came in through the pod's own interface: the
/// pod sent it, and the node sent it back.
#[inline(always)]
fn is_own_packet(ctx: &TcContext) -> bool {
    // SAFETY: the program's context pointer; both fields are readable in TC programs.
    unsafe { (*ctx.skb.skb).ingress_ifindex == (*ctx.skb.skb).ifindex }
}

/// The remote side's identity for a flow record, with the same rule for node addresses.
#[inline(always)]
fn remote_identity(ctx: &TcContext, dir: Direction, flow: &Flow) -> u32 {
    let identity = ipcache::identity(&remote(dir, flow));
    if identity == IDENTITY_HOST && !node_itself(ctx, dir) {
        IDENTITY_WORLD
    } else {
        identity
    }
}

/// ARP keeps pods reachable whatever the policy, but a pod may only claim its own IPv4
/// address (or none, for address probes): anything else poisons the node's neighbour table.
#[inline(always)]
fn arp(ctx: &TcContext, ep: &EndpointInfo, dir: Direction) -> Decision {
    if dir == Direction::Egress {
        if !eth::is_ipv4_over_ethernet_arp(ctx) {
            return Decision::drop(DropReason::NonIpFrame);
        }
        let sender = match eth::arp_sender_ip(ctx) {
            Ok(ip) => ip,
            Err(reason) => return Decision::drop(reason),
        };
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&sender);
        if sender != [0; 4] && !ep.owns(FAMILY_IPV4, &addr) {
            return Decision::drop(DropReason::SpoofedSource);
        }
    }
    Decision::allow(AllowReason::LinkControl)
}
