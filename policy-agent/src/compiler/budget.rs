//! Budgets: what each policy costs in the maps, and what gives way when a map cannot hold
//! everything, so that one tenant's input never stops the node from enforcing the others'.
//!
//! - POLICY, CIDR and SERVICE_POLICY hold what policies make. Every entry is charged to one
//!   policy: the one its value names (POLICY and SERVICE_POLICY entries carry the allowing
//!   policy, the oldest when several allow the same; a CIDR prefix is charged to the
//!   policy of its class's POLICY entries), else (an `except` hole, a Service whose
//!   backends differ) the policy owning most of its ruleset's POLICY entries. Policies of
//!   different namespaces never share a ruleset (rulesets are made of the rules of the
//!   policies selecting a pod, and policies select the pods of their own namespace), so a
//!   namespace's total does not depend on how shared entries are charged.
//! - When a map overflows, water-filling decides: the namespace that uses most of that
//!   map loses its largest policy, which is enforced fail-closed (it isolates the pods it
//!   selects and allows nothing: stricter than the policy itself), until the rest fits.
//!   A namespace using less than another can never lose a policy to it, and the outcome
//!   depends on the cluster alone, not on the order in which policies arrived.
//! - IPCACHE holds every pod address of the cluster. The node's own addresses come first;
//!   the pods' are water-filled by namespace (each namespace keeps as many as the
//!   smallest fair share allows). An address left out has no identity: the datapath takes
//!   it for an address outside the cluster, which selectors never match and ipBlocks match
//!   as before (the CIDR trie holds pod addresses whatever the ipcache holds), so it is only
//!   ever denied more.
//! - FRONTENDS: a frontend left out must not be decided as its bare address (a flow to a
//!   node port would be "the node"): its address gets an entry that leads to no Service, so
//!   egress-isolated pods are denied there. Service addresses' own entries come first, the
//!   ports are water-filled by the namespace of their Service or pod.

use std::collections::{BTreeMap, BTreeSet};

use policy_common::maps::{
    CIDR_CLASS_NONE, FRONTEND_NONE, FrontendKey, FrontendValue, IDENTITY_HOST, IpKey, IpcacheValue,
    POLICY_ID_NONE, peer_kind,
};

use super::Compiled;
use crate::{
    capacity::{MapSizes, SizedMap, thousands},
    model::{ObjectRef, Origin},
    semantics::{FieldError, PolicyError, services::Forwarder},
};

/// The maps that hold what policies make, in the order their budgets are checked.
pub const BUDGETED: [SizedMap; 3] = [SizedMap::Policy, SizedMap::Cidr, SizedMap::ServicePolicy];

/// Entries of each budgeted map (indexed like [`BUDGETED`]).
pub type Entries = [u64; BUDGETED.len()];

/// What each policy costs, by policy id (as in [`Compiled::policy_names`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Entries charged to each policy.
    pub by_policy: BTreeMap<u32, Entries>,
    /// Entries of each map.
    pub totals: Entries,
}

