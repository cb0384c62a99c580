//! The compiler: cluster model -> the contents every BPF map should have on one node.
//!
//! - identities: pods with the same namespace, labels and named ports share an identity;
//!   the ipcache maps every pod address of the cluster to it (and the node's own
//!   addresses to the host identity);
//! - rulesets: for each local pod and direction that policies isolate, the allowed
//!   (peer, ports) pairs. Pods whose allowed pairs are equal share one ruleset, so a new
//!   replica usually adds no policy entry at all;
//! - selector peers become policy entries keyed by identity; ipBlock peers (and rules that
//!   allow every peer, as 0.0.0.0/0 and ::/0) become CIDR-trie nodes whose values are
//!   CIDR classes, keyed in the policy trie like identities; a class holds only what its
//!   node changes from the node around it (see [`cidr`]), so excepts cost linearly.
//!
//! Ids are stable across compilations (see [`ids`]), so recompiling after a change yields
//! the previous contents plus the change, which the datapath sync turns into few updates.

pub mod budget;
mod cidr;
pub mod ids;
pub mod incremental;
pub mod lookup;
mod ports;
mod rulesets;
pub mod select;
mod services;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use policy_common::maps::{
    CIDR_CLASS_NONE, CIDR_NO_PARENT, CidrKey, CidrValue, Direction, EP_EGRESS_ISOLATED,
    EP_HAS_IPV4, EP_HAS_IPV6, EP_INGRESS_ISOLATED, EndpointInfo, FIRST_POD_IDENTITY, FRONTEND_NONE,
    FrontendKey, FrontendValue, IDENTITY_HOST, IpKey, IpcacheValue, PolicyKey, PolicyValue,
    ServicePolicyKey, ServicePolicyValue, peer_kind,
};

pub use self::{
    cidr::{CidrNode, ClassEntries},
    ports::{PortKey, PortMatch, PortSet},
};
use self::{
    ids::IdAllocator,
    rulesets::{Emitted, KeptRulesets, RulesetKey},
    select::IdentityIndex,
};
use crate::{
    capacity::{MapSizes, SizedMap, thousands},
    model::{AddressConflict, Cluster, Labels, ObjectRef, Pod, Policy, Protocol},
    semantics::{self, ParsedPolicy, PolicyError, services::Forwarder},
};

/// A key of an LPM-trie map: prefix length in bits, and the data it applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LpmKey<K> {
    /// Bits of `data` that must match.
    pub prefix_len: u32,
    /// Key data.
    pub data: K,
}

/// The node being compiled for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// Pods with this `spec.nodeName` are the node's endpoints.
    pub name: String,
    /// The node's own addresses: traffic between them and local pods is always allowed.
    pub addresses: Vec<IpAddr>,
    /// Pods whose sandbox this node made: where running pods claim one address, theirs
    /// is the claim that counts here.
    pub sandboxes: BTreeSet<ObjectRef>,
    /// The sizes of the maps: what is compiled fits them (see [`budget`]).
    pub map_sizes: MapSizes,
}

/// What a pod's identity is made of: everything a policy can select or resolve on it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityKey {
    /// Namespace (podSelector-only peers select within the policy's namespace).
    pub namespace: String,
    /// Labels of the namespace.
    pub namespace_labels: Labels,
    /// Labels of the pod.
    pub pod_labels: Labels,
    /// Named container ports, which egress rules resolve on the destination pod.
    pub named_ports: BTreeSet<(String, Protocol, u16)>,
}

impl IdentityKey {
    fn of(cluster: &Cluster, pod: &Pod) -> Self {
        Self {
            namespace: pod.id.namespace.clone(),
            namespace_labels: cluster
                .namespace_labels(&pod.id.namespace)
                .cloned()
                .unwrap_or_default(),
            pod_labels: pod.labels.clone(),
            named_ports: pod
                .ports
                .iter()
                .filter_map(|p| Some((p.name.clone()?, p.protocol, p.port)))
                .collect(),
        }
    }

    fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|(n, p, _)| n == name && *p == protocol)
            .map(|(_, _, port)| *port)
    }
}

/// The allowed (peer, ports) pairs of one endpoint and direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RulesetContent {
    /// Selector peers, by identity.
    pub identities: BTreeMap<u32, PortSet>,
    /// ipBlock peers, as CIDR-trie nodes.
    pub cidrs: BTreeMap<IpNet, CidrNode>,
}

/// Desired contents of the maps for one node, plus what explains them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Local pods and their endpoint entries (the datapath adds the interface index).
    pub endpoints: BTreeMap<ObjectRef, EndpointInfo>,
    /// IPCACHE contents.
    pub ipcache: BTreeMap<IpKey, IpcacheValue>,
    /// POLICY contents.
    pub policy: BTreeMap<LpmKey<PolicyKey>, PolicyValue>,
    /// CIDR contents.
    pub cidr: BTreeMap<LpmKey<CidrKey>, CidrValue>,
    /// Policy ids as the maps and flow records carry them.
    pub policy_names: BTreeMap<u32, ObjectRef>,
    /// Identity of each pod (absent for host-network pods).
    pub pod_identities: BTreeMap<ObjectRef, u32>,
    /// The policies isolating each local pod, by direction (ids as in `policy_names`).
    pub isolating: BTreeMap<(ObjectRef, Direction), Vec<u32>>,
    /// Policies that failed validation, or do not fit the maps, enforced fail-closed
    /// ([`ParsedPolicy::fail_closed`]).
    pub rejected: Vec<PolicyError>,
    /// Maps that are full and what was left out of them (see [`budget`]), in words that
    /// say which setting to raise.
    pub full: Vec<String>,
    /// Things an operator should know (e.g. pods that cannot be enforced).
    pub warnings: Vec<String>,
    /// Addresses several running pods claim, and which of them keeps each.
    pub conflicts: Vec<AddressConflict>,
    /// FRONTENDS contents.
    pub frontends: BTreeMap<FrontendKey, FrontendValue>,
    /// SERVICE_POLICY contents.
    pub service_policy: BTreeMap<ServicePolicyKey, ServicePolicyValue>,
    /// What each frontend id stands for (for `explain` and flow records).
    pub frontend_names: BTreeMap<u32, (Forwarder, bool)>,
}

/// Compiles clusters for one node, keeping ids stable from one compilation to the next.
#[derive(Debug)]
pub struct Compiler {
    identities: IdAllocator<IdentityKey>,
    rulesets: IdAllocator<RulesetContent>,
    classes: IdAllocator<ClassEntries>,
    endpoints: IdAllocator<ObjectRef>,
    policies: IdAllocator<ObjectRef>,
    frontends: IdAllocator<services::FrontendId>,
    /// Work kept from earlier compilations (see [`Caches`]).
    caches: Caches,
}

/// What one compilation can reuse from the previous ones: a change costs what it touches.
/// None of it changes what is compiled, only how fast.
#[derive(Debug, Default)]
struct Caches {
    /// Each policy as last parsed, with the object it was parsed from and the version of
    /// that parse.
    parsed: BTreeMap<ObjectRef, ParsedVersion>,
    /// The version the next parse gets.
    next_version: u64,
    /// The identities of the last compilation, indexed, with the peers resolved on them.
    index: IdentityIndex,
    /// The rulesets of the last compilation, with what they were worked out from.
    rulesets: KeptRulesets,
}

/// A policy as parsed: the object, the parse, why it was rejected, and the version of
/// the parse (unique: rulesets worked out from an equal version still hold).
type ParsedVersion = (Policy, ParsedPolicy, Option<PolicyError>, u64);

impl Default for Compiler {
    fn default() -> Self {
        Self {
            identities: IdAllocator::new(FIRST_POD_IDENTITY),
            rulesets: IdAllocator::new(1),
            classes: IdAllocator::new(CIDR_CLASS_NONE + 1),
            endpoints: IdAllocator::new(1),
            policies: IdAllocator::new(1),
            frontends: IdAllocator::new(FRONTEND_NONE + 1),
            caches: Caches::default(),
        }
    }
}

