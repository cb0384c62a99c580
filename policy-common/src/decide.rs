//! The policy decision for the first packet of a flow, written once for both sides: the
//! eBPF programs run it on the kernel maps, and the agent's compiled evaluator runs it on
//! the compiled map contents, so the two cannot disagree about how the maps are read.
//!
//! A rule allows a flow when one of its peers matches the remote side and one of its ports
//! matches the flow. Peers come in two kinds, looked up in turn: selectors (the remote pod's
//! identity) and ipBlocks (the CIDR class of the remote address, whose trie also holds the
//! 0.0.0.0/0 and ::/0 of rules that allow every peer). Each lookup is one longest-prefix
//! match over (ruleset, peer, protocol, port), so its cost does not grow with the rules.
//!
//! A CIDR node's class lists only where the node differs from the enclosing node it
//! refines (so that an `except` costs entries for its own rule's ports, not for every rule
//! around it). The walk starts at the longest node containing the address and goes
//! outwards until an entry decides; it is as long as the nesting the policy has (at most
//! [`MAX_CIDR_WALK`] nodes), and most nodes say everything themselves (no parent).

use crate::{
    maps::{
        CIDR_CLASS_NONE, CIDR_NO_PARENT, CIDR_PREFIX_BASE, CidrKey, CidrValue, Direction,
        EndpointInfo, FRONTEND_NONE, FrontendKey, FrontendValue, IDENTITY_HOST, IDENTITY_WORLD,
        IpKey, MAX_CIDR_WALK, POLICY_ID_NONE, PolicyKey, PolicyValue, SERVICE_ALLOWED,
        ServicePolicyKey, ServicePolicyValue, peer_kind,
    },
    net::{FAMILY_IPV4, proto},
    reason::AllowReason,
};

const IPV4_BITS: u32 = 32;
const IPV6_BITS: u32 = 128;

/// The lookups a decision makes.
pub trait PolicyMaps {
    /// IPCACHE: the identity of an address, [`IDENTITY_WORLD`] if it has none.
    fn identity(&self, addr: &IpKey) -> u32;
    /// POLICY: the longest entry matching a full-length key.
    fn policy(&self, key: &PolicyKey) -> Option<PolicyValue>;
    /// CIDR: the longest entry matching a full-length address key (`prefix_len` bits).
    fn cidr(&self, key: &CidrKey, prefix_len: u32) -> Option<CidrValue>;
    /// FRONTENDS: the Service port behind an address and port.
    fn frontend(&self, key: &FrontendKey) -> Option<FrontendValue>;
    /// SERVICE_POLICY: what an egress ruleset says of a frontend's backends.
    fn service_policy(&self, key: &ServicePolicyKey) -> Option<ServicePolicyValue>;
}

/// How a new flow to a Service frontend is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceFlow {
    /// Allowed (why, and the allowing policy or 0).
    Allowed(AllowReason, u32),
    /// No backend is allowed (or the port leads to no Service).
    Denied,
    /// Some backends are allowed and some not: the proxy picks after the datapath decided.
    BackendsDiffer,
}

/// The frontend a new flow leaving a pod dials, if it dials one (its `frontend` is
/// [`FRONTEND_NONE`] for an address only Services answer on, on a port none of them has).
#[inline(always)]
pub fn frontend<M: PolicyMaps>(
    maps: &M,
    remote: &IpKey,
    ip_proto: u8,
    dport: u16,
) -> Option<FrontendValue> {
    let port = if proto::has_ports(ip_proto) { dport } else { 0 };
    if let Some(v) = maps.frontend(&FrontendKey::new(*remote, ip_proto, port)) {
        return Some(v);
    }
    maps.frontend(&FrontendKey::address(*remote))
}

/// A new flow of `ep` to `frontend`: decided as the connection to the backend the proxy will
/// choose, which must be allowed whichever it is. A pod reaching itself always may.
#[inline(always)]
pub fn service_flow<M: PolicyMaps>(
    maps: &M,
    ep: &EndpointInfo,
    frontend: &FrontendValue,
) -> ServiceFlow {
    if !ep.is_isolated(Direction::Egress) {
        return ServiceFlow::Allowed(AllowReason::NotIsolated, 0);
    }
    if frontend.frontend == FRONTEND_NONE {
        return ServiceFlow::Denied;
    }
    let only = &frontend.only_backend;
    if only.family != 0 && ep.owns(only.family, &only.addr) {
        return ServiceFlow::Allowed(AllowReason::Hairpin, 0);
    }
    let key = ServicePolicyKey {
        ruleset: ep.egress_ruleset,
        frontend: frontend.frontend,
    };
    match maps.service_policy(&key) {
        Some(v) if v.verdict == SERVICE_ALLOWED => {
            ServiceFlow::Allowed(AllowReason::Policy, v.policy_id)
        }
        Some(_) => ServiceFlow::BackendsDiffer,
        None => ServiceFlow::Denied,
    }
}

/// How a new flow was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewFlow {
    /// Identity of the remote address.
    pub remote_identity: u32,
    /// Why it is allowed and the allowing policy (0 if none), or `None` if it is denied.
    pub allowed: Option<(AllowReason, u32)>,
}

