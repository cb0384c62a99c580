//! The CLI as a user runs it: the TorchPod example through `lab`, `matrix` and `explain`,
//! rejected policies, and the lab torn down on Ctrl-C.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use policy_agent::lab::resources_of;
use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_policy-agent");
/// The exit status of `matrix`, `explain` and `lab` when objects were rejected.
const EXIT_REJECTED: i32 = 3;

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/torchpod")
}

/// Runs `policy-agent <command> --json --manifests <example>` and parses its output.
fn json_of(command: &str) -> Value {
    let out = Command::new(AGENT)
        .args([command, "--json", "--manifests"])
        .arg(example())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn torchpod_example_enforces_what_the_team_asked_for() {
    let json = json_of("lab");
    let probes = json["probes"].as_array().unwrap();
    assert!(probes.len() > 100, "{} probes", probes.len());

    let office = |h: &str| h.starts_with("192.168.") || h.starts_with("172.17.");
    let dev = |h: &str| h.starts_with("mlab2/torchpod-");
    let backups = ["192.168.0.10", "192.168.0.11"];
    for p in probes {
        let (from, to) = (p["from"].as_str().unwrap(), p["to"].as_str().unwrap());
        let port = p["port"].as_u64().unwrap();
        let tcp = p["protocol"] == "TCP";
        let allowed = p["allowed"].as_bool().unwrap();
        if from == to {
            assert!(allowed, "{p}");
        } else if dev(to) {
            let want = office(from) && tcp && (port == 5900 || port == 7030);
            assert_eq!(allowed, want, "into a dev pod: {p}");
        } else if dev(from) {
            let want = backups.contains(&to) && tcp && port == 22;
            assert_eq!(allowed, want, "out of a dev pod: {p}");
        } else {
            assert!(allowed, "nothing else is isolated: {p}");
        }
    }
}

#[test]
fn ctrl_c_tears_the_lab_down() {
    let mut child = InterruptOnDrop(
        Command::new(AGENT)
            .args(["lab", "--keep", "--manifests"])
            .arg(example())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut waiting = false;
    for line in stderr.lines() {
        if line.unwrap().contains("press Ctrl-C") {
            waiting = true;
            break;
        }
    }
    assert!(waiting, "the lab did not come up");
    assert!(
        !resources_of(pid).is_empty(),
        "the running lab has namespaces and pins"
    );

    kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(resources_of(pid), Vec::<std::path::PathBuf>::new());
}

#[test]
fn matrix_prints_what_the_lab_measures() {
    let matrix = json_of("matrix");
    assert_eq!(matrix, json_of("lab"));
    assert!(matrix["probes"].as_array().unwrap().len() > 100);
}

#[test]
fn an_invalid_policy_is_reported_and_the_others_still_apply() {
    let dir = std::env::temp_dir().join(format!("policy-agent-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("cluster.yaml"),
        r#"
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.9.0.1}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.9.0.2}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("policies.yaml"),
        r#"
kind: NetworkPolicy
metadata: {name: broken, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]}]
---
kind: NetworkPolicy
metadata: {name: deny-a, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}}
"#,
    )
    .unwrap();
    let out = Command::new(AGENT)
        .args(["matrix", "--json", "--manifests"])
        .arg(&dir)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        out.status.code(),
        Some(EXIT_REJECTED),
        "ran, but an object was rejected"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("policies.yaml: NetworkPolicy x/broken rejected, enforced fail-closed")
            && stderr.contains("spec.ingress[0].from[0].ipBlock.except[0]: 192.168.0.0/16 must be strictly within cidr 10.0.0.0/8"),
        "{stderr}"
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let verdict = |from: &str, to: &str| {
        json["probes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["from"] == from && p["to"] == to)
            .unwrap()["allowed"]
            .as_bool()
            .unwrap()
    };
    assert!(
        !verdict("x/b", "x/a"),
        "the valid policy still isolates x/a"
    );
    assert!(
        !verdict("x/a", "x/b"),
        "the rejected policy still isolates x/b (fail-closed), allowing nothing"
    );
}

