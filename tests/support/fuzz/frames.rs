//! Frames as an attacker and a busy node make them: new flows of every protocol to and
//! from every kind of address, replies and reverse requests, fragments in and out of order
//! (with headers after the Fragment header), ICMP errors quoting earlier packets (nested
//! too), neighbour and listener discovery with every field varied, ARP; dressed in IPv4
//! options and IPv6 extension headers of every type, order and length, and damaged on
//! purpose: VLAN and QinQ tags, other EtherTypes, lying lengths, truncation, flipped bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policy_agent::model::ObjectRef;
use policy_common::{
    maps::Direction,
    net::{ETH_P_ARP, icmp, icmpv6, proto},
};
use rand::{RngExt, rngs::StdRng, seq::IndexedRandom};

use crate::packets::{ACK, Packet, SYN, SYN_ACK, TPID_8021AD, TPID_8021Q, arp_request, tagged};

/// One frame for one program.
#[derive(Clone, Debug)]
pub struct Step {
    /// The pod whose interface sees it.
    pub pod: ObjectRef,
    /// `from_pod` (egress) or `to_pod` (ingress).
    pub dir: Direction,
    /// Entering: made by the node's own stack.
    pub from_node: bool,
    /// Made without deliberate damage.
    pub clean: bool,
    /// The Ethernet frame.
    pub frame: Vec<u8>,
}

/// A clean packet made earlier, that later ones answer, continue or quote.
#[derive(Clone, Debug)]
struct Made {
    pod: ObjectRef,
    dir: Direction,
    packet: Packet,
    src: IpAddr,
    dst: IpAddr,
    /// (protocol, source port, destination port, TCP flags or ICMP type, echo id)
    shape: Shape,
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    Ports(u8, u16, u16),
    Echo { request: bool, id: u16 },
    Other(u8),
}

/// The generator of one scenario's frames.
pub struct Generator {
    rng: StdRng,
    pods: Vec<(ObjectRef, Vec<IpAddr>)>,
    externals: Vec<IpAddr>,
    node: Vec<IpAddr>,
    /// Service frontends (address, port) the node's proxy forwards.
    frontends: Vec<(IpAddr, u16)>,
    history: Vec<Made>,
    next_id: u32,
}

/// The share of new flows leaving a pod that dial a Service frontend, when there is one.
const FRONTEND_SHARE: f64 = 0.3;

/// The shortest Ethernet frame (without its checksum).
const MIN_FRAME: usize = 60;
const PORTS: [u16; 8] = [80, 81, 53, 443, 22, 9000, 8472, 4789];
const TPIDS: [u16; 3] = [TPID_8021Q, TPID_8021AD, 0x9100];
/// PadN filling the rest of an extension header of `len` bytes.
fn padded_body(len: usize) -> Vec<u8> {
    let mut body = vec![1u8, (len - 4) as u8];
    body.resize(len - 2, 0);
    body
}

impl Generator {
    /// A generator over the pods (with addresses), external hosts and node addresses.
    pub fn new(
        rng: StdRng,
        pods: Vec<(ObjectRef, Vec<IpAddr>)>,
        externals: Vec<IpAddr>,
        node: Vec<IpAddr>,
        frontends: Vec<(IpAddr, u16)>,
    ) -> Self {
        Self {
            rng,
            pods: pods
                .into_iter()
                .filter(|(_, ips)| !ips.is_empty())
                .collect(),
            externals,
            node,
            frontends,
            history: Vec::new(),
            next_id: 1,
        }
    }

    /// The next frames: usually one, several for a fragmented datagram.
    pub fn frames(&mut self) -> Vec<Step> {
        if self.pods.is_empty() {
            return Vec::new();
        }
        let roll = self.rng.random_range(0..100);
        let mut steps = match roll {
            0..35 => vec![self.new_flow()],
            35..55 if !self.history.is_empty() => vec![self.follow_up()],
            55..65 => self.fragments(),
            65..75 if !self.history.is_empty() => vec![self.icmp_error()],
            75..90 => vec![self.discovery()],
            90..95 => vec![self.arp()],
            _ => vec![self.new_flow()],
        };
        for step in &mut steps {
            if self.rng.random_bool(0.25) {
                self.damage(step);
            }
            // What a wire carries at least (BPF_PROG_TEST_RUN refuses shorter IP frames).
            if step.frame.len() < MIN_FRAME {
                step.frame.resize(MIN_FRAME, 0);
            }
        }
        steps
    }

