//! The maps, declared once with BTF so `bpftool map dump` prints typed keys and values.
//! Keys, values and capacities come from policy-common; the agent pins every map under
//! `/sys/fs/bpf/policy-agent/<instance>/`.

use aya_ebpf::{
    btf_maps::{Array, HashMap, HashOfMaps, LpmTrie, LruHashMap, PerCpuHashMap, RingBuf},
    macros::btf_map,
};
use policy_common::{
    event::FlowEvent,
    maps::{
        CidrKey, CidrValue, CtEntry, CtKey, EndpointCounters, EndpointInfo, FragKey, FragValue,
        FrontendKey, FrontendValue, IpKey, IpcacheValue, PolicyKey, PolicyValue, ServicePolicyKey,
        ServicePolicyValue, StatsKey, StatsValue, capacity,
    },
};

/// Capacity of the template the kernel checks per-endpoint tables against. The agent
/// creates each endpoint's real tables with their own capacity (the kernel does not compare
/// capacities of hash maps inside maps), so the template stays small.
const TEMPLATE_ENTRIES: usize = 64;

/// One endpoint's tracked connections.
pub type ConntrackTable = LruHashMap<CtKey, CtEntry, TEMPLATE_ENTRIES>;
/// One endpoint's fragmented datagrams in flight.
pub type FragmentTable = LruHashMap<FragKey, FragValue, TEMPLATE_ENTRIES>;

/// Host-side interface index -> the pod behind it.
#[btf_map]
pub static ENDPOINTS: HashMap<u32, EndpointInfo, { capacity::ENDPOINTS as usize }> = HashMap::new();

/// Pod (and local node) address -> identity.
#[btf_map]
pub static IPCACHE: HashMap<IpKey, IpcacheValue, { capacity::IPCACHE as usize }> = HashMap::new();

/// (ruleset, peer, protocol, port prefix) -> policy that allows it.
#[btf_map]
pub static POLICY: LpmTrie<PolicyKey, PolicyValue, { capacity::POLICY as usize }> = LpmTrie::new();

/// (ruleset, ipBlock prefix) -> CIDR class, and the enclosing node it refines.
#[btf_map]
pub static CIDR: LpmTrie<CidrKey, CidrValue, { capacity::CIDR as usize }> = LpmTrie::new();

/// Endpoint id -> its own conntrack table: one pod's flows can only evict its own entries.
#[btf_map]
pub static CONNTRACK: HashOfMaps<u32, ConntrackTable, { capacity::ENDPOINTS as usize }> =
    HashOfMaps::new();

/// Endpoint id -> protocol and ports of its allowed first fragments.
#[btf_map]
pub static FRAGMENTS: HashOfMaps<u32, FragmentTable, { capacity::ENDPOINTS as usize }> =
    HashOfMaps::new();

/// Per-endpoint counters.
#[btf_map]
pub static STATS: PerCpuHashMap<StatsKey, StatsValue, { capacity::STATS as usize }> =
    PerCpuHashMap::new();

/// Endpoint id -> keys created in its tables and flow records lost (see
/// [`EndpointCounters`]).
#[btf_map]
pub static COUNTERS: PerCpuHashMap<u32, EndpointCounters, { capacity::COUNTERS as usize }> =
    PerCpuHashMap::new();

/// Flow records for user space.
#[btf_map]
pub static EVENTS: RingBuf<FlowEvent, { capacity::EVENTS_BYTES as usize }> = RingBuf::new();

/// (address, protocol, port) a client dials -> the Service port behind it.
#[btf_map]
pub static FRONTENDS: HashMap<FrontendKey, FrontendValue, { capacity::FRONTENDS as usize }> =
    HashMap::new();

/// (egress ruleset, frontend) -> whether every backend is allowed, or some.
#[btf_map]
pub static SERVICE_POLICY: HashMap<
    ServicePolicyKey,
    ServicePolicyValue,
    { capacity::SERVICE_POLICY as usize },
> = HashMap::new();

/// UDP ports of the node's own tunnel devices, a bit each: the agent reads them from the
/// node's links (VXLAN and Geneve on any port, not only the well-known ones).
#[btf_map]
pub static TUNNEL_PORTS: Array<u64, { capacity::TUNNEL_PORT_WORDS as usize }> = Array::new();
