//! Probe servers and probes: real TCP, UDP and (crafted) SCTP exchanges between hosts.
//!
//! A probe succeeds when the first packet reaches the destination and its answer comes
//! back: a TCP handshake, a UDP echo, an SCTP INIT answered by an INIT ACK. Sockets are
//! created inside the host's namespace and then driven by tokio from anywhere.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        LazyLock, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use socket2::{Domain, Socket, Type};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream, UdpSocket},
    runtime::{Handle, Runtime},
    task::JoinSet,
    time::timeout,
};

use super::{
    sctp::{self, CHUNK_ABORT, CHUNK_INIT, CHUNK_INIT_ACK, RawSctp},
    topology::Host,
};
use crate::{model::Protocol, netns::NetNs};

/// How long a TCP handshake may take: long enough for one SYN retransmission (after 1 s),
/// so a single lost SYN does not read as "denied".
pub const TCP_TIMEOUT: Duration = Duration::from_millis(2500);
/// Datagrams sent per UDP or SCTP probe before it counts as denied.
pub const DATAGRAM_ATTEMPTS: u32 = 4;
/// Flows (source ports) a UDP probe sends its datagrams on, [`DATAGRAMS_PER_FLOW`] each.
///
/// A flow the node masquerades (a pod reaching itself through its Service, a client of a
/// node port) may be given one of the tunnel ports as its source port (kube-proxy's
/// `--random-fully` picks any), and the answer to the node on that port is dropped as a
/// tunnel to the node (README, "Security model"): that flow gets no answer until the node
/// forgets it. A client that asks again from a new source port, as resolvers do, gets
/// through; so does a probe.
pub const UDP_FLOWS: u32 = 2;
/// Datagrams a UDP probe sends on each of its flows.
pub const DATAGRAMS_PER_FLOW: u32 = DATAGRAM_ATTEMPTS / UDP_FLOWS;
/// How long to wait for each datagram's answer.
pub const DATAGRAM_WAIT: Duration = Duration::from_millis(500);
const LISTEN_BACKLOG: i32 = 1024;
/// Threads answering a lab's probes.
const SERVER_THREADS: usize = 1;
/// Source ports of UDP and SCTP probes: above every port a lab serves (one in use, say
/// by a socket the kernel gave it, is skipped).
const PROBE_PORTS: std::ops::RangeInclusive<u16> = 10_000..=65_535;
/// Ports tried before a UDP probe gives up on binding.
const BIND_ATTEMPTS: usize = 16;

/// The unspecified address of a family (`ipv6` or not).
pub(super) fn unspecified(ipv6: bool) -> IpAddr {
    if ipv6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    }
}

fn socket(ipv6: bool, ty: Type) -> io::Result<Socket> {
    let domain = if ipv6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, ty, None)?;
    if ipv6 {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// The probe servers of a lab's hosts, answering on a thread of their own: datagram probes
/// need a server to answer within [`DATAGRAM_WAIT`], and the lab's own work (creating
/// namespaces, loading a proxy's rules, starting agents) must not hold that answer up, nor
/// must another lab's work on a shared runtime.
pub struct Servers {
    /// Always `Some` until dropped.
    runtime: Option<Runtime>,
    tasks: JoinSet<()>,
}

impl Servers {
    /// Servers with their own thread, serving nothing yet.
    pub fn new() -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(SERVER_THREADS)
            .thread_name("lab-probe-servers")
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
            tasks: JoinSet::new(),
        })
    }

    /// Starts a host's servers on every port it serves, for each of its address families.
    pub fn serve(&mut self, host: &Host) -> io::Result<()> {
        self.serve_ports(host, &host.spec.serves)
    }

    /// Starts a host's servers on `ports` (of those it serves, the ones no other server of
    /// the host takes), for each of its address families.
    pub fn serve_ports(&mut self, host: &Host, ports: &[(Protocol, u16)]) -> io::Result<()> {
        // Sockets register with the reactor of the runtime that enters here.
        let runtime = self.runtime.as_ref().expect("until dropped");
        let _servers_runtime = runtime.enter();
        let handle = runtime.handle().clone();
        serve_ports_on(host, ports, &mut self.tasks, &handle)
    }

    /// Stops every server and waits for them to end.
    pub async fn shutdown(&mut self) {
        self.tasks.shutdown().await;
    }
}

