//! DNS messages (RFC 1035), as much as a stub resolver needs: a query for the addresses of a
//! name, and the addresses (or the error code) of its response.

use std::{
    io::{self, ErrorKind},
    net::IpAddr,
};

use crate::report::Family;

/// Length of a message header.
pub(super) const HEADER_LEN: usize = 12;
/// Header flag: the message is a response.
pub(super) const FLAG_RESPONSE: u16 = 0x8000;
/// Header flag: recursion desired, as stub resolvers ask.
pub(super) const FLAG_RECURSION_DESIRED: u16 = 0x0100;
/// The header bits of the response code.
const RCODE_MASK: u16 = 0x000f;
/// Response code: no error.
pub const RCODE_NOERROR: u8 = 0;
/// Response code: the name does not exist.
pub const RCODE_NXDOMAIN: u8 = 3;
/// Response code: the server refuses to answer.
pub const RCODE_REFUSED: u8 = 5;
/// Record type of an IPv4 address.
pub(super) const TYPE_A: u16 = 1;
/// Record type of an IPv6 address.
pub(super) const TYPE_AAAA: u16 = 28;
/// The Internet class.
pub(super) const CLASS_IN: u16 = 1;
/// A query asks one question.
const ONE_QUESTION: u16 = 1;
/// The longest label of a name.
const MAX_LABEL_LEN: usize = 63;
/// The high bits of a length byte that make it a compression pointer (two bytes long).
pub(super) const POINTER_BITS: u8 = 0xc0;
/// Bytes of a question after its name: type and class.
const QUESTION_FIXED_LEN: usize = 4;
/// Bytes of a record's TTL.
const TTL_LEN: usize = 4;
/// Bytes of the length prefix of a message over TCP.
pub(super) const TCP_LENGTH_LEN: usize = 2;
/// The largest message (UDP datagrams and TCP messages both fit).
pub(super) const MAX_MESSAGE_LEN: usize = u16::MAX as usize;

/// What came back for a question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// No error, with the addresses of the type asked for (none: the name has no address of
    /// that family).
    Addresses(Vec<IpAddr>),
    /// An error response code ([`RCODE_NXDOMAIN`], [`RCODE_REFUSED`], ...).
    Error(u8),
}

/// The record type of an address of `family`.
pub(super) fn record_type(family: Family) -> u16 {
    match family {
        Family::IPv4 => TYPE_A,
        Family::IPv6 => TYPE_AAAA,
    }
}

/// A query with id `id` for the records of `record_type` of `name`.
pub(super) fn encode_query(id: u16, name: &str, record_type: u16) -> io::Result<Vec<u8>> {
    let mut m = Vec::with_capacity(HEADER_LEN + name.len() + QUESTION_FIXED_LEN);
    // No answer, authority or additional records.
    for field in [id, FLAG_RECURSION_DESIRED, ONE_QUESTION, 0, 0, 0] {
        m.extend(field.to_be_bytes());
    }
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("{name:?} is not a domain name"),
            ));
        }
        m.push(label.len() as u8);
        m.extend(label.as_bytes());
    }
    // The root's empty label ends the name.
    m.push(0);
    m.extend(record_type.to_be_bytes());
    m.extend(CLASS_IN.to_be_bytes());
    Ok(m)
}

/// Reads a message front to back; every read is `None` past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// Skips a name: labels up to the root's, or up to a compression pointer.
    fn skip_name(&mut self) -> Option<()> {
        loop {
            let len = *self.take(1)?.first()?;
            if len & POINTER_BITS == POINTER_BITS {
                self.take(1)?;
                return Some(());
            }
            if len == 0 {
                return Some(());
            }
            self.take(usize::from(len))?;
        }
    }
}

