//! Map sizes as settings: how many entries each map of the datapath holds (`run
//! --map-size MAP=ENTRIES`), their limits, and how the numbers are written for people.
//!
//! The eBPF object declares every map with the defaults of
//! [`policy_common::maps::capacity`]; the loader overrides `max_entries` with these settings,
//! the compiler budgets its output against them, and `status` and the metrics show them.
//! EVENTS (a ring buffer of flow records, 1 MiB) and STATS (16,384 counters) stay fixed:
//! neither can make a sync fail (a full ring buffer drops records, counted; a full STATS
//! stops counting new keys, never deciding packets).

use std::{collections::BTreeSet, fmt, str::FromStr};

use policy_common::maps::{capacity, names};

use crate::datapath::TableSizes;

/// Fewest entries any map may be given.
pub const MIN_ENTRIES: u32 = 1;
/// Most entries of a map shared by all pods (16 Mi): beyond that one map alone would take
/// gigabytes of kernel memory.
pub const MAX_SHARED_ENTRIES: u32 = 1 << 24;
/// Most pods on one node: each has two tables of its own (conntrack and fragments).
pub const MAX_ENDPOINTS: u32 = 1 << 16;
/// Most connections or fragmented datagrams of one pod (1 Mi).
pub const MAX_PER_ENDPOINT: u32 = 1 << 20;

/// A map whose size is a setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SizedMap {
    /// ENDPOINTS: pods on the node (also the number of per-pod tables).
    Endpoints,
    /// IPCACHE: pod addresses of the cluster plus the node's own addresses.
    Ipcache,
    /// POLICY: policy entries of all rulesets on the node.
    Policy,
    /// CIDR: ipBlock prefixes of all rulesets on the node.
    Cidr,
    /// FRONTENDS: Service frontends (address, protocol, port) and Service addresses.
    Frontends,
    /// SERVICE_POLICY: (egress ruleset, frontend) verdicts.
    ServicePolicy,
    /// Each pod's conntrack table.
    Conntrack,
    /// Each pod's fragment table.
    Fragments,
}

impl SizedMap {
    /// Every sized map, in the order `status` lists them.
    pub const ALL: [Self; 8] = [
        Self::Endpoints,
        Self::Ipcache,
        Self::Policy,
        Self::Cidr,
        Self::Frontends,
        Self::ServicePolicy,
        Self::Conntrack,
        Self::Fragments,
    ];

    /// Its name in `--map-size NAME=ENTRIES`.
    pub const fn setting(self) -> &'static str {
        match self {
            Self::Endpoints => "endpoints",
            Self::Ipcache => "ipcache",
            Self::Policy => "policy",
            Self::Cidr => "cidr",
            Self::Frontends => "frontends",
            Self::ServicePolicy => "service-policy",
            Self::Conntrack => "conntrack",
            Self::Fragments => "fragments",
        }
    }

    /// The pinned map it sizes (for CONNTRACK and FRAGMENTS: each pod's table in it).
    pub const fn map(self) -> &'static str {
        match self {
            Self::Endpoints => names::ENDPOINTS,
            Self::Ipcache => names::IPCACHE,
            Self::Policy => names::POLICY,
            Self::Cidr => names::CIDR,
            Self::Frontends => names::FRONTENDS,
            Self::ServicePolicy => names::SERVICE_POLICY,
            Self::Conntrack => names::CONNTRACK,
            Self::Fragments => names::FRAGMENTS,
        }
    }

    /// The map whose pinned name is `map`, if its size is a setting.
    pub fn of_map(map: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.map() == map)
    }

    /// Whether the setting is per pod (each pod's own table), not for the whole map.
    pub const fn per_endpoint(self) -> bool {
        matches!(self, Self::Conntrack | Self::Fragments)
    }

    /// The size the eBPF object is built with.
    pub const fn default_entries(self) -> u32 {
        match self {
            Self::Endpoints => capacity::ENDPOINTS,
            Self::Ipcache => capacity::IPCACHE,
            Self::Policy => capacity::POLICY,
            Self::Cidr => capacity::CIDR,
            Self::Frontends => capacity::FRONTENDS,
            Self::ServicePolicy => capacity::SERVICE_POLICY,
            Self::Conntrack => capacity::CONNTRACK_PER_ENDPOINT,
            Self::Fragments => capacity::FRAGMENTS_PER_ENDPOINT,
        }
    }

    /// The largest size accepted.
    pub const fn max_entries(self) -> u32 {
        match self {
            Self::Endpoints => MAX_ENDPOINTS,
            Self::Conntrack | Self::Fragments => MAX_PER_ENDPOINT,
            _ => MAX_SHARED_ENTRIES,
        }
    }
}

