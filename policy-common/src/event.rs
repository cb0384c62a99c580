//! The flow record the datapath writes to the ring buffer.

use bytemuck::{Pod, Zeroable};

/// One record in [`crate::maps::names::EVENTS`]: a dropped packet, or the first packet of a
/// new allowed flow. Addresses and ports are from the pod's point of view.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns` (monotonic, since boot).
    pub timestamp_ns: u64,
    /// Endpoint the verdict was made for (0: unknown interface).
    pub endpoint_id: u32,
    /// Policy whose rule allowed the flow (0 when none did).
    pub policy_id: u32,
    /// Interface the packet was seen on.
    pub ifindex: u32,
    /// Packet length (L2 included).
    pub packet_len: u32,
    /// Identity of the remote address ([`crate::maps::IDENTITY_WORLD`] if outside the cluster).
    pub remote_identity: u32,
    /// The pod's address.
    pub local_addr: [u8; 16],
    /// The peer's address.
    pub remote_addr: [u8; 16],
    /// The pod's port (ICMP: echo identifier or 0).
    pub local_port: u16,
    /// The peer's port (ICMP: 0).
    pub remote_port: u16,
    /// Address family (`FAMILY_*`), 0 for non-IP packets.
    pub family: u8,
    /// IP protocol.
    pub proto: u8,
    /// [`crate::maps::Direction`].
    pub direction: u8,
    /// [`crate::reason::Verdict`].
    pub verdict: u8,
    /// [`crate::reason::AllowReason`] or [`crate::reason::DropReason`], per `verdict`.
    pub reason: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}

/// Bytes of waiting records at whose every multiple the datapath wakes the agent: 256
/// records of [`FlowEvent`] with the ring buffer's 8-byte record header (2 % of
/// [`crate::maps::capacity::EVENTS_BYTES`]). Other records are submitted without a wakeup
/// and the agent collects them on its flush timer, so a burst of new connections costs one
/// wakeup per batch rather than one per record.
pub const WAKEUP_BYTES: u32 = 256 * (size_of::<FlowEvent>() as u32 + RINGBUF_HEADER_BYTES);

/// Bytes the ring buffer puts before every record.
pub const RINGBUF_HEADER_BYTES: u32 = 8;
