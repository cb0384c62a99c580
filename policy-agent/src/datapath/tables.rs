//! Each endpoint's own state tables: its tracked connections and its fragmented datagrams.
//!
//! CONNTRACK and FRAGMENTS are hashes of maps keyed by endpoint id: one pod's flows can only
//! ever evict that pod's own entries. Adding a table to them costs an RCU grace period (the
//! kernel waits for running programs on every map-in-map update), so tables are made ahead of
//! need and kept with their id when a pod goes: ids are reused, and the generation in every
//! key (`EndpointInfo::generation`) keeps what a previous holder of the id left from ever
//! matching; the LRU then pushes those entries out.
//!
//! Their fill is not counted by walking them (that cost grew with every tracked
//! connection, every few seconds): the datapath never deletes an entry, so a table holds
//! the keys created in it, up to its size, and the datapath counts those (COUNTERS). The
//! agent resets an id's counts whenever it makes or empties its tables, and counts a table
//! once by walking it only when it finds one without counts (left by an agent older than
//! COUNTERS).

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    Pod,
    maps::{HashMap, HashOfMaps, Map, MapData, MapError, PerCpuHashMap, PerCpuValues},
    util::nr_cpus,
};
use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH;
use policy_common::maps::{
    CtEntry, CtKey, EndpointCounters, EndpointInfo, FragKey, FragValue, capacity, names,
};

use super::maps::{MapOpError, absent_ok, op};

/// One endpoint's connections.
pub type ConntrackTable = HashMap<MapData, CtKey, CtEntry>;
/// One endpoint's fragmented datagrams.
pub type FragmentTable = HashMap<MapData, FragKey, FragValue>;

/// Ids beyond those in use that have their tables ready, so that a new pod (which gets the
/// lowest free id) does not wait for one to be made.
pub const SPARE_TABLES: usize = 4;

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
    /// What the datapath created in each id's tables, and the flow records it lost.
    counters: PerCpuHashMap<MapData, u32, EndpointCounters>,
    sizes: TableSizes,
    /// Endpoint ids that have their tables.
    present: BTreeSet<u32>,
    /// How many tables each map of maps holds (ENDPOINTS' size).
    capacity: u32,
}

/// A new LRU hash map for `K` -> `V`: the layout of every per-pod table, which must match
/// the template of the map of maps `map` (the kernel checks it on insert).
pub(super) fn lru_table_data<K: Pod, V: Pod>(
    map: &'static str,
    name: &str,
    entries: u32,
) -> Result<MapData, MapOpError> {
    let def = aya_obj::Map::new_from_params(
        BPF_MAP_TYPE_LRU_HASH as u32,
        size_of::<K>() as u32,
        size_of::<V>() as u32,
        entries,
        0,
    );
    op(map, MapData::create(def, name, None))
}

/// An error of COUNTERS that no map call returned (the CPU count could not be read).
fn counters_error(call: &'static str, io_error: std::io::Error) -> MapOpError {
    MapOpError {
        map: names::COUNTERS,
        source: MapError::SyscallError(aya::sys::SyscallError { call, io_error }),
    }
}

/// [`lru_table_data`], typed.
fn lru_table<K: Pod, V: Pod>(
    map: &'static str,
    name: &str,
    entries: u32,
) -> Result<HashMap<MapData, K, V>, MapOpError> {
    let data = lru_table_data::<K, V>(map, name, entries)?;
    op(map, HashMap::try_from(Map::LruHashMap(data)))
}

/// Deletes every entry of `table`.
fn empty<K: Pod + Ord, V: Pod>(
    map: &'static str,
    table: &mut HashMap<MapData, K, V>,
) -> Result<(), MapOpError> {
    let keys: Vec<K> = table.keys().filter_map(Result::ok).collect();
    for k in keys {
        // The LRU may have evicted it meanwhile.
        op(map, absent_ok(table.remove(&k)))?;
    }
    Ok(())
}

impl EndpointTables {
    /// The outer maps of a loaded object; finds which endpoints already have tables (left
    /// by an agent that ran before, whose connections must survive its restart).
    pub fn new(
        conntrack: Map,
        fragments: Map,
        counters: Map,
        sizes: TableSizes,
    ) -> Result<Self, MapError> {
        let conntrack: HashOfMaps<MapData, u32, ConntrackTable> = conntrack.try_into()?;
        let fragments: HashOfMaps<MapData, u32, FragmentTable> = fragments.try_into()?;
        let counters: PerCpuHashMap<MapData, u32, EndpointCounters> = counters.try_into()?;
        let in_both: BTreeSet<u32> = conntrack.keys().filter_map(Result::ok).collect();
        let present = fragments
            .keys()
            .filter_map(Result::ok)
            .filter(|id| in_both.contains(id))
            .collect();
        let mut tables = Self {
            conntrack,
            fragments,
            counters,
            sizes,
            present,
            capacity: u32::MAX,
        };
        tables.count_uncounted();
        Ok(tables)
    }