    fn pick_pod(&mut self) -> (ObjectRef, Vec<IpAddr>) {
        self.pods.choose(&mut self.rng).cloned().expect("pods")
    }

    fn dir(&mut self) -> Direction {
        if self.rng.random_bool(0.5) {
            Direction::Egress
        } else {
            Direction::Ingress
        }
    }

    /// Some address of `family`: a pod's, an external host's, the node's, or a special one.
    fn address(&mut self, v6: bool) -> IpAddr {
        let of_family = |ips: &mut dyn Iterator<Item = IpAddr>| -> Vec<IpAddr> {
            ips.filter(|ip| ip.is_ipv6() == v6).collect()
        };
        let pods = of_family(&mut self.pods.iter().flat_map(|(_, ips)| ips.iter().copied()));
        let externals = of_family(&mut self.externals.iter().copied());
        let node = of_family(&mut self.node.iter().copied());
        let special: Vec<IpAddr> = if v6 {
            [
                "::",
                "::1",
                "fe80::1",
                "fe80::2",
                "ff02::1",
                "ff02::2",
                "ff02::16",
                "ff02::1:ff00:1",
                "ff05::2",
                "2001:db8:dead::1",
                "fd00::ffff",
            ]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect()
        } else {
            [
                "0.0.0.0",
                "127.0.0.1",
                "255.255.255.255",
                "224.0.0.1",
                "169.254.1.1",
                "192.0.2.1",
                "10.0.0.255",
            ]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect()
        };
        let random = if v6 {
            IpAddr::V6(Ipv6Addr::from(self.rng.random::<u128>()))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.rng.random::<u32>()))
        };
        let pools = [pods, externals, node, special, vec![random]];
        let weights = [40, 20, 15, 20, 5];
        let mut roll: u32 = self.rng.random_range(0..100);
        for (pool, w) in pools.iter().zip(weights) {
            if roll < w && !pool.is_empty() {
                return *pool.choose(&mut self.rng).unwrap();
            }
            roll = roll.saturating_sub(w);
        }
        random
    }

    /// Sometimes a Service frontend of the family, as a pod dials it.
    fn frontend(&mut self, v6: bool) -> Option<(IpAddr, u16)> {
        let of_family: Vec<(IpAddr, u16)> = self
            .frontends
            .iter()
            .copied()
            .filter(|(a, _)| a.is_ipv6() == v6)
            .collect();
        if of_family.is_empty() || !self.rng.random_bool(FRONTEND_SHARE) {
            return None;
        }
        let (address, port) = *of_family.choose(&mut self.rng).expect("not empty");
        // A frontend address on another port, now and then.
        let port = if self.rng.random_bool(0.2) {
            self.port()
        } else {
            port
        };
        Some((address, port))
    }

    fn port(&mut self) -> u16 {
        if self.rng.random_bool(0.8) {
            *PORTS.choose(&mut self.rng).unwrap()
        } else {
            self.rng.random()
        }
    }

    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// Source and destination of a packet of `pod` going `dir`: mostly the pod's own
    /// address on its side, sometimes anything.
    fn ends(&mut self, own: IpAddr, dir: Direction) -> (IpAddr, IpAddr) {
        let v6 = own.is_ipv6();
        let mine = if self.rng.random_bool(0.85) {
            own
        } else {
            self.address(v6)
        };
        let other = self.address(v6);
        match dir {
            Direction::Egress => (mine, other),
            Direction::Ingress => (other, mine),
        }
    }

    fn new_flow(&mut self) -> Step {
        let (pod, ips) = self.pick_pod();
        let own = *ips.choose(&mut self.rng).unwrap();
        let dir = self.dir();
        let (src, mut dst) = self.ends(own, dir);
        let v6 = own.is_ipv6();
        let (sport, mut dport) = (self.rng.random_range(1024..=u16::MAX), self.port());
        if dir == Direction::Egress
            && let Some((address, port)) = self.frontend(v6)
        {
            // Through a Service: any protocol, so that some do not match the port's.
            (dst, dport) = (address, port);
        }
        let (packet, shape) = match self.rng.random_range(0..9) {
            0 | 1 => {
                let flags = if self.rng.random_bool(0.8) {
                    SYN
                } else {
                    self.rng.random()
                };
                (
                    Packet::tcp(src, dst, sport, dport, flags),
                    Shape::Ports(proto::TCP, sport, dport),
                )
            }
            2 | 3 => {
                let payload = vec![0x55; self.rng.random_range(0..64)];
                (
                    Packet::udp(src, dst, sport, dport, &payload),
                    Shape::Ports(proto::UDP, sport, dport),
                )
            }
            4 => (
                Packet::sctp_init(src, dst, sport, dport),
                Shape::Ports(proto::SCTP, sport, dport),
            ),
            5 | 6 => {
                let id = self.rng.random();
                let request = self.rng.random_bool(0.7);
                let packet = if request {
                    Packet::echo_request(src, dst, id)
                } else {
                    Packet::echo_reply(src, dst, id)
                };
                (packet, Shape::Echo { request, id })
            }
            7 => {
                // ICMP that is neither echo nor error (timestamp, router messages, ...).
                let ty = if v6 {
                    *[139u8, 140, 141, 150, 200].choose(&mut self.rng).unwrap()
                } else {
                    *[13u8, 14, 15, 17, 9, 10, 42].choose(&mut self.rng).unwrap()
                };
                (
                    Packet::icmp_any(src, dst, ty, 0, &[0; 16]),
                    Shape::Other(if v6 { proto::ICMPV6 } else { proto::ICMP }),
                )
            }
            _ => {
                let p = *[47u8, 50, 59, 103, 253, 254, 4, 41]
                    .choose(&mut self.rng)
                    .unwrap();
                (Packet::raw(src, dst, p, &[0x66; 24]), Shape::Other(p))
            }
        };
        let packet = self.dress(packet, v6);
        self.made(pod, dir, packet, src, dst, shape)
    }

    /// Records a clean packet and makes its step.
    fn made(
        &mut self,
        pod: ObjectRef,
        dir: Direction,
        packet: Packet,
        src: IpAddr,
        dst: IpAddr,
        shape: Shape,
    ) -> Step {
        let from_node = dir == Direction::Ingress
            && (self.node.contains(&src) || self.rng.random_bool(0.1))
            && self.rng.random_bool(0.7);
        let frame = packet.frame();
        self.history.push(Made {
            pod: pod.clone(),
            dir,
            packet,
            src,
            dst,
            shape,
        });
        if self.history.len() > 64 {
            self.history.remove(0);
        }
        Step {
            pod,
            dir,
            from_node,
            clean: true,
            frame,
        }
    }

    /// IPv4 options or IPv6 extension headers that every receiver walks over.
    fn dress(&mut self, packet: Packet, v6: bool) -> Packet {
        if !self.rng.random_bool(0.3) {
            return packet;
        }
        if !v6 {
            let len = 4 * self.rng.random_range(1..=10);
            let mut options = vec![1u8; len]; // NOPs
            if self.rng.random_bool(0.5) {
                // Record route: type 7, its length, pointer 4.
                options[0] = 7;
                options[1] = len as u8;
                options[2] = 4;
            }
            return packet.ipv4_options(&options);
        }
        let mut packet = packet;
        for i in 0..self.rng.random_range(1..=3) {
            let ty = match self.rng.random_range(0..5) {
                0 if i == 0 => proto::IPV6_HOP_BY_HOP,
                1 => proto::IPV6_ROUTING,
                2 => proto::IPV6_AUTH,
                _ => proto::IPV6_DEST_OPTS,
            };
            let len = 8 * self.rng.random_range(1..=4);
            let mut body = padded_body(len);
            if ty == proto::IPV6_ROUTING {
                body = vec![0u8; len - 2]; // routing type 0, no segments left
            }
            packet = packet.ext(ty, &body);
        }
        packet
    }

    /// A packet in an earlier packet's connection: its answer, a continuation, or, for
    /// echo, the other side's own request with the same identifier.
    fn follow_up(&mut self) -> Step {
        let h = self.history.choose(&mut self.rng).cloned().unwrap();
        let reverse = self.rng.random_bool(0.75);
        let dir = if reverse { h.dir.reverse() } else { h.dir };
        let (src, dst) = if reverse {
            (h.dst, h.src)
        } else {
            (h.src, h.dst)
        };
        let v6 = src.is_ipv6();
        let (packet, shape) = match h.shape {
            Shape::Ports(p, sport, dport) => {
                let (s, d) = if reverse {
                    (dport, sport)
                } else {
                    (sport, dport)
                };
                let packet = match p {
                    proto::TCP => {
                        let flags = *[SYN_ACK, ACK, ACK | 0x08, 0x04, 0x11, SYN]
                            .choose(&mut self.rng)
                            .unwrap();
                        Packet::tcp(src, dst, s, d, flags)
                    }
                    proto::UDP => Packet::udp(src, dst, s, d, b"again"),
                    _ => Packet::sctp_init(src, dst, s, d),
                };
                (packet, Shape::Ports(p, s, d))
            }
            Shape::Echo { request, id } => {
                // The other way: the answer, or a request of its own with the same
                // identifier. The same way: more of the same.
                let answer = reverse && self.rng.random_bool(0.6);
                let request = request ^ answer;
                let packet = if request {
                    Packet::echo_request(src, dst, id)
                } else {
                    Packet::echo_reply(src, dst, id)
                };
                (packet, Shape::Echo { request, id })
            }
            Shape::Other(p) => (
                if p == proto::ICMP || p == proto::ICMPV6 {
                    Packet::icmp_any(src, dst, if v6 { 140 } else { 14 }, 0, &[0; 16])
                } else {
                    Packet::raw(src, dst, p, &[0x77; 16])
                },
                Shape::Other(p),
            ),
        };
        let packet = self.dress(packet, v6);
        self.made(h.pod, dir, packet, src, dst, shape)
    }

    /// A datagram in fragments: first and later, in or out of order, sometimes a later
    /// fragment of a datagram never seen; IPv6 sometimes with options after the Fragment
    /// header.
    fn fragments(&mut self) -> Vec<Step> {
        let (pod, ips) = self.pick_pod();
        let own = *ips.choose(&mut self.rng).unwrap();
        let v6 = own.is_ipv6();
        let dir = self.dir();
        let (src, dst) = self.ends(own, dir);
        let (sport, dport) = (self.rng.random_range(1024..=u16::MAX), self.port());
        let mut datagram = match self.rng.random_range(0..3) {
            0 => Packet::udp(src, dst, sport, dport, &[0x33; 48]),
            1 => Packet::tcp(src, dst, sport, dport, SYN),
            _ => Packet::echo_request(src, dst, sport),
        };
        if v6 && self.rng.random_bool(0.5) {
            datagram = datagram.ext_after_fragment(proto::IPV6_DEST_OPTS, &padded_body(8));
        }
        let id = self.id();
        let from_node = dir == Direction::Ingress && self.rng.random_bool(0.1);
        let step = |packet: Packet| Step {
            pod: pod.clone(),
            dir,
            from_node,
            clean: true,
            frame: packet.frame(),
        };
        let first = step(datagram.clone().fragment(0, true, id));
        let later = step(
            datagram
                .clone()
                .fragment(self.rng.random_range(1..=8), false, id),
        );
        let stranger = step(datagram.fragment(3, false, id + 1_000_000));
        match self.rng.random_range(0..4) {
            0 => vec![later, first],
            1 => vec![stranger],
            _ => vec![first, later],
        }
    }

    /// An ICMP error quoting an earlier packet: back to its sender or anywhere else, from
    /// its destination, a router or anyone, about it or about its answer; errors quoting
    /// errors too.
    fn icmp_error(&mut self) -> Step {
        let h = self.history.choose(&mut self.rng).cloned().unwrap();
        let v6 = h.src.is_ipv6();
        // The error travels against the quoted packet, mostly.
        let against = self.rng.random_bool(0.8);
        let dir = if against { h.dir.reverse() } else { h.dir };
        let dst = if self.rng.random_bool(0.7) {
            h.src
        } else {
            self.address(v6)
        };
        let src = match self.rng.random_range(0..3) {
            0 => h.dst,
            1 => self.address(v6),
            _ => {
                if v6 {
                    "2001:db8::1".parse().unwrap()
                } else {
                    "198.51.100.1".parse().unwrap()
                }
            }
        };
        let (ty, code) = if v6 {
            *[
                (icmpv6::DEST_UNREACH, 4),
                (icmpv6::PACKET_TOO_BIG, 0),
                (icmpv6::TIME_EXCEEDED, 0),
                (icmpv6::PARAM_PROBLEM, 1),
            ]
            .choose(&mut self.rng)
            .unwrap()
        } else {
            *[
                (icmp::DEST_UNREACH, 3),
                (icmp::DEST_UNREACH, 4),
                (icmp::TIME_EXCEEDED, 0),
                (icmp::PARAM_PROBLEM, 0),
            ]
            .choose(&mut self.rng)
            .unwrap()
        };
        let mut error = Packet::icmp_error(src, dst, ty, code, &h.packet);
        if self.rng.random_bool(0.2) {
            // An error about this error.
            error = Packet::icmp_error(dst, src, ty, code, &error);
        }
        let error = self.dress(error, v6);
        self.made(
            h.pod,
            dir,
            error,
            src,
            dst,
            Shape::Other(if v6 { proto::ICMPV6 } else { proto::ICMP }),
        )
    }

    /// Neighbour or multicast listener discovery with every field varied: mostly shaped
    /// as the RFCs lay the messages out (options, records, sizes), sometimes not.
    fn discovery(&mut self) -> Step {
        let v6_pods: Vec<(ObjectRef, IpAddr)> = self
            .pods
            .iter()
            .flat_map(|(p, ips)| {
                ips.iter()
                    .filter(|i| i.is_ipv6())
                    .map(move |i| (p.clone(), *i))
            })
            .collect();
        let (pod, own) = match v6_pods.choose(&mut self.rng) {
            Some(p) => p.clone(),
            // A pod without IPv6 still speaks it on its link.
            None => (self.pick_pod().0, "fe80::99".parse().unwrap()),
        };
        let dir = self.dir();
        // Its own link-local address (when the agent knows it), or another's.
        let link_local: IpAddr = match super::pod_link_local(&pod) {
            Some(addr) if self.rng.random_bool(0.7) => addr.into(),
            _ => ["fe80::2", "fe80::fe"]
                .choose(&mut self.rng)
                .unwrap()
                .parse()
                .unwrap(),
        };
        let mut src = self.discovery_address(own, link_local);
        let mut dst = self.discovery_address(own, link_local);
        if self.rng.random_bool(0.5) {
            // The usual shape: the pod's side is its own or link-local address.
            match dir {
                Direction::Egress => {
                    src = if self.rng.random_bool(0.5) {
                        own
                    } else {
                        link_local
                    }
                }
                Direction::Ingress => dst = own,
            }
        }
        let rng = &mut self.rng;
        let ty = *[
            icmpv6::ROUTER_SOLICIT,
            icmpv6::ROUTER_ADVERT,
            icmpv6::NEIGHBOUR_SOLICIT,
            icmpv6::NEIGHBOUR_ADVERT,
            icmpv6::REDIRECT,
            icmpv6::MLD_QUERY,
            icmpv6::MLD_REPORT,
            icmpv6::MLD_DONE,
            icmpv6::MLD2_REPORT,
        ]
        .choose(rng)
        .unwrap();
        let mld = !(icmpv6::ROUTER_SOLICIT..=icmpv6::REDIRECT).contains(&ty);
        let hop = if rng.random_bool(0.7) {
            if mld { 1 } else { 255 }
        } else {
            *[0u8, 1, 2, 64, 254, 255].choose(rng).unwrap()
        };
        let code = if rng.random_bool(0.9) {
            0
        } else {
            rng.random()
        };
        let target = self.discovery_address(own, link_local);
        let rng = &mut self.rng;
        let IpAddr::V6(target) = target else {
            unreachable!()
        };
        if ty == icmpv6::NEIGHBOUR_SOLICIT && rng.random_bool(0.3) {
            // Duplicate address detection: from `::` to the target's solicited-node group.
            src = "::".parse().unwrap();
            let mut g = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
            g[13..].copy_from_slice(&target.octets()[13..]);
            dst = Ipv6Addr::from(g).into();
        }
        let mut body = if rng.random_bool(0.2) {
            // Any bytes, any length.
            let mut body = vec![0u8; 4];
            body.extend_from_slice(&target.octets());
            body.resize(rng.random_range(20..48), 0);
            body
        } else {
            discovery_body(rng, ty, target)
        };
        if rng.random_bool(0.1) {
            // An option or record nobody defined, or a flipped reserved bit.
            match rng.random_range(0..3) {
                0 => body.extend_from_slice(&[0xfd, 1, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41]),
                1 => body.extend_from_slice(&[0; 16]),
                _ => {
                    let at = rng.random_range(0..4.min(body.len()));
                    body[at] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        let mut packet = Packet::icmpv6_with(src, dst, ty, code, &body).ttl(hop);
        if mld && rng.random_bool(0.5) {
            let pad: &[u8] = if rng.random_bool(0.8) {
                &[1, 0]
            } else {
                &[0, 0]
            };
            packet = packet.ext(proto::IPV6_HOP_BY_HOP, &[&[5, 2, 0, 0][..], pad].concat());
        } else if rng.random_bool(0.05) {
            packet = packet.ext(proto::IPV6_DEST_OPTS, &[1, 4, 0, 0, 0, 0]);
        }
        if rng.random_bool(0.05) {
            packet = packet.fragment(0, true, 77);
        }
        let from_node = dir == Direction::Ingress && rng.random_bool(0.5);
        Step {
            pod,
            dir,
            from_node,
            clean: true,
            frame: packet.frame(),
        }
    }

    /// An address discovery may name: the pod's, a link-local one, `::`, or any.
    fn discovery_address(&mut self, own: IpAddr, link_local: IpAddr) -> IpAddr {
        match self.rng.random_range(0..6) {
            0 => own,
            1 => link_local,
            2 => "::".parse().unwrap(),
            _ => self.address(true),
        }
    }

    /// ARP claiming the pod's address, none, or another.
    fn arp(&mut self) -> Step {
        let (pod, ips) = self.pick_pod();
        let own = ips.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4.octets()),
            IpAddr::V6(_) => None,
        });
        let sender = match (self.rng.random_range(0..3), own) {
            (0, Some(own)) => own,
            (1, _) => [0; 4],
            _ => self.rng.random(),
        };
        let mut frame = arp_request(sender, [10, 0, 0, 254]);
        let clean = self.rng.random_bool(0.8);
        if !clean {
            // Another hardware or protocol type, or address lengths.
            let at = 14 + self.rng.random_range(0..6);
            frame[at] ^= 1 << self.rng.random_range(0..8);
        }
        let dir = self.dir();
        Step {
            pod,
            dir,
            from_node: false,
            clean,
            frame,
        }
    }

    /// Damage: VLAN tags, another EtherType, lying lengths, truncation, flipped bytes,
    /// chains too long to walk, routing headers with segments left, padding.
    fn damage(&mut self, step: &mut Step) {
        step.clean = false;
        let f = &mut step.frame;
        let ip = f.len() > 14 && f[12..14] != ETH_P_ARP.to_be_bytes();
        let v6 = f.get(14).is_some_and(|b| b >> 4 == 6);
        match self.rng.random_range(0..9) {
            0 | 1 => {
                let tags: Vec<(u16, u16)> = (0..self.rng.random_range(1..=3))
                    .map(|_| {
                        let tci = if self.rng.random_bool(0.6) {
                            0
                        } else {
                            self.rng.random()
                        };
                        (*TPIDS.choose(&mut self.rng).unwrap(), tci)
                    })
                    .collect();
                *f = tagged(f, &tags);
            }
            2 => {
                let t: u16 = *[0x88b5u16, 0x0100, 0x8847, 0x88cc, self.rng.random()]
                    .choose(&mut self.rng)
                    .unwrap();
                f[12..14].copy_from_slice(&t.to_be_bytes());
            }
            3 if ip => {
                // A length field that lies: IPv4 IHL or total length, IPv6 payload length.
                let at = if v6 {
                    14 + 4 + self.rng.random_range(0..2)
                } else {
                    14 + [0, 2, 3][self.rng.random_range(0..3)]
                };
                f[at] = self.rng.random();
            }
            4 if ip => {
                let cut = self.rng.random_range(1..f.len().saturating_sub(14).max(2));
                f.truncate(f.len() - cut.min(f.len() - 14));
            }
            5 if ip && v6 => {
                // A chain longer than any real traffic: destination options all the way.
                let extra = self.rng.random_range(9..=12);
                let mut chain = Vec::new();
                let first_next = f[14 + 6];
                for i in 0..extra {
                    let next = if i + 1 == extra {
                        first_next
                    } else {
                        proto::IPV6_DEST_OPTS
                    };
                    chain.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                }
                f[14 + 6] = proto::IPV6_DEST_OPTS;
                let len = u16::from_be_bytes([f[18], f[19]]) + chain.len() as u16;
                f[18..20].copy_from_slice(&len.to_be_bytes());
                f.splice(54..54, chain);
            }
            6 if ip && v6 => {
                // A routing header with a segment left.
                let first_next = f[14 + 6];
                let rh = [first_next, 2, 0, 1, 0, 0, 0, 0];
                let mut rh = rh.to_vec();
                rh.extend_from_slice(&[0; 16]);
                f[14 + 6] = proto::IPV6_ROUTING;
                let len = u16::from_be_bytes([f[18], f[19]]) + rh.len() as u16;
                f[18..20].copy_from_slice(&len.to_be_bytes());
                f.splice(54..54, rh);
            }
            7 => f.extend(std::iter::repeat_n(0u8, self.rng.random_range(1..32))),
            _ => {
                let at = self.rng.random_range(14.min(f.len() - 1)..f.len());
                f[at] ^= 1 << self.rng.random_range(0..8);
            }
        }
    }
}

