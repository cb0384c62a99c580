//! The fuzzer's judge: what each frame may, must or must not do, decided from the frame's
//! bytes as the kernel reads them ([`super::view`]), the reference semantics of the cluster's
//! policies, and a model of the connections and datagrams seen so far. None of the
//! datapath's code is used here.
//!
//! The invariants, as the README's security model states them:
//! - nothing but plain IPv4, IPv6 and ARP leaves a pod; an unreadable IP header never does;
//! - a packet leaving a pod carries one of its addresses (ARP too), except neighbour and
//!   multicast listener discovery from link-local or unspecified addresses;
//! - discovery is link control only within the RFCs' rules, and nothing else is;
//! - a flow the policy denies never passes: the first packet is decided by the reference
//!   semantics; later packets pass only as part of a connection that was allowed (an echo
//!   request never as part of another's ping), or as an ICMP error going back to the sender
//!   of a packet of such a connection; a node address is the node only when the packet goes
//!   to it or the node sent it; a later fragment only with its first fragment;
//! - a new flow to a Service frontend (a cluster, external or load-balancer IP, a node address
//!   on a node port or host port) leaves a pod only if the pod's egress allows every backend
//!   the proxy may pick (or the pod is the only one), never as the node's; a Service address
//!   on a port no Service has is no way out of an egress-isolated pod;
//! - what an isolated pod cannot read, it does not get;
//! - a well-formed packet of an allowed flow passes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use policy_agent::{
    evaluate::{Flow, ServiceFlow, reference::Reference},
    model::{Cluster, ObjectRef, Protocol},
    plan::{self, Host, ServiceTarget},
    semantics::{
        self,
        services::{Forward, Forwarder, FrontendKind},
    },
};
use policy_common::{
    maps::Direction,
    net::{icmpv6, proto, sctp},
};

use super::view::{self, Datagram, Frame, Ip, L4, Payload, Quoted};

/// One frame as a program sees it.
#[derive(Clone, Debug)]
pub struct Sent<'a> {
    /// The pod whose interface it is on.
    pub pod: &'a ObjectRef,
    /// Leaving the pod (`from_pod`) or entering it (`to_pod`).
    pub dir: Direction,
    /// Entering: made by the node's own stack rather than forwarded.
    pub from_node: bool,
    /// Made without any deliberate damage (the generator's word): a packet of an allowed
    /// flow must then pass.
    pub clean: bool,
    /// The Ethernet frame.
    pub frame: &'a [u8],
}

/// What the model demands of one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// It must be dropped, for this reason.
    Drop(&'static str),
    /// It must pass, for this reason.
    Pass(&'static str),
    /// Either is right.
    Either,
}

/// A connection from one endpoint's point of view (see `policy_common::maps::CtKey`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Conn {
    local: IpAddr,
    remote: IpAddr,
    proto: u8,
    local_port: u16,
    remote_port: u16,
    /// ICMP echo: whether the pod sent the request.
    pod_pinged: Option<bool>,
}

/// Protocols and UDP ports of tunnels a node unwraps: IP-in-IP, 6in4, GRE, EtherIP,
/// L2TPv3; VXLAN (IANA and Linux), VXLAN-GPE, Geneve; and the port of the node's own
/// tunnel device ([`super::NODE_TUNNEL_PORT`]).
const TUNNEL_PROTOCOLS: [u8; 5] = [4, 41, 47, 97, 115];
const TUNNEL_PORTS: [u16; 4] = [4789, 8472, 4790, 6081];

/// What a first packet or fragment was: enough to judge the packets that follow it.
#[derive(Clone, Copy, Debug)]
struct Transport {
    proto: u8,
    ports: Option<(u16, u16)>,
    tcp_flags: u8,
    /// An SCTP INIT: a new association even on the ports of a tracked one.
    sctp_init: bool,
    /// ICMP type and echo identifier.
    icmp: Option<(u8, Option<u16>)>,
}

impl Transport {
    fn of(l4: &L4) -> Self {
        Self {
            proto: l4.proto,
            ports: l4.ports,
            tcp_flags: l4.tcp_flags,
            sctp_init: l4.proto == proto::SCTP && l4.sctp_chunk == Some(sctp::CHUNK_INIT),
            icmp: l4.icmp.as_ref().map(|i| (i.ty, i.echo_id)),
        }
    }

