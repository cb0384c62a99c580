//! The policy decision for the first packet of a flow.
//!
//! A rule allows a flow when one of its peers matches the remote side and one of its ports
//! matches the flow. Peers come in two kinds, looked up in turn: selectors (the remote pod's
//! identity) and ipBlocks (the CIDR class of the remote address, whose trie also holds the
//! 0.0.0.0/0 and ::/0 of rules that allow every peer). Each lookup is one longest-prefix
//! match over (ruleset, peer, protocol, port), so its cost does not grow with the rules.

use aya_ebpf::maps::lpm_trie::Key;
use policy_common::{
    maps::{
        CIDR_CLASS_NONE, CIDR_PREFIX_BASE, CidrKey, IDENTITY_WORLD, POLICY_PREFIX_FULL, PolicyKey,
        peer_kind,
    },
    net::{FAMILY_IPV4, proto},
};

use crate::maps::{CIDR, POLICY};

const IPV4_BITS: u32 = 32;
const IPV6_BITS: u32 = 128;

/// Policy whose rule allows a new flow with `remote` in `ruleset`, if any.
#[inline(always)]
pub fn allowing_policy(
    ruleset: u32,
    identity: u32,
    family: u8,
    remote: &[u8; 16],
    ip_proto: u8,
    dport: u16,
) -> Option<u32> {
    // Rules with ports name TCP, UDP or SCTP ports; other protocols match only rules
    // without ports, whose entries stop before the port.
    let port = if proto::has_ports(ip_proto) { dport } else { 0 };

    if identity != IDENTITY_WORLD {
        let key = PolicyKey::new(ruleset, peer_kind::IDENTITY, identity, ip_proto, port);
        if let Some(v) = POLICY.get(&Key::new(POLICY_PREFIX_FULL, key)) {
            return Some(v.policy_id);
        }
    }

    let bits = if family == FAMILY_IPV4 {
        IPV4_BITS
    } else {
        IPV6_BITS
    };
    let cidr = CidrKey {
        ruleset,
        family,
        _pad: [0; 3],
        addr: *remote,
    };
    let class = CIDR.get(&Key::new(CIDR_PREFIX_BASE + bits, cidr))?.class;
    if class == CIDR_CLASS_NONE {
        return None;
    }
    let key = PolicyKey::new(ruleset, peer_kind::CIDR, class, ip_proto, port);
    POLICY
        .get(&Key::new(POLICY_PREFIX_FULL, key))
        .map(|v| v.policy_id)
}
