//! Host-side interfaces of pods, and whether an interface belongs to exactly one pod.
//!
//! A pod's interface is found two ways: by the name the CNI result gives (the chained plugin
//! reports every host-side interface of the main plugin's result), or the way the node
//! itself reaches the pod: the route to its address. Routed CNIs (Calico, Cilium, ptp) route
//! each pod address to the pod's veth. Bridge CNIs (flannel's `cni0`, the reference
//! `bridge` plugin, kubenet's `cbr0`) route every pod address to the bridge, so the pod's
//! own port is found from the node's neighbour entry for the address (the pod's MAC) and
//! the bridge's forwarding table (the port that MAC was learnt on).
//!
//! The programs must only ever sit on an interface that carries one pod: on a bridge or an
//! uplink they would decide every pod's traffic with one pod's policy and addresses. An
//! interface is refused unless it is a veth (or netkit) whose peer is in another namespace,
//! holds no subnet of the node, and, as a bridge port, has never been seen sending for more
//! than one hardware address. Who else claims it is for the agent to check, which knows
//! all local pods.

use std::{collections::BTreeSet, net::IpAddr};

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, IpVersion, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressScope},
        link::{InfoData, InfoGeneve, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
        route::{RouteAttribute, RouteMessage},
    },
};

use crate::netns::NetNs;

/// A netlink connection to the namespace holding the pods' host-side interfaces.
pub struct Interfaces {
    handle: Handle,
    netns: Option<NetNs>,
    prefix: Option<String>,
}

/// A pod's host-side interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Name, e.g. `cali1234`.
    pub name: String,
    /// Index in its namespace.
    pub index: u32,
}

/// What looking for a pod's interface found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The pod's own interface.
    Found(Interface),
    /// None yet, and why (no route yet, or the bridge has not seen the pod yet).
    Missing(String),
    /// An interface that is not the pod's alone.
    Refused(Refusal),
}

/// Why an interface cannot be attributed to exactly one pod.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A bridge carries every pod hanging off it.
    #[error("{name} is a bridge: it carries every pod on it, not one")]
    Bridge {
        /// The bridge.
        name: String,
    },
    /// Not a pod-facing kind of interface: an uplink, a tunnel, a VLAN.
    #[error("{name} is {kind}, not a pod's veth: an uplink or a tunnel carries more than one pod")]
    NotAVeth {
        /// The interface.
        name: String,
        /// What it is: its link kind, or a device without one.
        kind: String,
    },
    /// A veth whose other end is in the node's own namespace leads to no pod.
    #[error("{name} is a veth whose peer is in the node's namespace, not in a pod's")]
    PeerOnNode {
        /// The interface.
        name: String,
    },
    /// A subnet address of the node: the node sits on a LAN there (an uplink, a bridge).
    #[error("{name} holds {address}, a subnet of the node: it is a network, not one pod's link")]
    NodeSubnet {
        /// The interface.
        name: String,
        /// The address with its prefix.
        address: String,
    },
    /// A bridge port that more than one hardware address was seen behind.
    #[error("{name}, a port of bridge {bridge}, has carried {macs} hardware addresses")]
    SeveralHosts {
        /// The port.
        name: String,
        /// Its bridge.
        bridge: String,
        /// Distinct addresses the bridge learnt on it.
        macs: usize,
    },
    /// The name lacks the configured prefix of pods' interfaces.
    #[error("{name} does not start with the pods' interface prefix {prefix:?}")]
    Prefix {
        /// The interface.
        name: String,
        /// The configured prefix.
        prefix: String,
    },
    /// The CNI result names no host-side interface that could be the pod's, or several.
    #[error(
        "the CNI result's host-side interfaces {names:?} hold {candidates} that could be the pod's port, not exactly one"
    )]
    Ambiguous {
        /// Every host-side interface of the result.
        names: Vec<String>,
        /// How many are not bridges.
        candidates: usize,
    },
    /// The pod's addresses lead to different interfaces.
    #[error("the pod's addresses lead to different interfaces, {first} and {second}")]
    Split {
        /// One.
        first: String,
        /// The other.
        second: String,
    },
    /// Another local pod claims the same interface.
    #[error("{name} also carries pod(s) {others}")]
    Shared {
        /// The interface.
        name: String,
        /// The other pods, comma-separated.
        others: String,
    },
}