    fn is_icmp(&self, family_v6: bool) -> bool {
        self.proto
            == if family_v6 {
                proto::ICMPV6
            } else {
                proto::ICMP
            }
    }
}

/// Extension headers the datapath walks (README: longer chains are not decided: dropped
/// where the pod is isolated, passed untracked where it is not).
const WALKED_EXT_HEADERS: usize = 8;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// The model of one node where every pod of the cluster is an endpoint.
pub struct Model {
    cluster: Cluster,
    hosts: Vec<Host>,
    node: Vec<IpAddr>,
    /// What the node's proxy forwards, and where.
    forwards: Vec<Forward>,
    /// Addresses only Services answer on (cluster, external, load-balancer IPs).
    service_addresses: BTreeSet<IpAddr>,
    /// Per endpoint: its connections, and whether each has closed.
    connections: BTreeMap<ObjectRef, BTreeMap<Conn, bool>>,
    /// Per endpoint: the first fragments it let through.
    datagrams: BTreeMap<ObjectRef, BTreeMap<Datagram, Transport>>,
}

impl Model {
    /// The model of `cluster` (every pod on node `node_name`), with external hosts and the
    /// node's addresses.
    pub fn new(cluster: &Cluster, externals: &[IpAddr], node_name: &str, node: &[IpAddr]) -> Self {
        let forwards = semantics::services::forwards(cluster, node_name, node);
        let service_addresses = forwards
            .iter()
            .flat_map(|f| &f.frontends)
            .filter(|f| {
                matches!(
                    f.kind,
                    FrontendKind::ClusterIp | FrontendKind::ExternalIp | FrontendKind::LoadBalancer
                )
            })
            .map(|f| f.address)
            .collect();
        Self {
            hosts: plan::hosts(cluster, externals, &[]),
            cluster: cluster.clone(),
            node: node.to_vec(),
            forwards,
            service_addresses,
            connections: BTreeMap::new(),
            datagrams: BTreeMap::new(),
        }
    }

    fn own(&self, pod: &ObjectRef) -> Vec<IpAddr> {
        self.cluster
            .pods
            .get(pod)
            .map(|p| p.ips.clone())
            .unwrap_or_default()
    }

    fn isolated(&self, pod: &ObjectRef, dir: Direction) -> bool {
        let Some(p) = self.cluster.pods.get(pod) else {
            return false;
        };
        Reference::new(&self.cluster)
            .policies()
            .iter()
            .any(|policy| policy.rules(dir).is_some() && semantics::applies_to(policy, p))
    }

    /// What `s` must do.
    pub fn expect(&self, s: &Sent<'_>) -> Expect {
        let egress = s.dir == Direction::Egress;
        let isolated = self.isolated(s.pod, s.dir);
        let own = self.own(s.pod);
        let unless_isolated = |why| {
            if isolated {
                Expect::Drop(why)
            } else {
                Expect::Either
            }
        };
        let pass = |why| {
            if s.clean {
                Expect::Pass(why)
            } else {
                Expect::Either
            }
        };
        match view::read(s.frame) {
            Frame::NotIp if egress => Expect::Drop("a frame not plain IP or ARP left a pod"),
            Frame::NotIp => unless_isolated("a frame not plain IP or ARP entered an isolated pod"),
            Frame::Arp(None) if egress => Expect::Drop("ARP not IPv4 over Ethernet left a pod"),
            Frame::Arp(Some(sender))
                if egress && !sender.is_unspecified() && !own.contains(&sender.into()) =>
            {
                Expect::Drop("ARP claimed another address")
            }
            Frame::Arp(_) => pass("ARP"),
            Frame::BadIpHeader { .. } if egress => {
                Expect::Drop("an unreadable IP header left a pod")
            }
            Frame::BadIpHeader { .. } => {
                unless_isolated("an unreadable IP header entered an isolated pod")
            }
            Frame::Ip(ip) => {
                // Past the chain the datapath walks, nothing can be verified: not even that
                // a link-local source sends discovery.
                let walked = ip.ext_headers <= WALKED_EXT_HEADERS;
                let link = if walked {
                    self.link_control(&ip, s, &own)
                } else {
                    None
                };
                if egress
                    && !own.contains(&ip.src)
                    && !(is_link_or_unspecified(ip.src) && link == Some(true))
                {
                    return Expect::Drop("a spoofed source left a pod");
                }
                if !walked {
                    return unless_isolated("a chain too long to walk crossed an isolated pod");
                }
                match link {
                    Some(true) => return pass("link control"),
                    Some(false) => return Expect::Drop("discovery outside the RFCs' rules"),
                    None => {}
                }
                let l4 = match &ip.payload {
                    Payload::Unreadable => {
                        return unless_isolated(
                            "an unreadable packet entered or left an isolated pod",
                        );
                    }
                    Payload::LaterFragment(d) => {
                        match self.datagrams.get(s.pod).and_then(|m| m.get(d)) {
                            Some(t) => *t,
                            None => {
                                return unless_isolated(
                                    "an orphan fragment crossed an isolated pod",
                                );
                            }
                        }
                    }
                    Payload::Transport { l4, .. } => Transport::of(l4),
                };
                self.decide(s, &ip, l4, isolated)
            }
        }
    }