impl fmt::Display for SizedMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.setting())
    }
}

/// A map size setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapSizeError {
    /// Not `NAME=ENTRIES`.
    #[error("--map-size {0:?}: write NAME=ENTRIES, e.g. policy=1048576")]
    Syntax(String),
    /// A name that is not a sized map.
    #[error(
        "--map-size {given:?}: no map is called {name:?}; the sizes that can be set are {}",
        names_list()
    )]
    UnknownMap {
        /// The whole setting.
        given: String,
        /// The name in it.
        name: String,
    },
    /// Not a whole number.
    #[error("--map-size {given:?}: {value:?} is not a whole number of entries")]
    NotANumber {
        /// The whole setting.
        given: String,
        /// The value in it.
        value: String,
    },
    /// Outside the map's range.
    #[error("--map-size {map}={entries}: {map} takes {MIN_ENTRIES} to {max} entries{}", if map.per_endpoint() { " per pod" } else { "" })]
    OutOfRange {
        /// The map.
        map: SizedMap,
        /// The size asked for.
        entries: u64,
        /// Its largest size.
        max: u32,
    },
    /// The same map twice.
    #[error("--map-size {0} is given twice")]
    Twice(SizedMap),
}

fn names_list() -> String {
    SizedMap::ALL.map(SizedMap::setting).join(", ")
}

/// One `--map-size NAME=ENTRIES`, checked against the map's range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizeSetting {
    /// The map.
    pub map: SizedMap,
    /// Its entries.
    pub entries: u32,
}

impl FromStr for MapSizeSetting {
    type Err = MapSizeError;

    /// `NAME=ENTRIES`: NAME as [`SizedMap::setting`] spells it (or the map's own name, any
    /// case, `_` for `-`), ENTRIES a whole number (`_` may group digits).
    fn from_str(s: &str) -> Result<Self, MapSizeError> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| MapSizeError::Syntax(s.to_owned()))?;
        let wanted = name.trim().to_ascii_lowercase().replace('_', "-");
        let map = SizedMap::ALL
            .into_iter()
            .find(|m| m.setting() == wanted)
            .ok_or_else(|| MapSizeError::UnknownMap {
                given: s.to_owned(),
                name: name.to_owned(),
            })?;
        let digits = value.trim().replace('_', "");
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MapSizeError::NotANumber {
                given: s.to_owned(),
                value: value.to_owned(),
            });
        }
        // Too many digits for u64 is out of range too, not "not a number".
        let entries = digits.parse::<u64>().unwrap_or(u64::MAX);
        match u32::try_from(entries) {
            Ok(n) if (MIN_ENTRIES..=map.max_entries()).contains(&n) => Ok(Self { map, entries: n }),
            _ => Err(MapSizeError::OutOfRange {
                map,
                entries,
                max: map.max_entries(),
            }),
        }
    }
}

/// How many entries each map holds. The defaults are those the eBPF object is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// ENDPOINTS, and the number of per-pod tables in CONNTRACK and FRAGMENTS.
    pub endpoints: u32,
    /// IPCACHE.
    pub ipcache: u32,
    /// POLICY.
    pub policy: u32,
    /// CIDR.
    pub cidr: u32,
    /// FRONTENDS.
    pub frontends: u32,
    /// SERVICE_POLICY.
    pub service_policy: u32,
    /// Each pod's conntrack table.
    pub conntrack: u32,
    /// Each pod's fragment table.
    pub fragments: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        let mut sizes = Self {
            endpoints: 0,
            ipcache: 0,
            policy: 0,
            cidr: 0,
            frontends: 0,
            service_policy: 0,
            conntrack: 0,
            fragments: 0,
        };
        for map in SizedMap::ALL {
            *sizes.slot(map) = map.default_entries();
        }
        sizes
    }
}

impl From<TableSizes> for MapSizes {
    fn from(tables: TableSizes) -> Self {
        Self {
            conntrack: tables.conntrack,
            fragments: tables.fragments,
            ..Self::default()
        }
    }
}

impl MapSizes {
    /// The defaults with `settings` applied; a map set twice is an error.
    pub fn with(settings: &[MapSizeSetting]) -> Result<Self, MapSizeError> {
        let mut sizes = Self::default();
        let mut seen = BTreeSet::new();
        for s in settings {
            if !seen.insert(s.map) {
                return Err(MapSizeError::Twice(s.map));
            }
            *sizes.slot(s.map) = s.entries;
        }
        Ok(sizes)
    }

