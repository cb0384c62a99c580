//! Ethernet: which network protocol the frame carries, and whether anything hides it.

use aya_ebpf::programs::TcContext;
use network_types::eth::EthHdr;
use policy_common::{net::ETH_P_ARP, reason::DropReason};

use crate::packet::{load, read};

/// Length of the Ethernet header.
pub const ETH_HLEN: usize = EthHdr::LEN;

/// The EtherType in host byte order.
#[inline(always)]
pub fn ether_type(ctx: &TcContext) -> Result<u16, DropReason> {
    let eth: EthHdr = read(ctx, 0)?;
    Ok(u16::from_be(eth.ether_type))
}

/// Whether the frame is plain: no VLAN tag, neither in its bytes nor one the kernel already
/// moved to the skb's metadata, and the EtherType is what the kernel dispatches on. A tag
/// hides the protocol from us, and the kernel strips priority tags (VID 0) after the hook
/// and routes whatever they carried.
#[inline(always)]
pub fn is_plain(ctx: &TcContext, ether_type: u16) -> bool {
    // SAFETY: `ctx.skb.skb` is the program's context pointer; both fields are readable in
    // TC programs (the verifier rewrites the accesses to the real skb's fields).
    let (tagged, protocol) = unsafe { ((*ctx.skb.skb).vlan_present, (*ctx.skb.skb).protocol) };
    tagged == 0 && u16::from_be(protocol as u16) == ether_type
}

/// Offset of the sender protocol address in an Ethernet/IPv4 ARP packet.
const ARP_SENDER_IP_OFF: usize = ETH_HLEN + 14;
/// The start of an ARP packet for IPv4 over Ethernet (RFC 826): hardware type 1, protocol
/// type IPv4, 6-byte hardware and 4-byte protocol addresses.
const ARP_IPV4_OVER_ETHERNET: [u8; 6] = [0, 1, 0x08, 0x00, 6, 4];

/// Whether an ARP packet is IPv4 over Ethernet, the only kind whose sender address sits
/// where [`arp_sender_ip`] reads it.
#[inline(always)]
pub fn is_ipv4_over_ethernet_arp(ctx: &TcContext) -> bool {
    load::<[u8; 6]>(ctx, ETH_HLEN).is_ok_and(|start| start == ARP_IPV4_OVER_ETHERNET)
}

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