impl Compiler {
    /// A compiler with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops the work kept from earlier compilations (not the ids): the next compilation
    /// starts from the cluster alone, and must compile the same.
    pub fn forget_caches(&mut self) {
        self.caches = Caches::default();
    }

    /// Continues from the state an earlier agent left in the maps, so that a restart changes
    /// nothing that does not need to change: pods keep their endpoint ids (their tracked
    /// connections stay valid) and identities (the old rulesets keep matching until the new
    /// ones replace them), and new rulesets get numbers the old ones do not use, so that
    /// writing them never disturbs what is enforced meanwhile.
    pub fn adopt(
        &mut self,
        cluster: &Cluster,
        endpoints: &BTreeMap<ObjectRef, EndpointInfo>,
        ipcache: &BTreeMap<IpKey, IpcacheValue>,
        rulesets_in_use: impl Iterator<Item = u32>,
    ) {
        for (pod, info) in endpoints {
            self.endpoints.reserve(pod, info.endpoint_id);
        }
        for pod in cluster.pods.values().filter(|p| !p.host_network) {
            let key = IdentityKey::of(cluster, pod);
            for ip in &pod.ips {
                if let Some(v) = ipcache.get(&ip_key(*ip))
                    && v.identity >= FIRST_POD_IDENTITY
                {
                    self.identities.reserve(&key, v.identity);
                }
            }
        }
        if let Some(max) = rulesets_in_use.max() {
            self.rulesets.skip_past(max);
        }
    }

    /// Desired map contents for `node`, within `node.map_sizes`: policies that do not fit
    /// give way (enforced fail-closed, reported in [`Compiled::rejected`]), addresses and
    /// frontends that do not fit are left out as [`budget`] says (reported in
    /// [`Compiled::full`]).
    #[tracing::instrument(skip_all, fields(node = %node.name, pods = cluster.pods.len(), policies = cluster.policies.len()))]
    pub fn compile(&mut self, cluster: &Cluster, node: &NodeConfig) -> Compiled {
        let mut over: BTreeMap<ObjectRef, budget::Overflow> = BTreeMap::new();
        let mut out = loop {
            let out = self.compile_within(cluster, node, &over);
            let victims = budget::victims(&out, &node.map_sizes, &over);
            // Each round enforces at least one more policy fail-closed, whose rulesets
            // then hold nothing: the rounds end.
            if victims.is_empty() {
                break out;
            }
            for (policy, overflow) in victims {
                tracing::debug!(%policy, map = overflow.map.map(), needed = overflow.needed, "policy does not fit");
                over.insert(policy, overflow);
            }
        };
        let origin = |p: &ObjectRef| {
            cluster
                .policies
                .get(p)
                .map(|p| p.origin.clone())
                .unwrap_or_default()
        };
        if !over.is_empty() {
            let rejections = budget::rejections(&out, &node.map_sizes, &over, origin);
            out.rejected.extend(rejections);
        }
        if !budget::fits(&out, &node.map_sizes) {
            let totals = budget::usage(&out).totals;
            for (m, map) in budget::BUDGETED.iter().enumerate() {
                let capacity = u64::from(node.map_sizes.get(*map));
                if totals[m] > capacity {
                    out.full.push(format!(
                        "{} is full: {} entries for {} that no policy can give up; raise \
                         --map-size {}={}",
                        map.map(),
                        thousands(totals[m]),
                        thousands(capacity),
                        map.setting(),
                        totals[m]
                    ));
                }
            }
        }

        self.identities.sweep();
        self.rulesets.sweep();
        self.classes.sweep();
        self.endpoints.sweep();
        self.policies.sweep();
        self.frontends.sweep();
        self.caches.rulesets.end_compilation();
        out
    }

