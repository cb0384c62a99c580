//! The node agent against a fake Kubernetes API server (real list/watch protocol, real
//! kube-rs watchers), enforcing on lab nodes with the real datapath: it follows changes of
//! pods, namespaces and policies, survives its own restart without a gap, and keeps
//! enforcing through an API outage.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use policy_agent::{
    agent::{self, AgentConfig, AgentHandle, api, endpoints},
    capacity::MapSizes,
    datapath::bpffs,
    lab::{
        Lab, LabConfig,
        runtime::{self, CniRuntime},
        topology,
    },
    model::{Cluster, ObjectRef, Protocol},
    report::{Family, Probe, Reachability},
    source::{Source, kubernetes},
};
use policy_tests::{
    api_objects, assert_reachability, block_on, fake_api::FakeApi, ns, standard_with, to_self,
};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long an agent may take to apply a change.
const CONVERGE: Duration = Duration::from_secs(20);

/// Pins of the agents a test ran, removed when it ends (also on failure): agents keep
/// their pins when they stop, as a node agent must.
struct Pins(Vec<PathBuf>);

impl Drop for Pins {
    fn drop(&mut self) {
        for dir in &self.0 {
            bpffs::remove_instance_dir(dir);
            // The agent's socket and saved sandboxes, which outlive it on purpose.
            let socket = socket_of(dir.file_name().unwrap().to_str().unwrap());
            let _ = std::fs::remove_file(endpoints::sandboxes_file(&socket));
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// Where the test agent of pin directory `instance` listens.
fn socket_of(instance: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{instance}.sock"))
}

/// Starts node `node`'s agent, watching `api`.
fn start_agent(lab: &Lab, node: usize, api: &FakeApi, pins: &mut Pins) -> AgentHandle {
    start_agent_with(
        lab,
        node,
        api,
        pins,
        agent::FULL_RESYNC,
        MapSizes::default(),
    )
}

/// Starts node `node`'s agent with maps of `map_sizes`, watching `api` and comparing the
/// maps with what it wrote every `full_resync`.
fn start_agent_with(
    lab: &Lab,
    node: usize,
    api: &FakeApi,
    pins: &mut Pins,
    full_resync: Duration,
    map_sizes: MapSizes,
) -> AgentHandle {
    let instance = format!("{}{}-agent{}", topology::PIN_PREFIX, lab.id(), node + 1);
    let config = AgentConfig {
        full_resync,
        map_sizes,
        ..test_config(
            pins,
            instance,
            &topology::node_name(node),
            lab.node_netns_name(node),
            format!("kubernetes ({})", api.url),
        )
    };
    agent::spawn(
        config,
        kubernetes::watch(api.client(), &topology::node_name(node)),
    )
    .expect("agent starts")
}

/// The configuration of a test agent: pin directory `instance` (removed with `pins`), its
/// socket in the temporary directory, pods' interfaces in namespace `netns`, no metrics,
/// default map sizes and full resync.
fn test_config(
    pins: &mut Pins,
    instance: String,
    node_name: &str,
    netns: &str,
    source: String,
) -> AgentConfig {
    pins.0.push(PathBuf::from(bpffs::PIN_ROOT).join(&instance));
    AgentConfig {
        node_name: node_name.to_owned(),
        socket: Some(socket_of(&instance)),
        instance,
        netns: Some(netns.to_owned()),
        interface_prefix: Some(topology::POD_INTERFACE_PREFIX.to_owned()),
        extra_node_addresses: Vec::new(),
        metrics_address: None,
        source,
        cni_conf_dir: None,
        full_resync: agent::FULL_RESYNC,
        map_sizes: MapSizes::default(),
    }
}

/// Publishes the lab's cluster (pods with their lab nodes) to the fake API, except pods
/// `hold_back` names.
fn publish(api: &FakeApi, cluster: &Cluster, hold_back: &[&str]) {
    for object in api_objects(cluster) {
        let name = format!(
            "{}/{}",
            object["metadata"]["namespace"].as_str().unwrap_or(""),
            object["metadata"]["name"].as_str().unwrap()
        );
        if object["kind"] == "Pod" && hold_back.contains(&name.as_str()) {
            continue;
        }
        api.apply(object);
    }
}

/// Probes until every verdict is `expected`, or fails with the last table after `CONVERGE`.
async fn converge(lab: &Lab, expected: impl Fn(&Probe) -> bool) -> Reachability {
    let start = Instant::now();
    loop {
        let r = lab.probe_all().await.expect("probes run");
        if r.probes.iter().all(|p| p.allowed == expected(p)) || start.elapsed() > CONVERGE {
            assert_reachability(&r, expected);
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends a message each way over an established connection.
async fn exchange(conn: &mut tokio::net::TcpStream, server: &mut tokio::net::TcpStream) {
    let mut buf = [0u8; 5];
    conn.write_all(b"ping!").await.unwrap();
    server.read_exact(&mut buf).await.unwrap();
    server.write_all(b"pong!").await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), conn.read_exact(&mut buf))
        .await
        .expect("the reply passes (y/a answers through conntrack)")
        .unwrap();
    assert_eq!(&buf, b"pong!");
}

/// Pod `ns/name` of `cluster` as the API serves it.
fn pod_object(cluster: &Cluster, ns: &str, name: &str) -> serde_json::Value {
    api_objects(cluster)
        .into_iter()
        .find(|o| {
            o["kind"] == "Pod" && o["metadata"]["name"] == name && o["metadata"]["namespace"] == ns
        })
        .unwrap()
}

fn policy(ns: &str, name: &str, spec: &str) -> serde_json::Value {
    let spec: serde_json::Value = serde_saphyr::from_str(spec).unwrap();
    json!({"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

#[test]
fn the_agent_follows_pods_namespaces_and_policies() {
    block_on(async {
        let config = LabConfig {
            nodes: 2,
            ..LabConfig::default()
        };
        let mut lab = Lab::network(&standard_with(""), &config).await.unwrap();
        let api = FakeApi::start().await;
        // y/b is not known to the API yet: a pod the agent must pick up later.
        publish(&api, lab.cluster(), &["y/b"]);
        let mut pins = Pins(Vec::new());
        let mut agents: Vec<AgentHandle> = (0..2)
            .map(|n| start_agent(&lab, n, &api, &mut pins))
            .collect();
        for a in &mut agents {
            a.ready(CONVERGE).await.unwrap();
        }
        converge(&lab, |_| true).await;

        // A policy appears: nothing enters namespace x.
        api.apply(policy("x", "guard", "{podSelector: {}}"));
        converge(&lab, |p| to_self(p) || ns(&p.to) != Some("x")).await;

        // ... and is changed to admit namespaces labelled team=friends: none is, yet.
        api.apply(policy(
            "x",
            "guard",
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: friends}}}]}]}",
        ));
        converge(&lab, |p| to_self(p) || ns(&p.to) != Some("x")).await;

        // A namespace gets the label: its pods get in; y/b, which the API does not know,
        // is just an address and does not.
        api.apply(
            json!({"kind": "Namespace", "metadata": {"name": "y", "labels": {"team": "friends"}}}),
        );
        converge(&lab, |p| {
            to_self(p) || ns(&p.to) != Some("x") || p.from == "y/a"
        })
        .await;

        // A pod appears: y/b is now a pod of namespace y.
        api.apply(pod_object(lab.cluster(), "y", "b"));
        let x_admits_y =
            |p: &Probe| to_self(p) || ns(&p.to) != Some("x") || ns(&p.from) == Some("y");
        converge(&lab, x_admits_y).await;

        // A pod's labels change: y/b admits only pods labelled role=trusted, then y/a gets it.
        api.apply(policy(
            "y",
            "b-trusted-only",
            "{podSelector: {matchLabels: {app: b}}, ingress: [{from: [{podSelector: {matchLabels: {role: trusted}}}]}]}",
        ));
        converge(&lab, |p| x_admits_y(p) && (p.to != "y/b" || to_self(p))).await;
        let mut y_a = pod_object(lab.cluster(), "y", "a");
        y_a["metadata"]["labels"]["role"] = json!("trusted");
        api.apply(y_a);
        converge(&lab, |p| {
            x_admits_y(p) && (p.to != "y/b" || to_self(p) || p.from == "y/a")
        })
        .await;

        // The agent says what it dropped, and which policies isolate the pod.
        let mut flows = agents[1].flows.subscribe();
        let denied = lab
            .probe("x/b", "y/b", 80, Protocol::Tcp, Family::IPv4)
            .await
            .unwrap();
        assert!(!denied);
        let record = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let r = flows.recv().await.unwrap();
                if r.verdict == "drop" && r.pod.as_deref() == Some("y/b") {
                    return r;
                }
            }
        })
        .await
        .expect("a flow record of the drop");
        assert_eq!(record.reason, "policy-denied");
        assert_eq!(record.isolated_by, ["y/b-trusted-only"]);
        assert_eq!(record.remote_pod.as_deref(), Some("x/b"));

        // y/b's status loses its addresses (a controller rewrote it): y/b keeps its
        // programs, and with no address of its own all it sends is dropped; detached, it
        // would take anyone's traffic.
        let mut y_b = pod_object(lab.cluster(), "y", "b");
        y_b["status"] = json!({"phase": "Running"});
        api.apply(y_b);
        converge(&lab, |p| {
            x_admits_y(p) && (to_self(p) || p.to != "y/b" && p.from != "y/b")
        })
        .await;
        assert!(
            agents[1]
                .status
                .borrow()
                .endpoints
                .iter()
                .any(|e| e.pod == "y/b" && e.attached),
            "y/b stays attached"
        );
        api.apply(pod_object(lab.cluster(), "y", "b"));
        let y_b_trusts_y_a =
            |p: &Probe| x_admits_y(p) && (p.to != "y/b" || to_self(p) || p.from == "y/a");
        converge(&lab, y_b_trusts_y_a).await;

        // y/b's sandbox is made again (after a crash, say), with a new interface, and no
        // CNI plugin tells the agent: it notices the old interface went and enforces the
        // new one.
        let y_b_id = ObjectRef::new("y", "b");
        lab.stop_pod(&y_b_id).unwrap();
        lab.start_pod_with(&y_b_id, None).unwrap();
        converge(&lab, y_b_trusts_y_a).await;

        // A pod goes: y/a is no longer a pod (its traffic is just an address's) nor enforced.
        api.delete("Pod", "y", "a");
        converge(&lab, |p| {
            if to_self(p) {
                return true;
            }
            match (ns(&p.to), p.to.as_str()) {
                (Some("x"), _) => ns(&p.from) == Some("y") && p.from != "y/a",
                // Only role=trusted pods may reach y/b, and there are none left.
                (_, "y/b") => false,
                _ => true,
            }
        })
        .await;

        // The policies go: everything is open again.
        api.delete("NetworkPolicy", "x", "guard");
        api.delete("NetworkPolicy", "y", "b-trusted-only");
        converge(&lab, |_| true).await;

        // A host-network pod cannot be enforced: the agent says so instead of ignoring it.
        api.apply(json!({
            "kind": "Pod",
            "metadata": {"name": "exporter", "namespace": "x"},
            "spec": {"nodeName": topology::node_name(0), "hostNetwork": true,
                     "containers": [{"name": "c"}]},
            "status": {"podIP": "192.0.2.1"},
        }));
        let status = tokio::time::timeout(
            CONVERGE,
            agents[0]
                .status
                .wait_for(|s| s.not_enforced.iter().any(|w| w.contains("x/exporter"))),
        )
        .await
        .expect("the host-network pod is reported")
        .unwrap()
        .clone();
        assert!(status.endpoints.iter().all(|e| e.pod != "x/exporter"));
        assert!(status.to_string().contains("uses the host network"));

        for a in agents {
            a.stop().await.unwrap();
        }
        lab.shutdown().await;
    });
}

