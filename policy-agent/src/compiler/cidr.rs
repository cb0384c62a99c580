//! ipBlock rules as nodes of a longest-prefix-match trie, each node refining the one
//! around it.
//!
//! Every `cidr` and `except` prefix becomes a node. What a node N allows is what the rules
//! r with `r.cidr ⊇ N` and no `e ∈ r.except` with `e ⊇ N` allow: for an address, the
//! longest node containing it has exactly the rules that admit the address (the prefixes
//! of a rule that contain the address are nested, and the longest node lies inside all of
//! them). `except` needs no special case.
//!
//! **Only the difference is stored.** Written out in full, each node would repeat the
//! ports of every rule around it: 2,000 rules of 10.0.0.0/8, each excepting a /24 of its
//! own on a port of its own, would give 2,001 nodes of about 2,000 ports each. Instead a
//! node lists the policy-trie keys (protocol and port prefix) where it differs from the
//! nearest enclosing node, its parent: keys its own rules add, and keys whose rules its
//! excepts take away. Those are the keys of the rules that start or end at the node, so
//! each rule costs its keys once where it starts and once per except.
//!
//! **The walk** (`policy_common::decide`) starts at the longest node containing the address
//! and goes outwards until an entry decides. At each node the longest key matching the
//! flow counts if it is longer than `finer_than` (0 at first):
//! - an entry that allows (its own key's rules, or, where those are gone, a shorter key
//!   of the node that still covers it: `allowed_from`, which must be longer than
//!   `finer_than` too) ends the walk;
//! - otherwise the node has no rule left for this key or any shorter key, and on every
//!   longer key it agrees with its parent (a longer key that changed would be a longer
//!   entry here): the parent decides, counting only keys longer than this one
//!   (`finer_than` becomes the entry's `key_len`);
//! - no entry that counts: the node agrees with its parent on every key that counts.
//!
//! So the walk answers "does a rule of the longest node allow the flow" exactly, and names
//! a policy one of whose rules does.
//!
//! **Shorter walks.** A node that says the same as its parent is left out. A node whose
//! full list is no longer than its difference (a hole that allows nothing, a node with no
//! parent) is stored in full and ends the walk there. So is a node whose parent already
//! ends a walk of `MAX_CIDR_WALK` (8) nodes: the datapath's loop is bounded, and the
//! verifier follows every turn of it.
//!
//! **Worst case per rule**, in one ruleset (rulesets are per endpoint and direction, shared
//! by pods whose rules are equal). Let a rule have `k` port keys (a number or a protocol
//! without port: 1; no ports: 1; a range: its port prefixes, at most 30), `n` named ports,
//! and ipBlock peers `b` with `e_b` except prefixes each (a rule without peers counts as
//! 0.0.0.0/0 and ::/0 without excepts). Its ipBlocks cost at most
//! `Σ_b k · (1 + e_b)` POLICY entries and `Σ_b (1 + e_b)` CIDR entries; with named ports,
//! add for each pod address a inside one of its blocks one CIDR entry and up to `n` POLICY
//! entries (the names resolved on that pod). Its selector peers cost `k + n` POLICY entries
//! per pod identity they select, as before. Classes with equal entries share them, so
//! these are upper bounds. They hold where nodes that refine their parents nest at most
//! `MAX_CIDR_WALK` deep; every `MAX_CIDR_WALK`-th level of deeper nesting is stored in full
//! (the keys of every rule in force there), as every node was before.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use policy_common::maps::{MAX_CIDR_WALK, PolicyValue};

use super::ports::{NamedPorts, PortKey, RulePorts};
use crate::{model::Pod, semantics::IpBlock};

/// The policy-trie entries of a CIDR class, by port key.
pub type ClassEntries = BTreeMap<PortKey, PolicyValue>;

/// One node of a ruleset's CIDR trie.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrNode {
    /// The enclosing node this one refines; `None` when `entries` say everything.
    pub parent: Option<IpNet>,
    /// With a parent, the port keys where this node differs from it; without, every key
    /// it allows.
    pub entries: ClassEntries,
}

/// The trie nodes of `rules` (see the module documentation). Nodes that would say the same
/// as their parent (or nothing, without one) are left out, since the lookup falls back to
/// the parent.
pub fn classify<'a>(
    rules: &[(IpBlock, RulePorts)],
    pod_at: impl Fn(IpAddr) -> Option<&'a Pod>,
    pod_ips: impl Iterator<Item = IpAddr>,
) -> BTreeMap<IpNet, CidrNode> {
    classify_as(rules, pod_at, pod_ips, Storage::Smaller)
}