    /// The maps now hold what the compilations so far produced (their sync succeeded): the
    /// ids they stopped using may be given to new keys. Until then a freed id is never
    /// reused, so no map entry written for a new key is read by the old key's users.
    pub fn written(&mut self) {
        self.identities.written();
        self.rulesets.written();
        self.classes.written();
        self.endpoints.written();
        self.policies.written();
        self.frontends.written();
    }

    /// One compilation, with the policies of `over` enforced fail-closed.
    fn compile_within(
        &mut self,
        cluster: &Cluster,
        node: &NodeConfig,
        over: &BTreeMap<ObjectRef, budget::Overflow>,
    ) -> Compiled {
        let mut out = Compiled::default();
        // Finished pods hold no address, and a claimed twice stays with one pod. Most of
        // the time there is nothing to settle, and no copy of the cluster to make.
        let settled;
        let cluster = if cluster.is_settled() {
            cluster
        } else {
            let conflicts;
            (settled, conflicts) = cluster.settled(&node.sandboxes);
            out.conflicts = conflicts;
            &settled
        };

        let parsed_cache = &mut self.caches.parsed;
        parsed_cache.retain(|id, _| cluster.policies.contains_key(id));
        let mut policies = Vec::new();
        // The version of each policy's parse, as the rulesets' inputs record it.
        let mut versions: BTreeMap<u32, u64> = BTreeMap::new();
        for policy in cluster.policies.values() {
            let cached = parsed_cache
                .get(&policy.id)
                .filter(|(source, ..)| source == policy);
            if cached.is_none() {
                // An invalid policy still isolates what it selects: never more open than
                // a policy its author got right.
                let (parsed, rejected) = ParsedPolicy::parse_or_fail_closed(policy);
                let version = self.caches.next_version;
                self.caches.next_version += 1;
                parsed_cache.insert(
                    policy.id.clone(),
                    (policy.clone(), parsed, rejected, version),
                );
            }
            let (_, parsed, rejected, version) = &parsed_cache[&policy.id];
            out.rejected.extend(rejected.clone());
            // The fail-closed stand-in of a policy is another version of it.
            let fail_closed = over.contains_key(&policy.id);
            let parsed = if fail_closed {
                ParsedPolicy::fail_closed(policy)
            } else {
                parsed.clone()
            };
            let id = self.policies.id(&parsed.id);
            versions.insert(id, version * 2 + u64::from(fail_closed));
            out.policy_names.insert(id, parsed.id.clone());
            policies.push((id, parsed));
        }
        // Policies by namespace: a pod is selected only by its own namespace's.
        let mut by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, (_, p)) in policies.iter().enumerate() {
            by_namespace
                .entry(p.id.namespace.as_str())
                .or_default()
                .push(i);
        }