#[test]
fn a_restarted_agent_takes_over_without_a_gap() {
    block_on(async {
        // y/a serves x/a (on 80 and 8080) and may call nobody.
        let cluster = standard_with(
            r#"
kind: NetworkPolicy
metadata: {name: serve-x-a, namespace: y}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}, {port: 8080}]}]
"#,
        );
        let lab = Arc::new(Lab::network(&cluster, &LabConfig::default()).await.unwrap());
        let api = FakeApi::start().await;
        publish(&api, lab.cluster(), &[]);
        let mut pins = Pins(Vec::new());
        let mut first = start_agent(&lab, 0, &api, &mut pins);
        first.ready(CONVERGE).await.unwrap();
        let expected = |from: &str, to: &str, port: u16| from == "x/a" && to == "y/a" && port == 80;
        converge(&lab, |p| {
            to_self(p)
                || p.to != "y/a" && p.from != "y/a"
                || expected(&p.from, &p.to, p.port) && p.protocol == Protocol::Tcp
        })
        .await;

        // A connection that only conntrack lets y/a answer (its egress is isolated).
        let v4 = lab.host("y/a").unwrap().spec.ip(Family::IPv4).unwrap();
        let listener = lab
            .netns("y/a")
            .unwrap()
            .run(|| std::net::TcpListener::bind("0.0.0.0:8080"))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let client = lab
            .netns("x/a")
            .unwrap()
            .run(|| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None))
            .unwrap()
            .unwrap();
        client.set_nonblocking(true).unwrap();
        let connect = tokio::net::TcpSocket::from_std_stream(client.into())
            .connect(std::net::SocketAddr::new(v4, 8080));
        let (conn, accepted) = tokio::join!(connect, listener.accept());
        let (mut conn, mut server) = (conn.unwrap(), accepted.unwrap().0);
        exchange(&mut conn, &mut server).await;

        // Probes run all along: some must pass, others must not, never the other way.
        let probes = [
            ("x/a", "y/a", 80, true),
            ("x/b", "y/a", 80, false),
            ("y/a", "x/a", 80, false),
            ("x/a", "y/b", 81, true),
        ];
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let wrong = Arc::new(AtomicUsize::new(0));
        let rounds = Arc::new(AtomicUsize::new(0));
        let prober = {
            let (lab, stop, wrong, rounds) = (
                Arc::clone(&lab),
                Arc::clone(&stop),
                Arc::clone(&wrong),
                Arc::clone(&rounds),
            );
            tokio::spawn(async move {
                let mut running = tokio::task::JoinSet::new();
                while !stop.load(Ordering::Relaxed) {
                    for (from, to, port, want) in probes {
                        let (lab, wrong) = (Arc::clone(&lab), Arc::clone(&wrong));
                        running.spawn(async move {
                            let got = lab
                                .probe(from, to, port, Protocol::Tcp, Family::IPv4)
                                .await
                                .unwrap();
                            if got != want {
                                eprintln!("{from} -> {to}:{port}: got {got}, want {want}");
                                wrong.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                while running.join_next().await.is_some() {}
            })
        };

        tokio::time::sleep(Duration::from_secs(1)).await;
        first.stop().await.unwrap();
        // No agent at all for a while: the pinned programs and maps keep enforcing.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut second = start_agent(&lab, 0, &api, &mut pins);
        second.ready(CONVERGE).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        prober.await.unwrap();

        assert_eq!(
            wrong.load(Ordering::Relaxed),
            0,
            "a probe saw the wrong verdict"
        );
        assert!(rounds.load(Ordering::Relaxed) >= 15, "probes ran all along");

        // The connection opened under the first agent still carries data both ways.
        exchange(&mut conn, &mut server).await;

        let status = second.status.borrow().clone();
        assert!(status.endpoints.iter().all(|e| e.attached), "{status}");
        second.stop().await.unwrap();
        drop(conn);
        drop(server);
        Arc::into_inner(lab)
            .expect("probes finished")
            .shutdown()
            .await;
    });
}

#[test]
fn enforcement_outlives_an_api_outage_and_the_watch_recovers() {
    block_on(async {
        let lab = Lab::network(&standard_with(""), &LabConfig::default())
            .await
            .unwrap();
        let api = FakeApi::start().await;
        publish(&api, lab.cluster(), &[]);
        api.apply(policy("x", "guard", "{podSelector: {}}"));
        let mut pins = Pins(Vec::new());
        let mut agent = start_agent(&lab, 0, &api, &mut pins);
        agent.ready(CONVERGE).await.unwrap();
        let guarded = |p: &Probe| to_self(p) || ns(&p.to) != Some("x");
        converge(&lab, guarded).await;

        // The API goes down; enforcement goes on, and the agent says what is wrong.
        api.set_up(false).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_reachability(&lab.probe_all().await.unwrap(), guarded);
        let errors = agent.status.borrow().errors.clone();
        assert!(errors.iter().any(|e| e.contains("watching")), "{errors:?}");

        // Meanwhile the policy changes, and the history the watch would resume from is
        // gone: when the API is back, the watch gets 410 Gone and lists again.
        api.delete("NetworkPolicy", "x", "guard");
        api.apply(policy("y", "guard", "{podSelector: {}}"));
        api.compact();
        api.set_up(true).await;
        converge(&lab, |p| to_self(p) || ns(&p.to) != Some("y")).await;
        let metrics = agent.metrics.render();
        let restarts = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("policy_agent_watch_restarts_total{resource=\"networkpolicies\"} ")
            })
            .and_then(|n| n.parse::<u64>().ok());
        assert!(restarts >= Some(1), "{metrics}");

        // And later changes still apply.
        api.delete("NetworkPolicy", "y", "guard");
        converge(&lab, |_| true).await;

        // The local API answers like `policy-agent status` asks it.
        let socket =
            std::env::temp_dir().join(format!("{}{}-agent1.sock", topology::PIN_PREFIX, lab.id()));
        let status = api::status(&socket).await.unwrap();
        assert!(status.ready && status.endpoints.len() == 4, "{status}");
        agent.stop().await.unwrap();
        lab.shutdown().await;
    });
}

