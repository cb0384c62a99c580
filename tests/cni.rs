//! Pods handed to the agent by the CNI plugin before they start: the lab creates each pod
//! through the reference `ptp` plugin and `policy-agent-cni`, as a runtime does, with a
//! real agent per node.

use std::{process::Command, time::Duration};

use policy_agent::{
    cni::spec::PLUGIN_TYPE,
    lab::{Lab, LabConfig, runtime},
    model::{ObjectRef, Protocol},
    report::Family,
};
use policy_tests::{block_on, standard_with};
use serde_json::{Value, json};
use socket2::{Domain, Socket, Type};

/// A pod the lab leaves unstarted, so that a test creates its sandbox.
const NEW_POD: &str = r#"
kind: Pod
metadata: {name: new, namespace: x, labels: {app: new}}
spec: {containers: [{name: c, ports: [{containerPort: 80, name: http}, {containerPort: 80, protocol: UDP}]}]}
status: {podIPs: [{ip: 10.100.0.9}]}
"#;
const NEW_IP: &str = "10.100.0.9";

/// x/new may only reach pods app=a on TCP 80, and nobody may reach it.
const NEW_POD_POLICY: &str = r#"
kind: NetworkPolicy
metadata: {name: new-pod, namespace: x}
spec:
  podSelector: {matchLabels: {app: new}}
  policyTypes: [Ingress, Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: a}}}]
    ports: [{port: 80}]
"#;

/// Every protocol, for a packet capture socket.
const ETH_P_ALL: u16 = 0x0003;

fn new_pod() -> ObjectRef {
    ObjectRef::new("x", "new")
}

fn config(fail_open: bool) -> LabConfig {
    LabConfig {
        fail_open,
        deferred: vec![new_pod()],
        ..LabConfig::default()
    }
}

async fn start(fail_open: bool) -> Lab {
    let cluster = standard_with(&format!("{NEW_POD}\n---\n{NEW_POD_POLICY}"));
    Lab::start(&cluster, &config(fail_open))
        .await
        .expect("lab starts")
}

/// Captures every frame that reaches a host's interface.
struct Capture(Socket);

impl Capture {
    fn on(lab: &Lab, host: &str) -> Self {
        // ETH_P_ALL, in network byte order.
        let all = ETH_P_ALL.to_be();
        let socket = lab
            .netns(host)
            .unwrap()
            .run(|| Socket::new(Domain::PACKET, Type::RAW, Some(i32::from(all).into())))
            .unwrap()
            .unwrap();
        socket.set_nonblocking(true).unwrap();
        Self(socket)
    }

    /// IPv4 packets captured so far whose source is `ip`.
    fn from(&self, ip: &str) -> usize {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        let mut count = 0;
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        while let Ok(n) = self.0.recv(&mut buf) {
            // SAFETY: recv initialised the first n bytes.
            let frame: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            let ipv4 = frame.len() >= 34 && frame[12..14] == [0x08, 0x00];
            if ipv4 && frame[26..30] == ip.octets() {
                count += 1;
            }
        }
        count
    }
}

#[test]
fn the_first_packet_of_a_new_pod_is_already_enforced() {
    block_on(async {
        let mut lab = start(false).await;
        let capture = Capture::on(&lab, "x/b");
        // Not through start_pod: nothing may happen between ADD's return and the traffic.
        lab.start_pod_with(&new_pod(), None).expect("ADD succeeds");
        let denied_tcp = lab.probe("x/new", "x/b", 80, Protocol::Tcp, Family::IPv4);
        let denied_udp = lab.probe("x/new", "x/b", 80, Protocol::Udp, Family::IPv4);
        let allowed = lab.probe("x/new", "x/a", 80, Protocol::Tcp, Family::IPv4);
        let (denied_tcp, denied_udp, allowed) = tokio::join!(denied_tcp, denied_udp, allowed);
        assert!(
            allowed.unwrap(),
            "egress to x/a:80 is allowed at once, replies included"
        );
        assert!(!denied_tcp.unwrap(), "egress to x/b:80/TCP is denied");
        assert!(!denied_udp.unwrap(), "egress to x/b:80/UDP is denied");
        assert_eq!(capture.from(NEW_IP), 0, "no packet of x/new reached x/b");
        assert!(
            !lab.probe("x/a", "x/new", 80, Protocol::Tcp, Family::IPv4)
                .await
                .unwrap(),
            "ingress to x/new is denied"
        );
        lab.shutdown().await;
    });
}