/// Charges every entry of the budgeted maps of `compiled` to a policy (see the module's
/// docs).
pub fn usage(compiled: &Compiled) -> Usage {
    let mut usage = Usage::default();
    // The policy owning most of each ruleset's POLICY entries, and each CIDR class's.
    let mut per_ruleset: BTreeMap<u32, BTreeMap<u32, u64>> = BTreeMap::new();
    let mut class_owner: BTreeMap<(u32, u32), u32> = BTreeMap::new();
    // Entries that allow nothing (a CIDR class taking away what the node around it
    // allows) name no policy: they are charged below like the class they refine.
    for (k, v) in compiled
        .policy
        .iter()
        .filter(|(_, v)| v.policy_id != POLICY_ID_NONE)
    {
        *per_ruleset
            .entry(k.data.ruleset)
            .or_default()
            .entry(v.policy_id)
            .or_default() += 1;
        if k.data.peer_kind == peer_kind::CIDR {
            class_owner
                .entry((k.data.ruleset, k.data.peer))
                .or_insert(v.policy_id);
        }
    }
    let mut selecting: BTreeMap<u32, u32> = BTreeMap::new();
    for ((pod, dir), ids) in &compiled.isolating {
        if let (Some(info), Some(&lowest)) = (compiled.endpoints.get(pod), ids.iter().min()) {
            let slot = selecting.entry(info.ruleset(*dir)).or_insert(lowest);
            *slot = (*slot).min(lowest);
        }
    }
    let owner = |ruleset: u32| -> u32 {
        per_ruleset
            .get(&ruleset)
            .and_then(|counts| {
                counts
                    .iter()
                    .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
                    .map(|(id, _)| *id)
            })
            .or_else(|| selecting.get(&ruleset).copied())
            .unwrap_or(0)
    };
    let mut charge = |map: usize, policy: u32| {
        usage.by_policy.entry(policy).or_default()[map] += 1;
        usage.totals[map] += 1;
    };
    for (k, v) in &compiled.policy {
        let policy = if v.policy_id != POLICY_ID_NONE {
            v.policy_id
        } else {
            (k.data.peer_kind == peer_kind::CIDR)
                .then(|| class_owner.get(&(k.data.ruleset, k.data.peer)).copied())
                .flatten()
                .unwrap_or_else(|| owner(k.data.ruleset))
        };
        charge(0, policy);
    }
    for (k, v) in &compiled.cidr {
        let ruleset = k.data.ruleset;
        let policy = (v.class != CIDR_CLASS_NONE)
            .then(|| class_owner.get(&(ruleset, v.class)).copied())
            .flatten()
            .unwrap_or_else(|| owner(ruleset));
        charge(1, policy);
    }
    for (k, v) in &compiled.service_policy {
        let policy = if v.policy_id != 0 {
            v.policy_id
        } else {
            owner(k.ruleset)
        };
        charge(2, policy);
    }
    usage
}

/// Whether the budgeted maps of `compiled` fit `sizes`.
pub fn fits(compiled: &Compiled, sizes: &MapSizes) -> bool {
    [
        compiled.policy.len(),
        compiled.cidr.len(),
        compiled.service_policy.len(),
    ]
    .into_iter()
    .zip(BUDGETED)
    .all(|(n, map)| n <= sizes.get(map) as usize)
}

/// A policy that does not fit, and the numbers that say so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overflow {
    /// The map it does not fit.
    pub map: SizedMap,
    /// Entries of that map charged to it.
    pub needed: u64,
    /// Entries of that map its namespace used, the most of any namespace.
    pub namespace_used: u64,
}

/// The policies that give way so that the rest of `compiled` fits `sizes`: the namespace
/// using most of an overflowing map loses its largest policy there, until the estimate
/// (each policy's charged entries) fits. `rejected` are those already chosen.
pub fn victims(
    compiled: &Compiled,
    sizes: &MapSizes,
    rejected: &BTreeMap<ObjectRef, Overflow>,
) -> Vec<(ObjectRef, Overflow)> {
    // The common case costs three comparisons, not a pass over the maps.
    if fits(compiled, sizes) {
        return Vec::new();
    }
    let usage = usage(compiled);
    let mut totals = usage.totals;
    let mut candidates: BTreeMap<&ObjectRef, Entries> = usage
        .by_policy
        .iter()
        .filter_map(|(id, e)| Some((compiled.policy_names.get(id)?, *e)))
        .filter(|(name, _)| !rejected.contains_key(*name))
        .collect();
    let mut out = Vec::new();
    for (m, map) in BUDGETED.iter().enumerate() {
        let capacity = u64::from(sizes.get(*map));
        while totals[m] > capacity {
            let mut by_namespace: BTreeMap<&str, u64> = BTreeMap::new();
            for (name, e) in &candidates {
                *by_namespace.entry(name.namespace.as_str()).or_default() += e[m];
            }
            // Most entries first; between equals, the first name.
            let Some((namespace, used)) = by_namespace
                .into_iter()
                .filter(|(_, used)| *used > 0)
                .max_by_key(|(ns, used)| (*used, std::cmp::Reverse(*ns)))
            else {
                break;
            };
            let (&name, &entries) = candidates
                .iter()
                .filter(|(name, _)| name.namespace == namespace)
                .max_by_key(|(name, e)| (e[m], std::cmp::Reverse(**name)))
                .expect("the namespace has a policy with entries");
            for (t, e) in totals.iter_mut().zip(entries) {
                *t = t.saturating_sub(e);
            }
            out.push((
                name.clone(),
                Overflow {
                    map: *map,
                    needed: entries[m],
                    namespace_used: used,
                },
            ));
            candidates.remove(name);
        }
    }
    out
}

