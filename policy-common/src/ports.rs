//! Port ranges as bit prefixes, the form the policy trie stores them in.

/// The fewest aligned prefixes that cover the inclusive range `first..=last`.
///
/// Each item is `(port, bits)`: the ports whose top `bits` bits equal those of `port`.
/// A 16-bit range never needs more than 30 prefixes.
pub fn port_prefixes(first: u16, last: u16) -> PortPrefixes {
    PortPrefixes {
        next: u32::from(first),
        last: u32::from(last),
    }
}

/// Iterator returned by [`port_prefixes`].
#[derive(Clone, Debug)]
pub struct PortPrefixes {
    next: u32,
    last: u32,
}

/// Number of bits in a port.
pub const PORT_BITS: u8 = 16;

impl Iterator for PortPrefixes {
    type Item = (u16, u8);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next > self.last {
            return None;
        }
        let start = self.next;
        // The largest block that starts at `start` (alignment) and ends within the range.
        let mut size: u32 = if start == 0 {
            1 << PORT_BITS
        } else {
            1 << start.trailing_zeros()
        };
        while start + size - 1 > self.last {
            size >>= 1;
        }
        self.next = start + size;
        Some((start as u16, PORT_BITS - size.trailing_zeros() as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn covers(prefixes: &[(u16, u8)], port: u16) -> bool {
        prefixes.iter().any(|&(p, bits)| {
            let mask = if bits == 0 {
                0
            } else {
                u16::MAX << (16 - bits)
            };
            port & mask == p & mask
        })
    }

    #[test]
    fn full_range_is_one_prefix() {
        assert_eq!(port_prefixes(0, u16::MAX).collect::<Vec<_>>(), [(0, 0)]);
    }

    #[test]
    fn single_port_is_full_length() {
        assert_eq!(port_prefixes(80, 80).collect::<Vec<_>>(), [(80, 16)]);
    }

    #[test]
    fn worst_case_needs_thirty() {
        assert_eq!(port_prefixes(1, u16::MAX - 1).count(), 30);
    }

    proptest! {
        #[test]
        fn prefixes_cover_exactly_the_range(a: u16, b: u16, probe: u16) {
            let (first, last) = (a.min(b), a.max(b));
            let prefixes: Vec<_> = port_prefixes(first, last).collect();
            prop_assert!(prefixes.len() <= 30);
            prop_assert_eq!(covers(&prefixes, probe), (first..=last).contains(&probe));
            for edge in [first, last] {
                prop_assert!(covers(&prefixes, edge));
            }
        }
    }
}