/// For each kind of work the agent's loop did, how many turns and the bound of the
/// longest (the smallest bucket of `policy_agent_loop_busy_seconds` that holds them all).
fn longest_turns(agent: &agent::AgentHandle) -> String {
    let metrics = agent.metrics.render();
    let mut buckets: std::collections::BTreeMap<String, Vec<(f64, u64)>> = Default::default();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("policy_agent_loop_busy_seconds_bucket{") else {
            continue;
        };
        let (labels, count) = rest.split_once("} ").expect("a sample");
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim_matches('"').to_owned())
                .expect("label")
        };
        let le = label("le=").parse().unwrap_or(f64::INFINITY);
        let count = count.trim().parse().expect("a count");
        buckets.entry(label("work=")).or_default().push((le, count));
    }
    buckets
        .iter()
        .map(|(work, counts)| {
            let turns = counts.iter().map(|&(_, n)| n).max().unwrap_or(0);
            let bound = (counts.iter())
                .filter(|&&(_, n)| n == turns)
                .map(|&(le, _)| le)
                .fold(f64::INFINITY, f64::min);
            format!("{work}: {turns} turns, each <= {:.1} ms", bound * 1000.0)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A counter of the agent's metrics.
fn counter(agent: &AgentHandle, name: &str) -> u64 {
    let metrics = agent.metrics.render();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}_total ")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

/// CIDR entries of the backoff test's agent.
const SMALL_CIDR_MAP: u32 = 64;
/// A ruleset no compiled policy uses: where a test writes entries behind the agent's back.
const FOREIGN_RULESET: u32 = 0xFFFF_0000;
/// The policy id of an entry written behind the agent's back.
const FOREIGN_POLICY_ID: u32 = 0xFFFF;

#[test]
fn a_full_map_backs_off_keeps_the_last_state_and_a_full_resync_undoes_foreign_writes() {
    use aya::maps::{LpmTrie, Map, MapData, lpm_trie::Key};
    use policy_common::maps::{
        CidrKey, CidrValue, EP_INGRESS_ISOLATED, EndpointInfo, IpKey, IpcacheValue,
        POLICY_PREFIX_ANY_PROTO, PolicyKey, PolicyValue, names, peer_kind,
    };
    block_on(async {
        let lab = Lab::network(&standard_with(""), &LabConfig::default())
            .await
            .unwrap();
        let api = FakeApi::start().await;
        publish(&api, lab.cluster(), &[]);
        let mut pins = Pins(Vec::new());
        // A small CIDR map, quick to fill.
        let sizes = MapSizes {
            cidr: SMALL_CIDR_MAP,
            ..MapSizes::default()
        };
        let mut agent = start_agent_with(&lab, 0, &api, &mut pins, Duration::ZERO, sizes);
        agent.ready(CONVERGE).await.unwrap();
        converge(&lab, |_| true).await;

        // Something else fills CIDR (a tool, leftovers): the next sync that needs a prefix
        // there fails, and keeps failing (CIDR entries are removed only once the new ones
        // are in, since a missing `except` hole would let its prefix match).
        let pin_dir = pins.0[0].clone();
        let mut cidr: LpmTrie<MapData, CidrKey, CidrValue> = LpmTrie::try_from(Map::LpmTrie(
            MapData::from_pin(pin_dir.join(names::CIDR)).unwrap(),
        ))
        .unwrap();
        let mut junk = Vec::new();
        for i in 0u32.. {
            // 198.18.0.0/15: benchmarking addresses, never a pod's; a ruleset nobody uses.
            let [_, _, hi, lo] = i.to_be_bytes();
            let (len, data) = CidrKey::new(FOREIGN_RULESET, IpKey::v4([198, 18, hi, lo]), 32);
            let key = Key::new(len, data);
            match cidr.insert(
                &key,
                CidrValue {
                    class: 1,
                    ..CidrValue::default()
                },
                0,
            ) {
                Ok(()) => junk.push(key),
                Err(_) => break,
            }
        }
        assert!(!junk.is_empty(), "CIDR could not be filled");
        let x_admits_a = |p: &Probe| to_self(p) || ns(&p.to) != Some("x") || p.from == "x/a";
        api.apply(policy(
            "x",
            "guard",
            "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {app: a}}}, {ipBlock: {cidr: 192.0.2.0/24}}]}]}",
        ));
        // It retries with backoff, not in a loop, and says why.
        tokio::time::timeout(CONVERGE, agent.status.wait_for(|s| s.sync_failures >= 3))
            .await
            .expect("the agent retries")
            .unwrap();
        let status = agent.status.borrow().clone();
        assert!(
            status
                .sync_error
                .as_deref()
                .is_some_and(|e| e.contains(names::CIDR)),
            "{status}"
        );
        assert!(status.to_string().contains("FAILING"), "{status}");
        // Meanwhile the last state stays enforced. The waits double (three failures in,
        // they are near a second): a few more attempts in the next seconds, not dozens.
        let before = counter(&agent, "policy_agent_sync_failures");
        let t = Instant::now();
        assert_reachability(&lab.probe_all().await.unwrap(), |_| true);
        tokio::time::sleep(Duration::from_secs(8)).await;
        let more = counter(&agent, "policy_agent_sync_failures") - before;
        assert!(
            more <= 5,
            "{more} more failed syncs in {:?}: the agent does not back off",
            t.elapsed()
        );

        // Room is made: a retry applies the policy.
        for key in &junk {
            cidr.remove(key).unwrap();
        }
        converge(&lab, x_admits_a).await;
        tokio::time::timeout(CONVERGE, agent.status.wait_for(|s| s.sync_failures == 0))
            .await
            .unwrap()
            .unwrap();
        agent.stop().await.unwrap();

        // An agent that compares the maps with what it wrote every second.
        let sizes = MapSizes::default();
        let agent = start_agent_with(&lab, 0, &api, &mut pins, Duration::from_secs(1), sizes);
        let mut agent = agent;
        agent.ready(CONVERGE).await.unwrap();
        converge(&lab, x_admits_a).await;
        // Someone writes an entry that lets x/b into x's pods, behind the agent's back.
        let endpoints: aya::maps::HashMap<MapData, u32, EndpointInfo> =
            aya::maps::HashMap::try_from(Map::HashMap(
                MapData::from_pin(pin_dir.join(names::ENDPOINTS)).unwrap(),
            ))
            .unwrap();
        let ruleset = endpoints
            .iter()
            .map(Result::unwrap)
            .find(|(_, e)| e.flags & EP_INGRESS_ISOLATED != 0)
            .map(|(_, e)| e.ingress_ruleset)
            .expect("x's pods are isolated");
        let ipcache: aya::maps::HashMap<MapData, IpKey, IpcacheValue> =
            aya::maps::HashMap::try_from(Map::HashMap(
                MapData::from_pin(pin_dir.join(names::IPCACHE)).unwrap(),
            ))
            .unwrap();
        let x_b = &lab.cluster().pods[&ObjectRef::new("x", "b")];
        let identity = x_b
            .ips
            .iter()
            .map(|ip| {
                ipcache
                    .get(&policy_agent::compiler::ip_key(*ip), 0)
                    .unwrap()
                    .identity
            })
            .next()
            .unwrap();
        let drift_before = counter(&agent, "policy_agent_drift_corrected");
        let mut map: LpmTrie<MapData, PolicyKey, PolicyValue> = LpmTrie::try_from(Map::LpmTrie(
            MapData::from_pin(pin_dir.join(names::POLICY)).unwrap(),
        ))
        .unwrap();
        map.insert(
            &Key::new(
                POLICY_PREFIX_ANY_PROTO,
                PolicyKey::new(ruleset, peer_kind::IDENTITY, identity, 0, 0),
            ),
            // Any policy id: the datapath only reports it.
            PolicyValue::allow(FOREIGN_POLICY_ID, POLICY_PREFIX_ANY_PROTO),
            0,
        )
        .unwrap();
        // It works (unless the resync already undid it)...
        let open = lab
            .probe("x/b", "x/a", 81, Protocol::Tcp, Family::IPv4)
            .await
            .unwrap();
        assert!(
            open || counter(&agent, "policy_agent_drift_corrected") > drift_before,
            "the foreign entry should let x/b in until the resync"
        );
        // ... until the full resync removes it.
        converge(&lab, x_admits_a).await;
        let drift = counter(&agent, "policy_agent_drift_corrected") - drift_before;
        assert!(drift >= 1, "the agent corrected {drift} entries");
        assert!(
            agent
                .status
                .borrow()
                .errors
                .iter()
                .any(|e| e.contains("full resync")),
            "{}",
            *agent.status.borrow()
        );
        agent.stop().await.unwrap();
        lab.shutdown().await;
    });
}

#[test]
fn a_rejected_version_keeps_the_last_good_one_in_force_with_an_event_and_metrics() {
    block_on(async {
        let lab = Lab::network(&standard_with(""), &LabConfig::default())
            .await
            .unwrap();
        let api = FakeApi::start().await;
        publish(&api, lab.cluster(), &[]);
        let guard =
            "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]}";
        api.apply(policy("x", "guard", guard));
        let mut pins = Pins(Vec::new());
        let mut agent = start_agent(&lab, 0, &api, &mut pins);
        agent.ready(CONVERGE).await.unwrap();
        let x_admits_a = |p: &Probe| to_self(p) || ns(&p.to) != Some("x") || p.from == "x/a";
        converge(&lab, x_admits_a).await;

        // A version the agent cannot enforce as written (the fake API server does not
        // validate; a real one may accept what the agent cannot enforce): the last good
        // version stays, and the operator is told where they look.
        api.apply(policy(
            "x",
            "guard",
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
        ));
        // A pod whose address cannot be read keeps its last good version too.
        let mut y_b = pod_object(lab.cluster(), "y", "b");
        y_b["status"]["podIPs"] = json!([{"ip": "10.100.0.4.7"}]);
        api.apply(y_b);
        let rejected = |s: &agent::status::Status| {
            s.rejected
                .iter()
                .any(|r| r.contains("x/guard") && r.contains("last good"))
                && s.rejected
                    .iter()
                    .any(|r| r.contains("y/b") && r.contains("podIPs"))
        };
        tokio::time::timeout(CONVERGE, agent.status.wait_for(rejected))
            .await
            .expect("the rejections are reported")
            .unwrap();
        let status = agent.status.borrow().clone();
        assert!(
            status
                .rejected
                .iter()
                .any(|r| r.contains("spec.ingress[0].from[0].ipBlock.cidr")),
            "{status}"
        );
        assert_reachability(&lab.probe_all().await.unwrap(), x_admits_a);
        let metrics = agent.metrics.render();
        for line in [
            r#"policy_agent_rejected_objects{reason="invalid",in_force="last-good"} 1"#,
            r#"policy_agent_rejected_objects{reason="unreadable",in_force="last-good"} 1"#,
        ] {
            assert!(metrics.contains(line), "{line} in {metrics}");
        }
        // An Event on the policy, as `kubectl describe` shows it.
        let start = Instant::now();
        let event = loop {
            let found = api.events().into_iter().find(|e| {
                e["regarding"]["name"] == "guard" && e["regarding"]["kind"] == "NetworkPolicy"
            });
            match found {
                Some(e) => break e,
                None if start.elapsed() < CONVERGE => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => panic!("no Event on x/guard: {:?}", api.events()),
            }
        };
        assert_eq!(event["type"], "Warning", "{event}");
        assert_eq!(event["reason"], kubernetes::REJECTED_REASON, "{event}");
        assert_eq!(event["metadata"]["namespace"], "x", "{event}");
        let note = event["note"].as_str().unwrap();
        assert!(
            note.contains("ipBlock.cidr") && note.contains("last good"),
            "{note}"
        );

        // A restarted agent never saw the good version: the policy is enforced fail-closed
        // (its pods isolated, nothing allowed), never open.
        agent.stop().await.unwrap();
        let mut agent = start_agent(&lab, 0, &api, &mut pins);
        agent.ready(CONVERGE).await.unwrap();
        converge(&lab, |p| to_self(p) || ns(&p.to) != Some("x")).await;
        let status = agent.status.borrow().clone();
        assert!(
            status
                .rejected
                .iter()
                .any(|r| r.contains("x/guard") && r.contains("fail-closed")),
            "{status}"
        );

        // Fixed: enforced as written, and no longer reported.
        api.apply(policy("x", "guard", guard));
        api.apply(pod_object(lab.cluster(), "y", "b"));
        converge(&lab, x_admits_a).await;
        tokio::time::timeout(CONVERGE, agent.status.wait_for(|s| s.rejected.is_empty()))
            .await
            .expect("nothing is rejected any more")
            .unwrap();
        agent.stop().await.unwrap();
        lab.shutdown().await;
    });
}

/// The scheduled pod of the CNI test: no address yet, as the kubelet has not reported one.
const NEW_POD: &str = r#"
kind: Pod
metadata: {name: new, namespace: x, labels: {app: new}}
spec: {containers: [{name: c, ports: [{containerPort: 80, name: http}]}]}
status: {podIPs: [{ip: 10.100.0.9}]}
---
kind: NetworkPolicy
metadata: {name: new-pod, namespace: x}
spec:
  podSelector: {matchLabels: {app: new}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: a}}}]
