//! Bridge CNIs (flannel's `cni0`, the reference `bridge` plugin, kubenet): every pod's veth
//! is a port of one bridge, and the route to every pod is the bridge. The agent must enforce
//! each pod on its own port, never on the bridge (which would carry every pod with one pod's
//! policy), and refuse, loudly, an interface it cannot attribute to exactly one pod.
//!
//! Pods are built by the reference `bridge` plugin in the lab's network namespaces, with
//! real packets through the real datapath.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use policy_agent::{
    agent::{self, AgentConfig, AgentHandle, status::Status},
    datapath::bpffs,
    lab::{
        Lab, LabConfig,
        config::CniKind,
        probe,
        runtime::{self, CniRuntime, LAB_BRIDGE, PluginError},
        topology,
    },
    model::{ObjectRef, Protocol},
    netns::NetNs,
    report::{Family, Probe},
    source::SourceEvent,
};
use policy_common::{
    maps::Direction,
    reason::{DropReason, Verdict},
};
use policy_tests::{assert_reachability, block_on, cluster, standard_with, to_self};
use serde_json::json;

/// How long the agent may take to find, attach or refuse an interface.
const CONVERGE: Duration = Duration::from_secs(15);

/// A lab whose pods hang off one bridge per node, enforced by the lab's agents.
fn bridge() -> LabConfig {
    LabConfig {
        cni: CniKind::Bridge,
        ..LabConfig::default()
    }
}

/// x/a admits nobody; y/b may send nowhere.
const ISOLATE_X_A_AND_Y_B: &str = r#"
kind: NetworkPolicy
metadata: {name: deny-ingress-a, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}}
---
kind: NetworkPolicy
metadata: {name: deny-egress-b, namespace: y}
spec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Egress]}
"#;

/// Every pod of both namespaces admits nobody.
const DENY_ALL_INGRESS: &str = r#"
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}}
---
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: y}
spec: {podSelector: {}}
"#;

fn pod(label: &str) -> ObjectRef {
    let (ns, name) = label.split_once('/').expect("namespace/name");
    ObjectRef::new(ns, name)
}

/// The status entry of pod `label`.
fn endpoint<'a>(status: &'a Status, label: &str) -> &'a agent::status::EndpointStatus {
    status
        .endpoints
        .iter()
        .find(|e| e.pod == label)
        .unwrap_or_else(|| panic!("{label} is not in the status:\n{status}"))
}

