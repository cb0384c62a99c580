//! `ipBlock` CIDR values as the API server reads them, and what they mean.
//!
//! The API server parses `cidr` and `except` with k8s.io/utils/net's `ParseCIDRSloppy` (Go
//! 1.16's `net.ParseCIDR`, kept for values stored before Go 1.17): decimal numbers with any
//! number of leading zeros (`010.0.0.0/8` is 10.0.0.0/8, `/016` is /16), IPv6 groups of more
//! than 4 hex digits when the value fits, IPv4-mapped IPv6 (`::ffff:10.0.0.0/104`), and bits
//! set past the prefix length (`10.0.0.1/8` is 10.0.0.0/8). Nothing else: no whitespace, no
//! zone, no sign.
//!
//! Since Kubernetes 1.36 the `StrictIPCIDRValidation` feature gate is on by default (beta;
//! KEP-4858, kubernetes#137053), and `IsValidCIDRForLegacyField` then also refuses, of what
//! that parser takes, what Go's `netip.ParsePrefix` does not (leading zeros anywhere), an
//! IPv4-mapped IPv6 address, and bits set past the prefix length, in that order, one
//! complaint per value. An object stored before (or with the gate off) keeps such values:
//! on update every CIDR the old object had is taken unchecked (`AllowCIDRsEvenIfInvalid`),
//! so an API server may still serve them. See [`super::policy::Admission`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Go's `big` in `dtoi`/`xtoi`: a number that reaches it fails.
const BIG: u32 = 0xFF_FFFF;

/// A CIDR value the legacy parser (`ParseCIDRSloppy`) accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SloppyCidr {
    /// The address as written (bits past the prefix included), of the family its spelling
    /// gives it: IPv4 for a dotted quad, IPv6 for anything with a colon (so
    /// `::ffff:10.0.0.0` is IPv6 here, 16 bytes to Go).
    addr: IpAddr,
    /// The prefix length, in bits of that family.
    prefix: u8,
    /// Whether some number is spelled with leading zeros: an IPv4 octet or the prefix length
    /// of more than one digit starting with '0', or an IPv6 group of more than 4 hex digits.
    leading_zeros: bool,
}

impl SloppyCidr {
    /// `ParseCIDRSloppy`: the address up to the first '/', tried as IPv4 then as IPv6, and
    /// a decimal prefix length no longer than the family's.
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, bits) = s.split_once('/')?;
        let (addr, mut leading_zeros) = match parse_ipv4(addr.as_bytes()) {
            Some((v4, lz)) => (IpAddr::V4(v4), lz),
            None => parse_ipv6(addr.as_bytes()).map(|(v6, lz)| (IpAddr::V6(v6), lz))?,
        };
        let bits = bits.as_bytes();
        let (prefix, used) = dtoi(bits)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if used != bits.len() || prefix > max {
            return None;
        }
        leading_zeros |= used > 1 && bits[0] == b'0';
        Some(Self {
            addr,
            prefix: u8::try_from(prefix).ok()?,
            leading_zeros,
        })
    }

    /// What strict validation (`StrictIPCIDRValidation`, on by default) says of the value's
    /// spelling, if anything: `parseCIDR`'s checks, in its order.
    pub fn strict_complaint(&self) -> Option<&'static str> {
        if self.leading_zeros {
            Some("must not have leading 0s in IP or prefix length")
        } else if matches!(self.addr, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()) {
            Some("must not have an IPv4-mapped IPv6 address")
        } else if self.network().addr() != self.addr {
            Some("must not have bits set beyond the prefix length")
        } else {
            None
        }
    }

    /// The network as Go's `IPNet` holds it: the written family, bits past the prefix
    /// cleared.
    fn network(&self) -> IpNet {
        IpNet::new(self.addr, self.prefix)
            .expect("the prefix length fits the family")
            .trunc()
    }

    /// The addresses the value stands for, as Go's `IPNet.Contains` (which the API server's
    /// own `except` check uses) reads them: Go takes an IPv4-mapped IPv6 address for the
    /// IPv4 address (`IP.To4`), so a network whose address is IPv4-mapped after masking
    /// (which needs a prefix of at least 96) holds exactly the IPv4 addresses of its last
    /// 32 bits: `::ffff:10.0.0.0/104` is 10.0.0.0/8. Any other value is its network.
    pub fn meaning(&self) -> IpNet {
        let net = self.network();
        match net.addr() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpNet::new(IpAddr::V4(v4), self.prefix - 96)
                    .expect("a masked IPv4-mapped address has a prefix of 96 or more"),
                None => net,
            },
            IpAddr::V4(_) => net,
        }
    }

    /// `ValidateIPBlock`'s test of an `except` value against its `cidr`:
    /// `cidr.Contains(except.IP)` (Go's, with IPv4-mapped addresses taken as IPv4 and no
    /// family matching the other) and the cidr's prefix length (`Mask.Size`, in bits of
    /// its written family) below the except's.
    pub fn strictly_contains(&self, except: &Self) -> bool {
        let addr = match except.network().addr() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.meaning().contains(&addr) && self.prefix < except.prefix
    }
}