"#;

#[test]
fn a_pod_the_watch_has_not_delivered_is_fetched_when_its_sandbox_is_added() {
    block_on(async {
        let new = ObjectRef::new("x", "new");
        let config = LabConfig {
            deferred: vec![new.clone()],
            ..LabConfig::default()
        };
        let mut lab = Lab::network(&standard_with(NEW_POD), &config)
            .await
            .unwrap();
        let api = FakeApi::start().await;
        publish(&api, lab.cluster(), &["x/new"]);
        let mut pod = api_objects(lab.cluster())
            .into_iter()
            .find(|o| o["kind"] == "Pod" && o["metadata"]["name"] == "new")
            .unwrap();
        pod["status"] = json!({});

        let mut pins = Pins(Vec::new());
        let instance = format!("{}{}-cni", topology::PIN_PREFIX, lab.id());
        let socket = socket_of(&instance);
        let mut agent = agent::spawn(
            test_config(
                &mut pins,
                instance,
                &topology::node_name(0),
                lab.node_netns_name(0),
                format!("kubernetes ({})", api.url),
            ),
            Source {
                events: kubernetes::watch(api.client(), &topology::node_name(0)),
                pods: Some(kubernetes::PodLookup::new(api.client())),
            },
        )
        .expect("agent starts");
        agent.ready(CONVERGE).await.unwrap();
        // Scheduled after the agent listed: only a GET finds it, the watch has not told.
        api.apply_unwatched(pod);
        assert!(
            agent
                .status
                .borrow()
                .endpoints
                .iter()
                .all(|e| e.pod != "x/new")
        );

        // The runtime creates the sandbox through ptp and the policy plugin.
        let runtime = CniRuntime::new(
            runtime::lab_conflist(Some(&socket), &LabConfig::default()),
            runtime::bin_dirs(true).unwrap(),
        );
        lab.start_pod_with(&new, Some(&runtime))
            .expect("ADD succeeds with the pod fetched from the API server");
        let probe = |to: &'static str| lab.probe("x/new", to, 80, Protocol::Tcp, Family::IPv4);
        assert!(probe("x/a").await.unwrap(), "egress to app=a is allowed");
        assert!(!probe("x/b").await.unwrap(), "egress elsewhere is denied");
        let status = agent.status.borrow().clone();
        assert!(
            status
                .endpoints
                .iter()
                .any(|e| e.pod == "x/new" && e.attached && e.egress_isolated),
            "{status}"
        );
        agent.stop().await.unwrap();
        lab.shutdown().await;
    });
}