impl Drop for Servers {
    /// Stops the servers' thread without waiting: a runtime may not block while it is
    /// dropped from inside another.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Starts a host's servers on `ports` as tasks of `tasks` on `runtime` (whose context the
/// caller has entered).
fn serve_ports_on(
    host: &Host,
    ports: &[(Protocol, u16)],
    tasks: &mut JoinSet<()>,
    runtime: &Handle,
) -> io::Result<()> {
    let families: Vec<bool> = [false, true]
        .into_iter()
        .filter(|v6| host.spec.ips.iter().any(|ip| ip.is_ipv6() == *v6))
        .collect();
    let serves = ports.to_vec();
    let (tcp, udp, raw) = host.netns.run(|| -> io::Result<_> {
        let (mut tcp, mut udp, mut raw) = (Vec::new(), Vec::new(), Vec::new());
        for &v6 in &families {
            for &(protocol, port) in &serves {
                let addr = SocketAddr::new(unspecified(v6), port).into();
                match protocol {
                    Protocol::Tcp => {
                        let s = socket(v6, Type::STREAM)?;
                        s.set_reuse_address(true)?;
                        s.bind(&addr)?;
                        s.listen(LISTEN_BACKLOG)?;
                        tcp.push(s);
                    }
                    Protocol::Udp => {
                        let s = socket(v6, Type::DGRAM)?;
                        s.bind(&addr)?;
                        udp.push(s);
                    }
                    Protocol::Sctp => {}
                }
            }
            // Every host answers SCTP, as an SCTP stack would: an INIT ACK on the ports
            // it serves, an ABORT on the others.
            raw.push(RawSctp::open(v6)?);
        }
        Ok((tcp, udp, raw))
    })??;

    for s in tcp {
        let listener = TcpListener::from_std(std::net::TcpListener::from(s))?;
        tasks.spawn_on(
            async move {
                // Completing the handshake is the answer; the connection is closed at once.
                while listener.accept().await.is_ok() {}
            },
            runtime,
        );
    }
    for s in udp {
        let socket = UdpSocket::from_std(std::net::UdpSocket::from(s))?;
        tasks.spawn_on(
            async move {
                let mut buf = [0u8; 2048];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    let _ = socket.send_to(&buf[..n], from).await;
                }
            },
            runtime,
        );
    }
    let sctp_ports: Vec<u16> = serves
        .iter()
        .filter(|(p, _)| *p == Protocol::Sctp)
        .map(|(_, port)| *port)
        .collect();
    for s in raw {
        let raw = RawSctp::new(s)?;
        let ports = sctp_ports.clone();
        tasks.spawn_on(
            async move {
                while let Ok((from, bytes)) = raw.recv().await {
                    let Some(init) = sctp::parse(&bytes) else {
                        continue;
                    };
                    if init.chunk != CHUNK_INIT {
                        continue;
                    }
                    let chunk = if ports.contains(&init.dst_port) {
                        CHUNK_INIT_ACK
                    } else {
                        CHUNK_ABORT
                    };
                    let ack = sctp::Packet {
                        src_port: init.dst_port,
                        dst_port: init.src_port,
                        vtag: init.initiate_tag,
                        chunk,
                        initiate_tag: init.initiate_tag.wrapping_add(1),
                    };
                    let _ = raw.send(from, &sctp::build(&ack)).await;
                }
            },
            runtime,
        );
    }
    Ok(())
}

