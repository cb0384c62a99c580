//! A datapath in memory: plain maps instead of the kernel's, interfaces by name instead of
//! links, and failures on demand (a map the kernel refuses to write, an attach that fails).
//! It syncs with the same [`SyncState`] as the kernel's, so tests of the agent's reconcile
//! step run the real sync without root.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    os::fd::BorrowedFd,
    path::{Path, PathBuf},
};

use aya::{maps::MapError, sys::SyscallError};
use policy_common::{
    event::FlowEvent,
    maps::{StatsKey, StatsValue, names},
};

use super::{Datapath, DatapathError, MapContents, MapOpError, MapStore, SyncReport, SyncState};
use crate::{capacity::MapSizes, compiler::Compiled, model::ObjectRef, netns::NetNs};

/// The errno a full kernel hash map answers an insert with.
const MAP_FULL_ERRNO: i32 = nix::libc::E2BIG;

/// Maps in memory, with the capacities a [`MapSizes`] gives them.
#[derive(Debug, Default)]
pub struct MemoryMaps {
    /// What the maps hold.
    pub contents: MapContents,
    capacities: BTreeMap<&'static str, u32>,
    /// While set, every write fails as the kernel fails an insert into a full map.
    refuse_writes: Option<&'static str>,
    /// Syncs that wrote.
    writes: usize,
}

impl MapStore for MemoryMaps {
    fn live(&self) -> Result<MapContents, DatapathError> {
        Ok(self.contents.clone())
    }

    fn apply(
        &mut self,
        current: &MapContents,
        desired: &MapContents,
    ) -> Result<SyncReport, DatapathError> {
        if let Some(map) = self.refuse_writes {
            return Err(map_full(map));
        }
        let mut report = SyncReport::default();
        let live = &mut self.contents;
        let capacities = &self.capacities;
        let cap = |map| capacities.get(map).copied().unwrap_or(u32::MAX) as usize;
        // The order of the kernel's sync (make before break), each map as the kernel
        // does it: an insert of a new key into a full map fails.
        apply_map(
            names::IPCACHE,
            cap(names::IPCACHE),
            &mut live.ipcache,
            &current.ipcache,
            &desired.ipcache,
            &mut report,
        )?;
        apply_map(
            names::POLICY,
            cap(names::POLICY),
            &mut live.policy,
            &current.policy,
            &desired.policy,
            &mut report,
        )?;
        apply_map(
            names::CIDR,
            cap(names::CIDR),
            &mut live.cidr,
            &current.cidr,
            &desired.cidr,
            &mut report,
        )?;
        apply_map(
            names::SERVICE_POLICY,
            cap(names::SERVICE_POLICY),
            &mut live.service_policy,
            &current.service_policy,
            &desired.service_policy,
            &mut report,
        )?;
        apply_map(
            names::FRONTENDS,
            cap(names::FRONTENDS),
            &mut live.frontends,
            &current.frontends,
            &desired.frontends,
            &mut report,
        )?;
        apply_map(
            names::ENDPOINTS,
            cap(names::ENDPOINTS),
            &mut live.endpoints,
            &current.endpoints,
            &desired.endpoints,
            &mut report,
        )?;
        self.writes += 1;
        Ok(report)
    }

    fn capacity(&self, map: &'static str) -> u32 {
        self.capacities.get(map).copied().unwrap_or(u32::MAX)
    }
}

/// The error the kernel's maps give when `map` is full.
fn map_full(map: &'static str) -> DatapathError {
    MapOpError {
        map,
        source: MapError::SyscallError(SyscallError {
            call: "bpf_map_update_elem",
            io_error: io::Error::from_raw_os_error(MAP_FULL_ERRNO),
        }),
    }
    .into()
}

/// Writes into `live` what differs between `current` and `desired`, and deletes what
/// `desired` lacks of `current`, counting both.
fn apply_map<K: Ord + Copy, V: PartialEq + Copy>(
    map: &'static str,
    capacity: usize,
    live: &mut BTreeMap<K, V>,
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    report: &mut SyncReport,
) -> Result<(), DatapathError> {
    for (k, v) in desired {
        if current.get(k) != Some(v) {
            if !live.contains_key(k) && live.len() >= capacity {
                return Err(map_full(map));
            }
            live.insert(*k, *v);
            report.written += 1;
        }
    }
    for k in current.keys().filter(|k| !desired.contains_key(k)) {
        live.remove(k);
        report.removed += 1;
    }
    Ok(())
}

/// A datapath in memory (see the module's documentation).
#[derive(Debug)]
pub struct MemoryDatapath {
    /// The maps.
    pub maps: MemoryMaps,
    state: SyncState,
    /// The node's interfaces: name -> index.
    links: BTreeMap<String, u32>,
    /// Interfaces whose attach fails.
    refuse_attach: BTreeSet<String>,
    /// The interfaces that have the programs attached.
    attached: BTreeMap<u32, ObjectRef>,
    /// Per-endpoint tables made ahead of need.
    prepared_tables: usize,
    /// The node's tunnel ports, as last set.
    pub tunnel_ports: BTreeSet<u16>,
    pin_dir: PathBuf,
}

