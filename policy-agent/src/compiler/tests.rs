//! How big the compiled maps get: ipBlock rules with excepts must cost entries in
//! proportion to what they say, never to the product of rules and except prefixes.

use std::path::Path;

use super::{Compiled, Compiler, NodeConfig};
use crate::source::manifests::{Loaded, load_str};

const NODE: &str = "n1";

/// A policy of `rules` ingress rules, each admitting 10.0.0.0/8 except a /24 of its own,
/// on a TCP port of its own (the audit's 185 KB policy, at 2,000 rules).
fn one_hole_per_rule(rules: usize) -> String {
    let mut yaml = String::from(
        "kind: Pod\n\
         metadata: {name: server, namespace: t}\n\
         spec: {nodeName: n1, containers: [{name: c}]}\n\
         status: {podIPs: [{ip: 192.168.0.1}]}\n\
         ---\n\
         kind: NetworkPolicy\n\
         metadata: {name: holes, namespace: t}\n\
         spec:\n  podSelector: {}\n  ingress:\n",
    );
    for i in 0..rules {
        yaml.push_str(&format!(
            "  - from: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.{}.{}.0/24]}}}}]\n    ports: [{{port: {}}}]\n",
            i / 256,
            i % 256,
            1000 + i
        ));
    }
    yaml
}

fn compile(yaml: &str) -> Compiled {
    let mut loaded = Loaded::default();
    load_str(yaml, Path::new("test.yaml"), &mut loaded);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let compiled = Compiler::new().compile(
        &loaded.cluster,
        &NodeConfig {
            name: NODE.into(),
            ..NodeConfig::default()
        },
    );
    assert!(compiled.rejected.is_empty(), "{:?}", compiled.rejected);
    compiled
}

#[test]
fn excepts_cost_entries_linearly_in_the_rules() {
    // Each rule has one port and one except: at most 1 x (1 + 1) policy entries and two
    // prefixes; a few more for the ruleset as a whole.
    const PORTS: usize = 1;
    const EXCEPTS: usize = 1;
    const SLACK: usize = 4;
    let sizes = |rules: usize| {
        let c = compile(&one_hole_per_rule(rules));
        eprintln!(
            "{rules} rules: {} POLICY entries, {} CIDR entries",
            c.policy.len(),
            c.cidr.len()
        );
        assert!(
            c.policy.len() <= rules * PORTS * (1 + EXCEPTS) + SLACK,
            "{rules} rules: {} policy entries",
            c.policy.len()
        );
        assert!(
            c.cidr.len() <= rules * (1 + EXCEPTS) + SLACK,
            "{rules} rules: {} CIDR entries",
            c.cidr.len()
        );
        c.policy.len()
    };
    let (two, four) = (sizes(2_000), sizes(4_000));
    // Twice the rules, twice the entries (not four times).
    assert!(four <= 2 * two + SLACK, "{two} -> {four}");
}
