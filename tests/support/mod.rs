//! Shared test helpers: clusters from YAML, the standard two-namespace model, a runtime per
//! test, and reachability assertions that list every wrong verdict.

pub mod conformance;
pub mod fake_api;
pub mod fuzz;
pub mod hostile;
pub mod kernel;
pub mod packets;
pub mod records;
pub mod scenarios;
pub mod wire;

use std::{
    fmt::Write as _,
    future::Future,
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
};

use policy_agent::{
    datapath::{BpfDatapath, TableSizes, bpffs},
    model::{Cluster, Protocol},
    report::{Family, Probe, Reachability},
    source::manifests::{self, Loaded},
};

/// A cluster from manifest text (with the EndpointSlices the control plane would make for
/// Services that have none); panics on any manifest error.
pub fn cluster(yaml: &str) -> Cluster {
    let mut loaded = Loaded::default();
    manifests::load_str(yaml, Path::new("test.yaml"), &mut loaded);
    assert!(
        loaded.errors.is_empty(),
        "manifest errors: {:?}",
        loaded.errors
    );
    policy_agent::source::control_plane::complete(&mut loaded.cluster);
    loaded.cluster
}

static DATAPATHS: AtomicU32 = AtomicU32::new(0);

/// A fresh datapath with per-endpoint tables of `sizes`, pinned under a name that starts
/// with `prefix` and is unique to this process and call; its pins go when it is dropped
/// (and pins of killed runs with the same prefix are swept first).
pub fn test_datapath(prefix: &str, sizes: TableSizes) -> BpfDatapath {
    bpffs::sweep_stale(prefix);
    let instance = format!(
        "{prefix}{}-{}",
        std::process::id(),
        DATAPATHS.fetch_add(1, Ordering::Relaxed)
    );
    BpfDatapath::load_with(&instance, sizes)
        .expect("datapath loads")
        .unpin_on_drop()
}

/// The standard model: namespaces x (team=x) and y (team=y), pods a and b in each
/// (labels app=a / app=b), all dual-stack, each serving TCP 80 and 81, UDP 80 and SCTP 80.
pub const STANDARD: &str = r#"
kind: Namespace
metadata: {name: x, labels: {team: x}}
---
kind: Namespace
metadata: {name: y, labels: {team: y}}
---
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: c, ports: [{containerPort: 80, name: http}, {containerPort: 81}, {containerPort: 80, protocol: UDP}, {containerPort: 80, protocol: SCTP}]}]}
status: {podIPs: [{ip: 10.100.0.1}, {ip: "fd00:100::1"}]}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{name: c, ports: [{containerPort: 80, name: http}, {containerPort: 81}, {containerPort: 80, protocol: UDP}, {containerPort: 80, protocol: SCTP}]}]}
status: {podIPs: [{ip: 10.100.0.2}, {ip: "fd00:100::2"}]}
---
kind: Pod
metadata: {name: a, namespace: y, labels: {app: a}}
spec: {containers: [{name: c, ports: [{containerPort: 80, name: http}, {containerPort: 81}, {containerPort: 80, protocol: UDP}, {containerPort: 80, protocol: SCTP}]}]}
status: {podIPs: [{ip: 10.100.0.3}, {ip: "fd00:100::3"}]}
---
kind: Pod
metadata: {name: b, namespace: y, labels: {app: b}}
spec: {containers: [{name: c, ports: [{containerPort: 80, name: http}, {containerPort: 81}, {containerPort: 80, protocol: UDP}, {containerPort: 80, protocol: SCTP}]}]}
status: {podIPs: [{ip: 10.100.0.4}, {ip: "fd00:100::4"}]}
"#;

/// The standard model plus `policies`.
pub fn standard_with(policies: &str) -> Cluster {
    cluster(&format!("{STANDARD}\n---\n{policies}"))
}

