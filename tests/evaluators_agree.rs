//! Property test: on random valid scenarios, the reference semantics and the compiled maps
//! (read with the datapath's own decision code) give the same verdict on every question,
//! and so does the kernel (BPF_PROG_TEST_RUN) on a sample.
//!
//! The scenarios have Services, and every pod dials every frontend of a family it has: the
//! two evaluators agree there too, and a Service with one backend is exactly that backend:
//! the verdict through it is the verdict on the direct connection to the backend on the
//! target port. That includes a pod dialling its own Service (hairpin), allowed as it is
//! directly: a pod may always reach itself. And `lint` warns of exactly the clients whose
//! egress allows some backends of a Service port and not others (service-backends-differ).
//!
//! Seeded and reproducible: `POLICY_TEST_SEED=<n>` replays a run, `POLICY_TEST_CASES=<n>`
//! changes how many scenarios it tries (default 10,000). A failure prints the seed and the
//! smallest failing scenario as manifests.

use std::{
    cell::{Cell, RefCell},
    collections::BTreeSet,
    net::IpAddr,
};

use policy_agent::{
    compiler::Compiler,
    evaluate::{
        Flow, ServiceFlow,
        compiled::{self, CompiledEvaluator},
        reference::{Reference, ServiceOutcome},
    },
    model::{Cluster, ObjectRef, Protocol},
    plan::{self, Host, ServiceTarget},
    semantics::{
        ParsedPolicy, lint,
        services::{self, Backend},
    },
};
use policy_tests::{kernel::KernelEvaluator, scenarios::scenario_with_services};
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

const DEFAULT_SEED: u64 = 0x5eed_2026;
const DEFAULT_CASES: u32 = 10_000;
/// Every n-th scenario also goes through the kernel.
const KERNEL_SAMPLE_EVERY: u32 = 50;
/// Pods compiled by the partial evaluator of each scenario.
const PARTIAL_PODS: usize = 2;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn reference_compiled_and_kernel_agree_on_random_scenarios() {
    let seed = env_number("POLICY_TEST_SEED", DEFAULT_SEED);
    let cases = env_number("POLICY_TEST_CASES", u64::from(DEFAULT_CASES)) as u32;
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    });
    // One compiler for all scenarios: its ids carry over, as in a running agent. The
    // runner takes a `Fn`, hence the cells.
    let compiler = RefCell::new(Compiler::new());
    let kernel = RefCell::new(KernelEvaluator::new());
    let count = Cell::new(0u32);
    let questions = Cell::new(0usize);
    let service_questions = Cell::new(0usize);

    let result = runner.run(&scenario_with_services(), |s| {
        count.set(count.get() + 1);
        let hosts = plan::hosts(
            &s.cluster,
            &s.externals,
            &[(policy_agent::model::Protocol::Tcp, 22)],
        );
        let reference = Reference::new(&s.cluster);
        let compiled = CompiledEvaluator::with_compiler(&mut compiler.borrow_mut(), &s.cluster);
        let in_kernel = count.get().is_multiple_of(KERNEL_SAMPLE_EVERY);
        let mut kernel = kernel.borrow_mut();
        if in_kernel {
            kernel.load(&s.cluster);
        }
        for q in plan::questions(&hosts) {
            let flow = Flow::of(&hosts, &q).expect("planned with a common family");
            questions.set(questions.get() + 1);
            let want = reference.allows(&flow);
            let describe = || {
                format!(
                    "{} -> {} {}/{} {:?}: reference says {}",
                    flow.from.label,
                    flow.to.label,
                    flow.protocol,
                    flow.port,
                    q.family,
                    if want { "allowed" } else { "denied" }
                )
            };
            if compiled.allows(&flow) != want {
                return Err(TestCaseError::fail(format!(
                    "compiled maps disagree: {}",
                    describe()
                )));
            }
            if in_kernel && kernel.allows(&flow) != want {
                return Err(TestCaseError::fail(format!(
                    "kernel disagrees: {}",
                    describe()
                )));
            }
        }
        check_partial(&s.cluster, &hosts, &reference).map_err(TestCaseError::fail)?;
        let asked = check_services(&s.cluster, &hosts, &reference, &compiled)
            .map_err(TestCaseError::fail)?;
        service_questions.set(service_questions.get() + asked);
        Ok(())
    });

    match result {
        Ok(()) => eprintln!(
            "{cases} scenarios, {} questions, {} through Services, seed {seed}: all agree",
            questions.get(),
            service_questions.get()
        ),
        Err(TestError::Fail(why, s)) => panic!(
            "evaluators disagree (seed {seed}; rerun with POLICY_TEST_SEED={seed}): {why}\n\
             smallest failing scenario:\n{}",
            s.to_yaml()
        ),
        Err(e) => panic!("property run aborted (seed {seed}): {e}"),
    }
}