/// Waits until `status()` satisfies `done`, or fails with the last status after
/// [`CONVERGE`].
async fn converge(status: impl Fn() -> Status, what: &str, done: impl Fn(&Status) -> bool) {
    let start = Instant::now();
    loop {
        let s = status();
        if done(&s) {
            return;
        }
        assert!(
            start.elapsed() < CONVERGE,
            "{what}: not within {CONVERGE:?}:\n{s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether pod `label` has the programs on `interface`.
fn attached_to(status: &Status, label: &str, interface: &str) -> bool {
    let e = endpoint(status, label);
    e.attached && !e.refused && e.interface.as_deref() == Some(interface)
}

/// Whether pod `label` is refused, for a reason that says `why`.
fn refused_for(status: &Status, label: &str, why: &str) -> bool {
    let e = endpoint(status, label);
    !e.attached && e.refused && e.reason.as_deref().is_some_and(|r| r.contains(why))
}

/// TCP to port 80 of every address of `to`, from the node's own namespace.
async fn node_reaches(lab: &Lab, node: usize, to: &str) -> Vec<(IpAddr, bool)> {
    let node_ns = NetNs::open(lab.node_netns_name(node)).expect("the node's namespace");
    let mut out = Vec::new();
    for &ip in &lab.host(to).unwrap().spec.ips {
        let allowed = probe::probe(&node_ns, ip, 80, Protocol::Tcp)
            .await
            .expect("probe runs");
        out.push((ip, allowed));
    }
    out
}

#[test]
fn each_pod_on_the_bridge_is_enforced_on_its_own_port() {
    block_on(async {
        let lab = Lab::start(&standard_with(ISOLATE_X_A_AND_Y_B), &bridge())
            .await
            .expect("lab starts");
        let status = lab.status(0).unwrap();
        let mut ports = Vec::new();
        for host in lab.hosts() {
            let label = &host.spec.label;
            // The pod's own veth, as the bridge plugin created it: a port of the bridge.
            assert!(host.node_if.starts_with(topology::POD_INTERFACE_PREFIX));
            assert_ne!(host.node_if, LAB_BRIDGE);
            assert!(
                attached_to(&status, label, &host.node_if),
                "{label} is not attached to its veth {}:\n{status}",
                host.node_if
            );
            ports.push(host.node_if.clone());
        }
        ports.sort();
        ports.dedup();
        assert_eq!(
            ports.len(),
            lab.hosts().len(),
            "one port per pod:\n{status}"
        );

        // x/a is isolated on its port alone: x/b, on the same bridge, stays reachable; y/b
        // sends nothing, and the others still send to each other over the bridge.
        let reachability = lab.probe_all().await.expect("probes run");
        assert_reachability(&reachability, |p: &Probe| {
            to_self(p) || (p.to != "x/a" && p.from != "y/b")
        });

        // The denied flows were dropped by the policy on the ports of both ends: entering
        // x/a, and leaving y/b.
        let stats = lab.stats(0).unwrap();
        let denied = |dir: Direction| {
            stats
                .iter()
                .filter(|(k, v)| {
                    k.direction == dir as u8
                        && k.verdict == Verdict::Drop as u8
                        && k.reason == DropReason::PolicyDenied as u8
                        && v.packets > 0
                })
                .count()
        };
        assert!(
            denied(Direction::Ingress) > 0,
            "no ingress drops: {stats:?}"
        );
        assert!(denied(Direction::Egress) > 0, "no egress drops: {stats:?}");
        lab.shutdown().await;
    });
}

#[test]
fn the_node_reaches_isolated_pods_on_the_bridge() {
    block_on(async {
        let lab = Lab::start(&standard_with(DENY_ALL_INGRESS), &bridge())
            .await
            .expect("lab starts");
        // Address resolution and the node's own connections pass every port (kubelet
        // probes); pods still reach nothing but themselves.
        for pod in ["x/a", "x/b", "y/a", "y/b"] {
            for (ip, allowed) in node_reaches(&lab, 0, pod).await {
                assert!(allowed, "the node cannot reach {pod} at {ip}");
            }
        }
        let reachability = lab.probe_all().await.expect("probes run");
        assert_reachability(&reachability, to_self);
        lab.shutdown().await;
    });
}

/// A CNI plugin for tests, chained after the main plugin: it passes the result on with its
/// host-side interfaces replaced by the names in its `hostInterfaces` (as a plugin would
/// that reports only the bridge, or another pod's veth).
const REWRITE_PLUGIN: &str = r#"#!/usr/bin/env python3
import json, os, sys
conf = json.load(sys.stdin)
if os.environ.get("CNI_COMMAND") != "ADD":
    sys.exit(0)
prev = conf["prevResult"]
pod_side = [i for i in prev["interfaces"] if "sandbox" in i]
host_side = [{"name": name} for name in conf["hostInterfaces"]]
prev["interfaces"] = host_side + pod_side
for ip in prev.get("ips", []):
    ip["interface"] = len(host_side)
print(json.dumps(prev))
"#;

/// The plugin's type (and file name).
const REWRITE_TYPE: &str = "test-host-side-as";

/// A directory holding [`REWRITE_PLUGIN`], removed on drop.
struct RewritePlugin(PathBuf);

impl RewritePlugin {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!(
            "{}{}-cni-{}",
            topology::NETNS_PREFIX,
            std::process::id(),
            topology::unique_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(REWRITE_TYPE);
        std::fs::write(&path, REWRITE_PLUGIN).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(dir)
    }

    /// Node `node`'s CNI configuration of `lab`, with the plugin after the main plugin,
    /// reporting `host_interfaces`.
    fn runtime(&self, lab: &Lab, node: usize, host_interfaces: &[&str]) -> CniRuntime {
        let mut conflist = lab.runtime(node).conflist().clone();
        let plugins = conflist["plugins"].as_array_mut().unwrap();
        plugins.insert(
            1,
            json!({"type": REWRITE_TYPE, "hostInterfaces": host_interfaces}),
        );
        let mut dirs = runtime::bin_dirs(true).unwrap();
        dirs.push(self.0.clone());
        CniRuntime::new(conflist, dirs)
    }
}

impl Drop for RewritePlugin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The error object the policy plugin returned to the runtime, from a failed start.
fn cni_error(e: &anyhow::Error) -> (u64, String) {
    let plugin = e
        .chain()
        .find_map(|c| c.downcast_ref::<PluginError>())
        .unwrap_or_else(|| panic!("not a plugin error: {e:#}"));
    assert_eq!(plugin.plugin, "policy-agent-cni", "{e:#}");
    let error = plugin.error.as_ref().expect("an error object");
    (
        error["code"].as_u64().unwrap(),
        error["msg"].as_str().unwrap().to_owned(),
    )
}

/// The code of a refused interface in the policy plugin's errors.
const INTERFACE_REFUSED: u64 = 102;

#[test]
fn a_pod_whose_cni_result_names_only_the_bridge_is_refused() {
    block_on(async {
        let plugin = RewritePlugin::new();
        let config = LabConfig {
            deferred: vec![pod("x/b")],
            ..bridge()
        };
        let mut lab = Lab::start(&standard_with(DENY_ALL_INGRESS), &config)
            .await
            .expect("lab starts");
        let runtime = plugin.runtime(&lab, 0, &[LAB_BRIDGE]);
        let e = lab
            .start_pod_with(&pod("x/b"), Some(&runtime))
            .expect_err("the agent refuses the bridge");
        let (code, msg) = cni_error(&e);
        assert_eq!(code, INTERFACE_REFUSED, "{msg}");
        assert!(msg.contains("cni0 is a bridge"), "{msg}");
        // The sandbox is gone again (the runtime deleted it), but the status says why.
        let status = lab.status(0).unwrap();
        assert!(
            status
                .errors
                .iter()
                .any(|e| e.contains("pod x/b not enforced: cni0 is a bridge")),
            "{status}"
        );
        assert!(!endpoint(&status, "x/b").attached, "{status}");
        lab.shutdown().await;
    });
}

#[test]
fn with_fail_open_a_pod_refused_the_bridge_is_found_on_its_port_through_the_bridge_tables() {
    block_on(async {
        let plugin = RewritePlugin::new();
        let config = LabConfig {
            deferred: vec![pod("x/b")],
            fail_open: true,
            ..bridge()
        };
        let mut lab = Lab::start(&standard_with(DENY_ALL_INGRESS), &config)
            .await
            .expect("lab starts");
        let runtime = plugin.runtime(&lab, 0, &[LAB_BRIDGE]);
        // failOpen: the pod starts, unprotected at first.
        lab.start_pod_with(&pod("x/b"), Some(&runtime))
            .expect("fail-open lets the pod start");
        lab.report_addresses().await.unwrap();
        let status = lab.status(0).unwrap();
        assert!(
            status
                .errors
                .iter()
                .any(|e| e.contains("pod x/b not enforced: cni0 is a bridge")),
            "{status}"
        );
        // Behind the bridge, the node's neighbour entry and the bridge's forwarding table
        // lead to the pod's own port.
        let port = lab.host("x/b").unwrap().node_if.clone();
        converge(
            || lab.status(0).unwrap(),
            "x/b found on its port",
            |s| attached_to(s, "x/b", &port),
        )
        .await;
        let reachability = lab.probe_all().await.expect("probes run");
        assert_reachability(&reachability, to_self);
        lab.shutdown().await;
    });
}

#[test]
fn a_cni_result_naming_another_pods_veth_is_refused_for_both() {
    block_on(async {
        let plugin = RewritePlugin::new();
        let config = LabConfig {
            deferred: vec![pod("x/b")],
            ..bridge()
        };
        let mut lab = Lab::start(&standard_with(DENY_ALL_INGRESS), &config)
            .await
            .expect("lab starts");
        let a_port = lab.host("x/a").unwrap().node_if.clone();
        let runtime = plugin.runtime(&lab, 0, &[LAB_BRIDGE, &a_port]);
        let e = lab
            .start_pod_with(&pod("x/b"), Some(&runtime))
            .expect_err("the agent refuses an interface that carries two pods");
        let (code, msg) = cni_error(&e);
        assert_eq!(code, INTERFACE_REFUSED, "{msg}");
        assert!(
            msg.contains(&format!("{a_port} also carries pod(s) x/a")),
            "{msg}"
        );
        let status = lab.status(0).unwrap();
        assert!(
            status.errors.iter().any(|e| e.contains(&format!(
                "pod x/a not enforced: {a_port} also carries pod(s) x/b"
            ))),
            "{status}"
        );
        // x/b's sandbox is gone: x/a has its port to itself again.
        converge(
            || lab.status(0).unwrap(),
            "x/a attached again",
            |s| attached_to(s, "x/a", &a_port),
        )
        .await;
        let reachability = lab.probe_all().await.expect("probes run");
        assert_reachability(&reachability, to_self);
        lab.shutdown().await;
    });
}

/// Pods of one namespace, spread over two nodes in name order (a, c and e on node-1; b
/// and d on node-2); x/a admits nobody.
const TWO_NODES: &str = r#"
kind: Namespace
metadata: {name: x}
---
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIPs: [{ip: 10.100.0.1}, {ip: "fd00:100::1"}]}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIPs: [{ip: 10.100.0.2}, {ip: "fd00:100::2"}]}
---
kind: Pod
metadata: {name: c, namespace: x, labels: {app: c}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIPs: [{ip: 10.100.0.3}, {ip: "fd00:100::3"}]}
---
kind: Pod
metadata: {name: d, namespace: x, labels: {app: d}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIPs: [{ip: 10.100.0.4}, {ip: "fd00:100::4"}]}
---
kind: Pod
metadata: {name: e, namespace: x, labels: {app: e}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIPs: [{ip: 10.100.0.5}, {ip: "fd00:100::5"}]}
---
kind: NetworkPolicy
metadata: {name: deny-ingress-a, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}}
"#;