/// How a node that has a parent is stored.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Storage {
    /// Its differences, if they are fewer than its full list and the walk through it is no
    /// longer than `MAX_CIDR_WALK` nodes: the fewest entries, and walks no longer than
    /// they need be.
    Smaller,
    /// Always its differences, up to walks of `MAX_CIDR_WALK` nodes: the longest walks
    /// (for tests of the walk).
    #[cfg(test)]
    Differences,
}

fn classify_as<'a>(
    rules: &[(IpBlock, RulePorts)],
    pod_at: impl Fn(IpAddr) -> Option<&'a Pod>,
    pod_ips: impl Iterator<Item = IpAddr>,
    storage: Storage,
) -> BTreeMap<IpNet, CidrNode> {
    // Per node: the rules whose cidr it is, and those that except it.
    let mut nodes: BTreeMap<IpNet, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for (i, (block, _)) in rules.iter().enumerate() {
        nodes.entry(block.cidr).or_default().0.push(i);
        for hole in &block.except {
            nodes.entry(*hole).or_default().1.push(i);
        }
    }
    // A named port resolves per destination pod, so a pod inside a block with named ports
    // gets a node of its own, where its names resolve.
    let named: Vec<&IpBlock> = rules
        .iter()
        .filter(|(_, ports)| ports.has_named())
        .map(|(block, _)| block)
        .collect();
    if !named.is_empty() {
        for ip in pod_ips {
            if named.iter().any(|b| b.contains(ip)) {
                nodes.entry(IpNet::from(ip)).or_default();
            }
        }
    }

    /// A node whose descendants are still to come.
    struct Open {
        net: IpNet,
        /// Where the journal of `in_force` stood before this node.
        mark: usize,
        /// The node its descendants refine (itself if emitted, else its parent), and how
        /// many nodes a walk from there visits.
        refined: Option<(IpNet, u32)>,
    }
    let mut in_force = InForce::new(rules);
    let mut out = BTreeMap::new();
    let mut stack: Vec<Open> = Vec::new();
    // Sorted by (family, address, prefix length): every ancestor comes before its
    // descendants, so a stack of open prefixes gives each node its parent.
    for (net, (starts, holes)) in nodes {
        while let Some(top) = stack.pop_if(|top| !top.net.contains(&net)) {
            in_force.rollback(top.mark);
        }
        let parent = stack.last().and_then(|p| p.refined);
        let mark = in_force.mark();
        in_force.begin_node();
        for r in starts {
            in_force.admit(r);
        }
        for r in holes {
            in_force.exclude(r);
        }
        let host = net.prefix_len() == net.max_prefix_len();
        if let Some(pod) = host.then(|| pod_at(net.addr())).flatten() {
            in_force.resolve_named(&|name: &str, proto| pod.named_port(name, proto));
        }

        let changed = in_force.changes();
        let refined = if changed.is_empty() {
            parent
        } else {
            let (node, walk) = match parent {
                Some((parent, walk))
                    if walk < MAX_CIDR_WALK
                        && (storage != Storage::Smaller
                            || changed.len() < in_force.key_count()) =>
                {
                    let node = CidrNode {
                        parent: Some(parent),
                        entries: changed,
                    };
                    (node, walk + 1)
                }
                _ => {
                    let node = CidrNode {
                        parent: None,
                        entries: in_force.entries(),
                    };
                    (node, 1)
                }
            };
            out.insert(net, node);
            Some((net, walk))
        };
        stack.push(Open { net, mark, refined });
    }
    out
}

/// The rules in force at the node being classified and the policy-trie keys they allow,
/// changed node by node and undone when the walk through the sorted nodes leaves a node.
struct InForce<'r> {
    rules: &'r [(IpBlock, RulePorts)],
    /// Keys of each rule's ports that need no destination pod, with its policy.
    rule_keys: Vec<Vec<(PortKey, u32)>>,
    /// Rules in force.
    admitted: BTreeSet<usize>,
    /// Rules in force that have named ports.
    admitted_named: BTreeSet<usize>,
    /// The keys they allow.
    keys: KeyCounts,
    /// What was done, to be undone.
    journal: Vec<Step>,
    /// Keys the current node touched, with what they allowed before it.
    touched: BTreeMap<PortKey, Option<u32>>,
}