/// POLICY entries the agent of the capacity test may write: room for a few small
/// policies, far from enough for the huge one.
const SMALL_POLICY_MAP: u32 = 64;
/// Rules of the huge policy: each an ipBlock with an `except`, on its own port.
const HUGE_RULES: usize = 40;

#[test]
fn a_policy_that_does_not_fit_isolates_its_pods_and_the_others_keep_syncing() {
    block_on(async {
        let lab = Lab::network(&standard_with(""), &LabConfig::default())
            .await
            .unwrap();
        let api = FakeApi::start().await;
        publish(&api, lab.cluster(), &[]);
        let mut pins = Pins(Vec::new());
        let sizes = MapSizes {
            policy: SMALL_POLICY_MAP,
            ..MapSizes::default()
        };
        let mut agent = start_agent_with(&lab, 0, &api, &mut pins, agent::FULL_RESYNC, sizes);
        agent.ready(CONVERGE).await.unwrap();
        converge(&lab, |_| true).await;

        // Tenant y's huge policy: its first rule would admit TCP 80 from 10.0.0.0/8 (every
        // lab pod), but it does not fit, so it allows nothing and y/b is isolated.
        let rules: Vec<String> = (0..HUGE_RULES)
            .map(|i| {
                let port = if i == 0 { 80 } else { 1000 + i };
                format!(
                    "{{from: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.2.{i}.0/24]}}}}], ports: [{{port: {port}}}]}}"
                )
            })
            .collect();
        let huge = format!(
            "{{podSelector: {{matchLabels: {{app: b}}}}, ingress: [{}]}}",
            rules.join(", ")
        );
        api.apply(policy("y", "huge", &huge));
        converge(&lab, |p| to_self(p) || p.to != "y/b").await;
        let status = tokio::time::timeout(
            CONVERGE,
            agent
                .status
                .wait_for(|s| s.rejected.iter().any(|r| r.contains("y/huge"))),
        )
        .await
        .expect("the rejection is reported")
        .unwrap()
        .clone();
        assert!(status.ready, "{status}");
        let rejection = status
            .rejected
            .iter()
            .find(|r| r.contains("y/huge"))
            .unwrap();
        assert!(
            rejection.contains("POLICY entries")
                && rejection.contains(&format!("of {SMALL_POLICY_MAP} are free"))
                && rejection.contains("raise --map-size policy="),
            "{rejection}"
        );
        let policy_map = status.maps.iter().find(|m| m.name == "POLICY").unwrap();
        assert_eq!(policy_map.capacity, u64::from(SMALL_POLICY_MAP));
        assert!(policy_map.entries <= SMALL_POLICY_MAP as usize);

        // Tenant x's later change applies: x admits only its own pods.
        api.apply(policy(
            "x",
            "guard",
            "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}",
        ));
        converge(&lab, |p| {
            to_self(p) || (p.to != "y/b" && (ns(&p.to) != Some("x") || ns(&p.from) == Some("x")))
        })
        .await;

        // The huge policy goes: y/b is open again, and nothing is rejected.
        api.delete("NetworkPolicy", "y", "huge");
        converge(&lab, |p| {
            to_self(p) || ns(&p.to) != Some("x") || ns(&p.from) == Some("x")
        })
        .await;
        let status =
            tokio::time::timeout(CONVERGE, agent.status.wait_for(|s| s.rejected.is_empty()))
                .await
                .expect("the rejection goes with the policy")
                .unwrap()
                .clone();
        assert!(status.full.is_empty(), "{status}");
        agent.stop().await.unwrap();
    });
}

