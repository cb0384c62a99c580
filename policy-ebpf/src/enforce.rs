//! The decision pipeline both programs run, in the order a packet meets it:
//! endpoint -> parse -> neighbour discovery -> anti-spoofing -> fragments -> related ICMP
//! -> conntrack -> policy for a new flow; then counters and a flow record.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use policy_common::{
    decide,
    maps::{Direction, EndpointInfo, IDENTITY_WORLD, IpKey},
    net::{ETH_P_IP, ETH_P_IPV6},
    reason::{AllowReason, DropReason, TC_ACT_SHOT, TC_ACT_UNSPEC, Verdict},
};

use crate::{
    conntrack, eth, events, icmp, ipfrag, ipv4, ipv6, l4,
    maps::ENDPOINTS,
    metrics,
    packet::{FRAG_FIRST, FRAG_LATER, Flow},
    policy::KernelMaps,
};

/// What happens to a packet, and what the counters and flow record say about it.
pub struct Decision {
    /// Allow or drop.
    pub verdict: Verdict,
    /// An `AllowReason` or `DropReason` byte, per `verdict`.
    pub reason: u8,
    /// Policy whose rule allowed a new flow (0 otherwise).
    pub policy_id: u32,
    /// Identity of the remote address, when it was looked up.
    pub remote_identity: u32,
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
    let now = unsafe { bpf_ktime_get_ns() };
    let mut flow = Flow::new(0, 0, 0, 0, 0);

    let (endpoint_id, decision) = match ENDPOINTS.get_ptr(ifindex) {
        // SAFETY: the pointer comes from a successful lookup; the entry is copied out.
        Some(ep) => {
            let ep = unsafe { *ep };
            (ep.endpoint_id, decide(ctx, &ep, dir, &mut flow, now))
        }
        // Attached before the agent wrote the endpoint, or left behind: fail closed.
        None => (0, Decision::drop(DropReason::UnknownEndpoint)),
    };

    metrics::count(endpoint_id, dir, &decision, len);
    if decision.report {
        events::report(ifindex, endpoint_id, dir, &decision, &flow, len, now);
    }
    decision.tc_action()
}

#[inline(always)]
fn decide(
    ctx: &TcContext,
    ep: &EndpointInfo,
    dir: Direction,
    flow: &mut Flow,
    now: u64,
) -> Decision {
    let isolated = ep.is_isolated(dir);
    let parsed = match eth::ether_type(ctx) {
        Ok(ETH_P_IP) => ipv4::parse(ctx),
        Ok(ETH_P_IPV6) => ipv6::parse(ctx),
        Ok(t) if eth::is_arp(t) => return arp(ctx, ep, dir),
        Ok(_) => return Decision::unless_isolated(isolated, DropReason::UnsupportedHeader),
        Err(reason) => return Decision::unless_isolated(isolated, reason),
    };
    *flow = match parsed {
        Ok(flow) => flow,
        Err(reason) => return Decision::unless_isolated(isolated, reason),
    };
    let spoofed = dir == Direction::Egress && !ep.owns(flow.family, &flow.src);
    if let Err(reason) = l4::parse(ctx, flow) {
        if spoofed {
            return Decision::drop(DropReason::SpoofedSource);
        }
        return Decision::unless_isolated(isolated, reason);
    }

    // Neighbour and multicast listener discovery use link-local and unspecified sources,
    // so they come before the anti-spoofing check; their hop limits keep them on the link.
    if icmp::is_link_control(flow) {
        return Decision::allow(AllowReason::LinkControl);
    }
    if spoofed {
        return Decision::drop(DropReason::SpoofedSource);
    }

    if flow.frag == FRAG_LATER && !ipfrag::inherit_ports(flow, now) {
        return Decision::unless_isolated(isolated, DropReason::UnknownFragment);
    }

    let decision = decide_flow(ctx, ep, dir, flow, now);
    if flow.frag == FRAG_FIRST && decision.verdict == Verdict::Allow {
        ipfrag::remember_first(flow, now);
    }
    decision
}

/// Conntrack, then policy for a packet that starts a new flow.
#[inline(always)]
fn decide_flow(
    ctx: &TcContext,
    ep: &EndpointInfo,
    dir: Direction,
    flow: &Flow,
    now: u64,
) -> Decision {
    // An ICMP error about a connection of this pod (say, "port unreachable" or "packet too
    // big") passes like the connection's own packets. The quoted packet went the other way.
    if l4::is_icmp_error(flow)
        && let Ok(quoted) = icmp::quoted_flow(ctx, flow)
        && conntrack::is_tracked(
            &conntrack::key(ep.endpoint_id, dir.reverse(), &quoted),
            quoted.proto,
            now,
        )
    {
        return Decision::allow(AllowReason::Related);
    }

    let key = conntrack::key(ep.endpoint_id, dir, flow);
    if conntrack::track(&key, dir, flow, now) {
        return Decision::allow(AllowReason::Established);
    }

    let remote = IpKey {
        family: flow.family,
        _pad: [0; 3],
        addr: match dir {
            Direction::Egress => flow.dst,
            Direction::Ingress => flow.src,
        },
    };
    let decided = decide::new_flow(&KernelMaps, ep, dir, &remote, flow.proto, flow.dport);
    match decided.allowed {
        Some((reason, policy_id)) => {
            conntrack::create(&key, dir, flow, policy_id, now);
            Decision::new_flow(reason, policy_id, decided.remote_identity)
        }
        None => {
            let mut denied = Decision::drop(DropReason::PolicyDenied);
            denied.remote_identity = decided.remote_identity;
            denied
        }
    }
}

/// ARP keeps pods reachable whatever the policy, but a pod may only claim its own IPv4
/// address (or none, for address probes): anything else poisons the node's neighbour table.
#[inline(always)]
fn arp(ctx: &TcContext, ep: &EndpointInfo, dir: Direction) -> Decision {
    if dir == Direction::Egress {
        let sender = match eth::arp_sender_ip(ctx) {
            Ok(ip) => ip,
            Err(reason) => return Decision::drop(reason),
        };
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&sender);
        if sender != [0; 4] && !ep.owns(policy_common::net::FAMILY_IPV4, &addr) {
            return Decision::drop(DropReason::SpoofedSource);
        }
    }
    Decision::allow(AllowReason::LinkControl)
}
