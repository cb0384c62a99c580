//! ipBlock rules as nodes of a longest-prefix-match trie.
//!
//! Every `cidr` and `except` prefix becomes a node whose value is what the rules r with
//! `r.cidr ⊇ node` and no `e ∈ r.except` with `e ⊇ node` allow. For an address, the longest
//! node containing it then has exactly the rules that admit the address: the prefixes of a
//! rule that contain the address are nested, and the longest node lies inside all of them.
//! `except` needs no special case in the datapath.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;

use super::ports::{PortSet, RulePorts};
use crate::{model::Pod, semantics::IpBlock};

/// What each trie node allows; a node is left out where it would say the same as its
/// nearest ancestor (or nothing, without one), since the lookup falls back to that.
pub fn classify<'a>(
    rules: &[(IpBlock, RulePorts)],
    pod_at: impl Fn(IpAddr) -> Option<&'a Pod>,
    pod_ips: impl Iterator<Item = IpAddr>,
) -> BTreeMap<IpNet, PortSet> {
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

    struct Open {
        net: IpNet,
        rules: BTreeSet<usize>,
        /// What the nearest emitted ancestor (or this node) allows.
        visible: PortSet,
    }
    let mut out = BTreeMap::new();
    let mut stack: Vec<Open> = Vec::new();
    // Sorted by (family, address, prefix length): every ancestor comes before its
    // descendants, so a stack of open prefixes gives each node its parent.
    for (net, (starts, holes)) in nodes {
        while stack.last().is_some_and(|top| !top.net.contains(&net)) {
            stack.pop();
        }
        let parent = stack.last();
        let mut in_force = parent.map(|p| p.rules.clone()).unwrap_or_default();
        in_force.extend(starts);
        for hole in holes {
            in_force.remove(&hole);
        }

        let host = net.prefix_len() == net.max_prefix_len();
        let pod = if host { pod_at(net.addr()) } else { None };
        let lookup = pod.map(|p| move |name: &str, proto| p.named_port(name, proto));
        let mut allowed = PortSet::default();
        for &r in &in_force {
            let resolved = match &lookup {
                Some(f) => rules[r].1.resolve(Some(f)),
                None => rules[r].1.resolve(None),
            };
            allowed.merge(&resolved);
        }

        let inherited = parent.map(|p| &p.visible);
        let redundant = match inherited {
            Some(visible) => *visible == allowed,
            None => allowed.is_empty(),
        };
        if !redundant {
            out.insert(net, allowed.clone());
        }
        stack.push(Open {
            net,
            rules: in_force,
            visible: allowed,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        compiler::ports::PortMatch,
        model::Protocol,
        semantics::{PortRef, PortSpec, Ports},
    };

    fn block(cidr: &str, except: &[&str]) -> IpBlock {
        IpBlock {
            cidr: cidr.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    fn tcp(port: u16, policy: u32) -> RulePorts {
        RulePorts::new(
            &Ports::Only(vec![PortSpec {
                protocol: Protocol::Tcp,
                port: PortRef::Range(port, port),
            }]),
            policy,
            None,
        )
    }

    /// What the longest matching node allows for `ip`.
    fn lookup(nodes: &BTreeMap<IpNet, PortSet>, ip: &str) -> Vec<u16> {
        let ip: IpAddr = ip.parse().unwrap();
        let best = nodes
            .iter()
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len());
        let mut ports: Vec<u16> = best
            .map(|(_, set)| {
                set.iter()
                    .filter_map(|(m, _)| match m {
                        PortMatch::Range(_, p, _) => Some(p),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        ports.sort();
        ports
    }

    #[test]
    fn except_holes_and_nested_rules() {
        let rules = vec![
            (block("10.0.0.0/8", &["10.1.0.0/16"]), tcp(80, 1)),
            (block("10.1.2.0/24", &[]), tcp(443, 2)),
            (block("0.0.0.0/0", &["10.0.0.0/8"]), tcp(22, 3)),
        ];
        let nodes = classify(&rules, |_| None, std::iter::empty());
        assert_eq!(lookup(&nodes, "10.2.3.4"), [80]);
        assert_eq!(lookup(&nodes, "10.1.3.4"), Vec::<u16>::new());
        assert_eq!(lookup(&nodes, "10.1.2.3"), [443]);
        assert_eq!(lookup(&nodes, "192.168.1.1"), [22]);
        assert_eq!(lookup(&nodes, "fd00::1"), Vec::<u16>::new());
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
}