/// The body (after type, code and checksum) of a discovery message of type `ty` as the RFCs
/// lay it out, with options, sources and records drawn at random.
fn discovery_body(rng: &mut StdRng, ty: u8, target: Ipv6Addr) -> Vec<u8> {
    let mut body = Vec::new();
    let mac: [u8; 6] = rng.random();
    let option = |ty: u8, body: &mut Vec<u8>| {
        body.extend_from_slice(&[ty, 1]);
        body.extend_from_slice(&mac);
    };
    match ty {
        icmpv6::ROUTER_SOLICIT => {
            body.extend_from_slice(&[0; 4]);
            if rng.random_bool(0.5) {
                option(icmpv6::ND_OPT_SOURCE_LL, &mut body);
            }
        }
        icmpv6::NEIGHBOUR_SOLICIT | icmpv6::NEIGHBOUR_ADVERT => {
            let flags = if ty == icmpv6::NEIGHBOUR_ADVERT {
                rng.random::<u8>() & 0xe0
            } else {
                0
            };
            body.extend_from_slice(&[flags, 0, 0, 0]);
            body.extend_from_slice(&target.octets());
            if ty == icmpv6::NEIGHBOUR_ADVERT {
                if rng.random_bool(0.6) {
                    option(icmpv6::ND_OPT_TARGET_LL, &mut body);
                }
            } else {
                if rng.random_bool(0.5) {
                    option(icmpv6::ND_OPT_SOURCE_LL, &mut body);
                }
                if rng.random_bool(0.3) {
                    option(icmpv6::ND_OPT_NONCE, &mut body);
                }
            }
        }
        icmpv6::MLD2_REPORT => {
            let records = rng.random_range(1..=3u16);
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&records.to_be_bytes());
            for _ in 0..records {
                let sources = if rng.random_bool(0.8) {
                    0
                } else {
                    rng.random_range(1..=3u16)
                };
                body.extend_from_slice(&[rng.random_range(1..=6), 0]);
                body.extend_from_slice(&sources.to_be_bytes());
                body.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 1]);
                for _ in 0..sources {
                    body.extend_from_slice(&rng.random::<[u8; 16]>());
                }
            }
        }
        // MLD query (v1 or v2), report and done: delay, reserved, the group.
        _ => {
            body.extend_from_slice(&[0; 4]);
            body.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            if ty == icmpv6::MLD_QUERY && rng.random_bool(0.5) {
                let sources = rng.random_range(0..=2u16);
                body.extend_from_slice(&[2, 125]);
                body.extend_from_slice(&sources.to_be_bytes());
                for _ in 0..sources {
                    body.extend_from_slice(&rng.random::<[u8; 16]>());
                }
            }
        }
    }
    body
}