/// One change to [`InForce`].
enum Step {
    Admitted(usize),
    Excluded(usize),
    Resolved(Vec<(PortKey, u32)>),
}

impl<'r> InForce<'r> {
    fn new(rules: &'r [(IpBlock, RulePorts)]) -> Self {
        Self {
            rules,
            rule_keys: rules
                .iter()
                .map(|(_, ports)| ports.fixed.keys().into_iter().collect())
                .collect(),
            admitted: BTreeSet::new(),
            admitted_named: BTreeSet::new(),
            keys: KeyCounts::default(),
            journal: Vec::new(),
            touched: BTreeMap::new(),
        }
    }

    /// A point [`InForce::rollback`] returns to.
    fn mark(&self) -> usize {
        self.journal.len()
    }

    /// Starts recording what the next node changes.
    fn begin_node(&mut self) {
        self.touched.clear();
    }

    /// Rule `r` is in force from here on (its cidr starts here).
    fn admit(&mut self, r: usize) {
        if self.admitted.insert(r) {
            if self.rules[r].1.has_named() {
                self.admitted_named.insert(r);
            }
            self.change_rule(r, Count::Up);
            self.journal.push(Step::Admitted(r));
        }
    }

    /// Rule `r` is not in force from here on (an except of it starts here).
    fn exclude(&mut self, r: usize) {
        if self.admitted.remove(&r) {
            self.admitted_named.remove(&r);
            self.change_rule(r, Count::Down);
            self.journal.push(Step::Excluded(r));
        }
    }

    /// The node is a pod's address: the named ports of the rules in force resolve on it.
    fn resolve_named(&mut self, lookup: NamedPorts<'_>) {
        let resolved: Vec<(PortKey, u32)> = self
            .admitted_named
            .iter()
            .flat_map(|&r| self.rules[r].1.resolve_named(lookup).keys())
            .collect();
        for &(key, policy_id) in &resolved {
            note(&mut self.touched, &self.keys, key);
            self.keys.count(key, policy_id, Count::Up);
        }
        self.journal.push(Step::Resolved(resolved));
    }

    /// Undoes every change made since `mark`.
    fn rollback(&mut self, mark: usize) {
        while self.journal.len() > mark {
            match self.journal.pop().expect("longer than the mark") {
                Step::Admitted(r) => {
                    self.admitted.remove(&r);
                    self.admitted_named.remove(&r);
                    self.keys.count_all(&self.rule_keys[r], Count::Down);
                }
                Step::Excluded(r) => {
                    self.admitted.insert(r);
                    if self.rules[r].1.has_named() {
                        self.admitted_named.insert(r);
                    }
                    self.keys.count_all(&self.rule_keys[r], Count::Up);
                }
                Step::Resolved(keys) => self.keys.count_all(&keys, Count::Down),
            }
        }
    }

    /// Counts rule `r`'s keys up or down, noting what they allowed before.
    fn change_rule(&mut self, r: usize, count: Count) {
        for &(key, _) in &self.rule_keys[r] {
            note(&mut self.touched, &self.keys, key);
        }
        self.keys.count_all(&self.rule_keys[r], count);
    }

    /// How many keys the rules in force allow.
    fn key_count(&self) -> usize {
        self.keys.0.len()
    }

    /// Every key the rules in force allow.
    fn entries(&self) -> ClassEntries {
        self.keys
            .0
            .keys()
            .filter_map(|&key| {
                let policy_id = self.keys.allowing(key)?;
                Some((key, PolicyValue::allow(policy_id, key.prefix_len)))
            })
            .collect()
    }

    /// The keys the current node changed, with what the walk must read there.
    fn changes(&self) -> ClassEntries {
        self.touched
            .iter()
            .filter_map(|(&key, &before)| {
                let now = self.keys.allowing(key);
                (now != before).then(|| (key, self.entry_for(key, now)))
            })
            .collect()
    }

    /// The entry for a changed `key` that now allows `now`.
    fn entry_for(&self, key: PortKey, now: Option<u32>) -> PolicyValue {
        if let Some(policy_id) = now {
            return PolicyValue::allow(policy_id, key.prefix_len);
        }
        // Its rules are gone here; a shorter key still in force may cover it.
        let covering = key
            .enclosing()
            .find_map(|outer| Some((outer, self.keys.allowing(outer)?)));
        match covering {
            Some((outer, policy_id)) => {
                PolicyValue::covered(policy_id, key.prefix_len, outer.prefix_len)
            }
            None => PolicyValue::gone(key.prefix_len),
        }
    }
}