/// The cluster as API objects (JSON), as `kubectl get -o json` would show them.
pub fn api_objects(cluster: &Cluster) -> Vec<serde_json::Value> {
    use serde_json::json;
    let mut out = Vec::new();
    for ns in cluster.namespaces.values() {
        out.push(json!({"kind": "Namespace", "metadata": {"name": ns.name, "labels": ns.labels}}));
    }
    for pod in cluster.pods.values() {
        let ports: Vec<_> = pod
            .ports
            .iter()
            .map(|p| {
                let mut port = json!({"name": p.name, "containerPort": p.port, "protocol": p.protocol.as_str()});
                if let Some(host_port) = p.host_port {
                    port["hostPort"] = json!(host_port);
                }
                port
            })
            .collect();
        let ips: Vec<_> = pod
            .ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect();
        out.push(json!({
            "kind": "Pod",
            "metadata": {"name": pod.id.name, "namespace": pod.id.namespace, "labels": pod.labels},
            "spec": {"nodeName": pod.node, "hostNetwork": pod.host_network, "containers": [{"name": "c", "ports": ports}]},
            "status": {"podIPs": ips, "podIP": pod.ips.first().map(ToString::to_string)},
        }));
    }
    for p in cluster.policies.values() {
        out.push(json!({
            "kind": "NetworkPolicy",
            "metadata": {"name": p.id.name, "namespace": p.id.namespace},
            "spec": p.spec,
        }));
    }
    out.extend(cluster.services.values().map(service_object));
    out
}

/// A Service as an API object (its EndpointSlices are derived again from its selector).
fn service_object(s: &policy_agent::model::Service) -> serde_json::Value {
    use policy_agent::model::TargetPort;
    use serde_json::json;
    let ports: Vec<_> = s
        .ports
        .iter()
        .map(|p| {
            let target = match &p.target_port {
                TargetPort::Number(n) => json!(n),
                TargetPort::Name(name) => json!(name),
            };
            let mut port = json!({"name": p.name, "protocol": p.protocol.as_str(),
                "port": p.port, "targetPort": target});
            if let Some(node_port) = p.node_port {
                port["nodePort"] = json!(node_port);
            }
            port
        })
        .collect();
    let addresses =
        |ips: &[std::net::IpAddr]| -> Vec<String> { ips.iter().map(ToString::to_string).collect() };
    let mut spec = json!({
        "type": "ClusterIP",
        "selector": s.selector,
        "clusterIP": s.cluster_ips.first().map(ToString::to_string),
        "clusterIPs": addresses(&s.cluster_ips),
        "externalIPs": addresses(&s.external_ips),
        "ports": ports,
    });
    if s.ports.iter().any(|p| p.node_port.is_some()) {
        spec["type"] = json!("NodePort");
        spec["externalTrafficPolicy"] = json!(if s.external_traffic_local {
            "Local"
        } else {
            "Cluster"
        });
    }
    json!({
        "kind": "Service",
        "metadata": {"name": s.id.name, "namespace": s.id.namespace},
        "spec": spec,
        "status": {"loadBalancer": {"ingress": addresses(&s.load_balancer_ips)
            .into_iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>()}},
    })
}

/// Runs `f` on a fresh multi-threaded runtime (with logs per `RUST_LOG`, shown for failing
/// tests).
pub fn block_on<F: Future>(f: F) -> F::Output {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Asserts every probe's verdict is `expected(probe)`; the message lists all that are not.
pub fn assert_reachability(r: &Reachability, expected: impl Fn(&Probe) -> bool) {
    assert!(!r.probes.is_empty(), "no probes were made");
    let mut wrong = String::new();
    for p in &r.probes {
        let want = expected(p);
        if p.allowed != want {
            let _ = writeln!(
                wrong,
                "  {} -> {} {}/{} {:?}: got {}, want {}",
                p.from,
                p.to,
                p.protocol,
                p.port,
                p.family,
                verdict(p.allowed),
                verdict(want)
            );
        }
    }
    assert!(
        wrong.is_empty(),
        "wrong verdicts:\n{wrong}\nfull table:\n{}",
        r.render_table()
    );
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

/// Namespace part of a pod label (`x/a` -> `x`), or `None` for an external host.
pub fn ns(label: &str) -> Option<&str> {
    label.split_once('/').map(|(ns, _)| ns)
}

/// Whether a probe is TCP on `port`.
pub fn tcp(p: &Probe, port: u16) -> bool {
    p.protocol == Protocol::Tcp && p.port == port
}

/// Whether a probe goes from a host to itself (always allowed).
pub fn to_self(p: &Probe) -> bool {
    p.from == p.to
}

/// Whether a probe uses IPv6.
pub fn v6(p: &Probe) -> bool {
    p.family == Family::IPv6
}