#[test]
fn with_the_agent_down_add_fails_and_the_pod_gets_no_network() {
    block_on(async {
        let mut lab = start(false).await;
        lab.stop_agent(0).await.unwrap();
        let e = lab.start_pod_with(&new_pod(), None).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("not reachable"), "{e}");
        // The runtime deleted what ptp had made: the node has no route to the pod.
        let node = lab.node_netns_name(0).to_owned();
        let routes = Command::new("ip")
            .args(["-n", &node, "route", "show", NEW_IP])
            .output()
            .unwrap();
        assert!(
            routes.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&routes.stdout)
        );
        assert!(lab.host("x/new").is_err(), "the sandbox is gone");

        // Once the agent is back, the runtime's retry succeeds, enforced.
        lab.start_agent(0).await.unwrap();
        lab.start_pod(&new_pod()).await.expect("ADD succeeds");
        assert!(
            !lab.probe("x/new", "x/b", 80, Protocol::Tcp, Family::IPv4)
                .await
                .unwrap()
        );
        lab.shutdown().await;
    });
}

#[test]
fn fail_open_starts_the_pod_unprotected_and_status_says_so() {
    block_on(async {
        let mut lab = start(true).await;
        lab.stop_agent(0).await.unwrap();
        lab.start_pod_with(&new_pod(), None)
            .expect("fail-open ADD succeeds");
        assert!(
            lab.probe("x/a", "x/new", 80, Protocol::Tcp, Family::IPv4)
                .await
                .unwrap(),
            "unprotected while the agent is down"
        );
        lab.start_agent(0).await.unwrap();
        let status = lab.status(0).unwrap();
        let cni = status
            .cni
            .clone()
            .expect("the lab's agents know the CNI configuration");
        assert!(cni.fail_open, "{cni:?}");
        assert!(status.to_string().contains("FAIL-OPEN"), "{status}");
        // Once the kubelet reports the pod's address, the agent finds the pod and enforces it.
        lab.report_addresses().await.unwrap();
        assert!(
            !lab.probe("x/a", "x/new", 80, Protocol::Tcp, Family::IPv4)
                .await
                .unwrap()
        );
        lab.shutdown().await;
    });
}

#[test]
fn an_agent_restarted_before_the_kubelet_reports_the_address_keeps_enforcing_the_pod() {
    block_on(async {
        let mut lab = start(false).await;
        lab.start_pod_with(&new_pod(), None).expect("ADD succeeds");
        // Restarted before the kubelet reported x/new's address: only the sandbox the
        // plugin reported, saved by the previous agent, says where x/new is.
        lab.stop_agent(0).await.unwrap();
        lab.start_agent(0).await.unwrap();
        let probe = |to: &'static str| lab.probe("x/new", to, 80, Protocol::Tcp, Family::IPv4);
        let (allowed, denied) = tokio::join!(probe("x/a"), probe("x/b"));
        assert!(allowed.unwrap(), "egress to x/a:80 is still allowed");
        assert!(!denied.unwrap(), "egress to x/b:80 is still denied");
        let status = lab.status(0).unwrap();
        assert!(
            status
                .endpoints
                .iter()
                .any(|e| e.pod == "x/new" && e.attached && e.egress_isolated),
            "{status}"
        );
        lab.shutdown().await;
    });
}

/// Runs `policy-agent-cni` directly against node 0's agent.
fn plugin(
    lab: &Lab,
    command: &str,
    pod: &str,
    container: &str,
    prev: Option<&Value>,
) -> (bool, Value) {
    let dirs = runtime::bin_dirs(true).unwrap();
    let mut conf = lab.runtime(0).conflist()["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == PLUGIN_TYPE)
        .expect("the policy plugin is chained")
        .clone();
    conf["cniVersion"] = json!(runtime::CNI_VERSION);
    conf["name"] = json!("lab");
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    let (namespace, name) = pod.split_once('/').unwrap();
    let mut child = Command::new(dirs[1].join("policy-agent-cni"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), value)
}

#[test]
fn the_plugin_checks_deletes_and_refuses_against_a_running_agent() {
    block_on(async {
        let mut lab = start(false).await;
        lab.start_pod(&new_pod()).await.unwrap();
        let sandbox = lab.host("x/new").unwrap().sandbox.clone().unwrap();
        let prev = Some(&sandbox.result);
        let id = sandbox.container_id.as_str();

        let (ok, out) = plugin(&lab, "CHECK", "x/new", id, prev);
        assert!(ok, "CHECK of an enforced pod: {out}");
        let (ok, out) = plugin(&lab, "CHECK", "x/new", "another-sandbox", prev);
        assert!(
            !ok && out["code"] == 101,
            "CHECK of a sandbox the agent lacks: {out}"
        );

        let (ok, out) = plugin(&lab, "ADD", "x/ghost", "c-ghost", prev);
        assert!(!ok && out["code"] == 100, "ADD of an unknown pod: {out}");
        assert!(out["msg"].as_str().unwrap().contains("x/ghost"), "{out}");

        for _ in 0..2 {
            let (ok, out) = plugin(&lab, "DEL", "x/new", id, None);
            assert!(ok, "DEL is idempotent: {out}");
        }
        let (ok, out) = plugin(&lab, "CHECK", "x/new", id, prev);
        assert!(!ok && out["code"] == 101, "CHECK after DEL: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        lab.shutdown().await;
    });
}