impl Refusal {
    /// A short label for metrics.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Bridge { .. } => "bridge",
            Self::NotAVeth { .. } => "not_a_veth",
            Self::PeerOnNode { .. } => "peer_on_node",
            Self::NodeSubnet { .. } => "node_subnet",
            Self::SeveralHosts { .. } => "several_hosts",
            Self::Prefix { .. } => "prefix",
            Self::Ambiguous { .. } => "ambiguous",
            Self::Split { .. } => "split",
            Self::Shared { .. } => "shared",
        }
    }

    /// The interface refused, when there is one.
    pub fn interface(&self) -> Option<&str> {
        match self {
            Self::Bridge { name }
            | Self::NotAVeth { name, .. }
            | Self::PeerOnNode { name }
            | Self::NodeSubnet { name, .. }
            | Self::SeveralHosts { name, .. }
            | Self::Prefix { name, .. }
            | Self::Shared { name, .. } => Some(name),
            Self::Ambiguous { .. } | Self::Split { .. } => None,
        }
    }
}

/// What the agent needs to know of a link.
#[derive(Clone, Debug)]
struct Link {
    index: u32,
    name: String,
    kind: Option<InfoKind>,
    /// The bridge (or bond, VRF) it is enslaved to.
    master: Option<u32>,
    /// Whether its peer (of a veth) lives in another namespace.
    peer_elsewhere: bool,
}

