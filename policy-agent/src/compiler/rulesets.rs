//! Rulesets: the allowed (peer, ports) pairs of a local endpoint and direction, worked out
//! from the policies selecting it ([`ruleset`]), and kept from one compilation to the next
//! with what they were worked out from ([`KeptRulesets`]): the policies' versions, the
//! resolutions of the selector peers they admit, and the named ports of the pods inside
//! their address blocks with named ports. A compilation works out again only the rulesets
//! one of those changed for; the others cost a comparison of their inputs.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;
use policy_common::maps::{CidrKey, CidrValue, Direction, PolicyKey, PolicyValue};

use super::{
    LpmKey, RulesetContent, cidr,
    ports::RulePorts,
    select::{IdentityIndex, PeerKey},
};
use crate::{
    model::{Pod, Protocol},
    semantics::{IpBlock, ParsedPolicy, Peer, Peers},
};

/// What a local pod's ruleset in one direction depends on besides the cluster's
/// identities and addresses: the policies selecting it and, for ingress, the named ports
/// its rules resolve on the pod. Pods with equal keys have equal rulesets.
pub(super) type RulesetKey = (Direction, Vec<u32>, Vec<(String, Protocol, u16)>);

/// The named ports of the pods at the addresses of some blocks, by address.
type NamedPortsAt = Vec<(IpAddr, Vec<(String, Protocol, u16)>)>;

/// What a ruleset was worked out from, besides its key.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Inputs {
    /// The version of each selecting policy as the compiler parsed it, in key order.
    pub policies: Vec<u64>,
    /// The selector peers it resolved, with the version of each resolution.
    pub peers: Vec<(PeerKey, u64)>,
    /// The blocks of its rules with named ports, which resolve on the pods inside them.
    pub named_blocks: Vec<IpNet>,
    /// The named ports of the pods inside `named_blocks`.
    pub named_ports: NamedPortsAt,
}

/// The map entries of one ruleset, and the CIDR classes they use.
#[derive(Debug, Default)]
pub(super) struct Emitted {
    /// POLICY entries.
    pub policy: Vec<(LpmKey<PolicyKey>, PolicyValue)>,
    /// CIDR entries.
    pub cidr: Vec<(LpmKey<CidrKey>, CidrValue)>,
    /// The ids of the CIDR classes in `policy`.
    pub classes: Vec<u32>,
}

/// A ruleset as the last compilation worked it out.
#[derive(Debug)]
struct Kept {
    id: u32,
    inputs: Inputs,
    emitted: Emitted,
}

/// A ruleset found still valid: its id, entries, and the peers it resolved.
pub(super) struct Reused<'a> {
    /// The ruleset's id.
    pub id: u32,
    /// Its map entries.
    pub emitted: &'a Emitted,
    /// The peers it resolved (still in use).
    pub peers: &'a [(PeerKey, u64)],
}

/// The rulesets of the last compilation, by key (see the module).
#[derive(Debug, Default)]
pub(super) struct KeptRulesets {
    kept: HashMap<RulesetKey, Kept>,
    /// Keys the compilation under way has asked for.
    used: HashSet<RulesetKey>,
}

impl KeptRulesets {
    /// The ruleset of `key` if nothing it was worked out from changed: `policies` are the
    /// versions of the selecting policies now.
    pub fn reuse(
        &mut self,
        key: &RulesetKey,
        policies: &[u64],
        index: &IdentityIndex,
        pods_by_ip: &BTreeMap<IpAddr, &Pod>,
    ) -> Option<Reused<'_>> {
        self.used.insert(key.clone());
        let kept = self.kept.get(key)?;
        let inputs = &kept.inputs;
        let valid = inputs.policies == policies
            && inputs
                .peers
                .iter()
                .all(|(peer, version)| index.version(peer) == Some(*version))
            && (inputs.named_blocks.is_empty()
                || named_ports_in(&inputs.named_blocks, pods_by_ip) == inputs.named_ports);
        valid.then_some(Reused {
            id: kept.id,
            emitted: &kept.emitted,
            peers: &kept.inputs.peers,
        })
    }

    /// Keeps what the compilation worked out for `key`.
    pub fn keep(&mut self, key: RulesetKey, id: u32, inputs: Inputs, emitted: Emitted) {
        self.used.insert(key.clone());
        self.kept.insert(
            key,
            Kept {
                id,
                inputs,
                emitted,
            },
        );
    }

    /// Ends a compilation: rulesets it did not ask for are forgotten (their ids may go to
    /// other contents from now on).
    pub fn end_compilation(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.kept.retain(|key, _| used.contains(key));
    }
}

