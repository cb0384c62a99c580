//! What a rule admits at layer 4, and how that becomes policy-trie entries.

use std::collections::BTreeMap;

use policy_common::{
    maps::{POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, PolicyKey, PolicyValue},
    ports::{PORT_BITS, port_prefixes},
};

use super::LpmKey;
use crate::{
    model::{Pod, Protocol},
    semantics::{PortRef, Ports},
};

/// One L4 match, after named ports are resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// A rule without ports: every protocol (ICMP included) and port.
    AnyProtocol,
    /// Every port of one protocol.
    AnyPort(Protocol),
    /// An inclusive port range of one protocol.
    Range(Protocol, u16, u16),
}

/// The L4 matches allowed to one peer, each with the lowest id of the policies allowing it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSet(BTreeMap<PortMatch, u32>);

impl PortSet {
    /// Adds a match allowed by `policy_id`.
    pub fn add(&mut self, m: PortMatch, policy_id: u32) {
        self.0
            .entry(m)
            .and_modify(|p| *p = (*p).min(policy_id))
            .or_insert(policy_id);
    }

    /// Adds every match of `other`.
    pub fn merge(&mut self, other: &PortSet) {
        for (&m, &p) in &other.0 {
            self.add(m, p);
        }
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The matches and their policies.
    pub fn iter(&self) -> impl Iterator<Item = (PortMatch, u32)> + '_ {
        self.0.iter().map(|(&m, &p)| (m, p))
    }

    /// The policy-trie keys of this set, each with the lowest id of the policies whose
    /// matches produce it.
    pub fn keys(&self) -> BTreeMap<PortKey, u32> {
        let mut keys = BTreeMap::new();
        for (m, policy_id) in self.iter() {
            for key in m.keys() {
                keys.entry(key)
                    .and_modify(|p: &mut u32| *p = (*p).min(policy_id))
                    .or_insert(policy_id);
            }
        }
        keys
    }

    /// Policy-trie entries for this set under `(ruleset, peer_kind, peer)`.
    pub fn entries(
        &self,
        ruleset: u32,
        peer_kind: u8,
        peer: u32,
    ) -> impl Iterator<Item = (LpmKey<PolicyKey>, PolicyValue)> {
        let allowed = self
            .keys()
            .into_iter()
            .map(|(key, policy_id)| (key, PolicyValue::allow(policy_id, key.prefix_len)));
        policy_entries(ruleset, peer_kind, peer, allowed)
    }
}

impl PortMatch {
    /// The policy-trie keys that together match exactly this.
    pub fn keys(self) -> Vec<PortKey> {
        match self {
            Self::AnyProtocol => vec![PortKey::ANY],
            Self::AnyPort(p) => vec![PortKey::any_port(p.number())],
            Self::Range(p, first, last) => port_prefixes(first, last)
                .map(|(port, bits)| PortKey::port_prefix(p.number(), port, bits))
                .collect(),
        }
    }
}

/// The protocol-and-port part of a policy-trie key, with its prefix length: what a key
/// matches under any (ruleset, peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    /// Prefix length in the policy trie (`POLICY_PREFIX_ANY_PROTO..=POLICY_PREFIX_FULL`).
    pub prefix_len: u32,
    /// IP protocol (0 with [`POLICY_PREFIX_ANY_PROTO`]).
    pub proto: u8,
    /// Port, its bits past the prefix zero.
    pub port: u16,
}

impl PortKey {
    /// Every protocol and port.
    pub const ANY: Self = Self {
        prefix_len: POLICY_PREFIX_ANY_PROTO,
        proto: 0,
        port: 0,
    };

    /// Every port of `proto`.
    pub fn any_port(proto: u8) -> Self {
        Self::port_prefix(proto, 0, 0)
    }

    /// The ports of `proto` whose top `bits` bits are those of `port`.
    pub fn port_prefix(proto: u8, port: u16, bits: u8) -> Self {
        Self {
            prefix_len: POLICY_PREFIX_ANY_PORT + u32::from(bits),
            proto,
            port: masked_port(port, bits),
        }
    }

    /// The shorter keys that match everything this one does, longest first.
    pub fn enclosing(self) -> impl Iterator<Item = PortKey> {
        let port_bits = self.prefix_len.saturating_sub(POLICY_PREFIX_ANY_PORT) as u8;
        let port_prefixes = (self.prefix_len > POLICY_PREFIX_ANY_PORT)
            .then(move || {
                (0..port_bits)
                    .rev()
                    .map(move |bits| Self::port_prefix(self.proto, self.port, bits))
            })
            .into_iter()
            .flatten();
        let any = (self.prefix_len > POLICY_PREFIX_ANY_PROTO).then_some(Self::ANY);
        port_prefixes.chain(any)
    }
}

/// `port` with every bit after its top `bits` cleared.
fn masked_port(port: u16, bits: u8) -> u16 {
    match bits {
        0 => 0,
        b if b >= PORT_BITS => port,
        b => port & (u16::MAX << (PORT_BITS - b)),
    }
}

