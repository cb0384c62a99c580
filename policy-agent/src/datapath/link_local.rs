//! The link-local address of a pod's interface, read from the kernel when the agent attaches
//! to the pod's host-side veth: the only link-local address the pod may then use in
//! neighbour discovery (see `EndpointInfo::link_local`).
//!
//! The address is read where it lives, on the veth's peer inside the pod's namespace, with
//! one netlink request from the node's side (`RTM_GETADDR` with `IFA_TARGET_NETNSID`, the
//! peer's namespace as the host-side veth names it): no namespace path is needed, so it
//! works for pods found through the CNI plugin and by route alike, whatever address
//! generation mode (EUI-64, stable privacy, random) the pod's kernel uses. A MAC address
//! would not do: the CNI result may lack it, and the pod may change it. It is read when the
//! agent attaches, as the CNI plugin hands the pod over, before any of its containers runs;
//! an agent restarted later reads it again from the running pod, so the datapath also
//! refuses any node address and the agent any address two pods both hold.

use std::{io, net::Ipv6Addr};

use rtnetlink::{
    packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        address::{AddressAttribute, AddressMessage, AddressProtocol},
        link::{LinkAttribute, LinkMessage},
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

/// The link-local address of the interface at the other end of the veth `ifindex` (in the
/// calling thread's namespace): the kernel's own (`proto kernel_ll`) when there is one, else
/// the first. `None` when the interface has none (IPv6 off, or not up yet) or is no veth.
pub fn of_peer(ifindex: u32) -> io::Result<Option<Ipv6Addr>> {
    let socket = Netlink::open()?;
    let Some((peer, netns)) = socket.peer(ifindex)? else {
        return Ok(None);
    };
    let mut found = None;
    for msg in socket.addresses(peer, netns)? {
        if msg.header.index != peer {
            continue;
        }
        let mut addr = None;
        let mut kernel = false;
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Address(std::net::IpAddr::V6(a)) if a.is_unicast_link_local() => {
                    addr = Some(*a);
                }
                AddressAttribute::Protocol(AddressProtocol::LinkLocal) => kernel = true,
                _ => {}
            }
        }
        match (addr, kernel) {
            (Some(a), true) => return Ok(Some(a)),
            (Some(a), false) => {
                found.get_or_insert(a);
            }
            (None, _) => {}
        }
    }
    Ok(found)
}

/// A route netlink socket with strict checking, which the kernel requires to honour
/// `IFA_TARGET_NETNSID` in an address dump.
struct Netlink {
    socket: Socket,
}

impl Netlink {
    fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.set_netlink_get_strict_chk(true)?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket })
    }

    /// The veth's peer: its index and, if it lives in another namespace, that namespace's
    /// id as this one knows it.
    fn peer(&self, ifindex: u32) -> io::Result<Option<(u32, Option<i32>)>> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        let replies = self.request(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST)?;
        let mut peer = None;
        let mut netns = None;
        for reply in replies {
            if let RouteNetlinkMessage::NewLink(link) = reply {
                for attr in link.attributes {
                    match attr {
                        LinkAttribute::Link(index) => peer = Some(index),
                        LinkAttribute::LinkNetNsId(id) => netns = Some(id),
                        _ => {}
                    }
                }
            }
        }
        Ok(peer.map(|p| (p, netns)))
    }

    /// The IPv6 addresses of interface `index` in namespace `netns` (or this one).
    fn addresses(&self, index: u32, netns: Option<i32>) -> io::Result<Vec<AddressMessage>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet6;
        msg.header.index = index;
        if let Some(id) = netns {
            msg.attributes.push(AddressAttribute::TargetNetNsId(id));
        }
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(msg),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(a) => Some(a),
                _ => None,
            })
            .collect())
    }

    /// Sends one request and collects its replies (a dump's until it is done).
    fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = 1;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        request.finalize();
        let mut buf = vec![0u8; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut at = 0;
            while at < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[at..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        if !dump {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                at += len.next_multiple_of(4);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::{NetNs, sweep_stale};

    /// Test namespaces: the prefix, then the pid (for [`sweep_stale`]).
    const PREFIX: &str = "pa-lltest-";

    /// The host side in one namespace, the pod side in another, as on a node: the address
    /// read from the host side is the pod side's link-local address.
    #[test]
    fn the_peer_link_local_address_is_read_across_namespaces() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
        sweep_stale(PREFIX);
        let pid = std::process::id();
        let node = NetNs::create(&format!("{PREFIX}{pid}-node")).unwrap();
        let pod = NetNs::create(&format!("{PREFIX}{pid}-pod")).unwrap();
        node.ip(&[
            "link",
            "add",
            "llhost0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ])
        .unwrap();
        pod.ip(&["link", "set", "eth0", "address", "02:00:00:00:12:34", "up"])
            .unwrap();
        node.ip(&["link", "set", "llhost0", "up"]).unwrap();
        let ifindex = node.ifindex("llhost0").unwrap();
        let read = node.run(|| of_peer(ifindex)).unwrap().unwrap();
        assert_eq!(read, Some("fe80::ff:fe00:1234".parse().unwrap()));
    }
}