/// An agent of the test's own on a lab node, removed with its pins on drop.
struct OwnAgent {
    handle: Option<AgentHandle>,
    /// Kept open: a closed source would be reported as an error.
    _feed: tokio::sync::mpsc::Sender<SourceEvent>,
    pins: PathBuf,
}

impl OwnAgent {
    /// Starts an agent on node `node` of `lab`, with no CNI plugin chained (it finds the
    /// pods by their routes, as `lab --watch` does), fed the lab's cluster (whose pods
    /// all have their addresses, started or not).
    async fn start(lab: &Lab, node: usize) -> Self {
        let instance = format!("{}{}-own{}", topology::PIN_PREFIX, lab.id(), node + 1);
        let pins = Path::new(bpffs::PIN_ROOT).join(&instance);
        let (feed, events) = tokio::sync::mpsc::channel(4);
        let mut handle = agent::spawn(
            AgentConfig {
                node_name: topology::node_name(node),
                instance,
                netns: Some(lab.node_netns_name(node).to_owned()),
                interface_prefix: Some(topology::POD_INTERFACE_PREFIX.to_owned()),
                extra_node_addresses: Vec::new(),
                socket: None,
                metrics_address: None,
                source: "test".to_owned(),
                cni_conf_dir: None,
                full_resync: policy_agent::agent::FULL_RESYNC,
                map_sizes: policy_agent::capacity::MapSizes::default(),
            },
            events,
        )
        .expect("agent starts");
        feed.send(SourceEvent::Snapshot {
            cluster: Box::new(lab.cluster().clone()),
            errors: Vec::new(),
        })
        .await
        .unwrap();
        handle.ready(CONVERGE).await.expect("agent ready");
        Self {
            handle: Some(handle),
            _feed: feed,
            pins,
        }
    }

