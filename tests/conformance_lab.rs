//! The upstream NetworkPolicy e2e suite's cases (see `policy_tests::conformance`) with real
//! packets: each case builds the model in the lab (nine dual-stack pods with TCP, UDP and
//! SCTP servers on ports 80 and 81), applies its steps to the running datapath, and probes
//! every pair, by address and, as upstream probes, through every pod's own Service
//! (`s-<ns>-<pod>`) in each of kube-proxy's modes. A few labs run at once, since probes
//! mostly wait.

use std::fmt::Write as _;

use futures::{StreamExt as _, stream};
use policy_agent::lab::{
    Lab, LabConfig,
    config::{CniKind, ProxyMode, ServiceProbes},
};
use policy_tests::{
    block_on,
    conformance::{Case, cases, conn},
};

/// Labs running at the same time.
const CONCURRENT_LABS: usize = 4;

/// Runs one case in a lab built as `config` says; returns its wrong verdicts.
async fn run(case: &Case, config: &LabConfig) -> String {
    let mut wrong = String::new();
    let mut lab: Option<Lab> = None;
    for (i, step) in case.steps.iter().enumerate() {
        let cluster = step.cluster();
        match &mut lab {
            None => lab = Some(Lab::start(&cluster, config).await.expect("lab starts")),
            Some(lab) => lab.update(&cluster).await.expect("lab updates"),
        }
        let reachability = lab
            .as_ref()
            .expect("started")
            .probe_all()
            .await
            .expect("probes run");
        for p in &reachability.probes {
            let want = conn(&p.from, &p.to, p.protocol, p.port, p.family)
                .is_none_or(|c| (step.expect)(&c));
            if p.allowed != want {
                let through = p
                    .service
                    .as_ref()
                    .map_or_else(String::new, |s| format!(" through {s}"));
                let _ = writeln!(
                    wrong,
                    "{} (step {}): {} -> {}{through} {}/{} {:?}: got {}, want {want}",
                    case.name,
                    i + 1,
                    p.from,
                    p.to,
                    p.protocol,
                    p.port,
                    p.family,
                    p.allowed
                );
            }
        }
    }
    if let Some(lab) = lab {
        lab.shutdown().await;
    }
    wrong
}

/// Runs every case the lab can in labs built as `config` says; panics with the wrong
/// verdicts.
fn run_all(config: &LabConfig) {
    let cases: Vec<Case> = cases().into_iter().filter(|c| c.lab).collect();
    let failures: String = block_on(
        stream::iter(cases.iter().map(|c| run(c, config)))
            .buffer_unordered(CONCURRENT_LABS)
            .collect::<Vec<String>>(),
    )
    .concat();
    assert!(
        failures.is_empty(),
        "conformance failures in the lab ({config:?}):\n{failures}"
    );
}

#[test]
fn every_upstream_case_holds_with_real_packets() {
    run_all(&LabConfig::default());
}

/// Through every pod's own Service, as the upstream suite probes: the verdict through a
/// Service is the verdict to its backend.
fn through_services(proxy_mode: ProxyMode) {
    run_all(&LabConfig {
        services: Some(ServiceProbes::PerPod),
        proxy_mode,
        ..LabConfig::default()
    });
}

#[test]
fn every_upstream_case_holds_through_services_with_iptables() {
    through_services(ProxyMode::Iptables);
}

#[test]
fn every_upstream_case_holds_through_services_with_nftables() {
    through_services(ProxyMode::Nftables);
}

#[test]
fn every_upstream_case_holds_through_services_with_ipvs() {
    through_services(ProxyMode::Ipvs);
}

/// On a bridge CNI (the reference `bridge` plugin, as flannel and kubenet set it up), each
/// pod enforced on its own port of the bridge: pod to pod is bridged from port to port, and
/// a pod reaching itself through its Service comes back through its own port (hairpin).
#[test]
fn every_upstream_case_holds_with_the_bridge_cni() {
    on_the_bridge(ProxyMode::Iptables);
}

fn on_the_bridge(proxy_mode: ProxyMode) {
    run_all(&LabConfig {
        cni: CniKind::Bridge,
        services: Some(ServiceProbes::PerPod),
        proxy_mode,
        ..LabConfig::default()
    });
}

/// The other proxy modes on the bridge (`cargo xtask test --deep`; the random sample of
/// `tests/lab_property.rs` runs every mode with both CNIs by default).
#[test]
#[ignore = "deep: cargo xtask test --deep"]
fn every_upstream_case_holds_with_the_bridge_cni_and_nftables() {
    on_the_bridge(ProxyMode::Nftables);
}

#[test]
#[ignore = "deep: cargo xtask test --deep"]
fn every_upstream_case_holds_with_the_bridge_cni_and_ipvs() {
    on_the_bridge(ProxyMode::Ipvs);
}

/// Across two nodes joined by the VXLAN overlay, through every pod's own Service: the proxy
/// of the client's node picks a backend on the other node, and the connection crosses the
/// overlay after the client's `from_pod` decided it.
#[test]
fn every_upstream_case_holds_across_two_nodes() {
    run_all(&LabConfig {
        nodes: 2,
        services: Some(ServiceProbes::PerPod),
        ..LabConfig::default()
    });
}
