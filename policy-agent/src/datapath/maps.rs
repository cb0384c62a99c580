//! The datapath's maps, typed, and how desired contents reach them.
//!
//! A sync diffs the desired contents against what the kernel holds and writes only the
//! difference, in an order that never opens a gap: new policy, CIDR and ipcache entries
//! first, then the Service verdicts and the frontends that refer to them, then the endpoints,
//! and only then the entries nothing refers to any more ("make before break").

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use aya::{
    Ebpf, Pod,
    maps::{
        Array, HashMap, IterableMap, LpmTrie, MapData, MapError, PerCpuHashMap, RingBuf,
        lpm_trie::Key,
    },
};
use policy_common::maps::{
    CidrKey, CidrValue, EndpointInfo, FrontendKey, FrontendValue, IpKey, IpcacheValue, PolicyKey,
    PolicyValue, ServicePolicyKey, ServicePolicyValue, StatsKey, StatsValue, capacity, names,
    tunnel_port_bit,
};

use super::tables::{EndpointTables, TableSizes};
use crate::compiler::LpmKey;

/// Errors reading or writing a map.
#[derive(Debug, thiserror::Error)]
#[error("map {map}: {source}")]
pub struct MapOpError {
    /// The map.
    pub map: &'static str,
    /// The cause.
    #[source]
    pub source: MapError,
}

/// Names the map of a failed operation.
pub(super) fn op<T>(map: &'static str, r: Result<T, MapError>) -> Result<T, MapOpError> {
    r.map_err(|source| MapOpError { map, source })
}

/// Every map of one loaded datapath.
pub struct Maps {
    /// Interface index -> endpoint.
    pub endpoints: HashMap<MapData, u32, EndpointInfo>,
    /// Address -> identity.
    pub ipcache: HashMap<MapData, IpKey, IpcacheValue>,
    /// Policy trie.
    pub policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    /// CIDR trie.
    pub cidr: LpmTrie<MapData, CidrKey, CidrValue>,
    /// Service frontends.
    pub frontends: HashMap<MapData, FrontendKey, FrontendValue>,
    /// What egress rulesets say of frontends' backends.
    pub service_policy: HashMap<MapData, ServicePolicyKey, ServicePolicyValue>,
    /// Each endpoint's conntrack and fragment tables.
    pub tables: EndpointTables,
    /// Counters.
    pub stats: PerCpuHashMap<MapData, StatsKey, StatsValue>,
    /// Flow records.
    pub events: RingBuf<MapData>,
    /// The node's tunnel ports, a bit each.
    pub tunnel_ports: Array<MapData, u64>,
    /// `max_entries` of each map the agent fills, as the kernel reports it.
    pub capacities: BTreeMap<&'static str, u32>,
}

/// The contents of the maps the agent owns (the others are the datapath's own state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    /// ENDPOINTS, by interface index.
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    /// IPCACHE.
    pub ipcache: BTreeMap<IpKey, IpcacheValue>,
    /// POLICY.
    pub policy: BTreeMap<LpmKey<PolicyKey>, PolicyValue>,
    /// CIDR.
    pub cidr: BTreeMap<LpmKey<CidrKey>, CidrValue>,
    /// FRONTENDS.
    pub frontends: BTreeMap<FrontendKey, FrontendValue>,
    /// SERVICE_POLICY.
    pub service_policy: BTreeMap<ServicePolicyKey, ServicePolicyValue>,
}

impl MapContents {
    /// Entries that differ between `self` and `other` (in one only, or with other values).
    pub fn difference(&self, other: &Self) -> usize {
        fn count<K: Ord + Copy, V: PartialEq + Copy>(
            a: &BTreeMap<K, V>,
            b: &BTreeMap<K, V>,
        ) -> usize {
            let d = diff(a, b);
            d.upserts.len() + d.removes.len()
        }
        count(&self.endpoints, &other.endpoints)
            + count(&self.ipcache, &other.ipcache)
            + count(&self.policy, &other.policy)
            + count(&self.cidr, &other.cidr)
            + count(&self.frontends, &other.frontends)
            + count(&self.service_policy, &other.service_policy)
    }
}

/// How many entries a sync wrote and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Entries inserted or changed.
    pub written: usize,
    /// Entries deleted.
    pub removed: usize,
}

/// Upserts and removals that take a map from its live contents to the desired ones.
struct Diff<K, V> {
    upserts: Vec<(K, V)>,
    removes: Vec<K>,
}