        let mut identities: BTreeMap<u32, IdentityKey> = BTreeMap::new();
        let mut pods_by_ip: BTreeMap<IpAddr, &Pod> = BTreeMap::new();
        for pod in cluster.pods.values() {
            // Host-network pods share the node's addresses; their traffic is the node's.
            // Finished pods have no traffic at all.
            if !pod.holds_addresses() {
                continue;
            }
            let key = IdentityKey::of(cluster, pod);
            let id = self.identities.id(&key);
            identities.insert(id, key);
            out.pod_identities.insert(pod.id.clone(), id);
            for &ip in &pod.ips {
                out.ipcache
                    .insert(ip_key(ip), IpcacheValue { identity: id });
                pods_by_ip.insert(ip, pod);
            }
        }
        // The index follows the identities: only those that came or went cost anything.
        let index = &mut self.caches.index;
        let gone: Vec<u32> = index
            .identities()
            .iter()
            .filter(|(id, key)| identities.get(id) != Some(*key))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            index.remove(id);
        }
        for (&id, key) in &identities {
            if index.get(id) != Some(key) {
                index.insert(id, key.clone());
            }
        }
        let owners: BTreeMap<IpKey, ObjectRef> = pods_by_ip
            .iter()
            .map(|(ip, pod)| (ip_key(*ip), pod.id.clone()))
            .collect();
        // A Service's address is never the node, even where the node holds it (IPVS).
        let service_ips = semantics::services::service_addresses(cluster);
        for &ip in node.addresses.iter().filter(|ip| !service_ips.contains(ip)) {
            out.ipcache.insert(
                ip_key(ip),
                IpcacheValue {
                    identity: IDENTITY_HOST,
                },
            );
        }

        let mut emitted = BTreeSet::new();
        let mut shared: std::collections::HashMap<RulesetKey, u32> =
            std::collections::HashMap::new();
        let mut peers_used = std::collections::HashSet::new();
        let no_policies = Vec::new();
        for pod in cluster.pods_on(&node.name).filter(|p| !p.finished) {
            if pod.host_network {
                out.warnings.push(format!(
                    "pod {} uses the host network: NetworkPolicy cannot be enforced on it",
                    pod.id
                ));
                continue;
            }
            if pod.ips.is_empty() {
                out.warnings.push(format!(
                    "pod {} has no IP address yet: all its traffic is dropped until it has one",
                    pod.id
                ));
            }
            let mut info = endpoint_addresses(pod);
            info.endpoint_id = self.endpoints.id(&pod.id);
            let candidates = by_namespace
                .get(pod.id.namespace.as_str())
                .unwrap_or(&no_policies);
            for dir in [Direction::Ingress, Direction::Egress] {
                let selecting: Vec<(u32, &ParsedPolicy)> = candidates
                    .iter()
                    .map(|&i| &policies[i])
                    .filter(|(_, p)| p.rules(dir).is_some() && semantics::applies_to(p, pod))
                    .map(|(id, p)| (*id, p))
                    .collect();
                if selecting.is_empty() {
                    continue;
                }
                out.isolating.insert(
                    (pod.id.clone(), dir),
                    selecting.iter().map(|(id, _)| *id).collect(),
                );
                let named = match dir {
                    Direction::Ingress => pod
                        .ports
                        .iter()
                        .filter_map(|p| Some((p.name.clone()?, p.protocol, p.port)))
                        .collect(),
                    Direction::Egress => Vec::new(),
                };
                let key: RulesetKey = (dir, selecting.iter().map(|(id, _)| *id).collect(), named);
                // Pods selected by the same policies share the work of their ruleset.
                let id = match shared.get(&key) {
                    Some(&id) => {
                        self.rulesets.touch(id);
                        id
                    }
                    None => {
                        let id = self.ruleset_of(
                            &key,
                            &selecting,
                            &versions,
                            pod,
                            &pods_by_ip,
                            &mut peers_used,
                            &mut emitted,
                            &mut out,
                        );
                        shared.insert(key, id);
                        id
                    }
                };
                match dir {
                    Direction::Ingress => {
                        info.flags |= EP_INGRESS_ISOLATED;
                        info.ingress_ruleset = id;
                    }
                    Direction::Egress => {
                        info.flags |= EP_EGRESS_ISOLATED;
                        info.egress_ruleset = id;
                    }
                }
            }
            out.endpoints.insert(pod.id.clone(), info);
        }
        // Resolutions no rule asks for any more would only cost upkeep.
        self.caches
            .index
            .retain_resolved(|peer| peers_used.contains(peer));

        // Before the Service verdicts, which read the ipcache as the datapath will.
        let sizes = &node.map_sizes;
        out.full.extend(budget::fit_ipcache(
            &mut out.ipcache,
            |k| owners.get(k).cloned(),
            sizes.get(SizedMap::Ipcache),
        ));
        services::compile(&mut self.frontends, cluster, node, &mut out);
        let full = budget::fit_frontends(&mut out, sizes.get(SizedMap::Frontends));
        out.full.extend(full);
        out
    }

    /// The id of the ruleset of `key` (for `pod`, selected by `selecting`), its entries
    /// written to `out` unless `emitted` says they are: the one the last compilation
    /// worked out if nothing it came from changed, else worked out now (and kept).
    #[allow(clippy::too_many_arguments)]
    fn ruleset_of(
        &mut self,
        key: &RulesetKey,
        selecting: &[(u32, &ParsedPolicy)],
        versions: &BTreeMap<u32, u64>,
        pod: &Pod,
        pods_by_ip: &BTreeMap<IpAddr, &Pod>,
        peers_used: &mut std::collections::HashSet<select::PeerKey>,
        emitted: &mut BTreeSet<u32>,
        out: &mut Compiled,
    ) -> u32 {
        let policy_versions: Vec<u64> = selecting.iter().map(|(id, _)| versions[id]).collect();
        let caches = &mut self.caches;
        if let Some(reused) =
            caches
                .rulesets
                .reuse(key, &policy_versions, &caches.index, pods_by_ip)
        {
            let id = reused.id;
            self.rulesets.touch(id);
            peers_used.extend(reused.peers.iter().map(|(peer, _)| peer.clone()));
            if emitted.insert(id) {
                out.policy.extend(reused.emitted.policy.iter().copied());
                out.cidr.extend(reused.emitted.cidr.iter().copied());
                for &class in &reused.emitted.classes {
                    self.classes.touch(class);
                }
            }
            return id;
        }
        let (content, inputs) = rulesets::ruleset(
            &mut caches.index,
            pods_by_ip,
            key.0,
            pod,
            selecting,
            policy_versions,
        );
        peers_used.extend(inputs.peers.iter().map(|(peer, _)| peer.clone()));
        let id = self.rulesets.id(&content);
        // Emitted again even when another key's ruleset wrote the same entries: this key
        // keeps them (the class ids exist already, so nothing new is numbered).
        let entries = self.emit(id, &content);
        if emitted.insert(id) {
            out.policy.extend(entries.policy.iter().copied());
            out.cidr.extend(entries.cidr.iter().copied());
        }
        self.caches.rulesets.keep(key.clone(), id, inputs, entries);
        id
    }

    /// The policy and CIDR entries of ruleset `id`.
    fn emit(&mut self, id: u32, content: &RulesetContent) -> Emitted {
        let mut out = Emitted::default();
        for (&identity, ports) in &content.identities {
            out.policy
                .extend(ports.entries(id, peer_kind::IDENTITY, identity));
        }
        let mut classes = BTreeSet::new();
        for (net, node) in &content.cidrs {
            let class = if node.entries.is_empty() {
                CIDR_CLASS_NONE
            } else {
                self.classes.id(&node.entries)
            };
            let (prefix_len, data) = cidr_key(id, net);
            let parent_len = node
                .parent
                .map_or(CIDR_NO_PARENT, |parent| cidr_key(id, &parent).0);
            out.cidr
                .push((LpmKey { prefix_len, data }, CidrValue { class, parent_len }));
            if class != CIDR_CLASS_NONE && classes.insert(class) {
                let entries = node.entries.iter().map(|(&k, &v)| (k, v));
                out.policy
                    .extend(ports::policy_entries(id, peer_kind::CIDR, class, entries));
            }
        }
        out.classes = classes.into_iter().collect();
        out
    }
}

/// The addresses part of a pod's endpoint entry.
fn endpoint_addresses(pod: &Pod) -> EndpointInfo {
    let mut info = EndpointInfo::default();
    for ip in &pod.ips {
        match ip {
            IpAddr::V4(v4) => {
                info.ipv4 = v4.octets();
                info.flags |= EP_HAS_IPV4;
            }
            IpAddr::V6(v6) => {
                info.ipv6 = v6.octets();
                info.flags |= EP_HAS_IPV6;
            }
        }
    }
    info
}

/// The CIDR-trie key of `net` in `ruleset`, with its prefix length.
fn cidr_key(ruleset: u32, net: &IpNet) -> (u32, CidrKey) {
    CidrKey::new(ruleset, ip_key(net.network()), u32::from(net.prefix_len()))
}

/// The map key of an address.
pub fn ip_key(ip: IpAddr) -> IpKey {
    match ip {
        IpAddr::V4(v4) => IpKey::v4(v4.octets()),
        IpAddr::V6(v6) => IpKey::v6(v6.octets()),
    }
}
