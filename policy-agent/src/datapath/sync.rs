//! How a sync goes from what the compiler produced to the maps, whatever holds them: the
//! record of what the last sync wrote, the pods' interfaces, and the rules that make the
//! desired contents fit (ENDPOINTS' capacity, link-local addresses, endpoint generations).
//! The kernel's maps and the in-memory ones of tests ([`super::memory`]) share it, so a
//! test without root runs the very sync the agent runs.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv6Addr,
};

use policy_common::maps::{EP_HAS_LINK_LOCAL, EndpointInfo, names};

use super::{DatapathError, MapContents, Maps, SyncReport, tables};
use crate::{capacity::SizedMap, compiler::Compiled, model::ObjectRef};

/// Where map contents are read and written.
pub trait MapStore {
    /// What the maps hold.
    fn live(&self) -> Result<MapContents, DatapathError>;
    /// Takes the maps from `current` to `desired`, make before break.
    fn apply(
        &mut self,
        current: &MapContents,
        desired: &MapContents,
    ) -> Result<SyncReport, DatapathError>;
    /// The capacity of `map`.
    fn capacity(&self, map: &'static str) -> u32;
}

impl MapStore for Maps {
    fn live(&self) -> Result<MapContents, DatapathError> {
        Ok(Maps::live(self)?)
    }

    fn apply(
        &mut self,
        current: &MapContents,
        desired: &MapContents,
    ) -> Result<SyncReport, DatapathError> {
        Ok(Maps::apply(self, current, desired)?)
    }

    fn capacity(&self, map: &'static str) -> u32 {
        Maps::capacity(self, map)
    }
}

/// What a datapath knows between syncs.
#[derive(Debug, Default)]
pub struct SyncState {
    /// Host-side interface index of each pod whose interface is known.
    interfaces: BTreeMap<ObjectRef, u32>,
    /// The link-local address of the pod's end of each attached interface, read when
    /// attaching (see [`super::link_local`]).
    link_locals: BTreeMap<u32, Ipv6Addr>,
    /// What the last sync wrote (`None`: read the maps before the next one).
    written: Option<MapContents>,
    /// The highest endpoint generation handed out.
    last_generation: u32,
    /// Pods with an interface whose endpoint entry did not fit in ENDPOINTS at the last
    /// sync (their traffic is dropped, if attached).
    left_out: Vec<ObjectRef>,
}

impl SyncState {
    /// Brings `store` to what `compiled` says, for the pods whose interfaces are known.
    /// Only the difference with what the previous sync wrote is written; the first sync
    /// (and the first after an error or a drift check) compares with what the maps hold.
    pub fn sync(
        &mut self,
        compiled: &Compiled,
        store: &mut impl MapStore,
    ) -> Result<SyncReport, DatapathError> {
        let current = match self.written.take() {
            Some(written) => written,
            None => store.live()?,
        };
        let mut pods: BTreeMap<u32, &ObjectRef> = BTreeMap::new();
        let mut desired = MapContents {
            endpoints: compiled
                .endpoints
                .iter()
                .filter_map(|(pod, info)| {
                    let ifindex = *self.interfaces.get(pod)?;
                    pods.insert(ifindex, pod);
                    Some((ifindex, *info))
                })
                .collect(),
            ipcache: compiled.ipcache.clone(),
            policy: compiled.policy.clone(),
            cidr: compiled.cidr.clone(),
            frontends: compiled.frontends.clone(),
            service_policy: compiled.service_policy.clone(),
        };
        self.left_out = fit_endpoints(
            &mut desired.endpoints,
            &current.endpoints,
            &pods,
            store.capacity(names::ENDPOINTS) as usize,
        );
        for pod in &self.left_out {
            tracing::warn!(%pod, "ENDPOINTS is full: the pod's traffic is dropped until it fits; raise --map-size endpoints");
        }
        check_fits(&desired, store)?;
        with_link_locals(&mut desired.endpoints, &self.link_locals);
        tables::assign_generations(
            &current.endpoints,
            &mut desired.endpoints,
            &mut self.last_generation,
        );
        let report = store.apply(&current, &desired)?;
        self.written = Some(desired);
        Ok(report)
    }

    /// How many entries of `store` differ from what the last sync wrote (changed behind
    /// the agent's back); the next sync then compares with the maps rather than with its
    /// own record, and so corrects them.
    pub fn drift(&mut self, store: &impl MapStore) -> Result<usize, DatapathError> {
        let live = store.live()?;
        Ok(self.written.take().map_or(0, |w| w.difference(&live)))
    }

    /// Records that the pod's programs are attached to interface `ifindex`, whose pod end
    /// has `link_local` (if read).
    pub fn attached(&mut self, pod: &ObjectRef, ifindex: u32, link_local: Option<Ipv6Addr>) {
        self.interfaces.insert(pod.clone(), ifindex);
        match link_local {
            Some(addr) => self.link_locals.insert(ifindex, addr),
            None => self.link_locals.remove(&ifindex),
        };
    }

    /// Forgets a pod's interface; returns its index, if it had one.
    pub fn forget(&mut self, pod: &ObjectRef) -> Option<u32> {
        let ifindex = self.interfaces.remove(pod)?;
        self.link_locals.remove(&ifindex);
        Some(ifindex)
    }

