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

/// Starts the plugin with `command`, `CNI_ARGS` `args` and the configuration `stdin` (then
/// closed), every stream piped.
fn spawn_plugin(command: &str, args: &str, stdin: &str) -> std::process::Child {
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
    child
}

/// Runs the plugin; returns its exit success and stdout parsed (Null when empty).
fn run(command: &str, args: &str, stdin: &str) -> (bool, Value) {
    let child = spawn_plugin(command, args, stdin);
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

/// Fake agents that misbehave: the plugin must return within its deadline, in bounded
/// memory, and fail open or closed as configured, whatever the socket does.
mod faulty_agent {
    use std::{
        io::{BufRead as _, BufReader, Read as _, Write as _},
        os::unix::{
            net::{UnixListener, UnixStream},
            process::ExitStatusExt as _,
        },
        path::PathBuf,
        process::ExitStatus,
        thread,
        time::{Duration, Instant},
    };

    use policy_agent::{agent::api::MAX_REPLY_BYTES, cni::spec::DEFAULT_TIMEOUT_SECONDS};
    use serde_json::{Value, json};

    use super::{POD_ARGS, conf, prev_result, spawn_plugin};

    /// The plugin's deadline in these tests: short, most of them wait for it.
    const TIMEOUT_SECONDS: u64 = 1;
    /// How far past its deadline the plugin may return: process start and scheduling on a
    /// loaded machine. A correctness bound, not a benchmark.
    const MARGIN: Duration = Duration::from_secs(2);
    /// A deadline the plugin must not wait for when the reply is oversized.
    const LONG_TIMEOUT_SECONDS: u64 = 30;
    /// How often the dripping agent sends a byte: well within the deadline, so only the
    /// total deadline (not a per-read timeout) stops the plugin.
    const DRIP_INTERVAL: Duration = Duration::from_millis(100);
    /// The flooding agent's reply: many times the cap, so a plugin that buffered it all
    /// would exceed [`MAX_RSS_BYTES`].
    const FLOOD_BYTES: usize = 64 << 20;
    /// What the flooding agent writes at once.
    const FLOOD_BLOCK_BYTES: usize = 64 << 10;
    /// The plugin's peak memory must stay below this: its baseline (a few MiB) plus the
    /// reply cap, with room to spare, and far below [`FLOOD_BYTES`].
    const MAX_RSS_BYTES: u64 = 32 << 20;
    /// ru_maxrss is in KiB on Linux.
    const RSS_UNIT_BYTES: u64 = 1024;

    /// How the fake agent answers, after reading the request line.
    #[derive(Clone, Copy, Debug)]
    enum Fault {
        /// Never: it holds the connection until the plugin goes.
        Silent,
        /// One byte of whitespace at a time, forever (valid JSON so far, never complete).
        Drip,
        /// [`FLOOD_BYTES`] without a newline.
        Flood,
        /// A line that is not JSON.
        Garbage,
        /// A well-formed answer that it failed to enforce the pod.
        AgentError,
    }

    /// The message the [`Fault::AgentError`] agent answers with.
    const AGENT_ERROR: &str = "attaching to veth1234 failed: no such device";

    /// A fake agent on a socket in a directory of its own, removed on drop (also when the
    /// test fails). Its threads end when their connection does.
    struct FakeAgent {
        dir: PathBuf,
    }

    impl FakeAgent {
        fn start(name: &str, fault: Fault) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "policy-agent-cni-test-{}-{name}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let agent = Self { dir };
            let listener = UnixListener::bind(agent.socket()).unwrap();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { return };
                    thread::spawn(move || misbehave(conn, fault));
                }
            });
            agent
        }

        fn socket(&self) -> PathBuf {
            self.dir.join("agent.sock")
        }

        /// The plugin's configuration for this agent.
        fn conf(&self, fail_open: bool, timeout_seconds: u64) -> String {
            conf(json!({
                "socket": self.socket(),
                "failOpen": fail_open,
                "timeoutSeconds": timeout_seconds,
            }))
            .to_string()
        }
    }

    impl Drop for FakeAgent {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn misbehave(conn: UnixStream, fault: Fault) {
        let mut reader = BufReader::new(&conn);
        let mut request = String::new();
        if reader.read_line(&mut request).is_err() {
            return;
        }
        let mut conn = &conn;
        // Every write fails once the plugin is gone (EPIPE: Rust ignores SIGPIPE), which
        // ends the thread.
        match fault {
            Fault::Silent => {
                let _ = reader.read_to_end(&mut Vec::new());
            }
            Fault::Drip => {
                while conn.write_all(b" ").is_ok() {
                    thread::sleep(DRIP_INTERVAL);
                }
            }
            Fault::Flood => {
                let block = vec![b'x'; FLOOD_BLOCK_BYTES];
                for _ in 0..FLOOD_BYTES / FLOOD_BLOCK_BYTES {
                    if conn.write_all(&block).is_err() {
                        return;
                    }
                }
            }
            Fault::Garbage => {
                let _ = conn.write_all(b"\x00\xffHTTP/1.1 400 Bad Request\n");
            }
            Fault::AgentError => {
                let reply = json!({"result": "failed", "message": AGENT_ERROR});
                let _ = conn.write_all(format!("{reply}\n").as_bytes());
            }
        }
    }

    /// One run of the plugin, measured.
    struct Run {
        status: ExitStatus,
        stdout: Value,
        stderr: String,
        elapsed: Duration,
        max_rss_bytes: u64,
    }

    /// Runs the plugin as a runtime does and measures how long it takes and its peak
    /// memory (from wait4, for this child alone).
    #[allow(
        clippy::zombie_processes,
        reason = "the child is reaped with wait4, which also reports its peak memory"
    )]
    fn run_measured(command: &str, stdin: &str) -> Run {
        let start = Instant::now();
        let mut child = spawn_plugin(command, POD_ARGS, stdin);
        let mut stderr_pipe = child.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            text
        });
        let mut stdout = Vec::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut stdout)
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value of the plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our unreaped child; status and usage are valid for writes.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
        let elapsed = start.elapsed();
        let stdout = if stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&stdout).expect("stdout is JSON")
        };
        Run {
            status: ExitStatus::from_raw(status),
            stdout,
            stderr: stderr.join().unwrap(),
            elapsed,
            max_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap() * RSS_UNIT_BYTES,
        }
    }

    impl Run {
        fn assert_within(&self, bound: Duration) -> &Self {
            assert!(
                self.elapsed < bound,
                "took {:?}, bound {bound:?}: {}",
                self.elapsed,
                self.stderr
            );
            assert!(
                self.max_rss_bytes < MAX_RSS_BYTES,
                "peak memory {} bytes",
                self.max_rss_bytes
            );
            self
        }

        /// Asserts the spec's error object with `code`, naming the socket and saying
        /// `what`.
        fn assert_error(&self, code: u64, agent: &FakeAgent, what: &str) {
            assert!(!self.status.success(), "expected failure: {}", self.stdout);
            assert_eq!(self.stdout["code"], code, "{}", self.stdout);
            let msg = self.stdout["msg"].as_str().unwrap();
            assert!(msg.contains(&agent.socket().display().to_string()), "{msg}");
            assert!(msg.contains(what), "{msg}");
            assert!(!self.stdout["details"].as_str().unwrap().is_empty());
        }

        /// Asserts that the pod went on: prevResult passed on unchanged.
        fn assert_failed_open(&self) {
            assert!(self.status.success(), "{}: {}", self.stdout, self.stderr);
            assert_eq!(self.stdout, prev_result());
            assert!(self.stderr.contains("failOpen is set"), "{}", self.stderr);
        }
    }

    fn deadline(timeout_seconds: u64) -> Duration {
        Duration::from_secs(timeout_seconds) + MARGIN
    }

    /// ADD and CHECK against `fault`: fail closed with `code` and `what`, then open.
    fn fails_safe(name: &str, fault: Fault, timeout_seconds: u64, code: u64, what: &str) {
        let agent = FakeAgent::start(name, fault);
        let bound = deadline(timeout_seconds);
        for command in ["ADD", "CHECK"] {
            run_measured(command, &agent.conf(false, timeout_seconds))
                .assert_within(bound)
                .assert_error(code, &agent, what);
            run_measured(command, &agent.conf(true, timeout_seconds))
                .assert_within(bound)
                .assert_failed_open();
        }
    }

    #[test]
    fn an_agent_that_never_answers_runs_into_the_deadline() {
        let what = format!("did not answer within {TIMEOUT_SECONDS}s");
        fails_safe("silent", Fault::Silent, TIMEOUT_SECONDS, 11, &what);
    }

    #[test]
    fn a_reply_that_drips_forever_runs_into_the_deadline() {
        let what = format!("did not answer within {TIMEOUT_SECONDS}s (still reading the reply)");
        fails_safe("drip", Fault::Drip, TIMEOUT_SECONDS, 11, &what);
    }

    #[test]
    fn a_multi_megabyte_reply_is_refused_at_the_cap_without_waiting() {
        let what = format!("longer than the limit of {MAX_REPLY_BYTES} bytes");
        // Refused as soon as the cap is reached, not at the (long) deadline.
        let agent = FakeAgent::start("flood", Fault::Flood);
        for command in ["ADD", "CHECK"] {
            run_measured(command, &agent.conf(false, LONG_TIMEOUT_SECONDS))
                .assert_within(MARGIN)
                .assert_error(101, &agent, &what);
            run_measured(command, &agent.conf(true, LONG_TIMEOUT_SECONDS))
                .assert_within(MARGIN)
                .assert_failed_open();
        }
    }

    #[test]
    fn a_garbage_reply_is_malformed() {
        fails_safe(
            "garbage",
            Fault::Garbage,
            TIMEOUT_SECONDS,
            101,
            "not an endpoint answer",
        );
    }

    #[test]
    fn an_agent_error_fails_open_too() {
        let agent = FakeAgent::start("agent-error", Fault::AgentError);
        let bound = deadline(TIMEOUT_SECONDS);
        let run = run_measured("ADD", &agent.conf(false, TIMEOUT_SECONDS));
        run.assert_within(bound);
        assert!(!run.status.success());
        assert_eq!(run.stdout["code"], 101, "{}", run.stdout);
        assert_eq!(run.stdout["msg"], AGENT_ERROR, "{}", run.stdout);
        run_measured("ADD", &agent.conf(true, TIMEOUT_SECONDS))
            .assert_within(bound)
            .assert_failed_open();
    }

    #[test]
    fn del_returns_within_the_deadline_and_succeeds_whatever_the_agent_does() {
        for (name, fault) in [("del-silent", Fault::Silent), ("del-drip", Fault::Drip)] {
            let agent = FakeAgent::start(name, fault);
            let run = run_measured("DEL", &agent.conf(false, TIMEOUT_SECONDS));
            run.assert_within(deadline(TIMEOUT_SECONDS));
            assert!(run.status.success(), "{}: {}", run.stdout, run.stderr);
            assert_eq!(run.stdout, Value::Null);
        }
    }

    /// `timeoutSeconds: 0` is the default deadline, not an error nor an endless wait.
    #[test]
    fn a_zero_timeout_is_the_default() {
        let agent = FakeAgent::start("zero-timeout", Fault::Silent);
        let run = run_measured("ADD", &agent.conf(false, 0));
        run.assert_within(deadline(DEFAULT_TIMEOUT_SECONDS))
            .assert_error(
                11,
                &agent,
                &format!("did not answer within {DEFAULT_TIMEOUT_SECONDS}s"),
            );
        assert!(
            run.elapsed >= Duration::from_secs(DEFAULT_TIMEOUT_SECONDS),
            "{:?}",
            run.elapsed
        );
    }
}
