//! SCTP by hand: this kernel has no SCTP sockets, so lab probes are crafted INIT chunks
//! sent through raw sockets, answered by INIT ACKs from a raw-socket responder (or, on a
//! port nothing serves, by an ABORT, as an SCTP stack answers an INIT nobody listens for).
//! That is the first exchange of a real association, and enough to see whether the datapath
//! lets an SCTP flow through in both directions.

use std::{io, mem::MaybeUninit, net::IpAddr};

use crc::{CRC_32_ISCSI, Crc};
use policy_common::net::proto;
pub use policy_common::net::sctp::{CHUNK_ABORT, CHUNK_INIT, CHUNK_INIT_ACK, COMMON_HEADER_LEN};
use socket2::{Domain, Protocol as SockProtocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

/// CRC32c, SCTP's checksum (RFC 9260 appendix A).
const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

const CHECKSUM_OFF: usize = 8;
/// Length of a chunk header (type, flags, length): all an ABORT without causes has.
const CHUNK_HEADER_LEN: u16 = 4;
/// State Cookie parameter, mandatory in INIT ACK.
const PARAM_STATE_COOKIE: u16 = 7;
const IPV4_MIN_HEADER: usize = 20;

/// The fields of an SCTP packet the lab cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Verification tag of the packet.
    pub vtag: u32,
    /// Type of the first chunk.
    pub chunk: u8,
    /// Initiate tag of an INIT or INIT ACK.
    pub initiate_tag: u32,
}

/// Builds an INIT, an INIT ACK or an ABORT (without error causes; `initiate_tag` unused).
pub fn build(p: &Packet) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    out.extend_from_slice(&p.src_port.to_be_bytes());
    out.extend_from_slice(&p.dst_port.to_be_bytes());
    out.extend_from_slice(&p.vtag.to_be_bytes());
    out.extend_from_slice(&[0; 4]); // checksum, filled below
    if p.chunk == CHUNK_ABORT {
        out.extend_from_slice(&[p.chunk, 0]);
        out.extend_from_slice(&CHUNK_HEADER_LEN.to_be_bytes());
        return checksummed(out);
    }
    let cookie_len: u16 = if p.chunk == CHUNK_INIT_ACK { 8 } else { 0 };
    let chunk_len = 20 + cookie_len;
    out.extend_from_slice(&[p.chunk, 0]);
    out.extend_from_slice(&chunk_len.to_be_bytes());
    out.extend_from_slice(&p.initiate_tag.to_be_bytes());
    out.extend_from_slice(&65_535u32.to_be_bytes()); // advertised receiver window
    out.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    out.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    out.extend_from_slice(&p.initiate_tag.to_be_bytes()); // initial TSN
    if cookie_len > 0 {
        out.extend_from_slice(&PARAM_STATE_COOKIE.to_be_bytes());
        out.extend_from_slice(&8u16.to_be_bytes());
        out.extend_from_slice(&p.vtag.to_be_bytes());
    }
    checksummed(out)
}

/// `packet` with its CRC32c filled in.
fn checksummed(mut packet: Vec<u8>) -> Vec<u8> {
    let crc = CRC32C.checksum(&packet);
    // The CRC goes on the wire least significant byte first, as Linux writes it.
    packet[CHECKSUM_OFF..CHECKSUM_OFF + 4].copy_from_slice(&crc.to_le_bytes());
    packet
}

/// Parses an SCTP packet (no IP header) whose first chunk is an INIT, an INIT ACK or an
/// ABORT (whose `initiate_tag` reads as 0).
pub fn parse(b: &[u8]) -> Option<Packet> {
    let u16_at = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let chunk = *b.get(COMMON_HEADER_LEN)?;
    let initiate_tag = match chunk {
        CHUNK_INIT | CHUNK_INIT_ACK if b.len() >= COMMON_HEADER_LEN + 8 => {
            u32_at(COMMON_HEADER_LEN + 4)
        }
        CHUNK_ABORT if b.len() >= COMMON_HEADER_LEN + usize::from(CHUNK_HEADER_LEN) => 0,
        _ => return None,
    };
    Some(Packet {
        src_port: u16_at(0),
        dst_port: u16_at(2),
        vtag: u32_at(4),
        chunk,
        initiate_tag,
    })
}

/// A raw socket for protocol SCTP of one family, usable from tokio.
pub struct RawSctp {
    fd: AsyncFd<Socket>,
    ipv6: bool,
}

impl RawSctp {
    /// Opens the socket; call it inside the network namespace it is for (then move it anywhere).
    pub fn open(ipv6: bool) -> io::Result<Socket> {
        let domain = if ipv6 { Domain::IPV6 } else { Domain::IPV4 };
        let socket = Socket::new(
            domain,
            Type::RAW,
            Some(SockProtocol::from(i32::from(proto::SCTP))),
        )?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }

    /// Wraps a socket from [`RawSctp::open`] (needs a tokio runtime).
    pub fn new(socket: Socket) -> io::Result<Self> {
        let ipv6 = socket.domain()? == Domain::IPV6;
        // SAFETY: the socket owns its descriptor, which stays open until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register(socket) }?;
        Ok(Self { fd, ipv6 })
    }

    /// Sends an SCTP packet to `to`.
    pub async fn send(&self, to: IpAddr, packet: &[u8]) -> io::Result<()> {
        let addr = SockAddr::from(std::net::SocketAddr::new(to, 0));
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|s| s.get_ref().send_to(packet, &addr)) {
                Ok(r) => return r.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives the next SCTP packet: its source address and the SCTP bytes.
    pub async fn recv(&self) -> io::Result<(IpAddr, Vec<u8>)> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
        loop {
            let mut guard = self.fd.readable().await?;
            let (n, from) = match guard.try_io(|s| s.get_ref().recv_from(&mut buf)) {
                Ok(r) => r?,
                Err(_would_block) => continue,
            };
            // SAFETY: recv_from initialised the first `n` bytes.
            let data: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            let Some(src) = from.as_socket().map(|s| s.ip()) else {
                continue;
            };
            // IPv4 raw sockets deliver the IP header too; IPv6 ones do not.
            let payload = if self.ipv6 {
                data
            } else {
                let ihl = usize::from(data.first().copied().unwrap_or(0) & 0x0f) * 4;
                if ihl < IPV4_MIN_HEADER || data.len() < ihl {
                    continue;
                }
                data[ihl..].to_vec()
            };
            return Ok((src, payload));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_round_trips_and_checksum_verifies() {
        let init = Packet {
            src_port: 40000,
            dst_port: 80,
            vtag: 0,
            chunk: CHUNK_INIT,
            initiate_tag: 0xdead_beef,
        };
        let bytes = build(&init);
        assert_eq!(parse(&bytes), Some(init));
        let mut zeroed = bytes.clone();
        zeroed[CHECKSUM_OFF..CHECKSUM_OFF + 4].fill(0);
        let crc = CRC32C.checksum(&zeroed).to_le_bytes();
        assert_eq!(bytes[CHECKSUM_OFF..CHECKSUM_OFF + 4], crc);
    }
}
