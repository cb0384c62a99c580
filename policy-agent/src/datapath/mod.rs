//! The kernel side, from user space: load the embedded eBPF object, pin its maps, attach its
//! programs to pods' host-side interfaces, and keep the maps in sync with the compiler.

pub mod bpffs;
pub mod contract;
pub mod link_local;
pub mod maps;
pub mod memory;
pub mod pins;
pub mod sync;
pub mod tables;

use std::{
    collections::BTreeMap,
    net::Ipv6Addr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};
use policy_common::{
    event::FlowEvent,
    maps::{EndpointInfo, StatsKey, StatsValue, names, programs},
};

pub use self::{
    contract::Datapath,
    maps::{MapContents, MapOpError, Maps, SyncReport},
    memory::MemoryDatapath,
    sync::{MapStore, SyncState},
    tables::TableSizes,
};

/// Subdirectory of an instance's pin directory holding its TCX links.
pub const LINKS_DIR: &str = "links";
use crate::{
    capacity::{MapSizes, thousands},
    compiler::Compiled,
    model::ObjectRef,
    netns::NetNs,
};

/// The eBPF object built from policy-ebpf, embedded so the agent is one binary.
pub static EBPF_OBJECT: &[u8] = include_bytes_aligned!(env!("POLICY_EBPF_OBJECT"));

