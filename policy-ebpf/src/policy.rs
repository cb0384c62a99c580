//! The kernel's maps as the shared decision reads them (`policy_common::decide`).

use aya_ebpf::maps::lpm_trie::Key;
use policy_common::{
    decide::PolicyMaps,
    maps::{CidrKey, CidrValue, POLICY_PREFIX_FULL, PolicyKey, PolicyValue},
};

use crate::{
    ipcache,
    maps::{CIDR, POLICY},
};

/// IPCACHE, POLICY and CIDR.
pub struct KernelMaps;

impl PolicyMaps for KernelMaps {
    #[inline(always)]
    fn identity(&self, addr: &policy_common::maps::IpKey) -> u32 {
        ipcache::identity(addr)
    }

    #[inline(always)]
    fn policy(&self, key: &PolicyKey) -> Option<PolicyValue> {
        POLICY.get(&Key::new(POLICY_PREFIX_FULL, *key)).copied()
    }

    #[inline(always)]
    fn cidr(&self, key: &CidrKey, prefix_len: u32) -> Option<CidrValue> {
        CIDR.get(&Key::new(prefix_len, *key)).copied()
    }
}