    /// Records that a pod's interface has `ifindex` without attaching (it already is).
    pub fn adopt_interface(&mut self, pod: &ObjectRef, ifindex: u32) {
        self.interfaces.insert(pod.clone(), ifindex);
    }

    /// The pods whose interfaces are known, with their interface index.
    pub fn interfaces(&self) -> &BTreeMap<ObjectRef, u32> {
        &self.interfaces
    }

    /// What the last sync wrote (`None` before the first, or after a drift check).
    pub fn written(&self) -> Option<&MapContents> {
        self.written.as_ref()
    }

    /// Pods with an interface that did not fit in ENDPOINTS at the last sync.
    pub fn left_out(&self) -> &[ObjectRef] {
        &self.left_out
    }

    /// Whether the last sync wrote an endpoint entry for interface `ifindex` (not after a
    /// failed one: the maps may hold anything then).
    pub fn has_endpoint(&self, ifindex: u32) -> bool {
        self.written
            .as_ref()
            .is_some_and(|w| w.endpoints.contains_key(&ifindex))
    }

    /// The endpoint ids the last sync wrote.
    pub fn endpoint_ids(&self) -> BTreeSet<u32> {
        self.written
            .as_ref()
            .map(|w| w.endpoints.values().map(|e| e.endpoint_id).collect())
            .unwrap_or_default()
    }
}

/// Refuses, before writing anything, contents that do not fit a map.
fn check_fits(desired: &MapContents, store: &impl MapStore) -> Result<(), DatapathError> {
    for (map, needed) in [
        (SizedMap::Ipcache, desired.ipcache.len()),
        (SizedMap::Policy, desired.policy.len()),
        (SizedMap::Cidr, desired.cidr.len()),
        (SizedMap::Frontends, desired.frontends.len()),
        (SizedMap::ServicePolicy, desired.service_policy.len()),
    ] {
        let capacity = store.capacity(map.map());
        if needed > capacity as usize {
            return Err(DatapathError::Full {
                map: map.map(),
                setting: map.setting(),
                needed,
                capacity,
            });
        }
    }
    Ok(())
}

/// Keeps at most `capacity` endpoint entries of `desired` (interface index -> entry): those
/// already written keep their place, then the others in the order of their pods' names.
/// Returns the pods left out: their interfaces have no entry, so the programs drop their
/// traffic (fail closed), and a new pod never pushes out one that is enforced.
fn fit_endpoints(
    desired: &mut BTreeMap<u32, EndpointInfo>,
    current: &BTreeMap<u32, EndpointInfo>,
    pods: &BTreeMap<u32, &ObjectRef>,
    capacity: usize,
) -> Vec<ObjectRef> {
    if desired.len() <= capacity {
        return Vec::new();
    }
    let mut order: Vec<(bool, Option<&ObjectRef>, u32)> = desired
        .iter()
        .map(|(ifindex, info)| {
            let written = current
                .get(ifindex)
                .is_some_and(|c| c.endpoint_id == info.endpoint_id);
            (!written, pods.get(ifindex).copied(), *ifindex)
        })
        .collect();
    order.sort();
    let mut left_out = Vec::new();
    for (_, pod, ifindex) in order.into_iter().skip(capacity) {
        desired.remove(&ifindex);
        left_out.extend(pod.cloned());
    }
    left_out
}

/// Gives each endpoint the link-local address read from its interface, so that it may use
/// that one in neighbour discovery. An address two interfaces hold is given to neither: it
/// is not known to be either pod's alone, and the datapath then fails closed for both.
fn with_link_locals(
    endpoints: &mut BTreeMap<u32, EndpointInfo>,
    link_locals: &BTreeMap<u32, Ipv6Addr>,
) {
    let mut holders: BTreeMap<Ipv6Addr, usize> = BTreeMap::new();
    for (ifindex, addr) in link_locals {
        if endpoints.contains_key(ifindex) {
            *holders.entry(*addr).or_default() += 1;
        }
    }
    for (ifindex, info) in endpoints.iter_mut() {
        match link_locals.get(ifindex) {
            Some(addr) if holders.get(addr) == Some(&1) => {
                info.link_local = addr.octets();
                info.flags |= EP_HAS_LINK_LOCAL;
            }
            Some(addr) => {
                tracing::warn!(%addr, ifindex, "link-local address held by more than one pod: refused to each");
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_local_address_goes_to_its_interface_only_when_no_other_holds_it() {
        let a: Ipv6Addr = "fe80::1".parse().unwrap();
        let b: Ipv6Addr = "fe80::2".parse().unwrap();
        let mut endpoints: BTreeMap<u32, EndpointInfo> =
            (10..14).map(|i| (i, EndpointInfo::default())).collect();
        let link_locals = BTreeMap::from([(10, a), (11, b), (12, b), (99, a)]);
        with_link_locals(&mut endpoints, &link_locals);
        assert_eq!(endpoints[&10].link_local, a.octets());
        assert!(endpoints[&10].owns_link_local(&a.octets()));
        for i in [11, 12, 13] {
            assert_eq!(endpoints[&i].flags & EP_HAS_LINK_LOCAL, 0, "interface {i}");
        }
    }
}
