//! Types shared by the eBPF datapath (`policy-ebpf`) and the agent (`policy-agent`).
//!
//! One definition of every map key and value, the flow event record, the verdict reasons
//! and the wire constants, so both sides agree byte for byte. `no_std`; the `user` feature
//! adds what aya needs to read and write the maps from user space.
#![cfg_attr(not(test), no_std)]

pub mod decide;
pub mod event;
pub mod maps;
pub mod net;
pub mod ports;
pub mod reason;

/// Marks map keys and values as plain data for aya's user-space map API.
#[cfg(feature = "user")]
macro_rules! aya_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            // SAFETY: `$ty` is `#[repr(C)]` and bytemuck::Pod (no padding, any bit pattern is valid).
            unsafe impl aya::Pod for $ty {}
        )*
    };
}

#[cfg(feature = "user")]
aya_pod!(
    maps::IpKey,
    maps::IpcacheValue,
    maps::EndpointInfo,
    maps::PolicyKey,
    maps::PolicyValue,
    maps::CidrKey,
    maps::CidrValue,
    maps::CtKey,
    maps::CtEntry,
    maps::FragKey,
    maps::FragValue,
    maps::StatsKey,
    maps::StatsValue,
    maps::EndpointCounters,
    maps::FrontendKey,
    maps::FrontendValue,
    maps::ServicePolicyKey,
    maps::ServicePolicyValue,
    event::FlowEvent,
);

/// Sizes the kernel side relies on; a change here is a change of the map ABI.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<maps::IpKey>() == 20);
    assert!(size_of::<maps::EndpointInfo>() == 56);
    assert!(size_of::<maps::PolicyKey>() * 8 == maps::POLICY_PREFIX_FULL as usize);
    assert!(size_of::<maps::PolicyValue>() == 8);
    // PolicyValue holds key lengths in bytes.
    assert!(maps::POLICY_PREFIX_FULL <= u8::MAX as u32);
    assert!(size_of::<maps::CidrKey>() == 24);
    assert!(size_of::<maps::CidrValue>() == 8);
    assert!(size_of::<maps::CtKey>() == 44);
    assert!(size_of::<maps::CtEntry>() == 24);
    assert!(size_of::<maps::FragKey>() == 44);
    assert!(size_of::<maps::StatsKey>() == 8);
    assert!(size_of::<event::FlowEvent>() == 72);
    assert!(size_of::<maps::EndpointCounters>() == 24);
    assert!(size_of::<maps::FrontendKey>() == 24);
    assert!(size_of::<maps::FrontendValue>() == 24);
    assert!(size_of::<maps::ServicePolicyValue>() == 8);
};