/// Pods on the agent's node in the big cluster: a compile of it takes seconds in a debug
/// build.
const BIG_LOCAL_PODS: usize = 2000;
/// Pods on other nodes in the big cluster.
const BIG_REMOTE_PODS: usize = 1000;
/// Policies in the big cluster.
const BIG_POLICIES: usize = 1000;
/// Namespaces the big cluster's pods and policies spread over.
const BIG_NAMESPACES: usize = 20;
/// Distinct `app` labels in the big cluster.
const BIG_APPS: usize = 100;
/// How long the agent may take to read, compile and write the big cluster.
const BIG_READY: Duration = Duration::from_secs(300);
/// Pause between two rounds of questions to the agent.
const ASK_EVERY: Duration = Duration::from_millis(10);
/// The CNI plugin's deadline for a CHECK (its default).
const CHECK_DEADLINE: Duration = Duration::from_secs(10);
/// Start of the names (namespace, pins, directory) of the big-cluster test, followed by
/// the test process's id, so that a killed run's leftovers are swept.
const BIG_PREFIX: &str = "polagent-big-";

/// The manifests of the big cluster.
fn big_cluster_yaml() -> String {
    let mut yaml = String::new();
    for n in 0..BIG_NAMESPACES {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{n}, labels: {{team: t-{}}}}}\n",
            n % 4
        ));
    }
    for i in 0..BIG_LOCAL_PODS + BIG_REMOTE_PODS {
        let (node, net) = if i < BIG_LOCAL_PODS {
            (topology::node_name(0), 64)
        } else {
            (topology::node_name(1), 65)
        };
        let ip = format!("10.{net}.{}.{}", i / 256, i % 256);
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p-{i}, namespace: ns-{}, labels: \
             {{app: app-{}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: i, \
             ports: [{{name: http, containerPort: 80}}]}}]}}\nstatus: {{phase: Running, podIP: \
             {ip}, podIPs: [{{ip: {ip}}}]}}\n",
            i % BIG_NAMESPACES,
            i % BIG_APPS
        ));
    }
    for i in 0..BIG_POLICIES {
        yaml.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np-{i}, \
             namespace: ns-{}}}\nspec:\n  podSelector: {{matchLabels: {{app: app-{}}}}}\n  \
             policyTypes: [Ingress, Egress]\n  ingress:\n  - from:\n    - podSelector: \
             {{matchLabels: {{app: app-{}}}}}\n      namespaceSelector: {{matchLabels: {{team: t-{}}}}}\n    \
             - ipBlock: {{cidr: 10.{}.0.0/16, except: [10.{}.{}.0/24]}}\n    ports: [{{protocol: TCP, \
             port: {}}}, {{protocol: TCP, port: http}}]\n  egress:\n  - to: [{{podSelector: \
             {{matchLabels: {{app: app-{}}}}}}}]\n    ports: [{{protocol: UDP, port: {}, endPort: {}}}]\n",
            i % BIG_NAMESPACES,
            i % BIG_APPS,
            (i * 7) % BIG_APPS,
            i % 4,
            100 + i % 50,
            100 + i % 50,
            i % 256,
            8000 + i % 100,
            (i * 13) % BIG_APPS,
            5000 + i % 10,
            5100 + i % 10,
        ));
    }
    yaml
}