/// A compile of only two pods (as `explain` compiles the ends of its flow) answers every
/// question between them, and between them and hosts outside, as the reference does.
fn check_partial(
    cluster: &Cluster,
    hosts: &[Host],
    reference: &Reference<'_>,
) -> Result<(), String> {
    let chosen: BTreeSet<usize> = (0..hosts.len())
        .filter(|&i| hosts[i].pod.is_some())
        .take(PARTIAL_PODS)
        .collect();
    let local: BTreeSet<ObjectRef> = chosen
        .iter()
        .filter_map(|&i| hosts[i].pod.clone())
        .collect();
    let sampled: Vec<_> = plan::questions(hosts)
        .into_iter()
        .filter(|q| {
            [q.from, q.to]
                .iter()
                .all(|&i| hosts[i].pod.is_none() || chosen.contains(&i))
        })
        .collect();
    let partial = CompiledEvaluator::for_pods(cluster, &local);
    for q in &sampled {
        let flow = Flow::of(hosts, q).expect("planned with a common family");
        let want = reference.allows(&flow);
        if partial.allows(&flow) != want {
            return Err(format!(
                "a compile of only {} pods disagrees: {} -> {} {}/{} {:?}: reference says {}",
                local.len(),
                flow.from.label,
                flow.to.label,
                flow.protocol,
                flow.port,
                q.family,
                if want { "allowed" } else { "denied" }
            ));
        }
    }
    Ok(())
}

/// The connection from `flow`'s client straight to backend `b` (as the host `to`) on its
/// target port.
fn direct<'a>(flow: &ServiceFlow<'a>, b: &Backend, to: &'a Host) -> Flow<'a> {
    Flow {
        from: flow.from,
        to,
        src: flow.src,
        dst: b.address,
        protocol: flow.target.protocol,
        port: b.port,
    }
}

/// Checks every pod's connections through every Service frontend of `cluster`
/// ([`check_service`]), and that `lint` warns of the clients whose connections the
/// reference finds `service-backends-differ`. Returns how many connections it checked.
fn check_services(
    cluster: &Cluster,
    hosts: &[Host],
    reference: &Reference<'_>,
    compiled: &CompiledEvaluator,
) -> Result<usize, String> {
    let mut targets: Vec<ServiceTarget> = plan::frontend_targets(cluster)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    // The node's node ports, which the node's pods may dial too (the proxy takes its own
    // pods to every backend, whatever `externalTrafficPolicy` says).
    targets.extend(node_port_targets(cluster));
    let questions = plan::service_questions(hosts, &targets);
    let mut differ = BTreeSet::new();
    for q in &questions {
        let flow = ServiceFlow::of(hosts, &targets, q).expect("planned with the family");
        let outcome = check_service(reference, compiled, &flow)?;
        if let (ServiceOutcome::BackendsDiffer { .. }, Some(client)) = (outcome, &flow.from.pod) {
            let t = flow.target;
            let v6 = t.address.is_ipv6();
            let port = service_port(cluster, t);
            differ.insert((t.service.clone(), t.protocol, port, v6, client.clone()));
        }
    }
    let warned = lint_backends_differ(cluster, reference.policies());
    if warned != differ {
        return Err(format!(
            "lint warns of service-backends-differ for {warned:?}, the reference finds \
             {differ:?}"
        ));
    }
    Ok(questions.len())
}

/// Every node port of `cluster` on every address of the compiled evaluator's node, with
/// every backend of the address's family.
fn node_port_targets(cluster: &Cluster) -> Vec<ServiceTarget> {
    let mut out = Vec::new();
    for service in cluster.services.values() {
        for port in &service.ports {
            let Some(node_port) = port.node_port else {
                continue;
            };
            let backends = services::backends(cluster, service, port);
            for address in compiled::NODE_ADDRESSES {
                let address: IpAddr = address.parse().expect("a valid address");
                out.push(ServiceTarget {
                    label: service.id.to_string(),
                    service: service.id.clone(),
                    address,
                    protocol: port.protocol,
                    port: node_port,
                    backends: backends
                        .iter()
                        .filter(|b| b.address.is_ipv6() == address.is_ipv6())
                        .cloned()
                        .collect(),
                });
            }
        }
    }
    out
}

