//! What the agent needs of a datapath, whatever enforces: the kernel's programs and maps
//! ([`super::BpfDatapath`]), or plain maps in memory ([`super::MemoryDatapath`]) on which
//! the agent's reconcile step is tested without root.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::BorrowedFd,
    path::Path,
};

use policy_common::{
    event::FlowEvent,
    maps::{StatsKey, StatsValue},
};

use super::{BpfDatapath, DatapathError, MapContents, SyncReport};
use crate::{compiler::Compiled, model::ObjectRef, netns::NetNs};

/// A datapath the agent keeps in sync with the cluster.
pub trait Datapath: Send + 'static {
    /// Brings the maps to what `compiled` says, for the pods whose interfaces are known
    /// (make before break; only what changed since the last sync is written).
    fn sync(&mut self, compiled: &Compiled) -> Result<SyncReport, DatapathError>;

    /// How many entries of the maps differ from what the last sync wrote; the next sync
    /// then compares with the maps, and so corrects them.
    fn drift(&mut self) -> Result<usize, DatapathError>;

    /// What the maps hold (after a restart: the state an earlier agent left).
    fn live(&self) -> Result<MapContents, DatapathError>;

    /// Attaches the programs to the pod's host-side interface `ifname` (in `netns`, or the
    /// current namespace), refusing if the name now belongs to another interface than
    /// `ifindex`, the one the pod's entry was written for. Write its endpoint entry first.
    fn attach(
        &mut self,
        pod: &ObjectRef,
        netns: Option<&NetNs>,
        ifname: &str,
        ifindex: u32,
    ) -> Result<(), DatapathError>;

    /// Whether the last sync wrote an endpoint entry for interface `ifindex`.
    fn has_endpoint(&self, ifindex: u32) -> bool;

    /// Detaches a pod's programs and forgets its interface.
    fn detach(&mut self, pod: &ObjectRef);

    /// Tells the programs which UDP ports the node's own tunnel devices listen on: what a
    /// pod sends the node there is dropped, as to the well-known tunnel ports.
    fn set_tunnel_ports(&mut self, ports: &BTreeSet<u16>) -> Result<(), DatapathError>;

    /// Records that a pod's interface has `ifindex` without attaching (it already is).
    fn adopt_interface(&mut self, pod: &ObjectRef, ifindex: u32);

    /// Drops the attachments of interfaces no pod has any more.
    fn prune_links(&mut self);

    /// Makes at most `budget` per-endpoint tables ahead of need; returns how many.
    fn prepare_tables(&mut self, budget: usize) -> Result<usize, DatapathError>;

    /// Pods whose endpoint entry did not fit at the last sync.
    fn left_out(&self) -> &[ObjectRef];

    /// The capacity of `map`.
    fn capacity(&self, map: &'static str) -> u32;

    /// Entries in each map that has a fixed capacity, and that capacity.
    fn fill(&self) -> Vec<(&'static str, usize, u64)>;

    /// Packet counters summed over CPUs.
    fn stats(&self) -> Result<BTreeMap<StatsKey, StatsValue>, DatapathError>;

    /// A descriptor that is readable when flow records wait (`None`: this datapath has no
    /// flow records).
    fn events_fd(&self) -> Option<BorrowedFd<'_>>;

    /// Moves up to `max` waiting flow records into `out`; returns how many.
    fn drain_events_into(&mut self, out: &mut Vec<FlowEvent>, max: usize) -> usize;

    /// Flow records the kernel could not write (its buffer was full), since the start.
    fn events_lost(&self) -> u64;

    /// Where the maps are pinned (a name only, for a datapath in memory).
    fn pin_dir(&self) -> &Path;
}

impl Datapath for BpfDatapath {
    fn sync(&mut self, compiled: &Compiled) -> Result<SyncReport, DatapathError> {
        BpfDatapath::sync(self, compiled)
    }

    fn drift(&mut self) -> Result<usize, DatapathError> {
        BpfDatapath::drift(self)
    }

    fn live(&self) -> Result<MapContents, DatapathError> {
        BpfDatapath::live(self)
    }

    fn attach(
        &mut self,
        pod: &ObjectRef,
        netns: Option<&NetNs>,
        ifname: &str,
        ifindex: u32,
    ) -> Result<(), DatapathError> {
        BpfDatapath::attach_expecting(self, pod, netns, ifname, Some(ifindex)).map(|_| ())
    }

    fn has_endpoint(&self, ifindex: u32) -> bool {
        BpfDatapath::has_endpoint(self, ifindex)
    }

    fn set_tunnel_ports(&mut self, ports: &BTreeSet<u16>) -> Result<(), DatapathError> {
        Ok(self.maps.set_tunnel_ports(ports)?)
    }

    fn detach(&mut self, pod: &ObjectRef) {
        BpfDatapath::detach(self, pod);
    }

    fn adopt_interface(&mut self, pod: &ObjectRef, ifindex: u32) {
        BpfDatapath::adopt_interface(self, pod, ifindex);
    }

    fn prune_links(&mut self) {
        BpfDatapath::prune_links(self);
    }

    fn prepare_tables(&mut self, budget: usize) -> Result<usize, DatapathError> {
        BpfDatapath::prepare_tables(self, budget)
    }

    fn left_out(&self) -> &[ObjectRef] {
        BpfDatapath::left_out(self)
    }

    fn capacity(&self, map: &'static str) -> u32 {
        BpfDatapath::capacity(self, map)
    }

    fn fill(&self) -> Vec<(&'static str, usize, u64)> {
        BpfDatapath::fill(self)
    }

    fn stats(&self) -> Result<BTreeMap<StatsKey, StatsValue>, DatapathError> {
        BpfDatapath::stats(self)
    }

    fn events_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(BpfDatapath::events_fd(self))
    }

    fn drain_events_into(&mut self, out: &mut Vec<FlowEvent>, max: usize) -> usize {
        BpfDatapath::drain_events_into(self, out, max)
    }

    fn events_lost(&self) -> u64 {
        BpfDatapath::events_lost(self)
    }

    fn pin_dir(&self) -> &Path {
        BpfDatapath::pin_dir(self)
    }
}