/// A directory of manifests, removed when dropped.
struct ManifestDir(PathBuf);

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent compiles on a blocking thread, so its local API keeps answering: a CNI CHECK
/// (which the agent's own task answers) is answered while the status says the first sync
/// of a big cluster is running, and before that sync ends.
#[test]
fn the_local_api_answers_while_a_big_cluster_compiles() {
    block_on(async {
        policy_agent::netns::sweep_stale(BIG_PREFIX);
        bpffs::sweep_stale(BIG_PREFIX);
        let name = format!("{BIG_PREFIX}{}", std::process::id());
        // An empty namespace for the pods' interfaces: none is ever found, nothing leaves it.
        let netns = policy_agent::netns::NetNs::create(&name).expect("namespace");
        let dir = ManifestDir(std::env::temp_dir().join(&name));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(dir.0.join("cluster.yaml"), big_cluster_yaml()).unwrap();

        let mut pins = Pins(Vec::new());
        let socket = socket_of(&name);
        let config = test_config(
            &mut pins,
            name.clone(),
            &topology::node_name(0),
            netns.name(),
            format!("dir:{}", dir.0.display()),
        );
        let agent = agent::spawn(
            config,
            policy_agent::source::directory::watch(dir.0.clone()).unwrap(),
        )
        .expect("agent starts");

        let check = api::EndpointRequest {
            namespace: "ns-0".into(),
            name: "p-0".into(),
            uid: None,
            container_id: "never-added".into(),
            interface: None,
            host_interfaces: Vec::new(),
            ips: Vec::new(),
        };
        let start = Instant::now();
        let (mut worst_status, mut worst_check) = (Duration::ZERO, Duration::ZERO);
        let (mut rounds, mut during_sync) = (0u32, 0u32);
        let status = loop {
            assert!(
                start.elapsed() < BIG_READY,
                "the agent was not ready within {BIG_READY:?}"
            );
            tokio::time::sleep(ASK_EVERY).await;
            let asked = Instant::now();
            // The socket appears once the API server task runs.
            let Ok(before) = api::status(&socket).await else {
                continue;
            };
            worst_status = worst_status.max(asked.elapsed());
            if before.ready {
                break before;
            }
            if !before.syncing {
                continue;
            }
            rounds += 1;
            let asked = Instant::now();
            let (path, request) = (socket.clone(), check.clone());
            let reply = tokio::task::spawn_blocking(move || {
                api::endpoint_check(&path, request, CHECK_DEADLINE)
            })
            .await
            .unwrap()
            .expect("CHECK answered");
            worst_check = worst_check.max(asked.elapsed());
            assert!(
                matches!(reply, api::EndpointReply::Failed { .. }),
                "{reply:?}"
            );
            let after = api::status(&socket).await.expect("status answered");
            // The same sync was still running after the agent's task answered.
            if after.syncing && after.syncs == before.syncs {
                during_sync += 1;
            }
        };
        let sync = status.last_sync.expect("synced");
        println!(
            "big cluster ({BIG_LOCAL_PODS} local pods, {BIG_REMOTE_PODS} remote, \
             {BIG_POLICIES} policies): first sync {} ms after the change; {during_sync} of \
             {rounds} CHECKs answered while it ran; worst status latency {worst_status:?}, \
             worst CHECK latency {worst_check:?}",
            sync.latency_ms
        );
        println!(
            "longest turns of the agent's loop, by work: {}",
            longest_turns(&agent)
        );
        assert!(
            during_sync > 0,
            "no CHECK was answered while the sync ran ({rounds} asked while it was running)"
        );
        assert_eq!(status.policies, BIG_POLICIES);
        agent.stop().await.unwrap();
        drop(netns);
    })
}
