//! The load generators: servers in the server pod's namespace, clients in the client pod's,
//! plain std sockets and threads. Each measurement is bounded in time; every socket is
//! created inside a namespace the bench's lab made, so no packet leaves it.
//!
//! - TCP throughput: one connection writes for the measurement's duration, then waits for
//!   the server's count of what it read: bytes over the time to that answer.
//! - UDP packet rate: a sender sends datagrams of [`UDP_PAYLOAD`] bytes as fast as it can;
//!   what the server's socket received during the measurement window, per second.
//! - TCP connection rate: connect, one byte each way, close; connections per second, one
//!   after the other (as a request-per-connection client does).

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use policy_agent::netns::NetNs;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// The server's ports: TCP throughput, UDP rate, TCP connection rate, and one the
/// policies deny (to check that a filter is in place).
pub const PORT_STREAM: u16 = 5001;
pub const PORT_UDP: u16 = 5002;
pub const PORT_CONNECT: u16 = 5003;
pub const PORT_DENIED: u16 = 5004;
/// Payload of each UDP datagram.
pub const UDP_PAYLOAD: usize = 64;
/// Size of the TCP writes and reads.
const STREAM_BUFFER: usize = 256 * 1024;
/// Socket buffers of the UDP receiver: large, so that the socket is not what drops.
const UDP_RECEIVE_BUFFER: usize = 8 * 1024 * 1024;
/// Time the UDP sender runs before the window opens (queues fill, caches warm).
const UDP_WARMUP: Duration = Duration::from_millis(100);
/// How long a client waits for a server's answer before the measurement fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection to the denied port may take to be counted as passing.
pub const DENIED_TIMEOUT: Duration = Duration::from_millis(300);

/// The servers, running on detached threads until the process ends (their namespace goes
/// with the lab; the sockets hold nothing else).
pub struct Servers {
    /// Datagrams the UDP server has received.
    udp_received: Arc<AtomicU64>,
}

impl Servers {
    /// Binds every server inside `netns` on `ip` and starts them.
    pub fn start(netns: &NetNs, ip: IpAddr) -> anyhow::Result<Self> {
        let (stream, udp, connect, denied) = netns
            .run(|| -> io::Result<_> {
                let udp = UdpSocket::bind(SocketAddr::new(ip, PORT_UDP))?;
                SockRef::from(&udp).set_recv_buffer_size(UDP_RECEIVE_BUFFER)?;
                Ok((
                    TcpListener::bind(SocketAddr::new(ip, PORT_STREAM))?,
                    udp,
                    TcpListener::bind(SocketAddr::new(ip, PORT_CONNECT))?,
                    TcpListener::bind(SocketAddr::new(ip, PORT_DENIED))?,
                ))
            })?
            .context("binding the bench's servers")?;
        std::thread::spawn(move || serve_stream(&stream));
        std::thread::spawn(move || serve_connect(&connect));
        std::thread::spawn(move || {
            // Accepting is all: the client only needs to know that it got through.
            for conn in denied.incoming() {
                drop(conn);
            }
        });
        let udp_received = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&udp_received);
        std::thread::spawn(move || {
            let mut buf = [0u8; UDP_PAYLOAD * 2];
            while udp.recv(&mut buf).is_ok() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Self { udp_received })
    }
}

/// Reads each connection to its end and answers with the number of bytes read.
fn serve_stream(listener: &TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; STREAM_BUFFER];
            let mut total: u64 = 0;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = conn.write_all(&total.to_be_bytes());
        });
    }
}

/// One byte in, one byte out, close: for each connection in turn.
fn serve_connect(listener: &TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut byte = [0u8; 1];
        if conn.read_exact(&mut byte).is_ok() {
            let _ = conn.write_all(&byte);
        }
    }
}

/// TCP throughput from `netns` to `server` for `duration`, in bit/s.
pub fn tcp_throughput(netns: &NetNs, server: IpAddr, duration: Duration) -> anyhow::Result<f64> {
    let mut conn = netns
        .run(|| TcpStream::connect_timeout(&SocketAddr::new(server, PORT_STREAM), ANSWER_TIMEOUT))?
        .context("connecting to the throughput server")?;
    conn.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let buf = vec![0u8; STREAM_BUFFER];
    let start = Instant::now();
    while start.elapsed() < duration {
        conn.write_all(&buf).context("sending")?;
    }
    conn.shutdown(Shutdown::Write)?;
    let mut answer = [0u8; 8];
    conn.read_exact(&mut answer)
        .context("reading the server's count")?;
    let elapsed = start.elapsed().as_secs_f64();
    Ok(u64::from_be_bytes(answer) as f64 * 8.0 / elapsed)
}

/// Datagrams per second the server received from a sender in `netns` during `duration`.
pub fn udp_rate(
    netns: &NetNs,
    server: IpAddr,
    servers: &Servers,
    duration: Duration,
) -> anyhow::Result<f64> {
    let socket = netns
        .run(|| -> io::Result<UdpSocket> {
            let socket = Socket::new(
                Domain::for_address(SocketAddr::new(server, 0)),
                Type::DGRAM,
                Some(Protocol::UDP),
            )?;
            socket.connect(&SocketAddr::new(server, PORT_UDP).into())?;
            Ok(socket.into())
        })?
        .context("opening the UDP sender")?;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let payload = [0u8; UDP_PAYLOAD];
            while !stop.load(Ordering::Relaxed) {
                // A full queue (ENOBUFS) is part of the load, not a failure.
                let _ = socket.send(&payload);
            }
        })
    };
    std::thread::sleep(UDP_WARMUP);
    let (c0, t0) = (servers.udp_received.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(duration);
    let (c1, t1) = (servers.udp_received.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("the UDP sender panicked"))?;
    Ok((c1 - c0) as f64 / (t1 - t0).as_secs_f64())
}

/// TCP connections per second from `netns`, one after the other, for `duration`.
pub fn connection_rate(netns: &NetNs, server: IpAddr, duration: Duration) -> anyhow::Result<f64> {
    let target = SocketAddr::new(server, PORT_CONNECT);
    netns.run(|| -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut done: u64 = 0;
        while start.elapsed() < duration {
            let mut conn = TcpStream::connect_timeout(&target, ANSWER_TIMEOUT)
                .with_context(|| format!("connection {done} to {target}"))?;
            conn.set_read_timeout(Some(ANSWER_TIMEOUT))?;
            conn.write_all(&[1])?;
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte)
                .with_context(|| format!("answer on connection {done}"))?;
            // Reset rather than TIME_WAIT: a run makes tens of thousands of connections
            // from one address, which would otherwise exhaust the client's ports.
            SockRef::from(&conn).set_linger(Some(Duration::ZERO))?;
            drop(conn);
            done += 1;
        }
        Ok(done as f64 / start.elapsed().as_secs_f64())
    })?
}

/// Whether a TCP connection from `netns` to the server's denied port gets through within
/// [`DENIED_TIMEOUT`] (a filter that drops it makes it time out).
pub fn denied_port_passes(netns: &NetNs, server: IpAddr) -> anyhow::Result<bool> {
    let target = SocketAddr::new(server, PORT_DENIED);
    Ok(netns
        .run(|| TcpStream::connect_timeout(&target, DENIED_TIMEOUT))?
        .is_ok())
}