/// The answer in `message` if it is the response to query `id` for `record_type`
/// (`None`: another message, or a malformed one).
pub(super) fn decode_response(message: &[u8], id: u16, record_type: u16) -> Option<Answer> {
    let mut r = Reader {
        bytes: message,
        at: 0,
    };
    let (got_id, flags) = (r.u16()?, r.u16()?);
    if got_id != id || flags & FLAG_RESPONSE == 0 {
        return None;
    }
    let rcode = (flags & RCODE_MASK) as u8;
    if rcode != RCODE_NOERROR {
        return Some(Answer::Error(rcode));
    }
    let (questions, answers) = (r.u16()?, r.u16()?);
    // The authority and additional sections, which come after the answers, are not read.
    let (_authority, _additional) = (r.u16()?, r.u16()?);
    for _ in 0..questions {
        r.skip_name()?;
        r.take(QUESTION_FIXED_LEN)?;
    }
    let mut addresses = Vec::new();
    for _ in 0..answers {
        r.skip_name()?;
        let (rtype, class) = (r.u16()?, r.u16()?);
        let _ttl = r.take(TTL_LEN)?;
        let len = r.u16()?;
        let data = r.take(usize::from(len))?;
        if class != CLASS_IN || rtype != record_type {
            // A CNAME on the way, say.
            continue;
        }
        addresses.push(match (rtype, data.len()) {
            (TYPE_A, 4) => IpAddr::from(<[u8; 4]>::try_from(data).ok()?),
            (TYPE_AAAA, 16) => IpAddr::from(<[u8; 16]>::try_from(data).ok()?),
            _ => return None,
        });
    }
    Some(Answer::Addresses(addresses))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TTL of the records of [`response`].
    const TTL_SECONDS: u32 = 5;
    /// Record type of an alias.
    const TYPE_CNAME: u16 = 5;

    /// A response to `query` (as dnsmasq builds one: the question echoed, the answer's name
    /// a pointer to it) with `rcode` and records of `(type, data)`.
    fn response(query: &[u8], rcode: u16, records: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = query.to_vec();
        let flags = FLAG_RESPONSE | FLAG_RECURSION_DESIRED | rcode;
        m[2..4].copy_from_slice(&flags.to_be_bytes());
        m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (rtype, data) in records {
            // A pointer to the question's name, right after the header.
            m.extend([POINTER_BITS, HEADER_LEN as u8]);
            m.extend(rtype.to_be_bytes());
            m.extend(CLASS_IN.to_be_bytes());
            m.extend(TTL_SECONDS.to_be_bytes());
            m.extend((data.len() as u16).to_be_bytes());
            m.extend(*data);
        }
        m
    }

    #[test]
    fn a_query_is_a_header_and_one_question() {
        let q = encode_query(0x1234, "a.bc.", TYPE_AAAA).unwrap();
        assert_eq!(
            q,
            [
                0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, // header
                1, b'a', 2, b'b', b'c', 0, // name
                0, 28, 0, 1, // AAAA, IN
            ]
        );
        assert!(encode_query(1, "a..b", TYPE_A).is_err());
        assert!(encode_query(1, &"x".repeat(64), TYPE_A).is_err());
    }

    #[test]
    fn answers_are_read_for_their_query_only() {
        let q = encode_query(7, "kube-dns.kube-system.svc.cluster.local", TYPE_A).unwrap();
        let cname: &[u8] = &[POINTER_BITS, HEADER_LEN as u8];
        let r = response(&q, 0, &[(TYPE_CNAME, cname), (TYPE_A, &[10, 96, 0, 10])]);
        assert_eq!(
            decode_response(&r, 7, TYPE_A),
            Some(Answer::Addresses(vec!["10.96.0.10".parse().unwrap()]))
        );
        assert_eq!(decode_response(&r, 8, TYPE_A), None, "another query's id");
        assert_eq!(decode_response(&q, 7, TYPE_A), None, "not a response");
        assert_eq!(decode_response(&r[..r.len() - 1], 7, TYPE_A), None);
        let nx = response(&q, u16::from(RCODE_NXDOMAIN), &[]);
        assert_eq!(
            decode_response(&nx, 7, TYPE_A),
            Some(Answer::Error(RCODE_NXDOMAIN))
        );
    }
}