/// A new flow of endpoint `ep` in `dir` with the remote address `remote`.
///
/// `node_itself` says whether an address of the node on the remote side is the node: true
/// for a packet leaving the pod (the node receives what is addressed to it) and for one the
/// node's own stack sent; false for a forwarded packet, which only carries the address (a
/// spoofed or masqueraded source) and is decided as any address outside the cluster is.
#[inline(always)]
pub fn new_flow<M: PolicyMaps>(
    maps: &M,
    ep: &EndpointInfo,
    dir: Direction,
    remote: &IpKey,
    ip_proto: u8,
    dport: u16,
    node_itself: bool,
) -> NewFlow {
    let mut remote_identity = maps.identity(remote);
    if remote_identity == IDENTITY_HOST && !node_itself {
        remote_identity = IDENTITY_WORLD;
    }
    let allowed = if !ep.is_isolated(dir) {
        Some((AllowReason::NotIsolated, 0))
    } else if remote_identity == IDENTITY_HOST {
        Some((AllowReason::Host, 0))
    } else {
        allowing_policy(
            maps,
            ep.ruleset(dir),
            remote_identity,
            remote,
            ip_proto,
            dport,
        )
        .map(|policy_id| (AllowReason::Policy, policy_id))
    };
    NewFlow {
        remote_identity,
        allowed,
    }
}

/// The policy whose rule in `ruleset` allows a new flow with `remote`, if any.
#[inline(always)]
pub fn allowing_policy<M: PolicyMaps>(
    maps: &M,
    ruleset: u32,
    identity: u32,
    remote: &IpKey,
    ip_proto: u8,
    dport: u16,
) -> Option<u32> {
    // Rules with ports name TCP, UDP or SCTP ports; other protocols match only rules
    // without ports, whose entries stop before the port.
    let port = if proto::has_ports(ip_proto) { dport } else { 0 };

    if identity != IDENTITY_WORLD {
        let key = PolicyKey::new(ruleset, peer_kind::IDENTITY, identity, ip_proto, port);
        if let Some(v) = maps.policy(&key) {
            return Some(v.policy_id);
        }
    }

    let policy_id = cidr_policy(maps, ruleset, remote, ip_proto, port);
    (policy_id != POLICY_ID_NONE).then_some(policy_id)
}

/// The policy whose ipBlock rule in `ruleset` allows a new flow with `remote`, or
/// [`POLICY_ID_NONE`]: the walk from the longest CIDR node containing `remote` to the
/// nodes it refines.
#[inline(always)]
fn cidr_policy<M: PolicyMaps>(
    maps: &M,
    ruleset: u32,
    remote: &IpKey,
    ip_proto: u8,
    port: u16,
) -> u32 {
    let bits = if remote.family == FAMILY_IPV4 {
        IPV4_BITS
    } else {
        IPV6_BITS
    };
    let cidr = CidrKey {
        ruleset,
        family: remote.family,
        _pad: [0; 3],
        addr: remote.addr,
    };
    // The full address finds the longest node; a parent's own length finds the parent.
    let mut node_len = CIDR_PREFIX_BASE + bits;
    // No node has spoken for any port key yet.
    let mut finer_than = 0;
    for _ in 0..MAX_CIDR_WALK {
        let Some(node) = maps.cidr(&cidr, node_len) else {
            return POLICY_ID_NONE;
        };
        match class_says(maps, ruleset, &node, ip_proto, port, finer_than) {
            Walk::Allowed(policy_id) => return policy_id,
            Walk::Outwards { finer_than: f } => finer_than = f,
        }
        if node.parent_len == CIDR_NO_PARENT {
            return POLICY_ID_NONE;
        }
        node_len = node.parent_len;
    }
    // The agent never chains more nodes; maps that did would be wrong: fail closed.
    POLICY_ID_NONE
}

/// What one CIDR node's class says of a flow.
#[derive(Clone, Copy)]
enum Walk {
    /// A rule allows the flow (its policy).
    Allowed(u32),
    /// Not decided here: ask the enclosing node, where only port keys longer than
    /// `finer_than` still count (the shorter ones belong to rules that a node already
    /// passed has taken away).
    Outwards { finer_than: u8 },
}

/// What `node`'s class says of a flow, when only port keys longer than `finer_than` count.
#[inline(always)]
fn class_says<M: PolicyMaps>(
    maps: &M,
    ruleset: u32,
    node: &CidrValue,
    ip_proto: u8,
    port: u16,
    finer_than: u8,
) -> Walk {
    let undecided = Walk::Outwards { finer_than };
    if node.class == CIDR_CLASS_NONE {
        return undecided;
    }
    let key = PolicyKey::new(ruleset, peer_kind::CIDR, node.class, ip_proto, port);
    match maps.policy(&key) {
        // The longest entry is what this node says of the flow, unless a node already
        // passed has spoken for keys this long (then so it has for every shorter one).
        Some(entry) if entry.key_len > finer_than => entry_says(&entry, finer_than),
        _ => undecided,
    }
}

/// What a class entry that counts says: allowed, or the rules of its key (and of every
/// shorter key of the enclosing nodes) are gone here.
#[inline(always)]
fn entry_says(entry: &PolicyValue, finer_than: u8) -> Walk {
    if entry.policy_id != POLICY_ID_NONE && entry.allowed_from > finer_than {
        Walk::Allowed(entry.policy_id)
    } else {
        Walk::Outwards {
            finer_than: entry.key_len,
        }
    }
}
