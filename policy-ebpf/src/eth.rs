//! Ethernet: which network protocol the frame carries.

use aya_ebpf::programs::TcContext;
use network_types::eth::EthHdr;
use policy_common::{net::ETH_P_ARP, reason::DropReason};

use crate::packet::load;

/// Length of the Ethernet header.
pub const ETH_HLEN: usize = EthHdr::LEN;

/// The EtherType in host byte order.
#[inline(always)]
pub fn ether_type(ctx: &TcContext) -> Result<u16, DropReason> {
    let eth: EthHdr = load(ctx, 0)?;
    Ok(u16::from_be(eth.ether_type))
}

/// Offset of the sender protocol address in an Ethernet/IPv4 ARP packet.
const ARP_SENDER_IP_OFF: usize = ETH_HLEN + 14;

/// The IPv4 address an ARP packet claims as its sender's.
#[inline(always)]
pub fn arp_sender_ip(ctx: &TcContext) -> Result<[u8; 4], DropReason> {
    load(ctx, ARP_SENDER_IP_OFF)
}

/// Whether an EtherType is ARP.
#[inline(always)]
pub const fn is_arp(ether_type: u16) -> bool {
    ether_type == ETH_P_ARP
}
