//! Host-side interfaces of pods, found the way the node itself reaches them: the route to
//! the pod's address leaves through the pod's interface (Calico-, Cilium- and ptp-style
//! networking all route each pod address to its veth). Node addresses come from the same
//! netlink connection.

use std::net::IpAddr;

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        address::AddressAttribute,
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

impl Interfaces {
    /// Connects in `netns` (or the agent's own namespace). With `prefix`, only interfaces
    /// whose names start with it count as pods' (a route through a bridge or the uplink does
    /// not).
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

    /// The interface a packet to `ip` leaves through, if it is a pod's: directly connected
    /// (no gateway) and named with the prefix, if any.
    pub async fn of(&self, ip: IpAddr) -> Option<Interface> {
        let query: RouteMessage = match ip {
            IpAddr::V4(v4) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(v4, 32)
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(v6, 128)
                .build(),
        };
        let route = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_next()
            .await
            .ok()??;
        if route
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(_)))
        {
            return None;
        }
        let index = route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        })?;
        let name_of = move || nix::net::if_::if_indextoname(index).ok();
        let name = match &self.netns {
            Some(ns) => ns.run(name_of).ok()??,
            None => name_of()?,
        }
        .into_string()
        .ok()?;
        if self
            .prefix
            .as_ref()
            .is_some_and(|p| !name.starts_with(p.as_str()))
        {
            return None;
        }
        Some(Interface { name, index })
    }

    /// The interface called `name`, if it exists (the CNI plugin reports it by name).
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
}
