//! The compiled evaluator: compile the cluster as the agent does, then answer with the
//! datapath's own decision code (`policy_common::decide`) run on the compiled map contents.
//! A flow passes when the source's egress and the destination's ingress both allow it,
//! as `from_pod` and `to_pod` decide it on one node.

use std::collections::{BTreeMap, BTreeSet};

use bytemuck::Pod as PlainData;
use policy_common::{
    decide::{self, PolicyMaps},
    maps::{
        CidrKey, CidrValue, Direction, IDENTITY_WORLD, IpKey, POLICY_PREFIX_FULL, PolicyKey,
        PolicyValue,
    },
};

use super::Flow;
use crate::{
    compiler::{Compiled, Compiler, LpmKey, NodeConfig, ip_key},
    model::{Cluster, ObjectRef},
};

/// Node name under which every pod is compiled as local.
const NODE: &str = "evaluation";

/// An LPM trie in user space: exact lookups at each prefix length present, longest first.
#[derive(Debug)]
struct LpmTable<K, V> {
    entries: BTreeMap<LpmKey<K>, V>,
    lengths: BTreeSet<u32>,
}

impl<K: PlainData + Ord, V: Copy> LpmTable<K, V> {
    fn new(entries: &BTreeMap<LpmKey<K>, V>) -> Self {
        Self {
            lengths: entries.keys().map(|k| k.prefix_len).collect(),
            entries: entries.clone(),
        }
    }

    /// The entry with the longest prefix (at most `max_len` bits) matching `data`.
    fn longest(&self, data: &K, max_len: u32) -> Option<V> {
        self.lengths.range(..=max_len).rev().find_map(|&len| {
            let key = LpmKey {
                prefix_len: len,
                data: masked(data, len),
            };
            self.entries.get(&key).copied()
        })
    }
}

/// `data` with every bit after the first `bits` cleared, as the compiler stores prefixes.
fn masked<K: PlainData>(data: &K, bits: u32) -> K {
    let mut bytes = bytemuck::bytes_of(data).to_vec();
    for (i, byte) in bytes.iter_mut().enumerate() {
        let start = i as u32 * 8;
        if start >= bits {
            *byte = 0;
        } else if start + 8 > bits {
            *byte &= 0xffu8 << (start + 8 - bits);
        }
    }
    bytemuck::pod_read_unaligned(&bytes)
}

/// A cluster compiled for one node that holds every pod.
pub struct CompiledEvaluator {
    compiled: Compiled,
    policy: LpmTable<PolicyKey, PolicyValue>,
    cidr: LpmTable<CidrKey, CidrValue>,
}

impl PolicyMaps for CompiledEvaluator {
    fn identity(&self, addr: &IpKey) -> u32 {
        self.compiled
            .ipcache
            .get(addr)
            .map_or(IDENTITY_WORLD, |v| v.identity)
    }

    fn policy(&self, key: &PolicyKey) -> Option<PolicyValue> {
        self.policy.longest(key, POLICY_PREFIX_FULL)
    }

    fn cidr(&self, key: &CidrKey, prefix_len: u32) -> Option<CidrValue> {
        self.cidr.longest(key, prefix_len)
    }
}

impl CompiledEvaluator {
    /// Compiles `cluster` with every pod on one node.
    pub fn new(cluster: &Cluster) -> Self {
        Self::with_compiler(&mut Compiler::new(), cluster)
    }

    /// Like [`CompiledEvaluator::new`], reusing a compiler (and its stable ids).
    pub fn with_compiler(compiler: &mut Compiler, cluster: &Cluster) -> Self {
        let compiled = compiler.compile(&on_one_node(cluster), &node());
        Self {
            policy: LpmTable::new(&compiled.policy),
            cidr: LpmTable::new(&compiled.cidr),
            compiled,
        }
    }

    /// What the compiler produced.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// Whether the flow's first packet passes the source's egress and the destination's
    /// ingress; a pod talking to itself never reaches the datapath.
    pub fn allows(&self, flow: &Flow<'_>) -> bool {
        if flow.from.pod.is_some() && flow.from.pod == flow.to.pod {
            return true;
        }
        let proto = flow.protocol.number();
        let side = |pod: Option<&ObjectRef>, dir, remote| {
            let Some(ep) = pod.and_then(|p| self.compiled.endpoints.get(p)) else {
                return true; // an external host: no policy of ours applies
            };
            // Between two hosts the node only forwards: a node address on the sending side
            // would be just an address, as the datapath sees it on a pod's interface.
            let node_itself = dir == Direction::Egress;
            decide::new_flow(
                self,
                ep,
                dir,
                &ip_key(remote),
                proto,
                flow.port,
                node_itself,
            )
            .allowed
            .is_some()
        };
        side(flow.from.pod.as_ref(), Direction::Egress, flow.dst)
            && side(flow.to.pod.as_ref(), Direction::Ingress, flow.src)
    }
}

/// The node every pod is put on.
pub fn node() -> NodeConfig {
    NodeConfig {
        name: NODE.to_owned(),
        addresses: Vec::new(),
    }
}

/// `cluster` with every pod scheduled on [`node`].
pub fn on_one_node(cluster: &Cluster) -> Cluster {
    let mut c = cluster.clone();
    for pod in c.pods.values_mut() {
        pod.node = Some(NODE.to_owned());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_the_prefix_bits_only() {
        assert_eq!(masked(&0xffff_ffffu32.to_be(), 12), 0xfff0_0000u32.to_be());
        assert_eq!(masked(&[0xabu8, 0xcd], 0), [0, 0]);
        assert_eq!(masked(&[0xabu8, 0xcd], 16), [0xab, 0xcd]);
    }
}