/// Errors of the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// bpffs could not be mounted or the pin directory made.
    #[error("bpffs: {0}")]
    Bpffs(#[from] bpffs::BpffsError),
    /// The object could not be loaded (maps created or reused).
    #[error("loading the eBPF object (are you root, with bpffs at /sys/fs/bpf?): {0}")]
    Load(#[from] aya::EbpfError),
    /// A program failed to load (the verifier log says why) or attach.
    #[error("program {program}: {source}")]
    Program {
        /// The program.
        program: &'static str,
        /// The cause.
        #[source]
        source: ProgramError,
    },
    /// A map operation failed.
    #[error(transparent)]
    Map(#[from] MapOpError),
    /// A map is missing from the object.
    #[error("the eBPF object lacks map {0}")]
    MissingMap(#[source] aya::maps::MapError),
    /// Entering a namespace failed.
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    /// A link could not be taken over.
    #[error("link of program {program}: {source}")]
    Link {
        /// The program.
        program: &'static str,
        /// The cause.
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// A link could not be pinned.
    #[error("pinning {0}: {1}")]
    Pin(PathBuf, #[source] aya::pin::PinError),
    /// An interface is not known in its namespace.
    #[error("interface {0} not found")]
    NoInterface(String),
    /// An interface's name now belongs to another interface than the one looked up.
    #[error("interface {name} is now index {found}, not {expected} (replaced since it was found)")]
    InterfaceMoved {
        /// The name.
        name: String,
        /// The index it had when it was found.
        expected: u32,
        /// Its index now.
        found: u32,
    },
    /// The pinned maps could not be checked or replaced.
    #[error("pinned maps: {0}")]
    Pins(#[from] pins::PinCheckError),
    /// What a sync should write does not fit a map (the compiler keeps within the
    /// settings, so only a datapath loaded with other sizes gets here).
    #[error(
        "{map} is full: {} entries for {}; nothing was written; raise --map-size {}={}",
        thousands(*.needed as u64), thousands(u64::from(*.capacity)), .setting, .needed
    )]
    Full {
        /// The map.
        map: &'static str,
        /// Its setting's name.
        setting: &'static str,
        /// Entries the sync should write.
        needed: usize,
        /// Its capacity.
        capacity: u32,
    },
}

fn program_error(program: &'static str) -> impl FnOnce(ProgramError) -> DatapathError {
    move |source| DatapathError::Program { program, source }
}

/// A loaded datapath instance: programs, pinned maps, attachments (the kernel's
/// [`Datapath`]).
pub struct BpfDatapath {
    ebpf: Ebpf,
    maps: Maps,
    pin_dir: PathBuf,
    /// Pods' interfaces and what the last sync wrote.
    state: SyncState,
    /// The pinned maps found unfit for this agent at load, all of which were replaced.
    replaced: Vec<pins::Mismatch>,
    unpin_on_drop: bool,
}

impl BpfDatapath {
    /// Loads the programs and maps of `instance`, pinning the maps under
    /// `/sys/fs/bpf/policy-agent/<instance>/` and reusing maps already pinned there.
    pub fn load(instance: &str) -> Result<Self, DatapathError> {
        Self::load_with(instance, MapSizes::default())
    }

    /// Like [`BpfDatapath::load`], with the given map sizes (or only each endpoint's table
    /// sizes, with the other maps at their defaults). Maps pinned by an earlier agent are
    /// reused only if all of them have the layout and sizes this object and `sizes` make;
    /// otherwise all are replaced (see [`pins`]) and [`BpfDatapath::replaced_maps`] says why.
    pub fn load_with(instance: &str, sizes: impl Into<MapSizes>) -> Result<Self, DatapathError> {
        Self::load_object(instance, sizes, EBPF_OBJECT)
    }

    /// Like [`BpfDatapath::load_with`], from another build of the eBPF programs: benchmarks
    /// compare builds (an older datapath, one with parts left out) in one run. `object` must
    /// declare the same maps as the embedded object, which pinned maps are checked against.
    pub fn load_object(
        instance: &str,
        sizes: impl Into<MapSizes>,
        object: &[u8],
    ) -> Result<Self, DatapathError> {
        let sizes = sizes.into();
        let pin_dir = bpffs::instance_dir(instance)?;
        let replaced = pins::replace_incompatible(&pin_dir, &sizes)?;
        let pins: Vec<(&str, PathBuf)> = names::ALL
            .iter()
            .map(|name| (*name, pin_dir.join(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        for (name, entries) in sizes.max_entries() {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader.load(object)?;
        for name in [programs::FROM_POD, programs::TO_POD, programs::BASELINE] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(program_error(name))?;
        }
        let maps = Maps::take(&mut ebpf, sizes.tables()).map_err(DatapathError::MissingMap)?;
        Ok(Self {
            ebpf,
            maps,
            pin_dir,
            state: SyncState::default(),
            replaced,
            unpin_on_drop: false,
        })
    }

    /// The pinned maps found at load that did not fit this agent (all maps were then
    /// replaced: tracked connections restarted); empty if they were reused or new.
    pub fn replaced_maps(&self) -> &[pins::Mismatch] {
        &self.replaced
    }

    /// The capacity of `map`, as the kernel reports it.
    pub fn capacity(&self, map: &'static str) -> u32 {
        self.maps.capacity(map)
    }

    /// Pods with an interface that did not fit in ENDPOINTS at the last sync: their
    /// programs, if attached, drop all their traffic (unknown endpoint).
    pub fn left_out(&self) -> &[ObjectRef] {
        self.state.left_out()
    }

    /// Removes the pinned maps when dropped (labs and tests; the agent keeps them).
    pub fn unpin_on_drop(mut self) -> Self {
        self.unpin_on_drop = true;
        self
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches `from_pod` and `to_pod` to the pod's host-side interface `ifname` (in `netns`,
    /// or the current namespace) with TCX, and returns the interface index. Write the pod's
    /// endpoint entry first: until then the programs drop its traffic.
    ///
    /// The links are pinned (`links/<ifindex>-<program>` in the pin directory), so they
    /// outlive the agent; a link already pinned for the interface, by an agent that ran
    /// before, is switched to this instance's program atomically, with no gap.
    pub fn attach(
        &mut self,
        pod: &ObjectRef,
        netns: Option<&NetNs>,
        ifname: &str,
    ) -> Result<u32, DatapathError> {
        self.attach_expecting(pod, netns, ifname, None)
    }

    /// [`Self::attach`], refusing if `ifname` is not interface `expected` (any more): the
    /// name may have gone to a new interface since the pod's entry was written.
    pub fn attach_expecting(
        &mut self,
        pod: &ObjectRef,
        netns: Option<&NetNs>,
        ifname: &str,
        expected: Option<u32>,
    ) -> Result<u32, DatapathError> {
        let links = self.pin_dir.join(LINKS_DIR);
        std::fs::create_dir_all(&links).map_err(|source| bpffs::BpffsError::Dir {
            path: links.clone(),
            source,
        })?;
        let ebpf = &mut self.ebpf;
        let mut attach = move || -> Result<(u32, Option<Ipv6Addr>), DatapathError> {
            let ifindex = nix::net::if_::if_nametoindex(ifname)
                .map_err(|_| DatapathError::NoInterface(ifname.to_owned()))?;
            if let Some(expected) = expected.filter(|&e| e != ifindex) {
                return Err(DatapathError::InterfaceMoved {
                    name: ifname.to_owned(),
                    expected,
                    found: ifindex,
                });
            }
            // Traffic the pod sends arrives on the host side's ingress, and traffic for the
            // pod leaves through its egress.
            for (name, hook) in [
                (programs::FROM_POD, TcAttachType::Ingress),
                (programs::TO_POD, TcAttachType::Egress),
            ] {
                let pin = links.join(format!("{ifindex}-{name}"));
                let prog = classifier(ebpf, name)?;
                let adopted = PinnedLink::from_pin(&pin)
                    .ok()
                    .and_then(|old| SchedClassifierLink::try_from(FdLink::from(old)).ok())
                    .and_then(|link| prog.attach_to_link(link).ok());
                let id = match adopted {
                    Some(id) => id,
                    None => {
                        // Nothing pinned, or a link that died with an older interface.
                        let _ = std::fs::remove_file(&pin);
                        prog.attach(ifname, hook).map_err(program_error(name))?
                    }
                };
                let link: FdLink = prog
                    .take_link(id)
                    .map_err(program_error(name))?
                    .try_into()
                    .map_err(|source| DatapathError::Link {
                        program: name,
                        source,
                    })?;
                if !pin.exists() {
                    link.pin(&pin)
                        .map_err(|e| DatapathError::Pin(pin.clone(), e))?;
                }
            }
            // Unknown, the pod's link-local discovery fails closed: not an attach error.
            let link_local = link_local::of_peer(ifindex).unwrap_or_else(|e| {
                tracing::warn!(interface = ifname, error = %e, "link-local address of the pod not read");
                None
            });
            Ok((ifindex, link_local))
        };
        let (ifindex, link_local) = match netns {
            Some(ns) => ns.run(attach)??,
            None => attach()?,
        };
        self.state.attached(pod, ifindex, link_local);
        Ok(ifindex)
    }

    /// Detaches a pod's programs (its links are unpinned, which releases them) and forgets
    /// its interface; the next sync removes its endpoint entry.
    pub fn detach(&mut self, pod: &ObjectRef) {
        if let Some(ifindex) = self.state.forget(pod) {
            self.unpin_links(|i| i == ifindex);
        }
    }

    /// Unpins the links of interfaces that no pod has any more (left by an agent that ran
    /// before, for pods that went while it was down).
    pub fn prune_links(&mut self) {
        let live: Vec<u32> = self.state.interfaces().values().copied().collect();
        self.unpin_links(|i| !live.contains(&i));
    }

    fn unpin_links(&self, which: impl Fn(u32) -> bool) {
        let dir = self.pin_dir.join(LINKS_DIR);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ifindex = name.split('-').next().and_then(|i| i.parse().ok());
            if ifindex.is_some_and(&which) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The pods whose interfaces are known, with their interface index.
    pub fn interfaces(&self) -> &BTreeMap<ObjectRef, u32> {
        self.state.interfaces()
    }

    /// Records that a pod's interface has `ifindex` without attaching (it already is).
    pub fn adopt_interface(&mut self, pod: &ObjectRef, ifindex: u32) {
        self.state.adopt_interface(pod, ifindex);
    }

    /// Brings the maps to what `compiled` says, for the pods whose interfaces are known
    /// (see [`SyncState::sync`]).
    pub fn sync(&mut self, compiled: &Compiled) -> Result<SyncReport, DatapathError> {
        self.state.sync(compiled, &mut self.maps)
    }

    /// Whether the last sync wrote an endpoint entry for interface `ifindex`.
    pub fn has_endpoint(&self, ifindex: u32) -> bool {
        self.state.has_endpoint(ifindex)
    }

    /// How many entries of the maps differ from what the last sync wrote (changed behind the
    /// agent's back); the next sync then compares with the maps rather than with its own
    /// record, and so corrects them.
    pub fn drift(&mut self) -> Result<usize, DatapathError> {
        self.state.drift(&self.maps)
    }

    /// What the maps hold: after loading, the state a previous agent left.
    pub fn live(&self) -> Result<MapContents, DatapathError> {
        Ok(self.maps.live()?)
    }

    /// Entries in each map that has a fixed capacity, and that capacity.
    pub fn fill(&self) -> Vec<(&'static str, usize, u64)> {
        self.maps.fill(self.state.written())
    }

    /// Flow records the datapath had no room for in the ring buffer (since the maps were
    /// made: they survive restarts).
    pub fn events_lost(&self) -> u64 {
        self.maps.events_lost()
    }

    /// Entries in the conntrack tables of the endpoints last written, counted key by key
    /// (tests: [`Datapath::fill`] counts them from the datapath's counters instead).
    pub fn conntrack_entries_walked(&self) -> usize {
        self.maps
            .tables
            .conntrack_entries_walked(&self.state.endpoint_ids())
    }

    /// Writes one endpoint entry directly, outside any sync (evaluations that run every
    /// endpoint on the same test interface).
    pub fn set_endpoint(&mut self, ifindex: u32, info: &EndpointInfo) -> Result<(), DatapathError> {
        self.maps.tables.ensure(info.endpoint_id)?;
        self.maps
            .endpoints
            .insert(ifindex, info, 0)
            .map_err(|source| MapOpError {
                map: names::ENDPOINTS,
                source,
            })?;
        Ok(())
    }

    /// Forgets every tracked connection and fragment.
    pub fn clear_conntrack(&mut self) -> Result<(), DatapathError> {
        Ok(self.maps.tables.clear()?)
    }

    /// Makes per-endpoint tables ahead of need (at most `budget`, each an RCU grace period
    /// of the kernel's), so that new pods find theirs ready; returns how many it made. Call
    /// it when nothing waits for the agent.
    pub fn prepare_tables(&mut self, budget: usize) -> Result<usize, DatapathError> {
        let in_use = self.state.endpoint_ids();
        Ok(self.maps.tables.prepare(&in_use, budget)?)
    }

    /// Endpoint `id`'s conntrack table (tests and tools that look inside).
    pub fn conntrack(&self, id: u32) -> Result<tables::ConntrackTable, DatapathError> {
        Ok(self.maps.tables.conntrack(id)?)
    }

    /// Runs `program` once on `packet` (an Ethernet frame) with BPF_PROG_TEST_RUN and returns
    /// its TC action. The packet appears on the loopback interface (ifindex 1) of the
    /// calling thread's network namespace, as if forwarded by the node.
    pub fn test_run(&self, program: &'static str, packet: &[u8]) -> Result<i32, DatapathError> {
        Ok(self.test_run_repeat(program, packet, 1)?.0)
    }

    /// Like [`BpfDatapath::test_run`], for a packet the node's own stack sent.
    pub fn test_run_from_node(
        &self,
        program: &'static str,
        packet: &[u8],
    ) -> Result<i32, DatapathError> {
        self.test_run_arriving(program, packet, Arrival::FromNode)
    }

    /// Like [`BpfDatapath::test_run`], for a packet that reached the interface as `arrival` says.
    pub fn test_run_arriving(
        &self,
        program: &'static str,
        packet: &[u8],
        arrival: Arrival,
    ) -> Result<i32, DatapathError> {
        Ok(self.test_run_as(program, packet, 1, arrival)?.0)
    }

    /// Runs `program` `repeat` times on `packet`; returns its TC action and the mean time
    /// per run in nanoseconds, as the kernel measured it.
    pub fn test_run_repeat(
        &self,
        program: &'static str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(i32, u64), DatapathError> {
        self.test_run_as(program, packet, repeat, Arrival::Forwarded)
    }

    fn test_run_as(
        &self,
        program: &'static str,
        packet: &[u8],
        repeat: u32,
        arrival: Arrival,
    ) -> Result<(i32, u64), DatapathError> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(program)
            .ok_or(ProgramError::NotLoaded)
            .and_then(|p| p.try_into())
            .map_err(program_error(program))?;
        let mut out = vec![0u8; packet.len() + 256];
        let ctx = arrival.context();
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: Some(bytemuck::cast_slice(&ctx)),
            repeat,
            ..TestRunOptions::default()
        };
        let result = prog.test_run(opts).map_err(program_error(program))?;
        Ok((
            result.return_value as i32,
            result.duration.as_nanos() as u64,
        ))
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Result<BTreeMap<StatsKey, StatsValue>, DatapathError> {
        Ok(self.maps.stats()?)
    }

    /// The ring buffer's descriptor: readable when flow records wait.
    pub fn events_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.maps.events)
    }

    /// Takes every flow record waiting in the ring buffer.
    pub fn drain_events(&mut self) -> Vec<FlowEvent> {
        let mut events = Vec::new();
        self.drain_events_into(&mut events, usize::MAX);
        events
    }

    /// Appends at most `max` waiting flow records to `out` (a buffer the caller reuses:
    /// nothing is allocated per record); returns how many it took.
    pub fn drain_events_into(&mut self, out: &mut Vec<FlowEvent>, max: usize) -> usize {
        let mut taken = 0;
        while taken < max {
            let Some(item) = self.maps.events.next() else {
                break;
            };
            if item.len() >= size_of::<FlowEvent>() {
                out.push(bytemuck::pod_read_unaligned(
                    &item[..size_of::<FlowEvent>()],
                ));
                taken += 1;
            }
        }
        taken
    }
}

impl Drop for BpfDatapath {
    fn drop(&mut self) {
        // Links and programs go with `ebpf` (TCX links are not pinned); pinned maps stay
        // unless asked, so a restarted agent finds its state.
        if self.unpin_on_drop {
            bpffs::remove_instance_dir(&self.pin_dir);
        }
    }
}

/// How a test packet reached the interface, as the skb records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Received on another interface and forwarded (`skb_iif` is that interface).
    Forwarded,
    /// Made by the node's own stack (`skb_iif` is 0).
    FromNode,
    /// Received on the very interface it is about to leave by (the pod's own packet, sent
    /// back to it through a Service: hairpin).
    Hairpin,
}

/// `__sk_buff` up to and including `ingress_ifindex`, the one field test packets set.
const SKB_CONTEXT_WORDS: usize = 10;
/// Index of `ingress_ifindex` (the kernel's `skb_iif`) in `__sk_buff`.
const SKB_INGRESS_IFINDEX: usize = 9;
/// The interface test packets run on (loopback).
const TEST_IFINDEX: u32 = 1;
/// Where forwarded test packets came in: any interface but "none" and the test interface.
const FORWARDED_FROM_IFINDEX: u32 = 2;

impl Arrival {
    fn context(self) -> [u32; SKB_CONTEXT_WORDS] {
        let mut ctx = [0u32; SKB_CONTEXT_WORDS];
        ctx[SKB_INGRESS_IFINDEX] = match self {
            Self::Forwarded => FORWARDED_FROM_IFINDEX,
            Self::FromNode => 0,
            Self::Hairpin => TEST_IFINDEX,
        };
        ctx
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(ProgramError::NotLoaded)
        .and_then(|p| p.try_into())
        .map_err(program_error(name))
}