/// Remembers what `key` allowed before the current node first touched it.
fn note(touched: &mut BTreeMap<PortKey, Option<u32>>, keys: &KeyCounts, key: PortKey) {
    touched.entry(key).or_insert_with(|| keys.allowing(key));
}

/// Which way a count goes.
#[derive(Clone, Copy)]
enum Count {
    Up,
    Down,
}

/// Per key, the policies whose rules in force allow it, and how many rules (or named-port
/// resolutions) of each.
#[derive(Default)]
struct KeyCounts(BTreeMap<PortKey, BTreeMap<u32, usize>>);

impl KeyCounts {
    fn count_all(&mut self, keys: &[(PortKey, u32)], count: Count) {
        for &(key, policy_id) in keys {
            self.count(key, policy_id, count);
        }
    }

    fn count(&mut self, key: PortKey, policy_id: u32, count: Count) {
        let policies = self.0.entry(key).or_default();
        let n = policies.entry(policy_id).or_default();
        match count {
            Count::Up => *n += 1,
            Count::Down => {
                *n -= 1;
                if *n == 0 {
                    policies.remove(&policy_id);
                }
                if policies.is_empty() {
                    self.0.remove(&key);
                }
            }
        }
    }

    /// The policy an entry for `key` names: the lowest id among the rules allowing it.
    fn allowing(&self, key: PortKey) -> Option<u32> {
        self.0
            .get(&key)
            .and_then(|policies| policies.keys().next().copied())
    }
}

#[cfg(test)]
mod tests {
    use policy_common::{decide, maps::IDENTITY_WORLD, net::proto};
    use proptest::{collection::vec, prelude::*, sample::select};

    use super::*;
    use crate::{
        compiler::{
            Compiled, Compiler, PortMatch, RulesetContent, ip_key,
            lookup::{Lookup, PrefixLengths},
        },
        model::Protocol,
        semantics::{PortRef, PortSpec, Ports},
    };

    const RULESET: u32 = 7;

