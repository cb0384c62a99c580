//! Lookups from inside a host's network namespace, as a stub resolver makes them, and the
//! lookup every DNS probe makes.

use std::{
    io::{self, ErrorKind},
    net::{IpAddr, SocketAddr},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    time::timeout,
};

use super::{
    READY_WAIT,
    message::{
        Answer, MAX_MESSAGE_LEN, TCP_LENGTH_LEN, decode_response, encode_query, record_type,
    },
    records, service_name, service_ref,
};
use crate::{
    lab::probe::{self, TCP_TIMEOUT},
    model::{Cluster, Protocol},
    netns::NetNs,
    report::Family,
};

/// Asks `server` (from inside `from`) for the addresses of `family` of `name` over
/// `protocol` (UDP or TCP), as a stub resolver does: `None` when no answer comes (a UDP
/// query retried as a probe's datagrams are, a TCP connection not made in time). A refused
/// connection (no server there) is an error.
pub async fn lookup(
    from: &NetNs,
    server: SocketAddr,
    protocol: Protocol,
    name: &str,
    family: Family,
) -> io::Result<Option<Answer>> {
    // Truncated to the id field's width: any value will do that no other query uses now.
    let id = probe::nonce() as u16;
    let rtype = record_type(family);
    let query = encode_query(id, name, rtype)?;
    match protocol {
        Protocol::Udp => lookup_udp(from, server, &query, id, rtype).await,
        Protocol::Tcp => lookup_tcp(from, server, &query, id, rtype).await,
        Protocol::Sctp => Err(io::Error::new(
            ErrorKind::InvalidInput,
            "DNS runs over UDP and TCP",
        )),
    }
}

/// The query in one datagram, sent again as long as no response to it comes: as a UDP
/// probe sends its datagram (see [`probe::udp_exchange`]).
async fn lookup_udp(
    from: &NetNs,
    server: SocketAddr,
    query: &[u8],
    id: u16,
    rtype: u16,
) -> io::Result<Option<Answer>> {
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    probe::udp_exchange(from, server, query, &mut buf, |response| {
        decode_response(response, id, rtype)
    })
    .await
}

/// The query over a TCP connection, length-prefixed; a connection that is not made in time,
/// or an answer that does not come in time, is no answer.
async fn lookup_tcp(
    from: &NetNs,
    server: SocketAddr,
    query: &[u8],
    id: u16,
    rtype: u16,
) -> io::Result<Option<Answer>> {
    let mut stream = match probe::tcp_connect(from, server).await {
        Ok(stream) => stream,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Err(e),
        Err(_) => return Ok(None),
    };
    let exchange = async {
        let len = u16::try_from(query.len()).map_err(|_| ErrorKind::InvalidInput)?;
        let mut message = len.to_be_bytes().to_vec();
        message.extend(query);
        stream.write_all(&message).await?;
        let mut prefix = [0u8; TCP_LENGTH_LEN];
        stream.read_exact(&mut prefix).await?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        stream.read_exact(&mut reply).await?;
        io::Result::Ok(reply)
    };
    let Ok(reply) = timeout(TCP_TIMEOUT, exchange).await else {
        return Ok(None);
    };
    decode_response(&reply?, id, rtype)
        .map(Some)
        .ok_or_else(|| {
            io::Error::new(
                ErrorKind::InvalidData,
                format!("{server} sent a malformed answer"),
            )
        })
}

/// The lookup every DNS probe makes: kube-dns's own name, whose addresses the lab knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeLookup {
    /// `kube-dns.kube-system.svc.cluster.local`.
    pub name: String,
    /// The addresses served for it, sorted.
    pub addresses: Vec<IpAddr>,
}

impl ProbeLookup {
    /// The lookup of kube-dns's name, with the addresses `cluster` gives it.
    pub fn new(cluster: &Cluster) -> Self {
        let name = service_name(&service_ref());
        let mut addresses: Vec<IpAddr> = records(cluster)
            .into_iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, ip)| ip)
            .collect();
        addresses.sort();
        Self { name, addresses }
    }

    /// The addresses of `family` a right answer holds.
    fn expected(&self, family: Family) -> Vec<IpAddr> {
        self.addresses
            .iter()
            .copied()
            .filter(|ip| Family::of(ip) == family)
            .collect()
    }

    /// Whether `answer` (to the question over `family`) is right; `Err` says what is wrong.
    fn check(&self, answer: Answer, family: Family, server: SocketAddr) -> io::Result<()> {
        let expected = self.expected(family);
        if let Answer::Addresses(mut got) = answer.clone() {
            got.sort();
            if got == expected {
                return Ok(());
            }
        }
        Err(io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "{server} answered {answer:?} for {}, expected {expected:?}",
                self.name
            ),
        ))
    }

    /// The probe from `from` to the DNS server at `server`: whether the lookup (of the
    /// addresses of the server address's family) is answered, and rightly.
    pub async fn probe(
        &self,
        from: &NetNs,
        server: SocketAddr,
        protocol: Protocol,
    ) -> io::Result<bool> {
        let family = Family::of(&server.ip());
        match lookup(from, server, protocol, &self.name, family).await? {
            Some(answer) => self.check(answer, family, server).map(|()| true),
            None => Ok(false),
        }
    }

    /// One UDP question to `server`, from the calling thread's network namespace, waiting
    /// [`READY_WAIT`] at most: whether the right answer came. A server not yet listening
    /// is no answer.
    pub(super) fn probe_blocking(&self, server: SocketAddr) -> io::Result<bool> {
        let family = Family::of(&server.ip());
        let id = probe::nonce() as u16;
        let rtype = record_type(family);
        let socket =
            std::net::UdpSocket::bind(SocketAddr::new(probe::unspecified(server.is_ipv6()), 0))?;
        socket.set_read_timeout(Some(READY_WAIT))?;
        socket.connect(server)?;
        socket.send(&encode_query(id, &self.name, rtype)?)?;
        let mut buf = vec![0u8; MAX_MESSAGE_LEN];
        match socket.recv(&mut buf) {
            Ok(n) => match decode_response(&buf[..n], id, rtype) {
                Some(answer) => self.check(answer, family, server).map(|()| true),
                None => Ok(false),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::ConnectionRefused
                ) =>
            {
                // Not listening yet: the refusal comes at once, so pause as a timeout would.
                if e.kind() == ErrorKind::ConnectionRefused {
                    std::thread::sleep(READY_WAIT);
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}