/// The Service port a target dials: its own port, or the one whose node port it is.
fn service_port(cluster: &Cluster, t: &ServiceTarget) -> u16 {
    let service = &cluster.services[&t.service];
    let is_node_port = compiled::NODE_ADDRESSES
        .iter()
        .any(|a| a.parse::<IpAddr>().ok() == Some(t.address));
    service
        .ports
        .iter()
        .find(|p| is_node_port && p.protocol == t.protocol && p.node_port == Some(t.port))
        .map_or(t.port, |p| p.port)
}

/// A client dialling a Service port (protocol, port) of a family (IPv6 or not).
type ServiceClient = (ObjectRef, Protocol, u16, bool, ObjectRef);

/// The clients `lint` finds whose egress allows some backends and not others.
fn lint_backends_differ(cluster: &Cluster, policies: &[ParsedPolicy]) -> BTreeSet<ServiceClient> {
    let mut out = BTreeSet::new();
    for d in lint::backends_differ(cluster, policies) {
        let port = &d.service.ports[d.port];
        for client in &d.clients {
            out.insert((
                d.service.id.clone(),
                port.protocol,
                port.port,
                d.v6,
                client.id.clone(),
            ));
        }
    }
    out
}

/// Checks one connection through a Service: the compiled maps reach the reference's
/// verdict (also on the direct connection to each backend, whose target port the client
/// may not be asked about otherwise), the outcome the reference explains has that verdict,
/// and with one backend it is the verdict on the direct connection to it. Returns the
/// outcome.
fn check_service(
    reference: &Reference<'_>,
    compiled: &CompiledEvaluator,
    flow: &ServiceFlow<'_>,
) -> Result<ServiceOutcome, String> {
    let t = flow.target;
    let explanation = reference.explain_service(flow);
    let want = explanation.allowed();
    let outcome = explanation.outcome();
    let describe = || {
        format!(
            "{} -> {} ({} {}/{}, backends {:?}): reference says {want:?} ({outcome:?})",
            flow.from.label, t.label, t.address, t.protocol, t.port, t.backends
        )
    };
    if compiled.allows_service(flow) != want {
        return Err(format!("compiled maps disagree: {}", describe()));
    }
    if outcome.allowed() != want {
        return Err(format!(
            "the outcome contradicts the verdict: {}",
            describe()
        ));
    }
    for b in &t.backends {
        let host = reference.backend_host(b);
        let to_backend = direct(flow, b, &host);
        if compiled.allows(&to_backend) != reference.allows(&to_backend) {
            return Err(format!(
                "compiled maps disagree on the backend {} on port {}: {}",
                host.label,
                b.port,
                describe()
            ));
        }
    }
    let [only] = t.backends.as_slice() else {
        return Ok(outcome);
    };
    let host = reference.backend_host(only);
    let directly = reference.allows(&direct(flow, only, &host));
    if want != Some(directly) {
        return Err(format!(
            "one backend, but directly it is {}: {}",
            if directly { "allowed" } else { "denied" },
            describe()
        ));
    }
    // The rule for a pod dialling its own Service (the backend has its address, whether
    // the EndpointSlice names it or not): allowed, as it is directly.
    let hairpin = host.pod.is_some() && host.pod == flow.from.pod;
    if hairpin != (outcome == ServiceOutcome::Hairpin) || (hairpin && want != Some(true)) {
        return Err(format!("hairpin misjudged: {}", describe()));
    }
    Ok(outcome)
}

/// ipBlocks nested six deep in each family, each excepting the next, with ports that
/// overlap from level to level (a protocol's every port above single ports and ranges,
/// rules without ports, named ports), in two policies; and ports that every level shares
/// (many port prefixes), so that the inner levels are stored as differences from the
/// outer ones and a decision walks through them.
const DEEP_NESTING: &str = r#"
kind: Namespace
metadata: {name: t}
---
kind: Pod
metadata: {name: server, namespace: t, labels: {app: server}}
spec:
  containers:
  - name: c
    ports:
    - {containerPort: 80, name: http}
    - {containerPort: 81}
    - {containerPort: 443}
    - {containerPort: 1003}
    - {containerPort: 8080, name: web}
    - {containerPort: 53, protocol: UDP}
    - {containerPort: 9000, protocol: SCTP}
