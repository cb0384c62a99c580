//! `policy-agent lab` as a user runs it: the TorchPod example's verdicts through the JSON
//! contract, and teardown on Ctrl-C.

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

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/torchpod")
}

#[test]
fn torchpod_example_enforces_what_the_team_asked_for() {
    let out = Command::new(AGENT)
        .args(["lab", "--json", "--manifests"])
        .arg(example())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
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
    let mut child = Command::new(AGENT)
        .args(["lab", "--keep", "--manifests"])
        .arg(example())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = BufReader::new(child.stderr.take().unwrap());
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
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(resources_of(pid), Vec::<std::path::PathBuf>::new());
}
