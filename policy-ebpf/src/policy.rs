//! The kernel's maps as the shared decision reads them (`policy_common::decide`).

use aya_ebpf::maps::lpm_trie::Key;
use policy_common::{
    decide::PolicyMaps,
    maps::{
        CidrKey, CidrValue, FrontendKey, FrontendValue, POLICY_PREFIX_FULL, PolicyKey, PolicyValue,
        ServicePolicyKey, ServicePolicyValue,
    },
};

use crate::{
    ipcache,
    maps::{CIDR, FRONTENDS, POLICY, SERVICE_POLICY},
};

/// IPCACHE, POLICY, CIDR, FRONTENDS and SERVICE_POLICY.
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

    #[inline(always)]
    fn frontend(&self, key: &FrontendKey) -> Option<FrontendValue> {
        // SAFETY: the pointer comes from a successful lookup; the value is copied out.
        FRONTENDS.get_ptr(key).map(|v| unsafe { *v })
    }

    #[inline(always)]
    fn service_policy(&self, key: &ServicePolicyKey) -> Option<ServicePolicyValue> {
        // SAFETY: the pointer comes from a successful lookup; the value is copied out.
        SERVICE_POLICY.get_ptr(key).map(|v| unsafe { *v })
    }
}
