//! Raw frames on a lab host's wire: send what no socket would (VLAN tags, forged sources,
//! discovery messages, hand-made fragments), and capture what reaches a host after the
//! datapath let it in. Everything happens inside the lab's namespaces.

use std::{io, mem::MaybeUninit, net::IpAddr, process::Command, time::Duration};

use policy_agent::{lab::Lab, netns::NetNs};
use policy_common::net::{ETH_P_IP, ETH_P_IPV6};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::{io::unix::AsyncFd, time::Instant};

use crate::packets::Packet;

/// Every lab host's interface.
pub const HOST_IF: &str = "eth0";
/// `ETH_P_ALL`: every protocol, for captures.
const ETH_P_ALL: u16 = 0x0003;
/// `sll_pkttype` of frames the host itself sent.
const PACKET_OUTGOING: u8 = 4;
/// A frame's Ethernet addresses.
type Mac = [u8; 6];

/// The MAC address of `ifname` in `netns`.
pub fn mac_of(netns: &str, ifname: &str) -> io::Result<Mac> {
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "link", "show", "dev", ifname])
        .output()?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(io::Error::other)?;
    let text = links[0]["address"]
        .as_str()
        .ok_or_else(|| io::Error::other(format!("{ifname} in {netns} has no MAC")))?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).map_err(io::Error::other)?;
    }
    Ok(mac)
}

/// A packet socket address naming `ifindex`, for sending (and `protocol`, for receiving).
fn link_address(ifindex: u32, protocol: u16) -> SockAddr {
    // SAFETY: a zeroed sockaddr_storage is valid, and a sockaddr_ll fits in it.
    let (_, addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            let ll = storage.cast::<libc::sockaddr_ll>();
            (*ll).sll_family = libc::AF_PACKET as u16;
            (*ll).sll_protocol = protocol.to_be();
            (*ll).sll_ifindex = ifindex as i32;
            *len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            Ok(())
        })
    }
    .expect("no I/O happens");
    addr
}

/// A lab host's link as an attacker on it sees it: a raw socket on its interface, its own
/// MAC and the node's MAC on the other end.
pub struct Link {
    socket: Socket,
    ifindex: u32,
    own: Mac,
    gateway: Mac,
}

impl Link {
    /// The link of `host` (a pod or an external host) of `lab`.
    pub fn of(lab: &Lab, host: &str) -> io::Result<Self> {
        let h = lab.host(host).map_err(io::Error::other)?;
        let node = lab.node_netns_name(h.node);
        let socket = h
            .netns
            .run(|| Socket::new(Domain::PACKET, Type::RAW, None))??;
        Ok(Self {
            socket,
            ifindex: h.netns.ifindex(HOST_IF)?,
            own: mac_of(h.netns.name(), HOST_IF)?,
            gateway: mac_of(node, &h.node_if)?,
        })
    }

    /// Sends `payload` to the node with `ether_type`, behind VLAN `tags` `(tpid, tci)`.
    pub fn send(&self, ether_type: u16, tags: &[(u16, u16)], payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(64 + payload.len());
        frame.extend_from_slice(&self.gateway);
        frame.extend_from_slice(&self.own);
        for (tpid, tci) in tags {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&tci.to_be_bytes());
        }
        frame.extend_from_slice(&ether_type.to_be_bytes());
        frame.extend_from_slice(payload);
        self.socket
            .send_to(&frame, &link_address(self.ifindex, ether_type))?;
        Ok(())
    }

    /// Sends an IP packet (its bytes as given) to the node.
    pub fn send_ip(&self, ip_packet: &[u8]) -> io::Result<()> {
        let ether_type = match ip_packet.first().map(|b| b >> 4) {
            Some(6) => ETH_P_IPV6,
            _ => ETH_P_IP,
        };
        self.send(ether_type, &[], ip_packet)
    }

    /// Sends `packet` to the node.
    pub fn send_packet(&self, packet: &Packet) -> io::Result<()> {
        self.send_ip(&packet.ip_packet())
    }
}

/// Frames arriving at a host: a packet socket for every protocol in its namespace, open
/// from its creation on.
pub struct Capture {
    socket: AsyncFd<Socket>,
}

impl Capture {
    /// Starts capturing on the interface of `netns`'s host.
    pub fn start(netns: &NetNs) -> io::Result<Self> {
        let ifindex = netns.ifindex(HOST_IF)?;
        let socket = netns.run(|| -> io::Result<Socket> {
            let s = Socket::new(
                Domain::PACKET,
                Type::RAW,
                Some(Protocol::from(i32::from(ETH_P_ALL.to_be()))),
            )?;
            s.bind(&link_address(ifindex, ETH_P_ALL))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })??;
        // SAFETY: the socket owns its descriptor, which stays open until the AsyncFd drops it.
        let socket = unsafe { AsyncFd::register(socket) }?;
        Ok(Self { socket })
    }

    /// The frames that arrived (not those the host sent) and contain `marker`, waiting
    /// `quiet` for more after each.
    pub async fn arrived_with(&self, marker: &[u8], quiet: Duration) -> Vec<Vec<u8>> {
        let mut found = Vec::new();
        let mut deadline = Instant::now() + quiet;
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 65_536];
        loop {
            let Ok(ready) = tokio::time::timeout_at(deadline, self.socket.readable()).await else {
                return found;
            };
            let mut guard = ready.expect("capture socket");
            match guard.try_io(|s| s.get_ref().recv_from(&mut buf)) {
                Ok(Ok((n, from))) => {
                    // SAFETY: recv_from initialised the first n bytes.
                    let frame: Vec<u8> = buf[..n]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    // SAFETY: a packet socket's source address is a sockaddr_ll.
                    let pkttype =
                        unsafe { (*from.as_ptr().cast::<libc::sockaddr_ll>()).sll_pkttype };
                    if pkttype != PACKET_OUTGOING && contains(&frame, marker) {
                        found.push(frame);
                        deadline = Instant::now() + quiet;
                    }
                }
                Ok(Err(e)) => panic!("capture failed: {e}"),
                Err(_would_block) => {}
            }
        }
    }
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A raw IP socket in `netns` that sends packets with the header as given (source included).
pub fn raw_ip_socket(netns: &NetNs, v6: bool) -> io::Result<Socket> {
    netns.run(move || -> io::Result<Socket> {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        // IPPROTO_RAW: we write the IP header.
        let s = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
        if v6 {
            s.set_header_included_v6(true)?;
        }
        Ok(s)
    })?
}

/// Sends `packet` through a raw IP socket towards its destination `to`.
pub fn send_raw(socket: &Socket, packet: &Packet, to: IpAddr) -> io::Result<()> {
    socket.send_to(
        &packet.ip_packet(),
        &std::net::SocketAddr::new(to, 0).into(),
    )?;
    Ok(())
}

/// The socket domain of an address family.
pub fn domain(v6: bool) -> Domain {
    if v6 { Domain::IPV6 } else { Domain::IPV4 }
}

/// A non-blocking socket of type `ty` bound to `port` (0: any) of the unspecified address of
/// its family (IPv6 only, for IPv6), listening if it is a stream socket. Make it inside a
/// host's namespace ([`NetNs::run`]).
pub fn bound(v6: bool, ty: Type, port: u16) -> io::Result<Socket> {
    let s = Socket::new(domain(v6), ty, None)?;
    if v6 {
        s.set_only_v6(true)?;
    }
    let any: IpAddr = if v6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    s.bind(&std::net::SocketAddr::new(any, port).into())?;
    if ty == Type::STREAM {
        s.listen(8)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}
