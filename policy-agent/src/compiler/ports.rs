//! What a rule admits at layer 4, and how that becomes policy-trie entries.

use std::collections::BTreeMap;

use policy_common::{
    maps::{POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, PolicyKey, PolicyValue},
    ports::port_prefixes,
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

    /// Policy-trie entries for this set under `(ruleset, peer_kind, peer)`.
    pub fn entries(
        &self,
        ruleset: u32,
        peer_kind: u8,
        peer: u32,
    ) -> impl Iterator<Item = (LpmKey<PolicyKey>, PolicyValue)> + '_ {
        self.iter().flat_map(move |(m, policy_id)| {
            let value = PolicyValue { policy_id };
            let key = |proto: u8, port: u16, prefix_len: u32| LpmKey {
                prefix_len,
                data: PolicyKey::new(ruleset, peer_kind, peer, proto, port),
            };
            let keys: Vec<_> = match m {
                PortMatch::AnyProtocol => vec![key(0, 0, POLICY_PREFIX_ANY_PROTO)],
                PortMatch::AnyPort(p) => vec![key(p.number(), 0, POLICY_PREFIX_ANY_PORT)],
                PortMatch::Range(p, first, last) => port_prefixes(first, last)
                    .map(|(port, bits)| {
                        key(p.number(), port, POLICY_PREFIX_ANY_PORT + u32::from(bits))
                    })
                    .collect(),
            };
            keys.into_iter().map(move |k| (k, value))
        })
    }
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
            for (protocol, name, policy_id) in &self.named {
                if let Some(n) = lookup(name, *protocol) {
                    set.add(PortMatch::Range(*protocol, n, n), *policy_id);
                }
            }
        }
        set
    }
}
