//! Identities of remote addresses: pods of the whole cluster and the local node.

use policy_common::maps::{IDENTITY_WORLD, IpKey};

use crate::maps::IPCACHE;

/// Identity of `addr`, or [`IDENTITY_WORLD`] if it belongs to no known pod or node.
#[inline(always)]
pub fn identity(addr: &IpKey) -> u32 {
    match IPCACHE.get_ptr(addr) {
        // SAFETY: the pointer comes from a successful lookup and is only read here.
        Some(value) => unsafe { (*value).identity },
        None => IDENTITY_WORLD,
    }
}