impl MemoryDatapath {
    /// Empty maps of the given sizes, and no interfaces.
    pub fn new(sizes: MapSizes) -> Self {
        Self {
            maps: MemoryMaps {
                contents: MapContents::default(),
                capacities: sizes.max_entries().into_iter().collect(),
                refuse_writes: None,
                writes: 0,
            },
            state: SyncState::default(),
            links: BTreeMap::new(),
            refuse_attach: BTreeSet::new(),
            attached: BTreeMap::new(),
            prepared_tables: 0,
            tunnel_ports: BTreeSet::new(),
            pin_dir: PathBuf::from("memory"),
        }
    }

    /// Adds an interface `name` with index `index` to the node.
    pub fn add_link(&mut self, name: &str, index: u32) {
        self.links.insert(name.to_owned(), index);
    }

    /// Removes interface `name` from the node (its programs go with it).
    pub fn remove_link(&mut self, name: &str) {
        if let Some(index) = self.links.remove(name) {
            self.attached.remove(&index);
        }
    }

    /// Makes every later write fail as a write to full `map` does (`None`: writes succeed
    /// again).
    pub fn refuse_writes(&mut self, map: Option<&'static str>) {
        self.maps.refuse_writes = map;
    }

    /// Makes attaching to `name` fail (or succeed again, with `refuse` false).
    pub fn refuse_attach(&mut self, name: &str, refuse: bool) {
        if refuse {
            self.refuse_attach.insert(name.to_owned());
        } else {
            self.refuse_attach.remove(name);
        }
    }

    /// The pod whose programs are attached to interface `index`.
    pub fn attached_to(&self, index: u32) -> Option<&ObjectRef> {
        self.attached.get(&index)
    }

    /// How many syncs wrote to the maps.
    pub fn writes(&self) -> usize {
        self.maps.writes
    }
}

impl Datapath for MemoryDatapath {
    fn sync(&mut self, compiled: &Compiled) -> Result<SyncReport, DatapathError> {
        self.state.sync(compiled, &mut self.maps)
    }

    fn drift(&mut self) -> Result<usize, DatapathError> {
        self.state.drift(&self.maps)
    }

    fn has_endpoint(&self, ifindex: u32) -> bool {
        self.state.has_endpoint(ifindex)
    }

    fn set_tunnel_ports(&mut self, ports: &BTreeSet<u16>) -> Result<(), DatapathError> {
        self.tunnel_ports.clone_from(ports);
        Ok(())
    }

    fn live(&self) -> Result<MapContents, DatapathError> {
        self.maps.live()
    }

    fn attach(
        &mut self,
        pod: &ObjectRef,
        _netns: Option<&NetNs>,
        ifname: &str,
        ifindex: u32,
    ) -> Result<(), DatapathError> {
        let index = *self
            .links
            .get(ifname)
            .ok_or_else(|| DatapathError::NoInterface(ifname.to_owned()))?;
        if index != ifindex {
            return Err(DatapathError::InterfaceMoved {
                name: ifname.to_owned(),
                expected: ifindex,
                found: index,
            });
        }
        if self.refuse_attach.contains(ifname) {
            return Err(DatapathError::NoInterface(ifname.to_owned()));
        }
        self.attached.insert(index, pod.clone());
        self.state.attached(pod, index, None);
        Ok(())
    }

    fn detach(&mut self, pod: &ObjectRef) {
        if let Some(index) = self.state.forget(pod) {
            self.attached.remove(&index);
        }
    }

    fn adopt_interface(&mut self, pod: &ObjectRef, ifindex: u32) {
        self.state.adopt_interface(pod, ifindex);
    }

    fn prune_links(&mut self) {
        let known: BTreeSet<u32> = self.state.interfaces().values().copied().collect();
        self.attached.retain(|index, _| known.contains(index));
    }

    fn prepare_tables(&mut self, budget: usize) -> Result<usize, DatapathError> {
        let capacity = self.maps.capacity(names::ENDPOINTS) as usize;
        let made = budget.min(capacity.saturating_sub(self.prepared_tables));
        self.prepared_tables += made;
        Ok(made)
    }

    fn left_out(&self) -> &[ObjectRef] {
        self.state.left_out()
    }

    fn capacity(&self, map: &'static str) -> u32 {
        self.maps.capacity(map)
    }

    fn fill(&self) -> Vec<(&'static str, usize, u64)> {
        let c = &self.maps.contents;
        [
            (names::ENDPOINTS, c.endpoints.len()),
            (names::IPCACHE, c.ipcache.len()),
            (names::POLICY, c.policy.len()),
            (names::CIDR, c.cidr.len()),
            (names::FRONTENDS, c.frontends.len()),
            (names::SERVICE_POLICY, c.service_policy.len()),
        ]
        .into_iter()
        .map(|(map, entries)| (map, entries, u64::from(self.maps.capacity(map))))
        .collect()
    }

    fn stats(&self) -> Result<BTreeMap<StatsKey, StatsValue>, DatapathError> {
        // No packets pass through memory.
        Ok(BTreeMap::new())
    }

    fn events_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn drain_events_into(&mut self, _out: &mut Vec<FlowEvent>, _max: usize) -> usize {
        0
    }

    fn events_lost(&self) -> u64 {
        0
    }

    fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}