status: {podIPs: [{ip: 10.1.2.195}, {ip: "fd00:1:2::1:c9"}]}
---
kind: Pod
metadata: {name: client, namespace: t, labels: {app: client}}
spec: {containers: [{name: c, ports: [{containerPort: 8080, name: http}]}]}
status: {podIPs: [{ip: 10.1.2.130}, {ip: "fd00:1:2:0:8::1"}]}
---
kind: Pod
metadata: {name: peer, namespace: t, labels: {app: peer}}
spec: {containers: [{name: c, ports: [{containerPort: 8080, name: web}, {containerPort: 80}]}]}
status: {podIPs: [{ip: 10.1.2.10}, {ip: "fd00:1:2:9::a"}]}
---
kind: Pod
metadata: {name: far, namespace: t, labels: {app: far}}
spec: {containers: [{name: c, ports: [{containerPort: 80, name: http}, {containerPort: 8080}]}]}
status: {podIPs: [{ip: 10.1.9.5}, {ip: "fd00:1:9::5"}]}
---
kind: NetworkPolicy
metadata: {name: deep, namespace: t}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}, {ipBlock: {cidr: "::/0", except: ["fd00::/16"]}}]
    ports: [{port: 443}]
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}, {ipBlock: {cidr: "fd00::/16", except: ["fd00:1::/32"]}}]
    ports: [{protocol: TCP}]
  - from: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.2.0/24]}}, {ipBlock: {cidr: "fd00:1::/32", except: ["fd00:1:2::/48"]}}]
    ports: [{port: 80}, {port: 53, protocol: UDP}]
  - from: [{ipBlock: {cidr: 10.1.2.0/24, except: [10.1.2.128/25]}}, {ipBlock: {cidr: "fd00:1:2::/48", except: ["fd00:1:2::/64"]}}]
    ports: [{port: 80, endPort: 8080}]
  - from: [{ipBlock: {cidr: 10.1.2.128/25, except: [10.1.2.192/26]}}, {ipBlock: {cidr: "fd00:1:2::/64", except: ["fd00:1:2::/96"]}}]
  - from: [{ipBlock: {cidr: 10.1.2.192/26, except: [10.1.2.200/29]}}, {ipBlock: {cidr: "fd00:1:2::/96", except: ["fd00:1:2::/120"]}}]
    ports: [{port: 9000, protocol: SCTP}, {port: http}]
---
kind: NetworkPolicy
metadata: {name: overlap, namespace: t}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 0.0.0.0/0}}, {ipBlock: {cidr: "::/0"}}]
    ports: [{port: 1000}, {port: 1001}, {port: 1002}, {port: 1003}, {port: 10001, endPort: 19999}, {port: 20001, endPort: 29999}]
  - from: [{ipBlock: {cidr: 10.0.0.0/8}}, {ipBlock: {cidr: "fd00::/16"}}]
    ports: [{port: 81}]
  - from: [{ipBlock: {cidr: 10.1.2.0/24, except: [10.1.2.192/26]}}, {ipBlock: {cidr: "fd00:1:2::/48", except: ["fd00:1:2::/96"]}}]
    ports: [{protocol: TCP}, {protocol: UDP, port: 53}]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}, {ipBlock: {cidr: "::/0", except: ["fd00::/16"]}}]
    ports: [{port: 22}, {port: 1000}, {port: 1001}, {port: 1002}, {port: 1003}, {port: 1004}, {port: 1005}]
  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.2.0/24]}}, {ipBlock: {cidr: "fd00::/16", except: ["fd00:1:2::/48"]}}]
    ports: [{port: http}, {port: 1000}, {port: 1001}, {port: 1002}, {port: 1003}, {port: 1004}, {port: 1005}]
  - to: [{ipBlock: {cidr: 10.1.2.0/24, except: [10.1.2.192/26]}}, {ipBlock: {cidr: "fd00:1:2::/48", except: ["fd00:1:2::/96"]}}]
    ports: [{port: web}, {port: 22}]
  - to: [{ipBlock: {cidr: 10.1.2.192/26, except: [10.1.2.200/29]}}, {ipBlock: {cidr: "fd00:1:2::/96", except: ["fd00:1:2::/120"]}}]
    ports: [{protocol: UDP}, {protocol: SCTP}, {port: 443}]