#[test]
fn explain_names_the_isolating_policy_and_the_rule() {
    let explain = |from: &str, to: &str, port: &str| {
        let out = Command::new(AGENT)
            .args(["explain", "--manifests"])
            .arg(example())
            .args(["--from", from, "--to", to, "--port", port])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let allowed = explain("192.168.7.25", "mlab2/torchpod-0", "5900");
    assert!(allowed.contains(": ALLOWED"), "{allowed}");
    assert!(
        allowed.contains("allowed by mlab2/torchpod-from-office, ingress rule 0"),
        "{allowed}"
    );
    assert!(allowed.contains("The compiled maps agree."), "{allowed}");

    let denied = explain("mlab2/torchpod-0", "tools/builder", "8080");
    assert!(denied.contains(": DENIED"), "{denied}");
    assert!(
        denied.contains("egress of mlab2/torchpod-0: isolated by mlab2/torchpod-to-backups"),
        "{denied}"
    );
    assert!(
        denied.contains("no rule admits tools/builder on TCP/8080"),
        "{denied}"
    );
    assert!(
        denied.contains("ingress of tools/builder: not isolated"),
        "{denied}"
    );
    assert!(
        denied.contains("Warnings:") && denied.contains("DNS (port 53)"),
        "{denied}"
    );
}

/// `GET path` from a local HTTP server: status code and body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, response)
}

