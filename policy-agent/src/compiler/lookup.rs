//! The compiled maps read the way the datapath reads them: longest-prefix matches on the
//! tries, exact matches on the hashes, behind the shared decision code's
//! [`PolicyMaps`]. The compiler uses it to decide connections through Services ahead of
//! time; the compiled evaluator to answer questions.

use std::collections::BTreeSet;

use bytemuck::Pod as PlainData;
use policy_common::{
    decide::PolicyMaps,
    maps::{
        CidrKey, CidrValue, FrontendKey, FrontendValue, IDENTITY_WORLD, IpKey, POLICY_PREFIX_FULL,
        PolicyKey, PolicyValue, ServicePolicyKey, ServicePolicyValue,
    },
};

use super::{Compiled, LpmKey};

/// The prefix lengths present in the compiled tries (an LPM lookup in user space tries each,
/// longest first).
#[derive(Clone, Debug, Default)]
pub struct PrefixLengths {
    policy: BTreeSet<u32>,
    cidr: BTreeSet<u32>,
}

impl PrefixLengths {
    /// The lengths in `compiled`.
    pub fn of(compiled: &Compiled) -> Self {
        Self {
            policy: compiled.policy.keys().map(|k| k.prefix_len).collect(),
            cidr: compiled.cidr.keys().map(|k| k.prefix_len).collect(),
        }
    }
}

/// Compiled map contents, read as the datapath reads the kernel's maps.
pub struct Lookup<'a> {
    compiled: &'a Compiled,
    lengths: &'a PrefixLengths,
}

impl<'a> Lookup<'a> {
    /// A reader of `compiled`, whose prefix lengths are `lengths`.
    pub fn new(compiled: &'a Compiled, lengths: &'a PrefixLengths) -> Self {
        Self { compiled, lengths }
    }
}

/// The entry of `entries` with the longest prefix (at most `max_len` bits) matching `data`.
fn longest<K: PlainData + Ord, V: Copy>(
    entries: &std::collections::BTreeMap<LpmKey<K>, V>,
    lengths: &BTreeSet<u32>,
    data: &K,
    max_len: u32,
) -> Option<V> {
    lengths.range(..=max_len).rev().find_map(|&len| {
        let key = LpmKey {
            prefix_len: len,
            data: masked(data, len),
        };
        entries.get(&key).copied()
    })
}

/// `data` with every bit after the first `bits` cleared, as the compiler stores prefixes.
pub fn masked<K: PlainData>(data: &K, bits: u32) -> K {
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

impl PolicyMaps for Lookup<'_> {
    fn identity(&self, addr: &IpKey) -> u32 {
        self.compiled
            .ipcache
            .get(addr)
            .map_or(IDENTITY_WORLD, |v| v.identity)
    }

    fn policy(&self, key: &PolicyKey) -> Option<PolicyValue> {
        longest(
            &self.compiled.policy,
            &self.lengths.policy,
            key,
            POLICY_PREFIX_FULL,
        )
    }

    fn cidr(&self, key: &CidrKey, prefix_len: u32) -> Option<CidrValue> {
        longest(&self.compiled.cidr, &self.lengths.cidr, key, prefix_len)
    }

    fn frontend(&self, key: &FrontendKey) -> Option<FrontendValue> {
        self.compiled.frontends.get(key).copied()
    }

    fn service_policy(&self, key: &ServicePolicyKey) -> Option<ServicePolicyValue> {
        self.compiled.service_policy.get(key).copied()
    }
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