    fn block(cidr: &str, except: &[&str]) -> IpBlock {
        IpBlock {
            cidr: cidr.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    fn ports(specs: &[(Protocol, PortRef)], policy: u32) -> RulePorts {
        let specs = specs
            .iter()
            .map(|(protocol, port)| PortSpec {
                protocol: *protocol,
                port: port.clone(),
            })
            .collect();
        RulePorts::new(&Ports::Only(specs), policy, None)
    }

    fn tcp(port: u16, policy: u32) -> RulePorts {
        ports(&[(Protocol::Tcp, PortRef::Range(port, port))], policy)
    }

    /// The classified nodes, written as the compiler writes a ruleset.
    struct Written(Compiled);

    impl Written {
        fn of(nodes: BTreeMap<IpNet, CidrNode>) -> Self {
            let content = RulesetContent {
                identities: BTreeMap::new(),
                cidrs: nodes,
            };
            let emitted = Compiler::new().emit(RULESET, &content);
            let mut out = Compiled::default();
            out.policy.extend(emitted.policy);
            out.cidr.extend(emitted.cidr);
            Self(out)
        }

        /// What the datapath's walk decides for a flow from `ip`.
        fn decide(&self, ip: IpAddr, ip_proto: u8, port: u16) -> Option<u32> {
            let lengths = PrefixLengths::of(&self.0);
            let maps = Lookup::new(&self.0, &lengths);
            decide::allowing_policy(&maps, RULESET, IDENTITY_WORLD, &ip_key(ip), ip_proto, port)
        }

        fn tcp_ports(&self, ip: &str, candidates: &[u16]) -> Vec<u16> {
            let ip = ip.parse().unwrap();
            candidates
                .iter()
                .copied()
                .filter(|&p| self.decide(ip, proto::TCP, p).is_some())
                .collect()
        }
    }

    #[test]
    fn except_holes_and_nested_rules() {
        let rules = vec![
            (block("10.0.0.0/8", &["10.1.0.0/16"]), tcp(80, 1)),
            (block("10.1.2.0/24", &[]), tcp(443, 2)),
            (block("0.0.0.0/0", &["10.0.0.0/8"]), tcp(22, 3)),
        ];
        let w = Written::of(classify(&rules, |_| None, std::iter::empty()));
        let all = [22, 80, 443];
        assert_eq!(w.tcp_ports("10.2.3.4", &all), [80]);
        assert_eq!(w.tcp_ports("10.1.3.4", &all), Vec::<u16>::new());
        assert_eq!(w.tcp_ports("10.1.2.3", &all), [443]);
        assert_eq!(w.tcp_ports("192.168.1.1", &all), [22]);
        assert_eq!(w.tcp_ports("fd00::1", &all), Vec::<u16>::new());
    }

    #[test]
    fn identical_child_is_not_emitted() {
        let rules = vec![
            (block("10.0.0.0/8", &[]), tcp(80, 1)),
            (block("10.1.0.0/16", &[]), tcp(80, 1)),
        ];
        let nodes = classify(&rules, |_| None, std::iter::empty());
        assert_eq!(nodes.len(), 1);
    }

    #[test]
    fn a_hole_stores_only_its_own_rules_ports() {
        let rules: Vec<_> = (0..50)
            .map(|i| {
                let hole = format!("10.{i}.0.0/16");
                (block("10.0.0.0/8", &[hole.as_str()]), tcp(1000 + i, 1))
            })
            .collect();
        let nodes = classify(&rules, |_| None, std::iter::empty());
        let outer: IpNet = "10.0.0.0/8".parse().unwrap();
        assert_eq!(nodes[&outer].entries.len(), 50);
        for (net, node) in nodes.iter().filter(|(n, _)| **n != outer) {
            assert_eq!(node.parent, Some(outer), "{net}");
            assert_eq!(node.entries.len(), 1, "{net}");
        }
        let w = Written::of(nodes);
        assert_eq!(w.tcp_ports("10.3.0.1", &[1002, 1003, 1004]), [1002, 1004]);
    }

    #[test]
    fn a_coarse_rule_taken_away_leaves_the_finer_ones() {
        // Every TCP port from 10/8, except from 10.1/16; a few single ports from 10/8 by
        // another policy: in the hole only those remain, named by the policy that still
        // allows them, and the hole says just that the coarse key is gone.
        const FINER: [u16; 4] = [80, 81, 82, 443];
        let any_tcp = ports(&[(Protocol::Tcp, PortRef::Any)], 1);
        let singles: Vec<_> = FINER
            .iter()
            .map(|&p| (Protocol::Tcp, PortRef::Range(p, p)))
            .collect();
        let rules = vec![
            (block("10.0.0.0/8", &["10.1.0.0/16"]), any_tcp),
            (block("10.0.0.0/8", &[]), ports(&singles, 2)),
        ];
        let nodes = classify(&rules, |_| None, std::iter::empty());
        let hole = &nodes[&"10.1.0.0/16".parse().unwrap()];
        assert_eq!(hole.parent, Some("10.0.0.0/8".parse().unwrap()));
        assert_eq!(hole.entries.len(), 1, "{hole:?}");
        let w = Written::of(nodes);
        let ip = |s: &str| s.parse().unwrap();
        // The longest key names its policy.
        assert_eq!(w.decide(ip("10.2.0.1"), proto::TCP, 80), Some(2));
        assert_eq!(w.decide(ip("10.2.0.1"), proto::TCP, 90), Some(1));
        assert_eq!(w.decide(ip("10.1.0.1"), proto::TCP, 80), Some(2));
        assert_eq!(w.decide(ip("10.1.0.1"), proto::TCP, 90), None);
        assert_eq!(w.tcp_ports("10.1.0.1", &[79, 80, 83, 443, 444]), [80, 443]);
    }

    #[test]
    fn deep_nesting_keeps_walks_bounded() {
        // 21 rules, each inside the last, on ports of their own: every one admits the
        // innermost address.
        const LEVELS: u8 = 21;
        const FIRST_LEN: u8 = 8;
        let rules: Vec<_> = (0..LEVELS)
            .map(|i| {
                let cidr = format!("10.0.0.0/{}", FIRST_LEN + i);
                (block(&cidr, &[]), tcp(2000 + u16::from(i), 1))
            })
            .collect();
        for storage in [Storage::Smaller, Storage::Differences] {
            let nodes = classify_as(&rules, |_| None, std::iter::empty(), storage);
            let walk = |net: &IpNet| {
                let mut n = 0;
                let mut at = Some(*net);
                while let Some(net) = at {
                    n += 1;
                    at = nodes[&net].parent;
                }
                n
            };
            let longest = nodes.keys().map(walk).max();
            assert_eq!(longest, Some(MAX_CIDR_WALK));
            let w = Written::of(nodes);
            let ports: Vec<u16> = (2000..2000 + u16::from(LEVELS) + 1).collect();
            assert_eq!(w.tcp_ports("10.0.0.1", &ports), ports[..ports.len() - 1]);
            assert_eq!(w.tcp_ports("10.128.0.1", &ports), [2000]);
        }
    }

    /// Prefixes nested six deep (and one beside them), for random rules.
    const PREFIXES: [&str; 8] = [
        "0.0.0.0/0",
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.0/24",
        "10.1.2.128/25",
        "10.1.2.192/26",
        "10.1.2.200/32",
        "10.1.3.0/24",
    ];
    /// An address in each prefix's own part, and two outside them all.
    const ADDRESSES: [&str; 9] = [
        "192.0.2.1",
        "10.9.0.1",
        "10.1.9.1",
        "10.1.2.1",
        "10.1.2.129",
        "10.1.2.193",
        "10.1.2.200",
        "10.1.3.1",
        "fd00::1",
    ];
    const PROBES: [(u8, u16); 8] = [
        (proto::TCP, 80),
        (proto::TCP, 81),
        (proto::TCP, 100),
        (proto::TCP, 443),
        (proto::UDP, 53),
        (proto::UDP, 80),
        (proto::SCTP, 80),
        (proto::ICMP, 0),
    ];

    fn port_ref() -> impl Strategy<Value = (Protocol, PortRef)> {
        let protocol = select(&[Protocol::Tcp, Protocol::Udp, Protocol::Sctp][..]);
        let port = prop_oneof![
            Just(PortRef::Any),
            select(&[53, 80, 81, 443][..]).prop_map(|p| PortRef::Range(p, p)),
            select(&[(80, 81), (64, 127), (0, 65535), (1, 1000)][..])
                .prop_map(|(a, b)| PortRef::Range(a, b)),
        ];
        (protocol, port)
    }

    /// A rule: a prefix, some prefixes inside it as excepts, ports (or none), a policy.
    fn rule() -> impl Strategy<Value = (IpBlock, RulePorts)> {
        let block = (0..PREFIXES.len(), vec(0..PREFIXES.len(), 0..3)).prop_map(|(c, ex)| {
            let cidr: IpNet = PREFIXES[c].parse().unwrap();
            let except = ex
                .into_iter()
                .map(|e| PREFIXES[e].parse::<IpNet>().unwrap())
                .filter(|e| cidr.contains(e) && *e != cidr)
                .collect();
            IpBlock { cidr, except }
        });
        let rule_ports =
            (proptest::option::of(vec(port_ref(), 1..3)), 1..4u32).prop_map(|(specs, policy)| {
                match specs {
                    None => RulePorts::new(&Ports::All, policy, None),
                    Some(specs) => ports(&specs, policy),
                }
            });
        (block, rule_ports)
    }

    fn matches(rule: &RulePorts, ip_proto: u8, port: u16) -> bool {
        rule.fixed.iter().any(|(m, _)| match m {
            PortMatch::AnyProtocol => true,
            PortMatch::AnyPort(p) => p.number() == ip_proto,
            PortMatch::Range(p, first, last) => {
                p.number() == ip_proto && (first..=last).contains(&port)
            }
        })
    }

    proptest! {
        /// The walk over the stored differences decides as the rules say, and names a
        /// policy whose rule admits the flow.
        #[test]
        fn the_walk_decides_as_the_rules_do(
            rules in vec(rule(), 1..8),
            differences in any::<bool>(),
        ) {
            let storage = if differences { Storage::Differences } else { Storage::Smaller };
            let nodes = classify_as(&rules, |_| None, std::iter::empty(), storage);
            let w = Written::of(nodes);
            for address in ADDRESSES {
                let ip: IpAddr = address.parse().unwrap();
                for (ip_proto, port) in PROBES {
                    let admitting: Vec<u32> = rules
                        .iter()
                        .filter(|(b, p)| b.contains(ip) && matches(p, ip_proto, port))
                        .flat_map(|(_, p)| p.fixed.iter().map(|(_, id)| id))
                        .collect();
                    let got = w.decide(ip, ip_proto, port);
                    prop_assert_eq!(
                        got.is_some(),
                        !admitting.is_empty(),
                        "{} proto {} port {}: {:?}", address, ip_proto, port, got
                    );
                    if let Some(policy) = got {
                        prop_assert!(admitting.contains(&policy), "{} names {}", address, policy);
                    }
                }
            }
        }
    }
}