    /// The verdict on a readable packet of transport `t`.
    fn decide(&self, s: &Sent<'_>, ip: &Ip, t: Transport, isolated: bool) -> Expect {
        let egress = s.dir == Direction::Egress;
        let pass = |why| {
            if s.clean {
                Expect::Pass(why)
            } else {
                Expect::Either
            }
        };
        let (local, remote) = if egress {
            (ip.src, ip.dst)
        } else {
            (ip.dst, ip.src)
        };
        if self.own(s.pod).contains(&remote) {
            // A pod talking to itself never reaches its interface.
            return Expect::Either;
        }
        let v6 = ip.src.is_ipv6();
        let tunnel = TUNNEL_PROTOCOLS.contains(&t.proto)
            || (t.proto == proto::UDP
                && t.ports.is_some_and(|(_, d)| {
                    TUNNEL_PORTS.contains(&d) || d == super::NODE_TUNNEL_PORT
                }));
        if egress && tunnel && self.node.contains(&remote) {
            return Expect::Drop("tunnel traffic to the node, which would unwrap it");
        }
        let later = matches!(ip.payload, Payload::LaterFragment(_));
        let error = t.is_icmp(v6) && !later && is_icmp_error(v6, t.icmp);
        if error {
            if let Payload::Transport { l4, .. } = &ip.payload
                && let Some(q) = l4.icmp.as_ref().and_then(|i| i.quoted.as_ref())
                && self.related(s, ip, q)
            {
                return pass("an ICMP error about a connection");
            }
            return self.policy(s, local, remote, t, false, isolated, pass);
        }
        if let Some(conn) = conn_key(s.dir, local, remote, &t, v6)
            && let Some(&closed) = self.connections.get(s.pod).and_then(|c| c.get(&conn))
        {
            let reopening = t.proto == proto::TCP && t.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
            if !closed && !t.sctp_init {
                return pass("an established connection");
            }
            if !reopening && !t.sctp_init {
                return Expect::Either;
            }
        }
        self.policy(s, local, remote, t, true, isolated, pass)
    }