fn diff<K: Ord + Copy, V: PartialEq + Copy>(
    live: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> Diff<K, V> {
    let upserts = desired
        .iter()
        .filter(|(k, v)| live.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let removes = live
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect();
    Diff { upserts, removes }
}

/// The most entries a map holds during a make-before-break sync: what it held plus every
/// new key.
fn peak<K: Ord, V>(live: &BTreeMap<K, V>, diff: &Diff<K, V>) -> usize {
    live.len()
        + diff
            .upserts
            .iter()
            .filter(|(k, _)| !live.contains_key(k))
            .count()
}

/// The maps whose old entries a sync removes before writing new ones (see
/// [`Maps::apply`]).
struct Early {
    endpoints: bool,
    ipcache: bool,
    policy: bool,
    service_policy: bool,
}

fn live_hash<K: Pod + Ord, V: Pod>(
    name: &'static str,
    map: &HashMap<MapData, K, V>,
) -> Result<BTreeMap<K, V>, MapOpError> {
    map.iter().map(|r| op(name, r)).collect::<Result<_, _>>()
}

fn live_lpm<K: Pod + Ord, V: Pod>(
    name: &'static str,
    map: &LpmTrie<MapData, K, V>,
) -> Result<BTreeMap<LpmKey<K>, V>, MapOpError> {
    map.iter()
        .map(|r| {
            op(name, r).map(|(k, v)| {
                (
                    LpmKey {
                        prefix_len: k.prefix_len(),
                        data: k.data(),
                    },
                    v,
                )
            })
        })
        .collect()
}

/// Removing what is already gone is fine.
pub(super) fn absent_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

fn lpm_key<K: Pod>(k: &LpmKey<K>) -> Key<K> {
    Key::new(k.prefix_len, k.data)
}

impl Maps {
    /// Takes the maps out of a loaded object; endpoints get tables of `sizes`.
    pub fn take(ebpf: &mut Ebpf, sizes: TableSizes) -> Result<Self, MapError> {
        let mut take = |name: &str| {
            ebpf.take_map(name).ok_or_else(|| MapError::InvalidName {
                name: name.to_owned(),
            })
        };
        let mut maps = Self {
            endpoints: HashMap::try_from(take(names::ENDPOINTS)?)?,
            ipcache: HashMap::try_from(take(names::IPCACHE)?)?,
            policy: LpmTrie::try_from(take(names::POLICY)?)?,
            cidr: LpmTrie::try_from(take(names::CIDR)?)?,
            frontends: HashMap::try_from(take(names::FRONTENDS)?)?,
            service_policy: HashMap::try_from(take(names::SERVICE_POLICY)?)?,
            tables: EndpointTables::new(
                take(names::CONNTRACK)?,
                take(names::FRAGMENTS)?,
                take(names::COUNTERS)?,
                sizes,
            )?,
            stats: PerCpuHashMap::try_from(take(names::STATS)?)?,
            events: RingBuf::try_from(take(names::EVENTS)?)?,
            tunnel_ports: Array::try_from(take(names::TUNNEL_PORTS)?)?,
            capacities: BTreeMap::new(),
        };
        let max_entries = |map: &MapData| map.info().map(|i| i.max_entries());
        maps.capacities = BTreeMap::from([
            (names::ENDPOINTS, max_entries(maps.endpoints.map())?),
            (names::IPCACHE, max_entries(maps.ipcache.map())?),
            (names::POLICY, max_entries(maps.policy.map())?),
            (names::CIDR, max_entries(maps.cidr.map())?),
            (names::FRONTENDS, max_entries(maps.frontends.map())?),
            (
                names::SERVICE_POLICY,
                max_entries(maps.service_policy.map())?,
            ),
        ]);
        maps.tables.set_capacity(maps.capacities[names::ENDPOINTS]);
        Ok(maps)
    }

    /// Sets TUNNEL_PORTS to `ports`, writing only the words that change.
    pub fn set_tunnel_ports(&mut self, ports: &BTreeSet<u16>) -> Result<(), MapOpError> {
        for (word, desired) in tunnel_port_words(ports).into_iter().enumerate() {
            let word = u32::try_from(word).expect("fewer words than u32::MAX");
            let current = op(names::TUNNEL_PORTS, self.tunnel_ports.get(&word, 0))?;
            if current != desired {
                op(names::TUNNEL_PORTS, self.tunnel_ports.set(word, desired, 0))?;
            }
        }
        Ok(())
    }

    /// The capacity of `map` (one the agent fills), as the kernel reports it.
    pub fn capacity(&self, map: &'static str) -> u32 {
        self.capacities.get(map).copied().unwrap_or(u32::MAX)
    }

    /// What the maps the agent owns hold now.
    pub fn live(&self) -> Result<MapContents, MapOpError> {
        Ok(MapContents {
            endpoints: live_hash(names::ENDPOINTS, &self.endpoints)?,
            ipcache: live_hash(names::IPCACHE, &self.ipcache)?,
            policy: live_lpm(names::POLICY, &self.policy)?,
            cidr: live_lpm(names::CIDR, &self.cidr)?,
            frontends: live_hash(names::FRONTENDS, &self.frontends)?,
            service_policy: live_hash(names::SERVICE_POLICY, &self.service_policy)?,
        })
    }

    /// Takes the maps from `current` (what they hold) to `desired`, writing only the
    /// difference, make before break. A map that cannot hold its old and new entries at
    /// once (near its capacity) has its old entries removed first where that can only deny
    /// more, never allow more: a missing endpoint drops its pod's traffic, a missing
    /// identity is outside the cluster to selectors, a missing policy entry or Service
    /// verdict allows nothing. (Not so CIDR, whose `except` holes would let the prefix
    /// around them match while they are gone, nor FRONTENDS, whose missing ports would be
    /// decided as their bare address: those stay make before break.)
    pub fn apply(
        &mut self,
        current: &MapContents,
        desired: &MapContents,
    ) -> Result<SyncReport, MapOpError> {
        let endpoints = diff(&current.endpoints, &desired.endpoints);
        let ipcache = diff(&current.ipcache, &desired.ipcache);
        let policy = diff(&current.policy, &desired.policy);
        let cidr = diff(&current.cidr, &desired.cidr);
        let frontends = diff(&current.frontends, &desired.frontends);
        let service_policy = diff(&current.service_policy, &desired.service_policy);
        let tight = |name: &'static str, peak: usize| peak > self.capacity(name) as usize;
        let early = Early {
            endpoints: tight(names::ENDPOINTS, peak(&current.endpoints, &endpoints)),
            ipcache: tight(names::IPCACHE, peak(&current.ipcache, &ipcache)),
            policy: tight(names::POLICY, peak(&current.policy, &policy)),
            service_policy: tight(
                names::SERVICE_POLICY,
                peak(&current.service_policy, &service_policy),
            ),
        };
        if early.endpoints {
            for k in &endpoints.removes {
                op(names::ENDPOINTS, absent_ok(self.endpoints.remove(k)))?;
            }
        }
        if early.service_policy {
            for k in &service_policy.removes {
                let r = absent_ok(self.service_policy.remove(k));
                op(names::SERVICE_POLICY, r)?;
            }
        }
        if early.policy {
            for k in &policy.removes {
                op(names::POLICY, absent_ok(self.policy.remove(&lpm_key(k))))?;
            }
        }
        if early.ipcache {
            for k in &ipcache.removes {
                op(names::IPCACHE, absent_ok(self.ipcache.remove(k)))?;
            }
        }

        for (k, v) in &ipcache.upserts {
            op(names::IPCACHE, self.ipcache.insert(k, v, 0))?;
        }
        for (k, v) in &policy.upserts {
            op(names::POLICY, self.policy.insert(&lpm_key(k), v, 0))?;
        }
        for (k, v) in &cidr.upserts {
            op(names::CIDR, self.cidr.insert(&lpm_key(k), v, 0))?;
        }
        // A frontend's verdicts before the frontend itself.
        for (k, v) in &service_policy.upserts {
            op(names::SERVICE_POLICY, self.service_policy.insert(k, v, 0))?;
        }
        for (k, v) in &frontends.upserts {
            op(names::FRONTENDS, self.frontends.insert(k, v, 0))?;
        }
        // An endpoint's tables exist before its entry does.
        let in_use: BTreeSet<u32> = (current.endpoints.values())
            .chain(desired.endpoints.values())
            .map(|e| e.endpoint_id)
            .collect();
        for e in desired.endpoints.values() {
            self.tables.ensure_among(e.endpoint_id, &in_use)?;
        }
        for (k, v) in &endpoints.upserts {
            op(names::ENDPOINTS, self.endpoints.insert(k, v, 0))?;
        }

        if !early.endpoints {
            for k in &endpoints.removes {
                op(names::ENDPOINTS, absent_ok(self.endpoints.remove(k)))?;
            }
        }
        for k in &frontends.removes {
            op(names::FRONTENDS, absent_ok(self.frontends.remove(k)))?;
        }
        if !early.service_policy {
            for k in &service_policy.removes {
                let r = absent_ok(self.service_policy.remove(k));
                op(names::SERVICE_POLICY, r)?;
            }
        }
        for k in &cidr.removes {
            op(names::CIDR, absent_ok(self.cidr.remove(&lpm_key(k))))?;
        }
        if !early.policy {
            for k in &policy.removes {
                op(names::POLICY, absent_ok(self.policy.remove(&lpm_key(k))))?;
            }
        }
        if !early.ipcache {
            for k in &ipcache.removes {
                op(names::IPCACHE, absent_ok(self.ipcache.remove(k)))?;
            }
        }
        Ok(SyncReport {
            written: ipcache.upserts.len()
                + policy.upserts.len()
                + cidr.upserts.len()
                + service_policy.upserts.len()
                + frontends.upserts.len()
                + endpoints.upserts.len(),
            removed: endpoints.removes.len()
                + frontends.removes.len()
                + service_policy.removes.len()
                + cidr.removes.len()
                + policy.removes.len()
                + ipcache.removes.len(),
        })
    }

    /// Entries of each map with a fixed capacity, and the capacity (of the per-endpoint
    /// tables: all of them together).
    ///
    /// Nothing is walked key by key (that cost grew with the maps' fill, every few
    /// seconds): the maps the agent owns hold what it last wrote (`written`; a full resync
    /// corrects anything else), and the per-endpoint tables what the datapath counted
    /// creating in them (see [`super::tables`]). Without `written` (before the first sync,
    /// or after one failed) the agent's maps are counted key by key.
    pub fn fill(&self, written: Option<&MapContents>) -> Vec<(&'static str, usize, u64)> {
        let counters = self.tables.counters().unwrap_or_default();
        let in_use: BTreeSet<u32> = match written {
            Some(w) => w.endpoints.values().map(|e| e.endpoint_id).collect(),
            None => self
                .endpoints
                .iter()
                .filter_map(Result::ok)
                .map(|(_, e)| e.endpoint_id)
                .collect(),
        };
        let (conntrack, conntrack_capacity) = self.tables.conntrack_fill(&in_use, &counters);
        let (fragments, fragments_capacity) = self.tables.fragments_fill(&in_use, &counters);
        let count =
            |name: &'static str, entries: usize| (name, entries, self.capacity(name).into());
        let owned = match written {
            Some(w) => [
                w.endpoints.len(),
                w.ipcache.len(),
                w.policy.len(),
                w.cidr.len(),
                w.frontends.len(),
                w.service_policy.len(),
            ],
            None => [
                self.endpoints.keys().count(),
                self.ipcache.keys().count(),
                self.policy.keys().count(),
                self.cidr.keys().count(),
                self.frontends.keys().count(),
                self.service_policy.keys().count(),
            ],
        };
        vec![
            count(names::ENDPOINTS, owned[0]),
            count(names::IPCACHE, owned[1]),
            count(names::POLICY, owned[2]),
            count(names::CIDR, owned[3]),
            count(names::FRONTENDS, owned[4]),
            count(names::SERVICE_POLICY, owned[5]),
            (names::CONNTRACK, conntrack, conntrack_capacity),
            (names::FRAGMENTS, fragments, fragments_capacity),
        ]
    }

    /// Flow records the datapath had no room for in the ring buffer, since the maps were
    /// made (all endpoints together).
    pub fn events_lost(&self) -> u64 {
        self.tables
            .counters()
            .unwrap_or_default()
            .values()
            .map(|c| c.events_lost)
            .sum()
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<BTreeMap<StatsKey, StatsValue>, MapOpError> {
        sum_stats(&self.stats)
    }
}

/// The counters of the datapath pinned in `pin_dir`, summed over CPUs (for tools that do
/// not own the datapath, such as the lab while its agents run).
pub fn pinned_stats(pin_dir: &Path) -> Result<BTreeMap<StatsKey, StatsValue>, MapOpError> {
    let data = op(names::STATS, MapData::from_pin(pin_dir.join(names::STATS)))?;
    let map = op(
        names::STATS,
        PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(data)),
    )?;
    sum_stats(&map)
}

fn sum_stats(
    stats: &PerCpuHashMap<MapData, StatsKey, StatsValue>,
) -> Result<BTreeMap<StatsKey, StatsValue>, MapOpError> {
    let mut out = BTreeMap::new();
    for entry in stats.iter() {
        let (key, per_cpu) = op(names::STATS, entry)?;
        let total = per_cpu
            .iter()
            .fold(StatsValue::default(), |acc, v| StatsValue {
                packets: acc.packets + v.packets,
                bytes: acc.bytes + v.bytes,
            });
        out.insert(key, total);
    }
    Ok(out)
}

/// The TUNNEL_PORTS bitmap of `ports`.
pub fn tunnel_port_words(ports: &BTreeSet<u16>) -> Vec<u64> {
    let mut words = vec![0u64; capacity::TUNNEL_PORT_WORDS as usize];
    for &port in ports {
        let (word, bit) = tunnel_port_bit(port);
        words[word as usize] |= bit;
    }
    words
}