/// Go's `dtoi`: the leading decimal digits of `s` (at least one) as a number, and how many
/// there were; `None` without a digit or when the number reaches [`BIG`].
fn dtoi(s: &[u8]) -> Option<(u32, usize)> {
    let mut n: u32 = 0;
    let mut i = 0;
    while let Some(d) = s.get(i).filter(|c| c.is_ascii_digit()) {
        n = n * 10 + u32::from(d - b'0');
        if n >= BIG {
            return None;
        }
        i += 1;
    }
    (i > 0).then_some((n, i))
}

/// Go's `xtoi`: as [`dtoi`] in hexadecimal.
fn xtoi(s: &[u8]) -> Option<(u32, usize)> {
    let mut n: u32 = 0;
    let mut i = 0;
    while let Some(d) = s.get(i).and_then(|c| char::from(*c).to_digit(16)) {
        n = n * 16 + d;
        if n >= BIG {
            return None;
        }
        i += 1;
    }
    (i > 0).then_some((n, i))
}

/// The forked `parseIPv4`: four decimal octets of at most 255 separated by dots, leading
/// zeros allowed (and ignored: decimal, never octal). Also says whether there were any.
fn parse_ipv4(mut s: &[u8]) -> Option<(Ipv4Addr, bool)> {
    let mut octets = [0u8; 4];
    let mut leading_zeros = false;
    for (i, octet) in octets.iter_mut().enumerate() {
        if s.is_empty() {
            return None;
        }
        if i > 0 {
            s = s.strip_prefix(b".")?;
        }
        let (n, used) = dtoi(s)?;
        *octet = u8::try_from(n).ok()?;
        leading_zeros |= used > 1 && s[0] == b'0';
        s = &s[used..];
    }
    s.is_empty()
        .then_some((Ipv4Addr::from(octets), leading_zeros))
}