    /// The policy's verdict on a new flow with `remote`.
    #[allow(clippy::too_many_arguments)]
    fn policy(
        &self,
        s: &Sent<'_>,
        local: IpAddr,
        remote: IpAddr,
        t: Transport,
        may_be_node: bool,
        isolated: bool,
        pass: impl Fn(&'static str) -> Expect,
    ) -> Expect {
        let egress = s.dir == Direction::Egress;
        if !isolated {
            return pass("not isolated");
        }
        // An ICMP error is never a connection through a Service.
        if egress
            && may_be_node
            && let Some(allowed) = self.through_service(s.pod, local, remote, t)
        {
            return if allowed {
                pass("the policy allows every backend of the Service")
            } else {
                Expect::Drop("a Service frontend whose backends the policy does not all allow")
            };
        }
        if may_be_node && self.node.contains(&remote) && (egress || s.from_node) {
            return pass("the node");
        }
        let me = self.host_of(s.pod, local);
        let other = self.host_at(remote);
        let (from, to, src, dst) = if egress {
            (&me, &other, local, remote)
        } else {
            (&other, &me, remote, local)
        };
        let port_protocol = match t.proto {
            proto::TCP => Some(Protocol::Tcp),
            proto::UDP => Some(Protocol::Udp),
            proto::SCTP => Some(Protocol::Sctp),
            _ => None,
        };
        let flow = Flow {
            from,
            to,
            src,
            dst,
            protocol: port_protocol.unwrap_or(Protocol::Tcp),
            port: t.ports.map_or(0, |(_, d)| d),
        };
        let reference = Reference::new(&self.cluster);
        let explanation = match port_protocol {
            Some(_) => reference.explain(&flow),
            None => reference.explain_portless(&flow),
        };
        let side = if egress {
            &explanation.egress
        } else {
            &explanation.ingress
        };
        if side.allows() {
            pass("the policy allows it")
        } else {
            Expect::Drop("the policy denies the flow")
        }
    }

    /// For a new flow of `pod` from `local` to a Service frontend `remote`: whether the pod's
    /// egress allows it, decided as the connection to every backend the proxy may pick
    /// (the proxy rewrites after the datapath decided). `None` if `remote` is no frontend.
    fn through_service(
        &self,
        pod: &ObjectRef,
        local: IpAddr,
        remote: IpAddr,
        t: Transport,
    ) -> Option<bool> {
        let protocol = match t.proto {
            proto::TCP => Some(Protocol::Tcp),
            proto::UDP => Some(Protocol::Udp),
            proto::SCTP => Some(Protocol::Sctp),
            _ => None,
        };
        let port = t.ports.map_or(0, |(_, d)| d);
        let forward = protocol.and_then(|protocol| {
            self.forwards.iter().find(|f| {
                f.frontends
                    .iter()
                    .any(|fe| fe.address == remote && fe.protocol == protocol && fe.port == port)
            })
        });
        let Some(forward) = forward else {
            // An address only Services answer on, on a port none of them has.
            return self.service_addresses.contains(&remote).then_some(false);
        };
        let service = match &forward.forwarder {
            Forwarder::Service { service, .. } => service.clone(),
            Forwarder::HostPort { pod, .. } => pod.clone(),
        };
        let target = ServiceTarget {
            label: forward.forwarder.to_string(),
            service,
            address: remote,
            protocol: protocol.expect("found by protocol"),
            port,
            backends: forward.backends_for(remote).cloned().collect(),
        };
        let client = self.host_of(pod, local);
        let explanation = Reference::new(&self.cluster).explain_service(&ServiceFlow {
            from: &client,
            src: local,
            target: &target,
        });
        let sides = explanation.sides();
        Some(explanation.hairpin || (!sides.is_empty() && sides.iter().all(|(egress, _)| *egress)))
    }

    /// Whether an ICMP error goes back to the sender of a packet of one of the pod's
    /// connections (and, leaving the pod, comes from that packet's destination).
    fn related(&self, s: &Sent<'_>, error: &Ip, q: &Quoted) -> bool {
        let egress = s.dir == Direction::Egress;
        if error.dst != q.src || (egress && error.src != q.dst) {
            return false;
        }
        // The quoted packet went the other way.
        let quoted_dir = if egress {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        let (local, remote) = if egress {
            (q.dst, q.src)
        } else {
            (q.src, q.dst)
        };
        let t = Transport {
            proto: q.proto,
            ports: q.ports,
            tcp_flags: 0,
            sctp_init: false,
            icmp: q.icmp,
        };
        conn_key(quoted_dir, local, remote, &t, q.src.is_ipv6()).is_some_and(|c| {
            self.connections
                .get(s.pod)
                .is_some_and(|m| m.contains_key(&c))
        })
    }

    /// Neighbour or multicast listener discovery: `Some(valid)`, or `None` for anything else.
    fn link_control(&self, ip: &Ip, s: &Sent<'_>, own: &[IpAddr]) -> Option<bool> {
        let (IpAddr::V6(src), IpAddr::V6(dst)) = (ip.src, ip.dst) else {
            return None;
        };
        let (first_fragment, l4) = match &ip.payload {
            Payload::Transport { l4, first_fragment } => (first_fragment.is_some(), l4),
            _ => return None,
        };
        let icmp = l4.icmp.as_ref().filter(|_| l4.proto == proto::ICMPV6)?;
        let ty = icmp.ty;
        let nd = (icmpv6::ROUTER_SOLICIT..=icmpv6::REDIRECT).contains(&ty);
        let mld = (icmpv6::MLD_QUERY..=icmpv6::MLD_DONE).contains(&ty) || ty == icmpv6::MLD2_REPORT;
        if !nd && !mld {
            return None;
        }
        if first_fragment || icmp.code != 0 {
            return Some(false);
        }
        let link_local = |a: std::net::Ipv6Addr| a.segments()[0] & 0xffc0 == 0xfe80;
        let link_scope_multicast =
            |a: std::net::Ipv6Addr| a.octets()[0] == 0xff && a.octets()[1] & 0x0f == 2;
        let solicited_node_of = |group: std::net::Ipv6Addr, a: std::net::Ipv6Addr| {
            group.octets()[..13] == [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff]
                && group.octets()[13..] == a.octets()[13..]
        };
        let mine = |a: std::net::Ipv6Addr| own.contains(&IpAddr::V6(a));
        // What a pod may claim: its address, or its interface's link-local address as the
        // agent read it; never the node's.
        let own_link_local = super::pod_link_local(s.pod);
        let claimable = |a: std::net::Ipv6Addr| {
            (mine(a) || own_link_local == Some(a)) && !self.node.contains(&IpAddr::V6(a))
        };
        let egress = s.dir == Direction::Egress;
        let message = &icmp.message;
        if mld {
            // RFC 2710 §3, RFC 3810 §5: hop limit 1, to a group, from a link-local address
            // (reports: or `::`), at the message's own size; a pod never queries.
            let query = ty == icmpv6::MLD_QUERY;
            return Some(
                !(query && egress)
                    && ip.hop_limit == 1
                    && dst.is_multicast()
                    && (link_local(src) || (!query && src.is_unspecified()))
                    && mld_headers(ip)
                    && mld_length(ty, message),
            );
        }
        // RFC 4861: hop limit 255, and addresses of the link.
        if ip.hop_limit != 255 {
            return Some(false);
        }
        let to_link = |a: std::net::Ipv6Addr| mine(a) || link_local(a) || link_scope_multicast(a);
        if ty == icmpv6::ROUTER_ADVERT || ty == icmpv6::REDIRECT {
            // Only the node's own stack is a router to a pod.
            return Some(
                !egress
                    && s.from_node
                    && !src.is_unspecified()
                    && !src.is_multicast()
                    && to_link(dst),
            );
        }
        if ip.ext_headers != 0 || !nd_format(ty, message, src.is_unspecified()) {
            return Some(false);
        }
        Some(match s.dir {
            Direction::Egress => {
                let dst_ok = link_local(dst)
                    || link_scope_multicast(dst)
                    || self.node.contains(&IpAddr::V6(dst));
                match (ty, icmp.nd_target) {
                    (icmpv6::ROUTER_SOLICIT, _) => {
                        (claimable(src) || src.is_unspecified()) && dst_ok
                    }
                    (_, None) => false,
                    // Duplicate address detection of its own address only.
                    (_, Some(target)) if src.is_unspecified() => {
                        ty == icmpv6::NEIGHBOUR_SOLICIT
                            && claimable(target)
                            && solicited_node_of(dst, target)
                    }
                    (_, Some(target)) => {
                        claimable(src)
                            && dst_ok
                            && (ty != icmpv6::NEIGHBOUR_ADVERT || claimable(target))
                    }
                }
            }
            Direction::Ingress => {
                !src.is_multicast()
                    && (!src.is_unspecified() || ty == icmpv6::NEIGHBOUR_SOLICIT)
                    && to_link(dst)
            }
        })
    }

    /// Takes in what happened to `s`: connections and datagrams that start.
    pub fn observe(&mut self, s: &Sent<'_>, passed: bool) {
        if !passed {
            return;
        }
        let Frame::Ip(ip) = view::read(s.frame) else {
            return;
        };
        if ip.ext_headers > WALKED_EXT_HEADERS {
            return;
        }
        let (t, first_fragment) = match &ip.payload {
            Payload::Transport { l4, first_fragment } => (Transport::of(l4), *first_fragment),
            Payload::LaterFragment(d) => match self.datagrams.get(s.pod).and_then(|m| m.get(d)) {
                Some(t) => (*t, None),
                None => return,
            },
            Payload::Unreadable => return,
        };
        if let Some(d) = first_fragment {
            // Later fragments inherit ports and ICMP type, not what the first chunk was.
            let inherited = Transport {
                sctp_init: false,
                ..t
            };
            self.datagrams
                .entry(s.pod.clone())
                .or_default()
                .insert(d, inherited);
        }
        let v6 = ip.src.is_ipv6();
        let (local, remote) = match s.dir {
            Direction::Egress => (ip.src, ip.dst),
            Direction::Ingress => (ip.dst, ip.src),
        };
        let Some(conn) = conn_key(s.dir, local, remote, &t, v6) else {
            return;
        };
        let closes = t.proto == proto::TCP && t.tcp_flags & (TCP_FIN | TCP_RST) != 0;
        let opens = t.proto != proto::TCP || t.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        // Only a request starts a ping: an unasked-for reply starts nothing.
        let reply = t.icmp.is_some_and(|(ty, _)| is_echo_reply(v6, ty));
        let conns = self.connections.entry(s.pod.clone()).or_default();
        match conns.get_mut(&conn) {
            // A SYN that passed on a closed connection was decided again: a new one.
            Some(closed) if *closed && opens => *closed = closes,
            Some(closed) => *closed |= closes,
            None if reply => {}
            None => {
                conns.insert(conn, closes);
            }
        }
    }

    /// The plan's host of a pod, or of the pod owning `ip`.
    fn host_of(&self, pod: &ObjectRef, _ip: IpAddr) -> Host {
        self.hosts
            .iter()
            .find(|h| h.pod.as_ref() == Some(pod))
            .cloned()
            .expect("every pod is a host")
    }

    /// The host with address `ip`: a pod, a known external host, or any other address.
    fn host_at(&self, ip: IpAddr) -> Host {
        self.hosts
            .iter()
            .find(|h| h.ips.contains(&ip))
            .cloned()
            .unwrap_or_else(|| Host {
                label: ip.to_string(),
                pod: None,
                ips: vec![ip],
                serves: Vec::new(),
            })
    }

    /// The datagrams and connections seen, for a failure report.
    pub fn summary(&self) -> String {
        let conns: BTreeSet<String> = self
            .connections
            .iter()
            .flat_map(|(p, c)| {
                c.iter()
                    .map(move |(k, closed)| format!("{p}: {k:?} closed={closed}"))
            })
            .collect();
        conns.into_iter().collect::<Vec<_>>().join("\n")
    }
}

/// Whether ICMP of this family and type is an error (it quotes the packet that caused it).
fn is_icmp_error(v6: bool, icmp: Option<(u8, Option<u16>)>) -> bool {
    let Some((ty, _)) = icmp else {
        return false;
    };
    if v6 {
        icmpv6::is_error(ty)
    } else {
        policy_common::net::icmp::is_error(ty)
    }
}

fn is_link_or_unspecified(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(a) => a.is_unspecified() || a.segments()[0] & 0xffc0 == 0xfe80,
        IpAddr::V4(_) => false,
    }
}

fn is_echo_reply(v6: bool, ty: u8) -> bool {
    ty == if v6 {
        icmpv6::ECHO_REPLY
    } else {
        policy_common::net::icmp::ECHO_REPLY
    }
}

/// A connection's key from the endpoint's point of view, for a packet going `dir` with
/// transport `t`; `None` for what no connection is made of (ICMP other than echo).
fn conn_key(
    dir: Direction,
    local: IpAddr,
    remote: IpAddr,
    t: &Transport,
    v6: bool,
) -> Option<Conn> {
    let (local_port, remote_port, pod_pinged) = if t.is_icmp(v6) {
        let (ty, id) = t.icmp?;
        let id = id?;
        // A ping is the pod's if its request leaves the pod or its reply enters it.
        let reply = is_echo_reply(v6, ty);
        (id, id, Some(reply == (dir == Direction::Ingress)))
    } else {
        match (t.ports, dir) {
            (Some((s, d)), Direction::Egress) => (s, d, None),
            (Some((s, d)), Direction::Ingress) => (d, s, None),
            (None, _) => (0, 0, None),
        }
    };
    Some(Conn {
        local,
        remote,
        proto: t.proto,
        local_port,
        remote_port,
        pod_pinged,
    })
}

/// RFC 4861 §4.1, §4.3, §4.4: a router solicitation (8 bytes), neighbour solicitation or
/// advertisement (24 bytes) with reserved bits zero, and only the options it uses, each once
/// and 8 bytes long: source link-layer address (solicitations, never from `::`), target
/// link-layer address (advertisements), nonce (neighbour solicitations, RFC 7527).
fn nd_format(ty: u8, m: &[u8], unspecified: bool) -> bool {
    let (fixed, allowed): (usize, &[u8]) = match ty {
        icmpv6::ROUTER_SOLICIT => (8, &[1]),
        icmpv6::NEIGHBOUR_SOLICIT => (24, &[1, 14]),
        icmpv6::NEIGHBOUR_ADVERT => (24, &[2]),
        _ => return false,
    };
    if m.len() < fixed || !(m.len() - fixed).is_multiple_of(8) {
        return false;
    }
    let reserved = u32::from_be_bytes([m[4], m[5], m[6], m[7]]);
    let mask = if ty == icmpv6::NEIGHBOUR_ADVERT {
        0x1fff_ffff
    } else {
        u32::MAX
    };
    if reserved & mask != 0 {
        return false;
    }
    let options: Vec<&[u8]> = m[fixed..].chunks(8).collect();
    let types: BTreeSet<u8> = options.iter().map(|o| o[0]).collect();
    options.len() <= allowed.len()
        && types.len() == options.len()
        && options
            .iter()
            .all(|o| o[1] == 1 && allowed.contains(&o[0]) && !(unspecified && o[0] == 1))
}

/// MLD right after the IPv6 header, or after a Hop-by-Hop header holding only a Router
/// Alert and padding (RFC 2711).
fn mld_headers(ip: &Ip) -> bool {
    let (first, ext) = (&ip.ext.0, &ip.ext.1);
    ext.is_empty()
        || (*first == proto::IPV6_HOP_BY_HOP
            && ext.len() == 8
            && ext[..6] == [proto::ICMPV6, 0, 5, 2, 0, 0]
            && (ext[6..] == [1, 0] || ext[6..] == [0, 0]))
}

/// MLDv1 messages are 24 bytes; an MLDv2 query 28 and 16 per source; an MLDv2 report its
/// records (1 to 16, types 1 to 6, no auxiliary data, a multicast address, 16 sources at
/// most in all) and nothing else.
fn mld_length(ty: u8, m: &[u8]) -> bool {
    let be16 = |at: usize| {
        m.get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    match ty {
        icmpv6::MLD_QUERY => {
            m.len() == 24 || be16(26).is_some_and(|n| n <= 16 && m.len() == 28 + 16 * n)
        }
        icmpv6::MLD2_REPORT => {
            let Some(records) = be16(6) else {
                return false;
            };
            if records == 0 || records > 16 {
                return false;
            }
            let (mut at, mut sources) = (8, 0);
            for _ in 0..records {
                let Some(r) = m.get(at..at + 5) else {
                    return false;
                };
                let n = usize::from(u16::from_be_bytes([r[2], r[3]]));
                sources += n;
                if !(1..=6).contains(&r[0]) || r[1] != 0 || r[4] != 0xff || sources > 16 {
                    return false;
                }
                at += 20 + 16 * n;
                if at > m.len() {
                    return false;
                }
            }
            at == m.len()
        }
        _ => m.len() == 24,
    }
}
