//! Each endpoint's own state tables: its tracked connections and its fragmented datagrams.
//!
//! CONNTRACK and FRAGMENTS are hashes of maps keyed by endpoint id. The agent creates an
//! endpoint's two LRU tables before the endpoint entry that makes the programs act for it,
//! and drops them when the endpoint goes, which forgets its connections at once (its id is
//! reused later). One pod's flows can then only ever evict that pod's own entries.

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    Pod,
    maps::{HashMap, HashOfMaps, Map, MapData, MapError},
};
use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH;
use policy_common::maps::{CtEntry, CtKey, FragKey, FragValue, capacity, names};

use super::maps::{MapOpError, absent_ok, op};

/// One endpoint's connections.
pub type ConntrackTable = HashMap<MapData, CtKey, CtEntry>;
/// One endpoint's fragmented datagrams.
pub type FragmentTable = HashMap<MapData, FragKey, FragValue>;

/// Capacities of each endpoint's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSizes {
    /// Connections one endpoint can track.
    pub conntrack: u32,
    /// Fragmented datagrams of one endpoint in flight.
    pub fragments: u32,
}

impl Default for TableSizes {
    fn default() -> Self {
        Self {
            conntrack: capacity::CONNTRACK_PER_ENDPOINT,
            fragments: capacity::FRAGMENTS_PER_ENDPOINT,
        }
    }
}

/// The per-endpoint tables of one datapath.
pub struct EndpointTables {
    conntrack: HashOfMaps<MapData, u32, ConntrackTable>,
    fragments: HashOfMaps<MapData, u32, FragmentTable>,
    sizes: TableSizes,
    /// Endpoint ids that have their tables.
    present: BTreeSet<u32>,
}

/// A new LRU hash map for `K` -> `V`.
fn lru_table<K: Pod, V: Pod>(
    map: &'static str,
    name: &str,
    entries: u32,
) -> Result<HashMap<MapData, K, V>, MapOpError> {
    let def = aya_obj::Map::new_from_params(
        BPF_MAP_TYPE_LRU_HASH as u32,
        size_of::<K>() as u32,
        size_of::<V>() as u32,
        entries,
        0,
    );
    let data = op(map, MapData::create(def, name, None))?;
    op(map, HashMap::try_from(Map::LruHashMap(data)))
}

impl EndpointTables {
    /// The outer maps of a loaded object; finds which endpoints already have tables (left
    /// by an agent that ran before, whose connections must survive its restart).
    pub fn new(conntrack: Map, fragments: Map, sizes: TableSizes) -> Result<Self, MapError> {
        let conntrack: HashOfMaps<MapData, u32, ConntrackTable> = conntrack.try_into()?;
        let fragments: HashOfMaps<MapData, u32, FragmentTable> = fragments.try_into()?;
        let in_both: BTreeSet<u32> = conntrack.keys().filter_map(Result::ok).collect();
        let present = fragments
            .keys()
            .filter_map(Result::ok)
            .filter(|id| in_both.contains(id))
            .collect();
        Ok(Self {
            conntrack,
            fragments,
            sizes,
            present,
        })
    }

    /// The capacities new tables get.
    pub fn sizes(&self) -> TableSizes {
        self.sizes
    }

    /// Endpoint ids that have tables.
    pub fn present(&self) -> &BTreeSet<u32> {
        &self.present
    }

    /// Makes sure endpoint `id` has its tables.
    pub fn ensure(&mut self, id: u32) -> Result<(), MapOpError> {
        if self.present.contains(&id) {
            return Ok(());
        }
        self.create(id)
    }

    /// Gives endpoint `id` new, empty tables (the old ones, if any, go with what they hold).
    pub fn create(&mut self, id: u32) -> Result<(), MapOpError> {
        let ct: ConntrackTable = lru_table(names::CONNTRACK, "ct_endpoint", self.sizes.conntrack)?;
        let frag: FragmentTable =
            lru_table(names::FRAGMENTS, "frag_endpoint", self.sizes.fragments)?;
        op(names::FRAGMENTS, self.fragments.insert(id, &frag, 0))?;
        op(names::CONNTRACK, self.conntrack.insert(id, &ct, 0))?;
        self.present.insert(id);
        Ok(())
    }

    /// Drops endpoint `id`'s tables and everything in them.
    pub fn remove(&mut self, id: u32) -> Result<(), MapOpError> {
        op(names::CONNTRACK, absent_ok(self.conntrack.remove(&id)))?;
        op(names::FRAGMENTS, absent_ok(self.fragments.remove(&id)))?;
        self.present.remove(&id);
        Ok(())
    }

    /// Drops the tables of every endpoint not in `wanted`.
    pub fn retain(&mut self, wanted: &BTreeSet<u32>) -> Result<(), MapOpError> {
        let gone: Vec<u32> = self.present.difference(wanted).copied().collect();
        for id in gone {
            self.remove(id)?;
        }
        Ok(())
    }

    /// Empties every table (a fresh table per endpoint).
    pub fn clear(&mut self) -> Result<(), MapOpError> {
        for id in self.present.clone() {
            self.create(id)?;
        }
        Ok(())
    }

    /// Endpoint `id`'s conntrack table.
    pub fn conntrack(&self, id: u32) -> Result<ConntrackTable, MapOpError> {
        op(names::CONNTRACK, self.conntrack.get(&id, 0))
    }

    /// Entries in all conntrack tables, and how many they can hold together.
    pub fn conntrack_fill(&self) -> (usize, u64) {
        self.fill(
            |id| self.conntrack(id).map(|t| t.keys().count()),
            self.sizes.conntrack,
        )
    }

    /// Entries in all fragment tables, and how many they can hold together.
    pub fn fragments_fill(&self) -> (usize, u64) {
        self.fill(
            |id| op(names::FRAGMENTS, self.fragments.get(&id, 0)).map(|t| t.keys().count()),
            self.sizes.fragments,
        )
    }

    fn fill(&self, count: impl Fn(u32) -> Result<usize, MapOpError>, each: u32) -> (usize, u64) {
        let entries = self.present.iter().filter_map(|&id| count(id).ok()).sum();
        (entries, self.present.len() as u64 * u64::from(each))
    }
}

/// The endpoint ids that need new, empty tables when the endpoint entries go from `current`
/// to `desired` (interface index -> endpoint id): an id that appears, or that now belongs to
/// another interface.
pub fn fresh(current: &BTreeMap<u32, u32>, desired: &BTreeMap<u32, u32>) -> BTreeSet<u32> {
    let owner = |m: &BTreeMap<u32, u32>| -> BTreeMap<u32, u32> {
        m.iter().map(|(&ifindex, &id)| (id, ifindex)).collect()
    };
    let before = owner(current);
    owner(desired)
        .into_iter()
        .filter(|(id, ifindex)| before.get(id) != Some(ifindex))
        .map(|(id, _)| id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_that_moves_to_another_interface_starts_afresh() {
        let current = BTreeMap::from([(10, 1), (11, 2), (12, 3)]);
        let desired = BTreeMap::from([(10, 1), (13, 2), (14, 4)]);
        assert_eq!(fresh(&current, &desired), BTreeSet::from([2, 4]));
    }
}
