//! Identities of remote addresses: pods of the whole cluster and the local node.

use policy_common::maps::{IDENTITY_WORLD, IpKey};

use crate::maps::IPCACHE;

/// Identity of `addr`, or [`IDENTITY_WORLD`] if it belongs to no known pod or node.
#[inline(always)]
pub fn identity(family: u8, addr: &[u8; 16]) -> u32 {
    let key = IpKey {
        family,
        _pad: [0; 3],
        addr: *addr,
    };
    match IPCACHE.get_ptr(key) {
        // SAFETY: the pointer comes from a successful lookup and is only read here.
        Some(value) => unsafe { (*value).identity },
        None => IDENTITY_WORLD,
    }
}
