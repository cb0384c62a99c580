//! The property test's sample in the lab: random scenarios (as the property test draws
//! them, Services with node ports and pods with host ports included) built as real nodes,
//! every pod also with its own Service as upstream probes, in each of kube-proxy's modes,
//! with the `ptp` and the `bridge` CNI in turn. Every probe, by address, through every
//! Service and through the nodes' ports, must give the reference evaluator's verdict.
//!
//! `POLICY_LAB_SCENARIOS` sets how many scenarios each mode runs (`cargo xtask test --deep`
//! runs more), `POLICY_LAB_SEED` the first seed.

use std::collections::BTreeMap;

use policy_agent::{
    evaluate::{Flow, ServiceFlow, reference::Reference},
    lab::{
        Lab, LabConfig,
        config::{CniKind, ProxyMode, ServiceProbes},
    },
    plan,
    report::{Probe, Reachability},
};
use policy_tests::{block_on, fuzz::draw};

/// Scenarios per proxy mode by default.
const SCENARIOS: u64 = 8;
const DEFAULT_SEED: u64 = 0x1ab_2026;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What identifies a probe: everything but its verdict.
fn key(p: &Probe) -> String {
    format!(
        "{} -> {} {}/{} {:?}{}",
        p.from,
        p.to,
        p.protocol,
        p.port,
        p.family,
        match (&p.service, p.address) {
            (_, None) => String::new(),
            (service, Some(address)) => format!(
                " through {} {} at {address}",
                p.via.map_or("Service", |v| v.as_str()),
                service.as_deref().unwrap_or_default()
            ),
        }
    )
}

/// The reference evaluator's answers to the questions the lab asked, on the lab's cluster
/// (with its per-pod Services and pods placed on nodes).
fn reference_answers(lab: &Lab) -> Reachability {
    let cluster = lab.cluster();
    let hosts: Vec<plan::Host> = lab.hosts().iter().map(|h| h.spec.clone()).collect();
    let targets = plan::service_targets(cluster);
    let reference = Reference::new(cluster);
    let mut answers = plan::answer_with_services(
        &hosts,
        &targets,
        |q| Flow::of(&hosts, q).is_some_and(|f| reference.allows(&f)),
        |q| {
            ServiceFlow::of(&hosts, &targets, q)
                .map_or(Some(false), |f| reference.explain_service(&f).allowed())
        },
    )
    .probes;
    // Through the nodes' ports: where the node masquerades the client, the backend decides
    // the address the node picked.
    let nodes = lab.node_targets();
    let frontends: Vec<plan::ServiceTarget> = nodes.iter().map(|t| t.target.clone()).collect();
    for q in plan::node_questions(&hosts, &nodes) {
        let from = &hosts[q.from];
        let verdict = ServiceFlow::of(&hosts, &frontends, &q).map_or(Some(false), |f| {
            reference
                .explain_service_masqueraded(&f, |b| {
                    lab.masquerade_source(from, &nodes[q.target], b)
                        .expect("the node picks a source address")
                })
                .allowed()
        });
        answers.push(plan::node_probe(&hosts, &nodes, &q, verdict));
    }
    Reachability::new(answers)
}

/// Runs the sample in `mode`; panics with every wrong verdict and the manifests to
/// reproduce it.
fn sample(mode: ProxyMode) {
    let first = env_number("POLICY_LAB_SEED", DEFAULT_SEED);
    let mut failures = String::new();
    // Verdicts through Services seen, denied and allowed: a sample must have both to mean
    // anything.
    let (mut denied, mut allowed, mut through_nodes) = (0, 0, 0);
    for seed in first..first + env_number("POLICY_LAB_SCENARIOS", SCENARIOS) {
        let s = draw(seed);
        // Both CNIs in every mode: routed veths, and ports of a bridge.
        let cni = if seed % 2 == 0 {
            CniKind::Ptp
        } else {
            CniKind::Bridge
        };
        let config = LabConfig {
            externals: s.externals.clone(),
            services: Some(ServiceProbes::PerPod),
            proxy_mode: mode,
            cni,
            ..LabConfig::default()
        };
        let wrong = block_on(async {
            let lab = Lab::start(&s.cluster, &config).await.expect("lab starts");
            let got = lab.probe_all().await.expect("probes run");
            let through: Vec<&Probe> = got.probes.iter().filter(|p| p.address.is_some()).collect();
            through_nodes += through.iter().filter(|p| p.via.is_some()).count();
            denied += through.iter().filter(|p| !p.allowed).count();
            allowed += through.iter().filter(|p| p.allowed).count();
            // A verdict that depends on the backend the proxy picks has no one answer.
            let want: BTreeMap<String, Option<bool>> = reference_answers(&lab)
                .probes
                .iter()
                .map(|p| (key(p), (!p.backend_dependent).then_some(p.allowed)))
                .collect();
            lab.shutdown().await;
            assert_eq!(
                got.probes.len(),
                want.len(),
                "seed {seed}: the lab and the plan ask different questions"
            );
            got.probes
                .iter()
                .filter(|p| match want.get(&key(p)) {
                    Some(Some(allowed)) => *allowed != p.allowed,
                    Some(None) => false,
                    None => true,
                })
                .map(|p| {
                    format!(
                        "  {}: got {}, want {:?}\n",
                        key(p),
                        p.allowed,
                        want.get(&key(p))
                    )
                })
                .collect::<String>()
        });
        if !wrong.is_empty() {
            failures.push_str(&format!(
                "seed {seed} ({mode:?}, {cni:?}):\n{wrong}manifests:\n{}\n",
                s.to_yaml()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "the lab disagrees with the reference:\n{failures}"
    );
    assert!(
        denied > 0 && allowed > 0 && through_nodes > 0,
        "the sample proves little: {allowed} probes through Services allowed, {denied} denied, \
         {through_nodes} through node ports and host ports"
    );
}

#[test]
fn random_scenarios_hold_in_the_lab_with_iptables() {
    sample(ProxyMode::Iptables);
}

#[test]
fn random_scenarios_hold_in_the_lab_with_nftables() {
    sample(ProxyMode::Nftables);
}

#[test]
fn random_scenarios_hold_in_the_lab_with_ipvs() {
    sample(ProxyMode::Ipvs);
}