    fn slot(&mut self, map: SizedMap) -> &mut u32 {
        match map {
            SizedMap::Endpoints => &mut self.endpoints,
            SizedMap::Ipcache => &mut self.ipcache,
            SizedMap::Policy => &mut self.policy,
            SizedMap::Cidr => &mut self.cidr,
            SizedMap::Frontends => &mut self.frontends,
            SizedMap::ServicePolicy => &mut self.service_policy,
            SizedMap::Conntrack => &mut self.conntrack,
            SizedMap::Fragments => &mut self.fragments,
        }
    }

    /// The size of `map`.
    pub fn get(&self, map: SizedMap) -> u32 {
        match map {
            SizedMap::Endpoints => self.endpoints,
            SizedMap::Ipcache => self.ipcache,
            SizedMap::Policy => self.policy,
            SizedMap::Cidr => self.cidr,
            SizedMap::Frontends => self.frontends,
            SizedMap::ServicePolicy => self.service_policy,
            SizedMap::Conntrack => self.conntrack,
            SizedMap::Fragments => self.fragments,
        }
    }

    /// The sizes of each pod's tables.
    pub fn tables(&self) -> TableSizes {
        TableSizes {
            conntrack: self.conntrack,
            fragments: self.fragments,
        }
    }

    /// `max_entries` of every pinned map whose size is a setting, by map name (CONNTRACK and
    /// FRAGMENTS hold one table per pod: as many as ENDPOINTS has entries).
    pub fn max_entries(&self) -> [(&'static str, u32); 9] {
        [
            (names::ENDPOINTS, self.endpoints),
            // Every endpoint's counters, and those of interfaces with no endpoint (id 0).
            (names::COUNTERS, self.endpoints.saturating_add(1)),
            (names::IPCACHE, self.ipcache),
            (names::POLICY, self.policy),
            (names::CIDR, self.cidr),
            (names::FRONTENDS, self.frontends),
            (names::SERVICE_POLICY, self.service_policy),
            (names::CONNTRACK, self.endpoints),
            (names::FRAGMENTS, self.endpoints),
        ]
    }
}

impl fmt::Display for MapSizes {
    /// As `--map-size` takes them: `endpoints=1024 ipcache=65536 ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = SizedMap::ALL
            .iter()
            .map(|m| format!("{}={}", m.setting(), self.get(*m)))
            .collect();
        f.write_str(&all.join(" "))
    }
}

/// `n` with thousands separated by commas, as messages for people write counts.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<MapSizeSetting, MapSizeError> {
        s.parse()
    }

    #[test]
    fn settings_name_a_map_and_a_size_in_its_range() {
        assert_eq!(
            parse("policy=1048576"),
            Ok(MapSizeSetting {
                map: SizedMap::Policy,
                entries: 1 << 20
            })
        );
        assert_eq!(parse("SERVICE_POLICY=1_000").unwrap().entries, 1000);
        assert_eq!(
            parse("service-policy=7").unwrap().map,
            SizedMap::ServicePolicy
        );
        assert_eq!(
            parse("conntrack=1048576").unwrap().entries,
            MAX_PER_ENDPOINT
        );
        for bad in [
            "policy",
            "policy=",
            "policy=-1",
            "policy=1e6",
            "policy=0x10",
            "=5",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let unknown = parse("polcy=5").unwrap_err().to_string();
        assert!(
            unknown.contains("polcy") && unknown.contains("service-policy"),
            "{unknown}"
        );
        for (bad, map) in [
            ("policy=0", SizedMap::Policy),
            ("ipcache=16777217", SizedMap::Ipcache),
            ("endpoints=65537", SizedMap::Endpoints),
            ("conntrack=1048577", SizedMap::Conntrack),
            ("cidr=99999999999999999999999", SizedMap::Cidr),
        ] {
            match parse(bad) {
                Err(MapSizeError::OutOfRange { map: m, .. }) => assert_eq!(m, map, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(
            parse("conntrack=0")
                .unwrap_err()
                .to_string()
                .contains("per pod")
        );
    }

    #[test]
    fn defaults_are_the_objects_and_a_map_is_set_once() {
        let d = MapSizes::default();
        assert_eq!(d.policy, capacity::POLICY);
        assert_eq!(d.tables(), TableSizes::default());
        let set =
            MapSizes::with(&[parse("policy=100").unwrap(), parse("ipcache=7").unwrap()]).unwrap();
        assert_eq!(
            (set.policy, set.ipcache, set.cidr),
            (100, 7, capacity::CIDR)
        );
        assert_eq!(
            MapSizes::with(&[parse("policy=100").unwrap(), parse("policy=200").unwrap()]),
            Err(MapSizeError::Twice(SizedMap::Policy))
        );
        assert!(set.to_string().contains("policy=100 cidr=262144"));
    }

    #[test]
    fn thousands_are_separated() {
        for (n, s) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (4_000_000, "4,000,000"),
        ] {
            assert_eq!(thousands(n), s);
        }
    }
}