/// The forked `parseIPv6` (RFC 4291): hex groups of at most 0xffff separated by colons, one
/// `::` standing for at least one zero group, and an IPv4 address in the last 32 bits.
/// Also says whether a number had leading zeros (a group of more than 4 digits, or an
/// octet of the embedded IPv4 address).
fn parse_ipv6(mut s: &[u8]) -> Option<(Ipv6Addr, bool)> {
    const LEN: usize = 16;
    let mut ip = [0u8; LEN];
    let mut ellipsis: Option<usize> = None;
    let mut leading_zeros = false;

    if let Some(rest) = s.strip_prefix(b"::") {
        ellipsis = Some(0);
        s = rest;
        if s.is_empty() {
            return Some((Ipv6Addr::UNSPECIFIED, false));
        }
    }

    let mut i = 0;
    while i < LEN {
        let (n, used) = xtoi(s)?;
        if n > 0xFFFF {
            return None;
        }
        // Followed by a dot: the trailing IPv4 address, if in the right place.
        if s.get(used) == Some(&b'.') {
            if ellipsis.is_none() && i != LEN - 4 {
                return None;
            }
            if i + 4 > LEN {
                return None;
            }
            let (v4, lz) = parse_ipv4(s)?;
            leading_zeros |= lz;
            ip[i..i + 4].copy_from_slice(&v4.octets());
            s = &[];
            i += 4;
            break;
        }
        leading_zeros |= used > 4;
        ip[i] = (n >> 8) as u8;
        ip[i + 1] = n as u8;
        i += 2;

        s = &s[used..];
        if s.is_empty() {
            break;
        }
        // Otherwise a colon and more.
        if s[0] != b':' || s.len() == 1 {
            return None;
        }
        s = &s[1..];
        if s[0] == b':' {
            if ellipsis.is_some() {
                return None;
            }
            ellipsis = Some(i);
            s = &s[1..];
            if s.is_empty() {
                break;
            }
        }
    }
    if !s.is_empty() {
        return None;
    }
    if i < LEN {
        // Expand the ellipsis.
        let at = ellipsis?;
        let n = LEN - i;
        ip.copy_within(at..i, at + n);
        ip[at..at + n].fill(0);
    } else if ellipsis.is_some() {
        // It must stand for at least one group.
        return None;
    }
    Some((Ipv6Addr::from(ip), leading_zeros))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Option<(String, Option<&'static str>)> {
        SloppyCidr::parse(s).map(|c| (c.meaning().to_string(), c.strict_complaint()))
    }

    #[test]
    fn the_legacy_parser_reads_decimal_with_leading_zeros() {
        assert_eq!(parse("10.0.0.0/8"), Some(("10.0.0.0/8".into(), None)));
        let lz = Some("must not have leading 0s in IP or prefix length");
        assert_eq!(parse("010.0.0.0/8"), Some(("10.0.0.0/8".into(), lz)));
        assert_eq!(parse("10.0.0.0/016"), Some(("10.0.0.0/16".into(), lz)));
        assert_eq!(parse("10.0.0.0/00"), Some(("0.0.0.0/0".into(), lz)));
        assert_eq!(parse("0.0.0.0/0"), Some(("0.0.0.0/0".into(), None)));
        assert_eq!(
            parse("000000000010.0.0.0/8"),
            Some(("10.0.0.0/8".into(), lz))
        );
        assert_eq!(parse("fd00::00001/128"), Some(("fd00::1/128".into(), lz)));
        assert_eq!(parse("fd00::0001/128"), Some(("fd00::1/128".into(), None)));
        assert_eq!(parse("FD00::/8"), Some(("fd00::/8".into(), None)));
    }

    #[test]
    fn the_legacy_parser_refuses() {
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            " 10.0.0.0/8",
            "10.0.0.0/8 ",
            "10.0.0.0 /8",
            "10.0.0.0/ 8",
            "10.0.0.0/+8",
            "10.0.0.0/-0",
            "10.0.0.0/8/8",
            "10.0.0/8",
            "10.0.0.0.0/8",
            "256.0.0.0/8",
            "10.0.0.0x/8",
            "0x10.0.0.0/8",
            "1.2.3.4.5/32",
            "fe80::1%eth0/64",
            ":::/0",
            "1::2::3/64",
            "1:2:3:4:5:6:7:8:9/64",
            "1:2:3:4:5:6:7::8/64",
            "1:2:3:4:5:6:7/64",
            "10000::/16",
            "::1.2.3/96",
            "1.2.3.4::/96",
            "::1.2.3.4:5/96",
            "1:2:3:4:5:6:7:1.2.3.4/128",
            "１.2.3.4/32",
        ] {
            assert_eq!(SloppyCidr::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn strict_complaints_in_order() {
        let complaint = |s: &str| SloppyCidr::parse(s).unwrap().strict_complaint();
        assert_eq!(
            complaint("10.0.0.1/8"),
            Some("must not have bits set beyond the prefix length")
        );
        assert_eq!(
            complaint("::ffff:10.0.0.0/104"),
            Some("must not have an IPv4-mapped IPv6 address")
        );
        // Unmasked: mapped even though the network (::/64) is not.
        assert_eq!(
            complaint("::ffff:0:0/64"),
            Some("must not have an IPv4-mapped IPv6 address")
        );
        assert_eq!(
            complaint("::ffff:010.0.0.0/104"),
            Some("must not have leading 0s in IP or prefix length")
        );
        assert_eq!(
            complaint("::1.2.3.4/128"),
            None,
            "IPv4-compatible, not mapped"
        );
        assert_eq!(
            complaint("2001:DB8:0:0::/64"),
            None,
            "not canonical, but valid"
        );
    }

    #[test]
    fn ipv4_mapped_values_mean_ipv4_as_go_reads_them() {
        let meaning = |s: &str| SloppyCidr::parse(s).unwrap().meaning().to_string();
        assert_eq!(meaning("::ffff:10.0.0.0/104"), "10.0.0.0/8");
        assert_eq!(meaning("::ffff:10.1.2.3/128"), "10.1.2.3/32");
        assert_eq!(meaning("::ffff:0:0/96"), "0.0.0.0/0");
        assert_eq!(meaning("::ffff:a01:0/112"), "10.1.0.0/16");
        // Masked below 96 bits the address is no longer mapped: plain IPv6.
        assert_eq!(meaning("::ffff:10.0.0.0/64"), "::/64");
        assert_eq!(meaning("::ffff:10.0.0.0/88"), "::ff00:0:0/88");
    }

    #[test]
    fn except_containment_as_the_api_server_tests_it() {
        let within = |cidr: &str, except: &str| {
            SloppyCidr::parse(cidr)
                .unwrap()
                .strictly_contains(&SloppyCidr::parse(except).unwrap())
        };
        assert!(within("10.0.0.0/8", "10.1.0.0/16"));
        assert!(!within("10.0.0.0/8", "10.0.0.0/8"));
        assert!(!within("10.0.0.0/8", "11.0.0.0/16"));
        assert!(!within("10.0.0.0/8", "fd00::/64"));
        assert!(!within("::/0", "10.0.0.0/8"));
        // A mapped except of an IPv4 cidr: contained by its IPv4 address, and its prefix
        // (96 or more) is always longer than the cidr's (32 at most), even where its IPv4
        // meaning is the whole cidr or more.
        assert!(within("10.0.0.0/8", "::ffff:10.1.0.0/112"));
        assert!(within("10.0.0.0/8", "::ffff:10.0.0.0/104"));
        assert!(within("0.0.0.0/1", "::ffff:0.0.0.0/96"));
        assert!(
            !within("10.0.0.0/8", "::ffff:10.0.0.0/100"),
            "masks to 0.0.0.0"
        );
        assert!(!within("10.0.0.0/8", "::ffff:10.0.0.0/64"), "masks to ::");
        // An IPv4 except of a mapped cidr: the cidr's prefix (96 or more) is never below.
        assert!(!within("::ffff:10.0.0.0/104", "10.1.0.0/16"));
        assert!(within("::ffff:10.0.0.0/104", "::ffff:10.1.0.0/112"));
        // IPv6 networks hold no mapped address: Go takes those for IPv4.
        assert!(!within("::/0", "::ffff:10.0.0.0/104"));
        assert!(!within("::/64", "::ffff:10.0.0.0/112"));
    }
}