    /// Gives every table without counts (made before COUNTERS existed) the count of the
    /// keys it holds, once.
    fn count_uncounted(&mut self) {
        let counted: BTreeSet<u32> = self.counters.keys().filter_map(Result::ok).collect();
        let uncounted: Vec<u32> = self.present.difference(&counted).copied().collect();
        for id in uncounted {
            let seed = EndpointCounters {
                conntrack_created: self.conntrack(id).map_or(0, |t| t.keys().count() as u64),
                fragments_created: op(names::FRAGMENTS, self.fragments.get(&id, 0))
                    .map_or(0, |t| t.keys().count() as u64),
                events_lost: 0,
            };
            // NOEXIST: counts the datapath started meanwhile are kept (then a few low).
            let _ = self.set_counters(id, seed, u64::from(aya_obj::generated::BPF_NOEXIST));
        }
    }

    /// Sets the counts of `id` to `first` (on one CPU, zero on the others).
    fn set_counters(
        &mut self,
        id: u32,
        first: EndpointCounters,
        flags: u64,
    ) -> Result<(), MapOpError> {
        let cpus = nr_cpus().map_err(|(call, io_error)| counters_error(call, io_error))?;
        let mut values = vec![EndpointCounters::default(); cpus];
        values[0] = first;
        let values = PerCpuValues::try_from(values)
            .map_err(|io_error| counters_error("per-CPU values", io_error))?;
        op(names::COUNTERS, self.counters.insert(id, values, flags))
    }

    /// Starts the counts of `id`'s tables from zero (they were made or emptied).
    fn reset_counters(&mut self, id: u32) -> Result<(), MapOpError> {
        self.set_counters(id, EndpointCounters::default(), 0)
    }