/// The named ports of the pods at addresses inside `blocks`.
fn named_ports_in(blocks: &[IpNet], pods_by_ip: &BTreeMap<IpAddr, &Pod>) -> NamedPortsAt {
    let mut out = NamedPortsAt::new();
    for block in blocks {
        for (ip, pod) in pods_by_ip.range(block.network()..=block.broadcast()) {
            let named = pod
                .ports
                .iter()
                .filter_map(|p| Some((p.name.clone()?, p.protocol, p.port)))
                .collect();
            out.push((*ip, named));
        }
    }
    out
}

/// The allowed (peer, ports) pairs for `pod` in `dir`, from the policies selecting it,
/// and what they were worked out from (`policies` versions as given).
pub(super) fn ruleset(
    index: &mut IdentityIndex,
    pods_by_ip: &BTreeMap<IpAddr, &Pod>,
    dir: Direction,
    pod: &Pod,
    selecting: &[(u32, &ParsedPolicy)],
    policies: Vec<u64>,
) -> (RulesetContent, Inputs) {
    // Ingress ports name the selected pod's ports; egress ports the remote pod's.
    let destination = (dir == Direction::Ingress).then_some(pod);
    let mut content = RulesetContent::default();
    let mut blocks: Vec<(IpBlock, RulePorts)> = Vec::new();
    let mut peers_resolved: Vec<(PeerKey, u64)> = Vec::new();
    for &(policy_id, policy) in selecting {
        for rule in policy.rules(dir).unwrap_or_default() {
            let ports = RulePorts::new(&rule.ports, policy_id, destination);
            let peers = match &rule.peers {
                // "If this field is empty or missing, this rule matches all sources" (or
                // destinations): every address, pods included.
                Peers::All => {
                    for all in ["0.0.0.0/0", "::/0"] {
                        blocks.push((
                            IpBlock {
                                cidr: all.parse().expect("valid literal"),
                                except: Vec::new(),
                            },
                            ports.clone(),
                        ));
                    }
                    continue;
                }
                Peers::Only(peers) => peers,
            };
            for peer in peers {
                match peer {
                    Peer::IpBlock(block) => blocks.push((block.clone(), ports.clone())),
                    Peer::Pods { namespaces, pods } => {
                        let admitted = index
                            .admitted(&policy.id.namespace, namespaces.as_ref(), pods)
                            .to_vec();
                        let peer: PeerKey = (
                            policy.id.namespace.clone(),
                            namespaces.clone(),
                            pods.clone(),
                        );
                        let version = index.version(&peer).expect("just resolved");
                        peers_resolved.push((peer, version));
                        // Without named ports every admitted identity gets the same ports.
                        let unnamed = (!ports.has_named()).then(|| ports.resolve(None));
                        for id in admitted {
                            let allowed = match &unnamed {
                                Some(allowed) => allowed.clone(),
                                None => {
                                    let key = index.get(id).expect("admitted identities exist");
                                    let lookup = |name: &str, proto| key.named_port(name, proto);
                                    ports.resolve(Some(&lookup))
                                }
                            };
                            if !allowed.is_empty() {
                                content.identities.entry(id).or_default().merge(&allowed);
                            }
                        }
                    }
                }
            }
        }
    }
    content.cidrs = cidr::classify(
        &blocks,
        |ip| pods_by_ip.get(&ip).copied(),
        pods_by_ip.keys().copied(),
    );
    let named_blocks: Vec<IpNet> = blocks
        .iter()
        .filter(|(_, ports)| ports.has_named())
        .map(|(block, _)| block.cidr)
        .collect();
    let named_ports = named_ports_in(&named_blocks, pods_by_ip);
    let inputs = Inputs {
        policies,
        peers: peers_resolved,
        named_blocks,
        named_ports,
    };
    (content, inputs)
}