/// A TCP connection from `from_ns` to `dst`, or why not: `TimedOut` when the handshake did
/// not complete within [`TCP_TIMEOUT`].
pub(super) async fn tcp_connect(from_ns: &NetNs, dst: SocketAddr) -> io::Result<TcpStream> {
    let s = from_ns.run(|| socket(dst.is_ipv6(), Type::STREAM))??;
    let s = TcpSocket::from_std_stream(std::net::TcpStream::from(s));
    timeout(TCP_TIMEOUT, s.connect(dst))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// The next source port of a datagram probe from `from_ns`.
///
/// Every probe is a new flow, as upstream's probes are: a datagram on the five-tuple of an
/// earlier probe is that flow's, which every stateful firewall (conntrack, ours) passes as
/// established for a while even if the policy changed since. So the ports of a namespace's
/// probes go round the whole range before any repeats, instead of at random.
fn next_source_port(from_ns: &NetNs) -> u16 {
    static NEXT: LazyLock<Mutex<HashMap<String, u16>>> = LazyLock::new(Mutex::default);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let port = next
        .entry(from_ns.name().to_owned())
        .or_insert(*PROBE_PORTS.start());
    let this = *port;
    *port = if this == *PROBE_PORTS.end() {
        *PROBE_PORTS.start()
    } else {
        this + 1
    };
    this
}

/// A UDP socket of `from_ns` of family `v6` (or IPv4), bound to the namespace's next
/// probe port (see [`next_source_port`]).
pub(super) fn udp_client(from_ns: &NetNs, v6: bool) -> io::Result<UdpSocket> {
    let s = from_ns.run(|| -> io::Result<Socket> {
        let s = socket(v6, Type::DGRAM)?;
        let mut attempts = 0;
        loop {
            let port = next_source_port(from_ns);
            match s.bind(&SocketAddr::new(unspecified(v6), port).into()) {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempts < BIND_ATTEMPTS => {
                    attempts += 1;
                }
                bound => break bound.map(|()| s),
            }
        }
    })??;
    UdpSocket::from_std(std::net::UdpSocket::from(s))
}

/// Sends `message` from `from_ns` to `dst` over UDP until a datagram comes back (read into
/// `buf`) that `answer` takes: [`DATAGRAMS_PER_FLOW`] times on each of [`UDP_FLOWS`] flows,
/// waiting [`DATAGRAM_WAIT`] each time. `Ok(None)`: nothing came back; `ConnectionRefused`:
/// the destination's stack refused.
pub(super) async fn udp_exchange<T>(
    from_ns: &NetNs,
    dst: SocketAddr,
    message: &[u8],
    buf: &mut [u8],
    mut answer: impl FnMut(&[u8]) -> Option<T>,
) -> io::Result<Option<T>> {
    for _ in 0..UDP_FLOWS {
        let s = udp_client(from_ns, dst.is_ipv6())?;
        s.connect(dst).await?;
        for _ in 0..DATAGRAMS_PER_FLOW {
            s.send(message).await?;
            let answered = timeout(DATAGRAM_WAIT, async {
                loop {
                    match s.recv(buf).await {
                        Ok(n) => {
                            if let Some(a) = answer(&buf[..n]) {
                                return Ok(a);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(e),
                        // Another ICMP error (say, a host unreachable): wait this attempt
                        // out and ask again.
                        Err(_) => std::future::pending::<()>().await,
                    }
                }
            })
            .await;
            if let Ok(answered) = answered {
                return answered.map(Some);
            }
        }
    }
    Ok(None)
}

static NONCE: AtomicU32 = AtomicU32::new(0);

/// A value no other probe of this process uses.
pub(super) fn nonce() -> u32 {
    let seed = std::process::id().rotate_left(16);
    seed ^ NONCE
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9e37_79b9)
}

/// Whether `from_ns` can open a `protocol` exchange with `to:port`.
pub async fn probe(from_ns: &NetNs, to: IpAddr, port: u16, protocol: Protocol) -> io::Result<bool> {
    probe_with(from_ns, to, port, protocol, Refusal::Reached).await
}

/// What a refusal (a TCP reset, an ICMP port unreachable) says of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The destination's stack answered: the exchange crossed the datapath both ways.
    Reached,
    /// Only the server counts: through a Service without backends, a refusal comes from the
    /// proxy (kube-proxy rejects such connections) or from the node holding the frontend
    /// address (IPVS), not from any pod.
    NotReached,
}

/// Whether `from_ns` can open a `protocol` exchange with `to:port`, a refusal counting as
/// `refusal` says.
pub async fn probe_with(
    from_ns: &NetNs,
    to: IpAddr,
    port: u16,
    protocol: Protocol,
    refusal: Refusal,
) -> io::Result<bool> {
    let dst = SocketAddr::new(to, port);
    let v6 = to.is_ipv6();
    let refused = refusal == Refusal::Reached;
    match protocol {
        Protocol::Tcp => Ok(match tcp_connect(from_ns, dst).await {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => refused,
            Err(_) => false,
        }),
        Protocol::Udp => {
            let token = nonce().to_be_bytes();
            let mut buf = [0u8; 16];
            let echoed = |answer: &[u8]| (answer == token).then_some(());
            match udp_exchange(from_ns, dst, &token, &mut buf, echoed).await {
                Ok(answered) => Ok(answered.is_some()),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(refused),
                Err(e) => Err(e),
            }
        }
        Protocol::Sctp => {
            let raw = RawSctp::new(from_ns.run(|| RawSctp::open(v6))??)?;
            let tag = nonce() | 1;
            let init = sctp::Packet {
                src_port: next_source_port(from_ns),
                dst_port: port,
                vtag: 0,
                chunk: CHUNK_INIT,
                initiate_tag: tag,
            };
            let bytes = sctp::build(&init);
            for _ in 0..DATAGRAM_ATTEMPTS {
                raw.send(to, &bytes).await?;
                let answered = timeout(DATAGRAM_WAIT, async {
                    loop {
                        let (from, reply) = raw.recv().await?;
                        let answer = sctp::parse(&reply).filter(|r| {
                            from == to
                                && r.vtag == tag
                                && r.src_port == port
                                && r.dst_port == init.src_port
                        });
                        match answer.map(|r| r.chunk) {
                            Some(CHUNK_INIT_ACK) => return io::Result::Ok(true),
                            Some(CHUNK_ABORT) => return Ok(refused),
                            _ => {}
                        }
                    }
                })
                .await;
                if let Ok(r) = answered {
                    return r;
                }
            }
            Ok(false)
        }
    }
}