"#;

/// An address at each level of [`DEEP_NESTING`] (in a prefix, not in the next), per family.
const DEEP_NESTING_HOSTS: [&str; 14] = [
    "192.0.2.1",
    "10.9.0.1",
    "10.1.9.1",
    "10.1.2.1",
    "10.1.2.129",
    "10.1.2.193",
    "10.1.2.202",
    "2001:db8::1",
    "fd00:9::1",
    "fd00:1:9::1",
    "fd00:1:2:9::1",
    "fd00:1:2:0:9::1",
    "fd00:1:2::9:1",
    "fd00:1:2::5",
];

/// Ports the external hosts of [`DEEP_NESTING`] serve.
const DEEP_NESTING_PORTS: [(Protocol, u16); 9] = [
    (Protocol::Tcp, 22),
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Tcp, 443),
    (Protocol::Tcp, 1003),
    (Protocol::Tcp, 8080),
    (Protocol::Udp, 53),
    (Protocol::Udp, 80),
    (Protocol::Sctp, 9000),
];

/// How many CIDR nodes a decision on `ip` in `ruleset` may walk through: the longest
/// chain of parents from the node that contains it.
fn walk_length(compiled: &policy_agent::compiler::Compiled, ruleset: u32, ip: IpAddr) -> usize {
    use policy_agent::compiler::{ip_key, lookup::masked};
    use policy_common::maps::{CIDR_NO_PARENT, CIDR_PREFIX_BASE, CidrKey};
    let address = ip_key(ip);
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    let key = |len: u32| CidrKey::new(ruleset, address, len - CIDR_PREFIX_BASE);
    let node_at = |max: u32| {
        (CIDR_PREFIX_BASE..=max).rev().find_map(|len| {
            let (prefix_len, data) = key(len);
            compiled
                .cidr
                .get(&policy_agent::compiler::LpmKey {
                    prefix_len,
                    data: masked(&data, prefix_len),
                })
                .copied()
        })
    };
    let mut length = 0;
    let mut next = node_at(CIDR_PREFIX_BASE + bits);
    while let Some(node) = next {
        length += 1;
        next = (node.parent_len != CIDR_NO_PARENT)
            .then(|| node_at(node.parent_len))
            .flatten();
    }
    length
}

#[test]
fn deeply_nested_excepts_agree_in_all_three_evaluators() {
    /// Nodes a decision passes through, at the least, at the innermost levels.
    const DEEPEST_WALK: usize = 5;
    let cluster = policy_tests::cluster(DEEP_NESTING);
    let externals: Vec<IpAddr> = DEEP_NESTING_HOSTS
        .iter()
        .map(|h| h.parse().unwrap())
        .collect();
    let hosts = plan::hosts(&cluster, &externals, &DEEP_NESTING_PORTS);
    let reference = Reference::new(&cluster);
    let compiled = CompiledEvaluator::new(&cluster);
    let mut kernel = KernelEvaluator::new();
    kernel.load(&cluster);

    let server = &compiled.compiled().endpoints[&ObjectRef::new("t", "server")];
    for inner in ["10.1.2.193", "fd00:1:2::9:1"] {
        let walk = walk_length(
            compiled.compiled(),
            server.ingress_ruleset,
            inner.parse().unwrap(),
        );
        assert!(walk >= DEEPEST_WALK, "{inner}: a walk of {walk} nodes");
    }

    let (mut allowed, mut denied) = (0, 0);
    for q in plan::questions(&hosts) {
        let flow = Flow::of(&hosts, &q).expect("planned with a common family");
        let want = reference.allows(&flow);
        let say = |by: &str, got: bool| {
            format!(
                "{by} says {got}, the reference {want}: {} -> {} {}/{}",
                flow.from.label, flow.to.label, flow.protocol, flow.port
            )
        };
        let got = compiled.allows(&flow);
        assert_eq!(got, want, "{}", say("compiled", got));
        let got = kernel.allows(&flow);
        assert_eq!(got, want, "{}", say("kernel", got));
        if want {
            allowed += 1;
        } else {
            denied += 1;
        }
    }
    // Both verdicts at every depth, or the scenario tests little.
    assert!(
        allowed > 50 && denied > 50,
        "{allowed} allowed, {denied} denied"
    );
}