    /// What the datapath counted for every id (the tables' and id 0's), summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<u32, EndpointCounters>, MapOpError> {
        let mut out = BTreeMap::new();
        for entry in self.counters.iter() {
            let (id, per_cpu) = op(names::COUNTERS, entry)?;
            let total = per_cpu
                .iter()
                .fold(EndpointCounters::default(), |a, v| EndpointCounters {
                    conntrack_created: a.conntrack_created + v.conntrack_created,
                    fragments_created: a.fragments_created + v.fragments_created,
                    events_lost: a.events_lost + v.events_lost,
                });
            out.insert(id, total);
        }
        Ok(out)
    }

    /// How many tables the maps of maps hold (their `max_entries`).
    pub fn set_capacity(&mut self, capacity: u32) {
        self.capacity = capacity;
    }

    /// Like [`Self::ensure`]; when the maps of maps are full, first removes the tables of
    /// an id that no endpoint of `in_use` holds (made ahead of need, or left by a pod that
    /// went), so that a pod that fits in ENDPOINTS always gets its tables.
    pub fn ensure_among(&mut self, id: u32, in_use: &BTreeSet<u32>) -> Result<(), MapOpError> {
        if !self.present.contains(&id)
            && self.present.len() >= self.capacity as usize
            && let Some(&spare) = self.present.iter().rev().find(|i| !in_use.contains(i))
        {
            op(names::CONNTRACK, absent_ok(self.conntrack.remove(&spare)))?;
            op(names::FRAGMENTS, absent_ok(self.fragments.remove(&spare)))?;
            op(names::COUNTERS, absent_ok(self.counters.remove(&spare)))?;
            self.present.remove(&spare);
        }
        self.ensure(id)
    }

    /// Makes sure endpoint `id` has its tables (the slow path: a spare should be ready).
    pub fn ensure(&mut self, id: u32) -> Result<(), MapOpError> {
        if self.present.contains(&id) {
            return Ok(());
        }
        let ct: ConntrackTable = lru_table(names::CONNTRACK, "ct_endpoint", self.sizes.conntrack)?;
        let frag: FragmentTable =
            lru_table(names::FRAGMENTS, "frag_endpoint", self.sizes.fragments)?;
        // Reset first: the datapath starts counting in the tables once they are in.
        self.reset_counters(id)?;
        op(names::FRAGMENTS, self.fragments.insert(id, &frag, 0))?;
        op(names::CONNTRACK, self.conntrack.insert(id, &ct, 0))?;
        self.present.insert(id);
        Ok(())
    }

    /// Makes tables ahead of need, at most `budget` of them: until [`SPARE_TABLES`] ids
    /// that no endpoint of `in_use` holds have theirs (the allocator hands out the lowest
    /// free id). Returns how many it made.
    pub fn prepare(&mut self, in_use: &BTreeSet<u32>, budget: usize) -> Result<usize, MapOpError> {
        let mut made = 0;
        let mut candidate = 1;
        while made < budget
            && self.present.len() < self.capacity as usize
            && self.present.difference(in_use).count() < SPARE_TABLES
        {
            while self.present.contains(&candidate) || in_use.contains(&candidate) {
                candidate += 1;
            }
            self.ensure(candidate)?;
            made += 1;
        }
        Ok(made)
    }

    /// Forgets every connection and datagram of every endpoint.
    pub fn clear(&mut self) -> Result<(), MapOpError> {
        for id in self.present.clone() {
            empty(names::CONNTRACK, &mut self.conntrack(id)?)?;
            let mut frag = op(names::FRAGMENTS, self.fragments.get(&id, 0))?;
            empty(names::FRAGMENTS, &mut frag)?;
            self.reset_counters(id)?;
        }
        Ok(())
    }

    /// Endpoint `id`'s conntrack table.
    pub fn conntrack(&self, id: u32) -> Result<ConntrackTable, MapOpError> {
        op(names::CONNTRACK, self.conntrack.get(&id, 0))
    }

    /// Entries in the conntrack tables of `ids`, and how many they can hold together, from
    /// `counters` (see the module's docs).
    pub fn conntrack_fill(
        &self,
        ids: &BTreeSet<u32>,
        counters: &BTreeMap<u32, EndpointCounters>,
    ) -> (usize, u64) {
        self.fill(ids, counters, |c| c.conntrack_created, self.sizes.conntrack)
    }

    /// Entries in the fragment tables of `ids`, and how many they can hold together, from
    /// `counters`.
    pub fn fragments_fill(
        &self,
        ids: &BTreeSet<u32>,
        counters: &BTreeMap<u32, EndpointCounters>,
    ) -> (usize, u64) {
        self.fill(ids, counters, |c| c.fragments_created, self.sizes.fragments)
    }

    /// Entries in the conntrack tables of `ids`, counted key by key (tests and tools: this
    /// costs a system call per entry).
    pub fn conntrack_entries_walked(&self, ids: &BTreeSet<u32>) -> usize {
        ids.intersection(&self.present)
            .filter_map(|&id| self.conntrack(id).ok())
            .map(|t| t.keys().count())
            .sum()
    }

    fn fill(
        &self,
        ids: &BTreeSet<u32>,
        counters: &BTreeMap<u32, EndpointCounters>,
        created: impl Fn(&EndpointCounters) -> u64,
        each: u32,
    ) -> (usize, u64) {
        let ids: Vec<u32> = ids.intersection(&self.present).copied().collect();
        // A full table evicts its least recently used entry for each new one: it stays full.
        let entries: u64 = ids
            .iter()
            .filter_map(|id| counters.get(id))
            .map(|c| created(c).min(u64::from(each)))
            .sum();
        (
            usize::try_from(entries).unwrap_or(usize::MAX),
            ids.len() as u64 * u64::from(each),
        )
    }
}

/// Fills in the generation of every endpoint entry in `desired` (interface index ->
/// endpoint): the one it has in `current` if the same id stays on the same interface, a new
/// one above every generation seen (`last`) otherwise.
pub fn assign_generations(
    current: &BTreeMap<u32, EndpointInfo>,
    desired: &mut BTreeMap<u32, EndpointInfo>,
    last: &mut u32,
) {
    *last = current.values().map(|e| e.generation).fold(*last, u32::max);
    for (ifindex, info) in desired.iter_mut() {
        info.generation = match current.get(ifindex) {
            Some(was) if was.endpoint_id == info.endpoint_id => was.generation,
            _ => {
                *last = last.wrapping_add(1).max(1);
                *last
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: u32, generation: u32) -> EndpointInfo {
        EndpointInfo {
            endpoint_id: id,
            generation,
            ..Default::default()
        }
    }

    #[test]
    fn an_id_that_moves_or_appears_gets_a_new_generation() {
        let current = BTreeMap::from([(10, endpoint(1, 5)), (11, endpoint(2, 6))]);
        let mut desired = BTreeMap::from([
            (10, endpoint(1, 0)),
            (12, endpoint(2, 0)),
            (13, endpoint(3, 0)),
        ]);
        let mut last = 0;
        assign_generations(&current, &mut desired, &mut last);
        assert_eq!(desired[&10].generation, 5, "same id, same interface: kept");
        assert_eq!(
            desired[&12].generation, 7,
            "id 2 moved to another interface"
        );
        assert_eq!(desired[&13].generation, 8);
        assert_eq!(last, 8);
    }
}