/// The rejections of `over`, as the same errors validation reports, with the numbers:
/// what the policy needs, what is free with everything else in, what to raise.
pub fn rejections(
    compiled: &Compiled,
    sizes: &MapSizes,
    over: &BTreeMap<ObjectRef, Overflow>,
    origin: impl Fn(&ObjectRef) -> Origin,
) -> Vec<PolicyError> {
    let totals = usage(compiled).totals;
    over.iter()
        .map(|(policy, o)| {
            let m = BUDGETED.iter().position(|b| *b == o.map).unwrap_or(0);
            let capacity = u64::from(sizes.get(o.map));
            let free = capacity.saturating_sub(totals[m]);
            let message = format!(
                "does not fit the node's maps: the policy needs {} {} entries; {} of {} are \
                 free (its namespace used {}, the most of any); raise --map-size {}={} or \
                 split the policy",
                thousands(o.needed),
                o.map.map(),
                thousands(free),
                thousands(capacity),
                thousands(o.namespace_used),
                o.map.setting(),
                totals[m] + o.needed,
            );
            PolicyError {
                policy: policy.clone(),
                origin: origin(policy),
                errors: vec![FieldError {
                    field: "spec".into(),
                    message,
                }],
            }
        })
        .collect()
}

/// Water-filling: how many of each group's items to keep so that at most `room` are kept
/// in all, no group keeps more than another unless that one has kept all it has, and the
/// groups that get one more than the rest are the first by key.
pub fn water_fill<K: Ord + Clone>(counts: &BTreeMap<K, usize>, room: usize) -> BTreeMap<K, usize> {
    let total: usize = counts.values().sum();
    if total <= room {
        return counts.clone();
    }
    // The highest level L with sum(min(c, L)) <= room.
    let kept_at = |level: usize| counts.values().map(|c| (*c).min(level)).sum::<usize>();
    let (mut low, mut high) = (0, counts.values().copied().max().unwrap_or(0));
    while low < high {
        let mid = (low + high).div_ceil(2);
        if kept_at(mid) <= room {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    let mut spare = room - kept_at(low);
    counts
        .iter()
        .map(|(k, c)| {
            let mut keep = (*c).min(low);
            if *c > low && spare > 0 {
                keep += 1;
                spare -= 1;
            }
            (k.clone(), keep)
        })
        .collect()
}

/// Keeps at most `capacity` IPCACHE entries: the node's own addresses, then the pods'
/// water-filled by namespace (`owner`: the pod of each address; within a namespace, by pod
/// name). Returns what an operator should read, if anything was left out.
pub fn fit_ipcache(
    ipcache: &mut BTreeMap<IpKey, IpcacheValue>,
    owner: impl Fn(&IpKey) -> Option<ObjectRef>,
    capacity: u32,
) -> Option<String> {
    let capacity = capacity as usize;
    if ipcache.len() <= capacity {
        return None;
    }
    let mut pods: BTreeMap<String, Vec<(ObjectRef, IpKey)>> = BTreeMap::new();
    let mut host = 0;
    for (k, v) in ipcache.iter() {
        match owner(k) {
            Some(pod) if v.identity != IDENTITY_HOST => pods
                .entry(pod.namespace.clone())
                .or_default()
                .push((pod, *k)),
            _ => host += 1,
        }
    }
    let counts: BTreeMap<String, usize> =
        pods.iter().map(|(ns, a)| (ns.clone(), a.len())).collect();
    let room = capacity.saturating_sub(host);
    let keep = water_fill(&counts, room);
    let pod_addresses: usize = counts.values().sum();
    let mut short = Vec::new();
    for (ns, mut addresses) in pods {
        addresses.sort();
        let kept = keep[&ns];
        if kept < addresses.len() {
            short.push(format!(
                "{ns} ({})",
                thousands((addresses.len() - kept) as u64)
            ));
        }
        for (_, k) in &addresses[kept..] {
            ipcache.remove(k);
        }
    }
    // The node's own addresses beyond the capacity (a capacity below them): the last go.
    while ipcache.len() > capacity {
        let Some((&k, _)) = ipcache.iter().next_back() else {
            break;
        };
        ipcache.remove(&k);
    }
    Some(format!(
        "IPCACHE is full: {} pod addresses and {host} node addresses for {} entries; \
         addresses of {} have no identity (selectors do not match them, ipBlocks still do: \
         they are only denied more); raise --map-size ipcache={}",
        thousands(pod_addresses as u64),
        thousands(capacity as u64),
        short.join(", "),
        pod_addresses + host,
    ))
}

/// Keeps at most `capacity` FRONTENDS entries (see the module's docs); SERVICE_POLICY loses
/// the verdicts of frontends left with no entry. Returns what an operator should read, if
/// anything was left out or nothing could be.
pub fn fit_frontends(compiled: &mut Compiled, capacity: u32) -> Option<String> {
    let capacity = capacity as usize;
    let needed = compiled.frontends.len();
    if needed <= capacity {
        return None;
    }
    let own = |k: &FrontendKey| k.proto == 0 && k.port == 0;
    let covered: BTreeSet<IpKey> = compiled
        .frontends
        .keys()
        .filter(|k| own(k))
        .map(|k| k.addr)
        .collect();
    let uncovered: BTreeSet<IpKey> = compiled
        .frontends
        .keys()
        .filter(|k| !own(k) && !covered.contains(&k.addr))
        .map(|k| k.addr)
        .collect();
    let raise = format!("raise --map-size frontends={needed}");
    let Some(room) = capacity.checked_sub(covered.len() + uncovered.len()) else {
        return Some(format!(
            "FRONTENDS is full: {} entries for {}, and even the {} addresses of frontends \
             do not fit: no sync can be written; {raise}",
            thousands(needed as u64),
            thousands(capacity as u64),
            thousands((covered.len() + uncovered.len()) as u64),
        ));
    };
    let namespace = |v: &FrontendValue| match compiled.frontend_names.get(&v.frontend) {
        Some((Forwarder::Service { service, .. }, _)) => service.namespace.clone(),
        Some((Forwarder::HostPort { pod, .. }, _)) => pod.namespace.clone(),
        None => String::new(),
    };
    let mut ports: BTreeMap<String, Vec<FrontendKey>> = BTreeMap::new();
    for (k, v) in compiled.frontends.iter().filter(|(k, _)| !own(k)) {
        ports.entry(namespace(v)).or_default().push(*k);
    }
    let counts = ports.iter().map(|(ns, p)| (ns.clone(), p.len())).collect();
    let keep = water_fill(&counts, room);
    let mut short = Vec::new();
    for (ns, keys) in ports {
        let kept = keep[&ns];
        if kept < keys.len() {
            short.push(format!("{ns} ({})", thousands((keys.len() - kept) as u64)));
        }
        for k in &keys[kept..] {
            compiled.frontends.remove(k);
            // Never the bare address: there, the frontend leads to no Service.
            compiled
                .frontends
                .entry(FrontendKey::address(k.addr))
                .or_insert(FrontendValue {
                    frontend: FRONTEND_NONE,
                    only_backend: IpKey::default(),
                });
        }
    }
    let live: BTreeSet<u32> = compiled.frontends.values().map(|v| v.frontend).collect();
    compiled
        .service_policy
        .retain(|k, _| live.contains(&k.frontend));
    Some(format!(
        "FRONTENDS is full: {} entries for {}; frontends of {} are left out, and \
         egress-isolated pods are denied at their addresses (node ports: at that node \
         address, every port); {raise}",
        thousands(needed as u64),
        thousands(capacity as u64),
        short.join(", "),
    ))
}

#[cfg(test)]
mod tests {
    use std::{fmt::Write as _, net::IpAddr, path::Path};

    use policy_common::{decide, maps::Direction};

    use super::*;
    use crate::{
        compiler::{
            Compiler, NodeConfig, ip_key,
            lookup::{Lookup, PrefixLengths},
        },
        model::Cluster,
        source::manifests::{Loaded, load_str},
    };

    const NODE: &str = "n1";
    /// Rules of the huge policy, each an ipBlock with an except on its own port.
    const HUGE_RULES: usize = 60;
    const FIRST_HUGE_PORT: u16 = 1000;
    /// Ports of each huge rule besides its own first one.
    const EXTRA_PORTS_PER_RULE: usize = 20;
    const EXTRA_PORTS_FROM: u16 = 20_000;

    fn pod(ns: &str, name: &str, ip: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\n\
             spec: {{nodeName: {NODE}, containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}\n\
             status: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
        )
    }

    /// Namespaces big, small and third, a pod in each, a policy in each, and in big the
    /// huge policy (or, with `huge_fail_closed`, what it is when enforced fail-closed).
    fn cluster(huge_fail_closed: bool) -> Cluster {
        let mut text = String::new();
        for ns in ["big", "small", "third"] {
            let _ = write!(
                text,
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
            );
        }
        text += &pod("big", "a", "10.1.0.1");
        text += &pod("small", "b", "10.1.0.2");
        text += &pod("third", "c", "10.1.0.3");
        let policy = |ns: &str, name: &str, spec: &str| {
            format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
            )
        };
        text += &policy(
            "big",
            "web",
            "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {}}], ports: [{port: 80}]}]}",
        );
        text += &policy(
            "small",
            "web",
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 80}]}]}",
        );
        text += &policy(
            "third",
            "cidr",
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.1.0.0/16}}], ports: [{port: 443}]}]}",
        );
        let huge = if huge_fail_closed {
            "{podSelector: {}, policyTypes: [Ingress], ingress: []}".to_owned()
        } else {
            // Each rule on many ports: entries grow with rules x ports x (1 + excepts).
            let rules: Vec<String> = (0..HUGE_RULES)
                .map(|i| {
                    let ports: Vec<String> = std::iter::once(FIRST_HUGE_PORT + i as u16)
                        .chain((0..EXTRA_PORTS_PER_RULE).map(|j| {
                            EXTRA_PORTS_FROM + (i * EXTRA_PORTS_PER_RULE + j) as u16
                        }))
                        .map(|port| format!("{{port: {port}}}"))
                        .collect();
                    format!(
                        "{{from: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.{}.{}.0/24]}}}}], ports: [{}]}}",
                        i / 256 + 2,
                        i % 256,
                        ports.join(", ")
                    )
                })
                .collect();
            format!("{{podSelector: {{}}, ingress: [{}]}}", rules.join(", "))
        };
        text += &policy("big", "huge", &huge);
        let mut loaded = Loaded::default();
        load_str(&text, Path::new("test.yaml"), &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.cluster
    }

    fn compile(cluster: &Cluster, map_sizes: MapSizes) -> Compiled {
        let node = NodeConfig {
            name: NODE.into(),
            map_sizes,
            ..NodeConfig::default()
        };
        Compiler::new().compile(cluster, &node)
    }

    /// Every ingress decision of every pod, for pod and outside peers on a few ports.
    fn decisions(cluster: &Cluster, compiled: &Compiled) -> Vec<(ObjectRef, String, u16, bool)> {
        let lengths = PrefixLengths::of(compiled);
        let maps = Lookup::new(compiled, &lengths);
        let peers = [
            "10.1.0.1",
            "10.1.0.2",
            "10.1.0.3",
            "10.9.9.9",
            "10.2.0.7",
            "192.168.1.1",
        ];
        let mut out = Vec::new();
        for pod in cluster.pods.keys() {
            let ep = &compiled.endpoints[pod];
            for peer in peers {
                for port in [80, 443, FIRST_HUGE_PORT, FIRST_HUGE_PORT + 7] {
                    let ip: IpAddr = peer.parse().unwrap();
                    let allowed = decide::new_flow(
                        &maps,
                        ep,
                        Direction::Ingress,
                        &ip_key(ip),
                        6,
                        port,
                        false,
                    )
                    .allowed
                    .is_some();
                    out.push((pod.clone(), peer.to_owned(), port, allowed));
                }
            }
        }
        out
    }

    #[test]
    fn a_policy_that_does_not_fit_is_enforced_fail_closed_alone() {
        let cluster = cluster(false);
        let roomy = compile(&cluster, MapSizes::default());
        assert!(roomy.rejected.is_empty(), "{:?}", roomy.rejected);
        let huge_id = *roomy
            .policy_names
            .iter()
            .find(|(_, n)| n.name == "huge")
            .unwrap()
            .0;
        let used = usage(&roomy);
        let huge = used.by_policy[&huge_id];
        assert_eq!(used.totals[0], roomy.policy.len() as u64);
        assert_eq!(used.totals[1], roomy.cidr.len() as u64);
        assert!(huge[0] > 10 * (used.totals[0] - huge[0]), "{used:?}");
        // Everything but half of the huge policy fits.
        let sizes = MapSizes {
            policy: (used.totals[0] - huge[0] / 2) as u32,
            ..MapSizes::default()
        };
        let tight = compile(&cluster, sizes);
        assert_eq!(tight.rejected.len(), 1, "{:#?}", tight.rejected);
        let rejection = tight.rejected[0].to_string();
        assert_eq!(tight.rejected[0].policy.to_string(), "big/huge");
        for words in [
            format!("needs {} POLICY entries", thousands(huge[0])),
            format!("of {} are free", thousands(u64::from(sizes.policy))),
            "raise --map-size policy=".to_owned(),
            "enforced fail-closed".to_owned(),
        ] {
            assert!(rejection.contains(&words), "{words:?} in {rejection}");
        }
        assert!(tight.policy.len() <= sizes.policy as usize);
        // Exactly what the cluster enforces with the huge policy fail-closed.
        let fail_closed = compile(&self::cluster(true), MapSizes::default());
        assert_eq!(
            decisions(&cluster, &tight),
            decisions(&cluster, &fail_closed)
        );
        // And not what the huge policy allows (the comparison can tell them apart).
        let allowed_by_huge = (
            ObjectRef::new("big", "a"),
            "10.9.9.9".to_owned(),
            FIRST_HUGE_PORT,
            true,
        );
        assert!(decisions(&cluster, &roomy).contains(&allowed_by_huge));
        assert!(!decisions(&cluster, &tight).contains(&allowed_by_huge));
    }

    #[test]
    fn with_no_room_every_policy_gives_way_the_largest_namespace_first() {
        let cluster = cluster(false);
        // Room for nothing: every policy with entries goes, largest namespace first, and
        // the compiled maps then fit.
        let sizes = MapSizes {
            policy: 1,
            cidr: 1,
            ..MapSizes::default()
        };
        let compiled = compile(&cluster, sizes);
        let rejected: Vec<String> = compiled
            .rejected
            .iter()
            .map(|r| r.policy.to_string())
            .collect();
        assert_eq!(
            rejected.first().map(String::as_str),
            Some("big/huge"),
            "{rejected:?}"
        );
        assert!(
            compiled.policy.len() <= 1 && compiled.cidr.len() <= 1,
            "{rejected:?}"
        );
    }

    #[test]
    fn addresses_beyond_the_ipcache_lose_their_identity_by_namespace() {
        let cluster = cluster(false);
        let node_addresses = 1;
        let node = NodeConfig {
            name: NODE.into(),
            addresses: vec!["192.168.0.1".parse().unwrap()],
            map_sizes: MapSizes {
                ipcache: 2 + node_addresses,
                ..MapSizes::default()
            },
            ..NodeConfig::default()
        };
        let compiled = Compiler::new().compile(&cluster, &node);
        assert_eq!(compiled.ipcache.len(), 3);
        assert!(
            compiled
                .ipcache
                .values()
                .any(|v| v.identity == IDENTITY_HOST),
            "the node's own address comes first"
        );
        let full = compiled.full.join("\n");
        assert!(
            full.contains("IPCACHE is full: 3 pod addresses and 1 node addresses for 3 entries"),
            "{full}"
        );
        assert!(full.contains("raise --map-size ipcache=4"), "{full}");
    }

    #[test]
    fn water_filling_takes_from_the_largest_first() {
        let counts = BTreeMap::from([("a", 10), ("b", 3), ("c", 100)]);
        assert_eq!(water_fill(&counts, 1000), counts);
        let kept = water_fill(&counts, 30);
        assert_eq!(kept, BTreeMap::from([("a", 10), ("b", 3), ("c", 17)]));
        let kept = water_fill(&counts, 10);
        assert_eq!(kept.values().sum::<usize>(), 10);
        assert_eq!(kept, BTreeMap::from([("a", 4), ("b", 3), ("c", 3)]));
        assert_eq!(water_fill(&counts, 0).values().sum::<usize>(), 0);
    }
}