impl Link {
    fn from_message(msg: LinkMessage) -> Self {
        let mut link = Self {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            master: None,
            peer_elsewhere: false,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Controller(master) => link.master = Some(master),
                LinkAttribute::LinkNetNsId(_) => link.peer_elsewhere = true,
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.into_iter().find_map(|i| match i {
                        LinkInfo::Kind(kind) => Some(kind),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        link
    }

    fn is_bridge(&self) -> bool {
        self.kind == Some(InfoKind::Bridge)
    }

    fn interface(&self) -> Interface {
        Interface {
            name: self.name.clone(),
            index: self.index,
        }
    }
}

/// One entry of a bridge's forwarding table.
struct FdbEntry {
    port: u32,
    mac: Vec<u8>,
    /// Learnt from traffic (not the port's own address, not configured).
    learnt: bool,
}

impl Interfaces {
    /// Connects in `netns` (or the agent's own namespace). With `prefix`, only interfaces
    /// whose names start with it may be pods' (a bridge in between is looked through).
    pub fn open(netns: Option<&NetNs>, prefix: Option<String>) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle, _) = match netns {
            // The socket is made in the namespace, and registered with this runtime.
            Some(ns) => ns.run(|| {
                let _entered = runtime.enter();
                rtnetlink::new_connection()
            })??,
            None => rtnetlink::new_connection()?,
        };
        tokio::spawn(connection);
        let netns = netns.map(|ns| NetNs::open(ns.name())).transpose()?;
        Ok(Self {
            handle,
            netns,
            prefix,
        })
    }

    /// The interface of the pod with addresses `ips`, found the way the node reaches it:
    /// the route to each address, and through a bridge to the pod's port. All addresses
    /// that lead somewhere must lead to the same interface.
    pub async fn of(&self, ips: &[IpAddr]) -> Lookup {
        let mut found: Option<Interface> = None;
        let mut missing = None;
        for &ip in ips {
            match self.of_address(ip).await {
                Lookup::Found(iface) => match &found {
                    Some(first) if first.index != iface.index => {
                        return Lookup::Refused(Refusal::Split {
                            first: first.name.clone(),
                            second: iface.name,
                        });
                    }
                    _ => found = Some(iface),
                },
                Lookup::Missing(why) => {
                    missing.get_or_insert(why);
                }
                refused @ Lookup::Refused(_) => return refused,
            }
        }
        match found {
            Some(iface) => Lookup::Found(iface),
            None => Lookup::Missing(missing.unwrap_or_else(|| "the pod has no address".into())),
        }
    }

    /// The UDP ports the node's own VXLAN and Geneve devices listen on (any port, not only
    /// the well-known ones); `None` if the links could not be read.
    pub async fn tunnel_ports(&self) -> Option<BTreeSet<u16>> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .ok()?;
        let mut ports = BTreeSet::new();
        for data in links
            .iter()
            .flat_map(|l| &l.attributes)
            .filter_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Data(data) => Some(data),
                    _ => None,
                }),
                _ => None,
            })
        {
            match data {
                InfoData::Vxlan(attrs) => ports.extend(attrs.iter().filter_map(|a| match a {
                    InfoVxlan::Port(port) => Some(*port),
                    _ => None,
                })),
                InfoData::Geneve(attrs) => ports.extend(attrs.iter().filter_map(|a| match a {
                    InfoGeneve::Port(port) => Some(*port),
                    _ => None,
                })),
                _ => {}
            }
        }
        Some(ports)
    }

    /// Whether `iface` is gone: no interface has its index any more, or another name does
    /// (the index was given to a new one). A netlink error says nothing is gone.
    pub async fn is_gone(&self, iface: &Interface) -> bool {
        let mut stream = self.handle.link().get().match_index(iface.index).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Link::from_message(msg).name != iface.name,
            Ok(None) => true,
            Err(rtnetlink::Error::NetlinkError(e)) => e.raw_code() == -libc::ENODEV,
            Err(_) => false,
        }
    }

    /// The pod's interface among the host-side interfaces a CNI result names: the bridge
    /// plugin names the bridge and the pod's veth; the veth is the one.
    pub async fn named(&self, names: &[String]) -> Lookup {
        let mut links = Vec::new();
        for name in names {
            match self.link_named(name).await {
                Some(link) => links.push(link),
                None => return Lookup::Missing(format!("interface {name} does not exist")),
            }
        }
        let candidates: Vec<&Link> = links.iter().filter(|l| !l.is_bridge()).collect();
        match (candidates.as_slice(), links.first()) {
            ([one], _) => self.check(one).await,
            ([], Some(bridge)) => Lookup::Refused(Refusal::Bridge {
                name: bridge.name.clone(),
            }),
            ([], None) => Lookup::Missing("the CNI result names no host-side interface".into()),
            (many, _) => Lookup::Refused(Refusal::Ambiguous {
                names: names.to_vec(),
                candidates: many.len(),
            }),
        }
    }

    /// The interface called `name`, if it exists (whether it is a pod's is not checked).
    pub fn by_name(&self, name: &str) -> Option<Interface> {
        let index_of = || nix::net::if_::if_nametoindex(name).ok();
        let index = match &self.netns {
            Some(ns) => ns.run(index_of).ok()??,
            None => index_of()?,
        };
        Some(Interface {
            name: name.to_owned(),
            index,
        })
    }

    /// Every address of the namespace (the node's own addresses).
    pub async fn addresses(&self) -> anyhow::Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        let mut stream = self.handle.address().get().execute();
        while let Some(msg) = stream.try_next().await? {
            for attr in msg.attributes {
                if let AddressAttribute::Address(ip) | AddressAttribute::Local(ip) = attr
                    && !ip.is_loopback()
                    && !out.contains(&ip)
                {
                    out.push(ip);
                }
            }
        }
        Ok(out)
    }

    /// The interface a packet to `ip` leaves through, looked through a bridge.
    async fn of_address(&self, ip: IpAddr) -> Lookup {
        let Some(route) = self.route_to(ip).await else {
            return Lookup::Missing(format!("no route to {ip}"));
        };
        if route
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(_)))
        {
            return Lookup::Missing(format!("{ip} is routed through a gateway"));
        }
        let Some(oif) = route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        }) else {
            return Lookup::Missing(format!("the route to {ip} names no interface"));
        };
        let Some(link) = self.link(oif).await else {
            return Lookup::Missing(format!("interface {oif} of the route to {ip} is gone"));
        };
        if link.is_bridge() {
            self.bridge_port(&link, ip).await
        } else {
            self.check(&link).await
        }
    }

    async fn route_to(&self, ip: IpAddr) -> Option<RouteMessage> {
        let query: RouteMessage = match ip {
            IpAddr::V4(v4) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(v4, 32)
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(v6, 128)
                .build(),
        };
        self.handle
            .route()
            .get(query)
            .execute()
            .try_next()
            .await
            .ok()?
    }

    /// The port of `bridge` that `ip` sits behind: the node's neighbour entry gives its
    /// hardware address, the bridge's forwarding table the port that address was learnt
    /// on. Until both know the pod, the node is made to resolve it (the pod's answer
    /// teaches the bridge where it is).
    async fn bridge_port(&self, bridge: &Link, ip: IpAddr) -> Lookup {
        let port = match self.neighbour_mac(bridge.index, ip).await {
            Some(mac) => self
                .fdb(bridge.index)
                .await
                .into_iter()
                .find(|e| e.learnt && e.mac == mac)
                .map(|e| e.port),
            None => None,
        };
        let Some(port) = port else {
            self.resolve(bridge.index, ip).await;
            return Lookup::Missing(format!(
                "{ip} is behind bridge {}, which has not seen it yet",
                bridge.name
            ));
        };
        match self.link(port).await {
            Some(link) if link.index == bridge.index || link.is_bridge() => {
                Lookup::Refused(Refusal::Bridge { name: link.name })
            }
            Some(link) => self.check(&link).await,
            None => Lookup::Missing(format!("the port of {ip} on {} is gone", bridge.name)),
        }
    }

    /// Whether `link` can be a pod's own interface.
    async fn check(&self, link: &Link) -> Lookup {
        let name = link.name.clone();
        match &link.kind {
            Some(InfoKind::Bridge) => return Lookup::Refused(Refusal::Bridge { name }),
            Some(InfoKind::Veth) if !link.peer_elsewhere => {
                return Lookup::Refused(Refusal::PeerOnNode { name });
            }
            Some(InfoKind::Veth | InfoKind::Netkit) => {}
            other => {
                let kind = other.as_ref().map_or(
                    "a device without a link kind (physical, loopback)".into(),
                    |k| format!("a {k}"),
                );
                return Lookup::Refused(Refusal::NotAVeth { name, kind });
            }
        }
        if let Some(address) = self.subnet_address(link.index).await {
            return Lookup::Refused(Refusal::NodeSubnet { name, address });
        }
        if let Some(prefix) = self
            .prefix
            .as_ref()
            .filter(|p| !name.starts_with(p.as_str()))
        {
            return Lookup::Refused(Refusal::Prefix {
                name,
                prefix: prefix.clone(),
            });
        }
        if let Some(master) = link.master {
            let macs = self.learnt_macs(master, link.index).await;
            if macs > 1 {
                let bridge = self
                    .link(master)
                    .await
                    .map_or_else(|| master.to_string(), |l| l.name);
                return Lookup::Refused(Refusal::SeveralHosts { name, bridge, macs });
            }
        }
        Lookup::Found(link.interface())
    }

    async fn link(&self, index: u32) -> Option<Link> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        let msg = stream.try_next().await.ok()??;
        Some(Link::from_message(msg))
    }

    async fn link_named(&self, name: &str) -> Option<Link> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let msg = stream.try_next().await.ok()??;
        Some(Link::from_message(msg))
    }

    /// An address of the link's with a subnet (not a host prefix, not link-local), shown
    /// as `address/prefix`. A routed veth holds at most the gateway as a host address
    /// (ptp does), a pod's bridge port nothing.
    async fn subnet_address(&self, index: u32) -> Option<String> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Ok(Some(msg)) = stream.try_next().await {
            let host_prefix = match msg.header.family {
                AddressFamily::Inet => 32,
                _ => 128,
            };
            if msg.header.index != index
                || msg.header.scope != AddressScope::Universe
                || msg.header.prefix_len >= host_prefix
            {
                continue;
            }
            let address = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = address {
                return Some(format!("{ip}/{}", msg.header.prefix_len));
            }
        }
        None
    }

    /// The hardware address of the node's neighbour entry for `ip` on `dev`, once resolved.
    async fn neighbour_mac(&self, dev: u32, ip: IpAddr) -> Option<Vec<u8>> {
        let family = if ip.is_ipv4() {
            IpVersion::V4
        } else {
            IpVersion::V6
        };
        let mut stream = self.handle.neighbours().get().set_family(family).execute();
        while let Ok(Some(msg)) = stream.try_next().await {
            let resolved = matches!(
                msg.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
            );
            if msg.header.ifindex != dev || !resolved {
                continue;
            }
            let mut dst = None;
            let mut mac = None;
            for attr in msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        dst = Some(IpAddr::V4(v4));
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        dst = Some(IpAddr::V6(v6));
                    }
                    NeighbourAttribute::LinkLocalAddress(lladdr) => mac = Some(lladdr),
                    _ => {}
                }
            }
            if dst == Some(ip) {
                return mac;
            }
        }
        None
    }

    /// The forwarding table of `bridge`.
    async fn fdb(&self, bridge: u32) -> Vec<FdbEntry> {
        let mut request = self.handle.neighbours().get();
        request.message_mut().header.family = AddressFamily::Bridge;
        let mut stream = request.execute();
        let mut out = Vec::new();
        while let Ok(Some(msg)) = stream.try_next().await {
            let mut master = None;
            let mut mac = None;
            for attr in msg.attributes {
                match attr {
                    NeighbourAttribute::Controller(m) => master = Some(m),
                    NeighbourAttribute::LinkLocalAddress(lladdr) => mac = Some(lladdr),
                    _ => {}
                }
            }
            if let (Some(mac), Some(m)) = (mac, master)
                && m == bridge
            {
                out.push(FdbEntry {
                    port: msg.header.ifindex,
                    mac,
                    learnt: matches!(
                        msg.header.state,
                        NeighbourState::Reachable | NeighbourState::Stale
                    ),
                });
            }
        }
        out
    }

    /// Distinct hardware addresses `bridge` learnt on `port`.
    async fn learnt_macs(&self, bridge: u32, port: u32) -> usize {
        let mut macs: Vec<Vec<u8>> = self
            .fdb(bridge)
            .await
            .into_iter()
            .filter(|e| e.learnt && e.port == port)
            .map(|e| e.mac)
            .collect();
        macs.sort();
        macs.dedup();
        macs.len()
    }

    /// Has the node resolve `ip` on `dev` (as `NTF_USE` asks: one ARP request or neighbour
    /// solicitation), so that the pod's answer fills the neighbour and forwarding tables.
    async fn resolve(&self, dev: u32, ip: IpAddr) {
        let result = self
            .handle
            .neighbours()
            .add(dev, ip)
            .state(NeighbourState::None)
            .flags(NeighbourFlags::Use)
            .replace()
            .execute()
            .await;
        if let Err(e) = result {
            tracing::debug!(%ip, error = %e, "asking the node to resolve a pod's address");
        }
    }
}
