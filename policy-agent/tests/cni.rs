//! The CNI plugin's protocol, run as a runtime runs it: environment, config on stdin,
//! result or error object on stdout. These cases need no agent (the socket is absent);
//! tests/cni.rs of the workspace covers the plugin against a running agent.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use serde_json::{Value, json};

const PLUGIN: &str = env!("CARGO_BIN_EXE_policy-agent-cni");

const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_UID=u1";

/// A ptp-like result: host veth, pod eth0, one address.
fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "veth1234", "mac": "8e:69:a5:56:47:04"},
            {"name": "eth0", "mac": "72:92:96:e9:34:5c", "sandbox": "/var/run/netns/p"}
        ],
        "ips": [{"interface": 1, "address": "10.1.2.3/24", "gateway": "10.1.2.254"}],
        "dns": {}
    })
}

fn conf(extra: Value) -> Value {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": "lab",
        "type": "policy-agent-cni",
        "socket": format!("/tmp/policy-agent-cni-test-{}.sock", std::process::id()),
        "prevResult": prev_result(),
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            conf.as_object_mut().unwrap().remove(k);
        } else {
            conf[k] = v.clone();
        }
    }
    conf
}

/// Runs the plugin; returns its exit success and stdout parsed (Null when empty).
fn run(command: &str, args: &str, stdin: &str) -> (bool, Value) {
    let mut child = Command::new(PLUGIN)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", "/var/run/netns/p")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env("CNI_ARGS", args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).expect("stdout is JSON")
    };
    (out.status.success(), stdout)
}

/// Asserts the spec's error form with `code`, and returns the message.
fn error(result: (bool, Value), code: u64) -> String {
    let (ok, out) = result;
    assert!(!ok, "expected failure, got {out}");
    assert_eq!(out["code"], code, "{out}");
    assert!(out["cniVersion"].is_string(), "{out}");
    assert!(!out["details"].as_str().unwrap().is_empty(), "{out}");
    out["msg"].as_str().unwrap().to_owned()
}

#[test]
fn version_lists_the_supported_spec_versions() {
    let (ok, out) = run("VERSION", "", "");
    assert!(ok);
    let versions: Vec<&str> = out["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(versions, ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]);
}

#[test]
fn malformed_stdin_is_a_decoding_error() {
    let msg = error(run("ADD", POD_ARGS, "{not json"), 6);
    assert!(msg.contains("not valid"), "{msg}");
}

#[test]
fn an_unsupported_version_is_refused() {
    let stdin = conf(json!({"cniVersion": "0.2.0"})).to_string();
    let msg = error(run("ADD", POD_ARGS, &stdin), 1);
    assert!(msg.contains("0.2.0"), "{msg}");
}

#[test]
fn add_without_prev_result_says_the_plugin_must_be_chained() {
    let stdin = conf(json!({"prevResult": null})).to_string();
    let msg = error(run("ADD", POD_ARGS, &stdin), 7);
    assert!(msg.contains("prevResult"), "{msg}");
    // CHECK needs it too.
    error(run("CHECK", POD_ARGS, &stdin), 7);
}

#[test]
fn add_without_the_pod_in_cni_args_is_refused() {
    let stdin = conf(json!({})).to_string();
    let msg = error(run("ADD", "IgnoreUnknown=1", &stdin), 4);
    assert!(msg.contains("K8S_POD_NAME"), "{msg}");
}

#[test]
fn an_unknown_command_is_refused() {
    let stdin = conf(json!({})).to_string();
    error(run("GC", POD_ARGS, &stdin), 4);
}

#[test]
fn add_fails_closed_when_the_agent_is_unreachable() {
    let stdin = conf(json!({})).to_string();
    let msg = error(run("ADD", POD_ARGS, &stdin), 11);
    assert!(msg.contains("not reachable"), "{msg}");
}

#[test]
fn fail_open_passes_the_previous_result_on_unchanged_when_the_agent_is_unreachable() {
    let stdin = conf(json!({"failOpen": true})).to_string();
    let (ok, out) = run("ADD", POD_ARGS, &stdin);
    assert!(ok, "{out}");
    assert_eq!(out, prev_result());
}

#[test]
fn del_succeeds_twice_without_an_agent() {
    let stdin = conf(json!({"prevResult": null})).to_string();
    for _ in 0..2 {
        let (ok, out) = run("DEL", POD_ARGS, &stdin);
        assert!(ok, "{out}");
        assert_eq!(out, Value::Null);
    }
}
