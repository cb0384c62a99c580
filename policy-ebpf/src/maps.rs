//! The maps, declared once with BTF so `bpftool map dump` prints typed keys and values.
//! Keys, values and capacities come from policy-common; the agent pins every map under
//! `/sys/fs/bpf/policy-agent/<instance>/`.

use aya_ebpf::{
    btf_maps::{HashMap, LpmTrie, LruHashMap, PerCpuHashMap, RingBuf},
    macros::btf_map,
};
use policy_common::{
    event::FlowEvent,
    maps::{
        CidrKey, CidrValue, CtEntry, CtKey, EndpointInfo, FragKey, FragValue, IpKey, IpcacheValue,
        PolicyKey, PolicyValue, StatsKey, StatsValue, capacity,
    },
};

/// Host-side interface index -> the pod behind it.
#[btf_map]
pub static ENDPOINTS: HashMap<u32, EndpointInfo, { capacity::ENDPOINTS as usize }> = HashMap::new();

/// Pod (and local node) address -> identity.
#[btf_map]
pub static IPCACHE: HashMap<IpKey, IpcacheValue, { capacity::IPCACHE as usize }> = HashMap::new();

/// (ruleset, peer, protocol, port prefix) -> policy that allows it.
#[btf_map]
pub static POLICY: LpmTrie<PolicyKey, PolicyValue, { capacity::POLICY as usize }> = LpmTrie::new();

/// (ruleset, ipBlock prefix) -> CIDR class.
#[btf_map]
pub static CIDR: LpmTrie<CidrKey, CidrValue, { capacity::CIDR as usize }> = LpmTrie::new();

/// Tracked connections, per endpoint.
#[btf_map]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry, { capacity::CONNTRACK as usize }> =
    LruHashMap::new();

/// Ports of allowed first fragments.
#[btf_map]
pub static FRAGMENTS: LruHashMap<FragKey, FragValue, { capacity::FRAGMENTS as usize }> =
    LruHashMap::new();

/// Per-endpoint counters.
#[btf_map]
pub static STATS: PerCpuHashMap<StatsKey, StatsValue, { capacity::STATS as usize }> =
    PerCpuHashMap::new();

/// Flow records for user space.
#[btf_map]
pub static EVENTS: RingBuf<FlowEvent, { capacity::EVENTS_BYTES as usize }> = RingBuf::new();