#[test]
fn the_agent_follows_an_edited_manifest_directory() {
    // Removed also if the test fails (declared before the lab, so dropped after it).
    let watched = ManifestDir(
        std::env::temp_dir().join(format!("policy-agent-watch-{}", std::process::id())),
    );
    let dir = watched.0.clone();
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(example()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut lab = InterruptOnDrop(
        Command::new(AGENT)
            .args([
                "lab",
                "--watch",
                "--metrics-port",
                &port.to_string(),
                "--manifests",
            ])
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = lab.0.id();

    // Wait for the agents and the first table; learn the socket. Stderr is drained to the
    // end, or the lab would die writing to a closed pipe.
    let (tx, stderr) = std::sync::mpsc::channel();
    let lab_stderr = lab.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(lab_stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut socket = None;
    for line in stderr.iter() {
        if let Some(rest) = line.strip_prefix("node-1: agent socket ") {
            socket = rest.split(' ').next().map(str::to_owned);
        }
        if line.starts_with("watching ") {
            break;
        }
    }
    let socket = socket.expect("the lab names the agent's socket");
    let status = |json: bool| {
        let mut args = vec!["status", "--socket", &socket];
        if json {
            args.push("--json");
        }
        let out = Command::new(AGENT).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let before: Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(before["ready"], true);
    let endpoints = before["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 4);
    assert!(endpoints.iter().all(|e| e["attached"] == true), "{before}");
    assert!(status(false).contains("ingress+egress isolated"));

    // Flow records of drops, as `flows` streams them.
    let mut flows = Command::new(AGENT)
        .args(["flows", "--json", "--verdict", "drop", "--socket", &socket])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let flow_lines = BufReader::new(flows.stdout.take().unwrap());
    let drops = std::thread::spawn(move || {
        flow_lines
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("torchpod-from-office"))
    });

    // Move the VNC port: the office loses 5900 at once.
    let policies = dir.join("torchpod-policies.yaml");
    let text = std::fs::read_to_string(&policies).unwrap();
    std::fs::write(&policies, text.replace("port: 5900}", "port: 5901}")).unwrap();
    let mut changed = None;
    let mut lab_stdout = BufReader::new(lab.0.stdout.take().unwrap()).lines();
    for line in lab_stdout.by_ref() {
        let line = line.unwrap();
        if line.contains("verdict(s) changed") {
            changed = Some(line.clone());
        }
        if changed.is_some() && line.contains("192.168.7.25 -> mlab2/torchpod-0 TCP/5900") {
            assert!(line.ends_with("now denied"), "{line}");
            break;
        }
    }
    assert_eq!(changed.as_deref(), Some("8 verdict(s) changed:"));
    let after: Value = serde_json::from_str(&status(true)).unwrap();
    // Reported, not asserted: timing belongs to benchmarks.
    let latency = after["last_sync"]["latency_ms"].as_u64().unwrap();
    eprintln!("the edit reached the maps {latency} ms after the file changed");

    // The probes after the change were dropped, and the record names the policy.
    let drop = drops.join().unwrap().expect("a drop record");
    let drop: Value = serde_json::from_str(&drop).unwrap();
    assert_eq!(drop["reason"], "policy-denied");
    assert_eq!(drop["isolated_by"][0], "mlab2/torchpod-from-office");

    let (code, metrics) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    for metric in [
        "policy_agent_packets_total{direction=\"ingress\",verdict=\"drop\",reason=\"policy-denied\"}",
        "policy_agent_sync_latency_seconds_count",
        "policy_agent_map_entries{map=\"POLICY\"}",
        "policy_agent_endpoints 4",
    ] {
        assert!(metrics.contains(metric), "{metric} missing from\n{metrics}");
    }
    assert_eq!(http_get(port, "/readyz").0, 200);
    assert_eq!(http_get(port, "/healthz").0, 200);

    let _ = flows.kill();
    let _ = flows.wait();
    kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
    let _rest: Vec<_> = lab_stdout.collect();
    assert!(lab.0.wait().unwrap().success());
    assert_eq!(resources_of(pid), Vec::<std::path::PathBuf>::new());
    assert!(!Path::new(&socket).exists(), "the socket is removed");
}

/// A child process that does not outlive a failed test.
struct KillOnDrop(std::process::Child);

/// A `lab` process that is interrupted, and so tears its namespaces and pins down, if a
/// failed test leaves it running (killed, it would leave them behind).
struct InterruptOnDrop(std::process::Child);

/// How long an interrupted lab may take to tear down before it is killed.
const TEARDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGINT);
        let deadline = std::time::Instant::now() + TEARDOWN_WAIT;
        while matches!(self.0.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two pods on one node; the server accepts nothing.
const DENY_ALL: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: shop, labels: {app: server}}
spec:
  nodeName: node-1
  containers: [{name: web, image: web, ports: [{containerPort: 80}]}]
status: {podIPs: [{ip: 10.250.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec:
  nodeName: node-1
  containers: [{name: curl, image: curl}]
status: {podIPs: [{ip: 10.250.0.3}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec:
  podSelector: {}
";

#[test]
fn a_stopped_agent_keeps_enforcing_until_cleanup() {
    use policy_agent::{
        lab::{Lab, LabConfig, topology},
        model::Protocol,
        report::Family,
        source::manifests,
    };

    let dir = std::env::temp_dir().join(format!("policy-agent-cleanup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("shop.yaml"), DENY_ALL).unwrap();
    let cluster = manifests::load_dir(&dir).unwrap().cluster;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let lab = runtime
        .block_on(Lab::network(&cluster, &LabConfig::default()))
        .unwrap();
    let probe = || {
        runtime
            .block_on(lab.probe(
                "shop/client",
                "shop/server",
                80,
                Protocol::Tcp,
                Family::IPv4,
            ))
            .unwrap()
    };
    assert!(probe(), "nothing enforces yet");

    // The agent as its own process, in the node's namespace, as on a real node.
    let instance = format!("{}{}-cleanup", topology::PIN_PREFIX, lab.id());
    let agent = Command::new(AGENT)
        .args(["run", "--node-name", "node-1", "--metrics-address", "none"])
        .args(["--instance", &instance, "--netns", lab.node_netns_name(0)])
        .args(["--interface-prefix", topology::POD_INTERFACE_PREFIX])
        .arg(format!("--source=dir:{}", dir.display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut agent = KillOnDrop(agent);
    let cleanup = || {
        Command::new(AGENT)
            .args(["cleanup", "--instance", &instance])
            .output()
            .unwrap()
    };
    let attached = || {
        let out = Command::new(AGENT)
            .args(["status", "--json", "--instance", &instance])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|s| {
            s["ready"] == true
                && s["endpoints"]
                    .as_array()
                    .is_some_and(|e| e.len() == 2 && e.iter().all(|e| e["attached"] == true))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !attached() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never attached"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!probe(), "deny-all enforced");
    let refused = cleanup();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is running"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    kill(Pid::from_raw(agent.0.id() as i32), Signal::SIGINT).unwrap();
    assert!(agent.0.wait().unwrap().success());
    assert!(!probe(), "the pinned datapath outlives the agent");

    let cleaned = cleanup();
    assert!(
        cleaned.status.success(),
        "{}",
        String::from_utf8_lossy(&cleaned.stderr)
    );
    let said = String::from_utf8_lossy(&cleaned.stdout);
    assert!(
        said.contains("programs detached from 2 interface(s)"),
        "{said}"
    );
    assert!(probe(), "nothing enforces after cleanup");
    assert!(
        !Path::new(policy_agent::datapath::bpffs::PIN_ROOT)
            .join(&instance)
            .exists()
    );

    runtime.block_on(lab.shutdown());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Service y/web (cluster IP 10.96.0.20) has two backends: y/web-0, whose ingress admits
/// x/free only, on its target port (named `http`), and y/web-1, not isolated. The egress of x/client allows y/web-0 only;
/// x/free and x/other are not isolated.
const SERVICES: &str = "
kind: Namespace
metadata: {name: x}
---
kind: Namespace
metadata: {name: y}
---
kind: Pod
metadata: {name: client, namespace: x, labels: {app: client}}
spec: {containers: [{name: c}]}
status: {podIP: 10.9.0.1}
---
kind: Pod
metadata: {name: free, namespace: x, labels: {app: free}}
spec: {containers: [{name: c}]}
status: {podIP: 10.9.0.2}
---
kind: Pod
metadata: {name: other, namespace: x, labels: {app: other}}
spec: {containers: [{name: c}]}
status: {podIP: 10.9.0.3}
---
kind: Pod
metadata: {name: web-0, namespace: y, labels: {app: web, tier: front}}
spec: {containers: [{name: c, ports: [{containerPort: 8080, name: http}]}]}
status: {podIP: 10.9.1.1}
---
kind: Pod
metadata: {name: web-1, namespace: y, labels: {app: web}}
spec: {containers: [{name: c, ports: [{containerPort: 8080, name: http}]}]}
status: {podIP: 10.9.1.2}
---
kind: Service
metadata: {name: web, namespace: y}
spec:
  clusterIP: 10.96.0.20
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: dns, port: 53, protocol: UDP}]
---
kind: NetworkPolicy
metadata: {name: client-out, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {}, podSelector: {matchLabels: {tier: front}}}]}]
---
kind: NetworkPolicy
metadata: {name: web-in, namespace: y}
spec:
  podSelector: {matchLabels: {tier: front}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: free}}}]
    ports: [{port: http}]
";

/// A manifest directory holding `yaml`, removed when dropped.
struct ManifestDir(std::path::PathBuf);

impl ManifestDir {
    /// A fresh directory named after `test` and this process, with `yaml` in it.
    fn new(test: &str, yaml: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("policy-agent-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cluster.yaml"), yaml).unwrap();
        Self(dir)
    }

    /// Runs `policy-agent <command> --manifests <dir> <args>`: exit success, stdout, stderr.
    fn run(&self, command: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(AGENT)
            .args([command, "--manifests"])
            .arg(&self.0)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    /// `explain` from `from` to `to` with `args`, which must succeed: its output.
    fn explain(&self, from: &str, to: &str, args: &[&str]) -> String {
        let (ok, stdout, stderr) =
            self.run("explain", &[&["--from", from, "--to", to], args].concat());
        assert!(ok, "{stderr}");
        stdout
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The probe of `matrix --json` from `from` through `service` on `port`.
fn through<'a>(json: &'a Value, from: &str, service: &str, port: u64) -> &'a Value {
    json["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["from"] == from && p["service"] == service && p["port"] == port)
        .unwrap_or_else(|| panic!("no probe {from} through {service} on {port}: {json}"))
}

#[test]
fn matrix_probes_through_services() {
    let dir = ManifestDir::new("matrix-services", SERVICES);
    let (ok, stdout, stderr) = dir.run("matrix", &["--services", "per-pod", "--json"]);
    assert!(ok, "{stderr}");
    let json: Value = serde_json::from_str(&stdout).unwrap();

    // A per-pod Service has one backend: the row names it, on the pod's port.
    let own = through(&json, "x/free", "y/s-y-web-0", 8080);
    assert_eq!(own["to"], "y/web-0", "{own}");
    assert_eq!(own["allowed"], true, "{own}");
    let address: std::net::IpAddr = own["address"].as_str().unwrap().parse().unwrap();
    assert_ne!(
        address.to_string(),
        "10.9.1.1",
        "the frontend, not the pod: {own}"
    );
    assert!(own.get("backend-dependent").is_none(), "{own}");

    // Two backends: the row names the Service; the frontend's port, not the target port.
    let web = through(&json, "x/free", "y/web", 80);
    assert_eq!(
        (&web["to"], &web["address"], &web["allowed"]),
        (
            &Value::from("y/web"),
            &Value::from("10.96.0.20"),
            &Value::from(true)
        ),
        "{web}"
    );
    // y/web-0 refuses x/other and y/web-1 admits it: the proxy's pick decides.
    let other = through(&json, "x/other", "y/web", 80);
    assert_eq!(other["backend-dependent"], true, "{other}");
    assert_eq!(other["allowed"], false, "{other}");
    // The egress of x/client allows one backend only: dropped, and not backend-dependent.
    let client = through(&json, "x/client", "y/web", 80);
    assert_eq!(client["allowed"], false, "{client}");
    assert!(client.get("backend-dependent").is_none(), "{client}");
}

#[test]
fn explain_through_a_service_names_each_backend_and_the_outcome() {
    let dir = ManifestDir::new("explain-services", SERVICES);
    let differ = dir.explain("x/client", "y/web", &["--port", "80"]);
    for line in [
        "x/client -> y/web (cluster IP 10.96.0.20) on TCP/80 over IPv4 (10.9.0.1 -> 10.96.0.20): \
         DENIED (service-backends-differ)",
        "  backends (the proxy picks one; address:target port): y/web-0 at 10.9.1.1:8080, \
         y/web-1 at 10.9.1.2:8080",
        "  backend y/web-0 at 10.9.1.1:8080:",
        "      allowed by x/client-out, egress rule 0: to pods {tier=front} in namespaces {}; \
         on any port -> allowed",
        "      no rule admits x/client on TCP/8080 -> denied. The rules that apply:",
        "  backend y/web-1 at 10.9.1.2:8080:",
        "      no rule admits y/web-1 on TCP/8080 -> denied. The rules that apply:",
        "The compiled maps agree.",
    ] {
        assert!(
            differ.lines().any(|l| l == line),
            "{line:?} missing from\n{differ}"
        );
    }
    assert!(
        differ.contains(
            "outcome: service-backends-differ: the egress of x/client allows y/web-0 at \
             10.9.1.1:8080 and denies y/web-1 at 10.9.1.2:8080"
        ),
        "{differ}"
    );
    // The frontend's address is the same question.
    assert_eq!(
        dir.explain("x/client", "10.96.0.20", &["--port", "80"]),
        differ
    );

    let dependent = dir.explain("x/other", "y/web", &["--port", "80"]);
    assert!(dependent.contains("): BACKEND-DEPENDENT\n"), "{dependent}");
    assert!(
        dependent.contains(
            "outcome: backend-dependent: the egress of x/other allows every backend; allowed \
             if the proxy picks y/web-1 at 10.9.1.2:8080, denied if it picks y/web-0 at \
             10.9.1.1:8080"
        ),
        "{dependent}"
    );
    assert!(
        dependent.contains("The compiled maps agree."),
        "{dependent}"
    );

    // Without a port: every port of the Service. Rules name the backends' target ports.
    let every = dir.explain("x/free", "y/web", &[]);
    let header = |port: &str, verdict: &str| {
        format!(
            "x/free -> y/web (cluster IP 10.96.0.20) on {port} over IPv4 \
             (10.9.0.2 -> 10.96.0.20): {verdict}\n"
        )
    };
    let tcp = every
        .find(&header("TCP/80", "ALLOWED"))
        .unwrap_or_else(|| panic!("TCP/80 allowed:\n{every}"));
    let udp = every
        .find(&header("UDP/53", "BACKEND-DEPENDENT"))
        .unwrap_or_else(|| panic!("UDP/53 backend-dependent:\n{every}"));
    assert!(
        every[tcp..udp].contains(
            "allowed by y/web-in, ingress rule 0: from pods {app=free} in namespaces {}; on TCP \
             port named \"http\" -> allowed"
        ),
        "{every}"
    );
    assert!(
        every[udp..].contains("no rule admits x/free on UDP/53 -> denied"),
        "{every}"
    );
    assert_eq!(
        every.matches("The compiled maps agree.").count(),
        2,
        "{every}"
    );
}

#[test]
fn explain_names_the_service_or_frontend_it_did_not_find() {
    let dir = ManifestDir::new("explain-missing", SERVICES);
    for (to, port, error) in [
        ("y/nope", "80", "no Service y/nope"),
        ("10.96.0.9", "", "10.96.0.9 is no Service frontend or pod"),
        ("10.96.0.20", "81", "y/web answers only on TCP/80, UDP/53"),
    ] {
        let port_args: &[&str] = if port.is_empty() {
            &[]
        } else {
            &["--port", port]
        };
        let (ok, _, stderr) = dir.run(
            "explain",
            &[&["--from", "x/free", "--to", to], port_args].concat(),
        );
        assert!(!ok && stderr.contains(error), "{to}: {stderr}");
    }
}

#[test]
fn lint_warns_of_a_service_whose_backends_a_client_egress_allows_in_part() {
    let dir = ManifestDir::new("lint-services", SERVICES);
    let (ok, _, stderr) = dir.run("matrix", &[]);
    assert!(ok, "{stderr}");
    let warning = "warning: Service y/web: spec.ports[0]: port http TCP/80 (IPv4): the egress \
                   of pod x/client allows backends y/web-0 (10.9.1.1:8080) and denies y/web-1 \
                   (10.9.1.2:8080)";
    assert!(stderr.contains(warning), "{stderr}");
    assert!(stderr.contains("(service-backends-differ)"), "{stderr}");
    // Only x/client is isolated; the other clients' egress allows every backend.
    assert_eq!(stderr.matches("warning: Service").count(), 2, "{stderr}");
}

/// `cleanup` takes an instance name, never a path, and removes only its own pins: a name
/// that would leave the pin root is refused before anything is touched, and an instance
/// directory holding anything but pins is left whole.
#[test]
fn cleanup_removes_nothing_but_its_own_pins() {
    let cleanup = |instance: &str| {
        Command::new(AGENT)
            .args(["cleanup", &format!("--instance={instance}")])
            .output()
            .unwrap()
    };
    for bad in ["", "../../../tmp", "/tmp", "..", "a/b", "Agent", "-x", "x-"] {
        let out = cleanup(bad);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("DNS-1123"),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // An instance directory with a stranger in it: nothing is removed.
    use policy_agent::{datapath::bpffs, lab::topology};
    bpffs::ensure_mounted().unwrap();
    let instance = format!("{}{}-stranger", topology::PIN_PREFIX, std::process::id());
    let dir = std::path::Path::new(bpffs::PIN_ROOT).join(&instance);
    let stranger = dir.join("not-a-pin");
    std::fs::create_dir_all(&stranger).unwrap();
    let out = cleanup(&instance);
    let kept = stranger.exists();
    let _ = std::fs::remove_dir(&stranger);
    let _ = std::fs::remove_dir(&dir);
    assert!(
        !out.status.success(),
        "a directory that is not ours removed"
    );
    assert!(kept, "the stranger was removed");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not-a-pin"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pods x/a and x/b; policy x/deny-a isolates x/a, and x/broken is invalid.
const ONE_INVALID: &str = "
kind: Namespace
metadata: {name: x}
---
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.9.0.1}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.9.0.2}
---
kind: NetworkPolicy
metadata: {name: deny-a, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}}
---
kind: NetworkPolicy
metadata: {name: broken, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]}]
";

/// `policy-agent <args>` in `dir`'s manifests: exit code, stdout, stderr.
fn run_in(dir: &ManifestDir, command: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(AGENT)
        .args([command, "--manifests"])
        .arg(&dir.0)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn rejected_objects_make_matrix_and_explain_exit_3_after_printing_the_results() {
    let dir = ManifestDir::new("exit-rejected", ONE_INVALID);
    let (code, stdout, stderr) = run_in(&dir, "matrix", &[]);
    assert_eq!(code, Some(EXIT_REJECTED), "{stderr}");
    assert!(
        stderr.contains("NetworkPolicy x/broken rejected, enforced fail-closed"),
        "{stderr}"
    );
    let row = |from: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(from))
            .unwrap_or_else(|| panic!("no row {from}:\n{stdout}"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
    };
    // Columns x/a, x/b: the valid policy isolates x/a, the rejected one x/b (fail-closed).
    assert_eq!(row("x/b"), ["X", "."], "{stdout}");
    assert_eq!(row("x/a"), [".", "X"], "{stdout}");

    let (code, stdout, stderr) = run_in(
        &dir,
        "explain",
        &["--from", "x/b", "--to", "x/a", "--port", "80"],
    );
    assert_eq!(code, Some(EXIT_REJECTED), "{stderr}");
    assert!(stdout.contains("x/b -> x/a on TCP/80"), "{stdout}");
    assert!(stdout.contains(": DENIED"), "{stdout}");

    let valid = ManifestDir::new(
        "exit-valid",
        &ONE_INVALID.replace("except: [192.168.0.0/16]", "except: [10.1.0.0/16]"),
    );
    assert_eq!(run_in(&valid, "matrix", &[]).0, Some(0), "nothing rejected");

    let (code, help, _) = {
        let out = Command::new(AGENT)
            .args(["matrix", "--help"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            (),
        )
    };
    assert_eq!(code, Some(0));
    assert!(
        help.contains("Exit status:") && help.contains("3    done and the results printed"),
        "{help}"
    );
}

#[test]
fn control_characters_in_names_are_printed_escaped() {
    // A pod label and a selector with an ANSI escape (the selector's policy is rejected,
    // its error quotes the value), a policy name with a newline (a directory source
    // validates no name), and a file name with a newline holding an invalid object.
    let yaml = ONE_INVALID
        .replace("labels: {app: a}", "labels: {app: a, note: \"\\e[31mred\"}")
        .replace(
            "metadata: {name: deny-a, namespace: x}",
            "metadata: {name: \"deny\\na\", namespace: x}",
        )
        + "---\nkind: NetworkPolicy\nmetadata: {name: ansi, namespace: x}\n\
           spec: {podSelector: {matchLabels: {note: \"\\e[31mred\"}}}\n";
    let dir = ManifestDir::new("escaped-names", &yaml);
    std::fs::write(
        dir.0.join("bad\nname.yaml"),
        "kind: Pod\nmetadata: [not, a, map]\n",
    )
    .unwrap();

    let (code, stdout, stderr) = run_in(&dir, "matrix", &[]);
    assert_eq!(code, Some(EXIT_REJECTED), "{stderr}");
    assert!(stderr.contains(r"bad\nname.yaml"), "{stderr}");
    let (code, explained, stderr) = run_in(
        &dir,
        "explain",
        &["--from", "x/b", "--to", "x/a", "--port", "80"],
    );
    assert_eq!(code, Some(EXIT_REJECTED), "{stderr}");
    assert!(
        explained.contains(r"isolated by x/ansi, x/deny\na"),
        "{explained}"
    );
    assert!(explained.contains(r"\u{1b}[31mred"), "{explained}");
    for out in [&stdout, &explained, &stderr] {
        assert!(!out.contains('\u{1b}'), "a raw ESC was printed:\n{out}");
        assert!(
            !out.contains("deny\na") && !out.contains("bad\nname"),
            "{out}"
        );
    }

    // JSON stays JSON: the names as they are, escaped by JSON's rules.
    let (_, json, _) = run_in(&dir, "matrix", &["--json"]);
    serde_json::from_str::<Value>(&json).expect("valid JSON");
}

#[test]
fn explain_by_a_pods_address_names_the_pod() {
    let dir = ManifestDir::new("explain-by-ip", ONE_INVALID);
    for (from, to) in [
        ("10.9.0.2", "x/a"),
        ("x/b", "10.9.0.1"),
        ("10.9.0.2", "10.9.0.1"),
    ] {
        let (_, out, stderr) = run_in(
            &dir,
            "explain",
            &["--from", from, "--to", to, "--port", "80"],
        );
        assert!(
            out.contains("x/b -> x/a on TCP/80 over IPv4 (10.9.0.2 -> 10.9.0.1): DENIED"),
            "{from} -> {to}:\n{out}{stderr}"
        );
        assert!(
            out.contains("ingress of x/a: isolated by x/deny-a"),
            "{out}"
        );
        assert!(out.contains("The compiled maps agree."), "{out}");
        assert!(
            !out.contains("BUG") && !out.contains("outside the cluster"),
            "{out}"
        );
    }
}

/// Removes what an agent of `instance` may have left, when a test ends (also by a panic).
struct CleanupOnDrop(String);

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        let pins = Path::new(policy_agent::datapath::bpffs::PIN_ROOT).join(&self.0);
        if pins.exists() {
            let _ = Command::new(AGENT)
                .args(["cleanup", "--instance", &self.0])
                .output();
        }
    }
}

#[test]
fn a_busy_metrics_port_stops_the_agent_at_startup() {
    // Held for the whole test: the agent must find the port taken.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let dir = ManifestDir::new("busy-metrics", "kind: Namespace\nmetadata: {name: x}\n");
    let instance = format!("test-busy-metrics-{}", std::process::id());
    let _cleanup = CleanupOnDrop(instance.clone());
    // No pods, and an interface prefix nothing has: were the agent to start anyway, it
    // would attach to nothing.
    let agent = Command::new(AGENT)
        .args([
            "run",
            "--node-name",
            "node-1",
            "--metrics-address",
            &address,
        ])
        .args(["--instance", &instance, "--interface-prefix", "no-such-if-"])
        .arg(format!("--source=dir:{}", dir.0.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = KillOnDrop(agent);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = agent.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent kept running without its metrics port"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut agent.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot serve metrics on {address}"))
            && stderr.to_lowercase().contains("in use"),
        "{stderr}"
    );
    assert!(
        !Path::new(policy_agent::datapath::bpffs::PIN_ROOT)
            .join(&instance)
            .exists(),
        "nothing was pinned"
    );
    drop(busy);
}