    fn status(&self) -> Status {
        self.handle.as_ref().unwrap().status.borrow().clone()
    }

    /// The value of metric line `series` (name and labels), 0 if absent.
    fn metric(&self, series: &str) -> f64 {
        let text = self.handle.as_ref().unwrap().metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stop().await.unwrap();
        }
    }
}

impl Drop for OwnAgent {
    fn drop(&mut self) {
        bpffs::remove_instance_dir(&self.pins);
    }
}

#[test]
fn without_the_cni_plugin_pods_are_found_on_their_ports_and_shared_or_uplink_interfaces_refused() {
    block_on(async {
        let cluster = cluster(TWO_NODES);
        let config = LabConfig {
            nodes: 2,
            deferred: vec![pod("x/e")],
            ..bridge()
        };
        let lab = Lab::network(&cluster, &config).await.expect("lab builds");
        let agent = OwnAgent::start(&lab, 0).await;
        let a_port = lab.host("x/a").unwrap().node_if.clone();
        let c_port = lab.host("x/c").unwrap().node_if.clone();
        converge(
            || agent.status(),
            "a and c found on their ports",
            |s| attached_to(s, "x/a", &a_port) && attached_to(s, "x/c", &c_port),
        )
        .await;
        // x/e has no sandbox: nothing on the bridge answers for it.
        let e = endpoint(&agent.status(), "x/e").clone();
        assert!(!e.attached && !e.refused, "{e:?}");

        // On the same bridge, c is denied a (isolated on its own port); a still reaches c,
        // and the node reaches a.
        let a: IpAddr = "10.100.0.1".parse().unwrap();
        let c: IpAddr = "10.100.0.3".parse().unwrap();
        let c_ns = lab.netns("x/c").unwrap();
        let a_ns = lab.netns("x/a").unwrap();
        assert!(!probe::probe(c_ns, a, 80, Protocol::Tcp).await.unwrap());
        assert!(probe::probe(a_ns, c, 80, Protocol::Tcp).await.unwrap());
        for (ip, allowed) in node_reaches(&lab, 0, "x/a").await {
            assert!(allowed, "the node cannot reach x/a at {ip}");
        }
        let c_to_a_v6 = lab.probe("x/c", "x/a", 80, Protocol::Tcp, Family::IPv6);
        assert!(!c_to_a_v6.await.unwrap(), "c reaches a over IPv6");

        // e's address routed to a's port: that port would carry two pods. Neither keeps it,
        // until the route goes.
        let node = NetNs::open(lab.node_netns_name(0)).unwrap();
        node.ip(&["route", "add", "10.100.0.5/32", "dev", &a_port])
            .unwrap();
        converge(
            || agent.status(),
            "a and e refused",
            |s| {
                refused_for(s, "x/a", &format!("{a_port} also carries pod(s) x/e"))
                    && refused_for(s, "x/e", &format!("{a_port} also carries pod(s) x/a"))
            },
        )
        .await;
        assert!(agent.metric("policy_agent_interface_refusals_total{reason=\"shared\"}") >= 2.0);
        assert!(agent.metric("policy_agent_endpoints_refused") >= 2.0);
        node.ip(&["route", "del", "10.100.0.5/32", "dev", &a_port])
            .unwrap();
        converge(
            || agent.status(),
            "a attached again",
            |s| attached_to(s, "x/a", &a_port) && !endpoint(s, "x/e").refused,
        )
        .await;

        // e's address on the uplink to the other node (a veth to the fabric, which holds a
        // subnet of the node): never a pod's.
        node.ip(&["route", "add", "10.100.0.5/32", "dev", "fabric"])
            .unwrap();
        converge(
            || agent.status(),
            "e refused the uplink",
            |s| refused_for(s, "x/e", "fabric holds 169.254.255.1/24"),
        )
        .await;
        assert!(
            agent.metric("policy_agent_interface_refusals_total{reason=\"node_subnet\"}") >= 1.0
        );
        node.ip(&["route", "del", "10.100.0.5/32", "dev", "fabric"])
            .unwrap();
        assert!(attached_to(&agent.status(), "x/a", &a_port));

        agent.stop().await;
        lab.shutdown().await;
    });
}