/// Policy-trie entries for `(ruleset, peer_kind, peer)` from their port keys.
pub fn policy_entries(
    ruleset: u32,
    peer_kind: u8,
    peer: u32,
    entries: impl IntoIterator<Item = (PortKey, PolicyValue)>,
) -> impl Iterator<Item = (LpmKey<PolicyKey>, PolicyValue)> {
    entries.into_iter().map(move |(key, value)| {
        let data = PolicyKey::new(ruleset, peer_kind, peer, key.proto, key.port);
        (
            LpmKey {
                prefix_len: key.prefix_len,
                data,
            },
            value,
        )
    })
}

/// Resolves a named port on a destination pod: `(name, protocol) -> port`.
pub type NamedPorts<'a> = &'a dyn Fn(&str, Protocol) -> Option<u16>;

/// A rule's `ports` for one policy, with named ports kept by name until the destination
/// pod is known.
#[derive(Clone, Debug, Default)]
pub struct RulePorts {
    /// Everything that does not depend on the destination pod.
    pub fixed: PortSet,
    /// Named ports still to resolve, with the policy that names them.
    pub named: Vec<(Protocol, String, u32)>,
}

impl RulePorts {
    /// The ports of a rule of `policy_id`. When the destination pod is already known (an
    /// ingress rule: the destination is the selected pod), named ports resolve now.
    pub fn new(ports: &Ports, policy_id: u32, destination: Option<&Pod>) -> Self {
        let mut out = Self::default();
        let Ports::Only(specs) = ports else {
            out.fixed.add(PortMatch::AnyProtocol, policy_id);
            return out;
        };
        for spec in specs {
            match &spec.port {
                PortRef::Any => out.fixed.add(PortMatch::AnyPort(spec.protocol), policy_id),
                PortRef::Range(first, last) => out
                    .fixed
                    .add(PortMatch::Range(spec.protocol, *first, *last), policy_id),
                PortRef::Named(name) => match destination {
                    Some(pod) => {
                        // "A name that does not resolve on a pod matches nothing there."
                        if let Some(n) = pod.named_port(name, spec.protocol) {
                            out.fixed
                                .add(PortMatch::Range(spec.protocol, n, n), policy_id);
                        }
                    }
                    None => out.named.push((spec.protocol, name.clone(), policy_id)),
                },
            }
        }
        out
    }

    /// Whether resolution depends on the destination pod.
    pub fn has_named(&self) -> bool {
        !self.named.is_empty()
    }

    /// The matches for a destination whose named ports `lookup` resolves (`None`: the
    /// destination is not a pod, so named ports match nothing).
    pub fn resolve(&self, lookup: Option<NamedPorts<'_>>) -> PortSet {
        let mut set = self.fixed.clone();
        if let Some(lookup) = lookup {
            set.merge(&self.resolve_named(lookup));
        }
        set
    }

    /// The matches of the named ports alone, on a destination whose names `lookup` resolves.
    pub fn resolve_named(&self, lookup: NamedPorts<'_>) -> PortSet {
        let mut set = PortSet::default();
        for (protocol, name, policy_id) in &self.named {
            if let Some(n) = lookup(name, *protocol) {
                set.add(PortMatch::Range(*protocol, n, n), *policy_id);
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enclosing_keys_run_from_the_longest_to_any_protocol() {
        let tcp = 6;
        let full = PortKey::port_prefix(tcp, 0x1234, PORT_BITS);
        let lens: Vec<u32> = full.enclosing().map(|k| k.prefix_len).collect();
        let expected: Vec<u32> = (POLICY_PREFIX_ANY_PORT..full.prefix_len)
            .rev()
            .chain([POLICY_PREFIX_ANY_PROTO])
            .collect();
        assert_eq!(lens, expected);
        assert!(
            full.enclosing()
                .all(|k| k.proto == tcp || k == PortKey::ANY)
        );
        assert_eq!(
            PortKey::port_prefix(tcp, 0x1234, 4).enclosing().next(),
            Some(PortKey::port_prefix(tcp, 0x1000, 3))
        );
        assert_eq!(
            PortKey::any_port(tcp).enclosing().collect::<Vec<_>>(),
            [PortKey::ANY]
        );
        assert_eq!(PortKey::ANY.enclosing().count(), 0);
    }

    #[test]
    fn a_key_per_prefix_of_a_range_with_the_lowest_policy() {
        let tcp = crate::model::Protocol::Tcp;
        let mut set = PortSet::default();
        set.add(PortMatch::Range(tcp, 80, 81), 7);
        set.add(PortMatch::Range(tcp, 80, 80), 3);
        let keys = set.keys();
        assert_eq!(keys[&PortKey::port_prefix(6, 80, 15)], 7);
        assert_eq!(keys[&PortKey::port_prefix(6, 80, 16)], 3);
        assert_eq!(keys.len(), 2);
    }
}
