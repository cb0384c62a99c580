//! The hostile-input corpus (`tests/corpus/hostile/`) through the node agent with real
//! packets: a lab enforcing the base cluster from a watched directory (`run --source
//! dir:`), each bad case written into it as an editor saves (in place, in two pieces with a
//! pause between), and then a good change. Probes of every pair check that no pod becomes
//! more reachable than before, halfway or after; the good change still applies; `status`
//! reports the case. And a policy file rewritten in place in pieces, again and again, while
//! probes run the whole time.
//!
//! The default run takes a few cases of each kind; `cargo xtask test --deep` runs them all.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use policy_agent::{
    agent::{self, AgentHandle, status::Status},
    datapath::bpffs,
    evaluate::{Flow, reference::Reference},
    lab::{Lab, LabConfig, topology},
    plan,
    report::{Probe, Reachability},
    source::{directory, manifests},
};
use policy_tests::{
    block_on,
    hostile::{Case, cases},
};

/// How long the agent may take to apply a change.
const CONVERGE: Duration = Duration::from_secs(20);
/// How long the agent may take to read a change of the directory (the alias bomb's
/// million alias expansions, refused by the parser's budget, take seconds in a debug build).
const READ: Duration = Duration::from_secs(30);
/// The pause in the middle of a write: longer than the watcher's settling time, so that
/// it sees the half-written file.
const MID_WRITE: Duration = Duration::from_millis(300);
/// The cases of the default run: an edit of each base file (a syntax error, a misspelt
/// kind, a typo, a pod's bad address) and a new file (a duplicate).
const DEFAULT_CASES: &[&str] = &[
    "syntax-error-in-one-document.yaml",
    "kind-misspelt.yaml",
    "typo-form.yaml",
    "pod-invalid-ip.yaml",
    "zz-duplicate.yaml",
];
/// The good change made after each case: nothing may reach ops/monitor any more.
const LATER: &str = "later.yaml";
const LATER_POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: later, namespace: ops}
spec:
  podSelector: {matchLabels: {app: monitor}}
  policyTypes: [Ingress]
";
/// The pod the good change isolates.
const LATER_POD: &str = "ops/monitor";

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/hostile")
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A watched manifest directory holding the base cluster, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "hostile-agent-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for name in base_files() {
            std::fs::copy(corpus().join("base").join(&name), dir.join(&name)).unwrap();
        }
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn base_files() -> Vec<String> {
    std::fs::read_dir(corpus().join("base"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// Starts writing `bytes` to `path` as an editor saving in place does: truncated, the
/// first half written, then a pause (the watcher sees the file half-written). Returns the
/// open file and the rest, for [`finish_write`].
async fn start_write(path: &Path, bytes: &[u8]) -> (std::fs::File, Vec<u8>) {
    let mut file = std::fs::File::create(path).unwrap();
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    file.write_all(first).unwrap();
    file.flush().unwrap();
    tokio::time::sleep(MID_WRITE).await;
    (file, rest.to_vec())
}

/// Writes the rest and closes the file.
fn finish_write((mut file, rest): (std::fs::File, Vec<u8>)) {
    file.write_all(&rest).unwrap();
}

/// The lab, with its agent following the directory.
struct Watched {
    lab: Lab,
    agent: AgentHandle,
    pins: PathBuf,
}

impl Watched {
    async fn start(dir: &Dir) -> Watched {
        let base = manifests::load_dir(&dir.0).unwrap();
        assert!(base.errors.is_empty(), "{:?}", base.errors);
        let lab = Lab::network(&base.cluster, &LabConfig::default())
            .await
            .unwrap();
        let instance = format!("{}{}-dir", topology::PIN_PREFIX, lab.id());
        let pins = PathBuf::from(bpffs::PIN_ROOT).join(&instance);
        let mut agent = agent::spawn(
            lab.agent_config(0, instance, format!("dir:{}", dir.0.display())),
            lab.place(directory::watch(dir.0.clone()).unwrap()),
        )
        .expect("agent starts");
        agent.ready(CONVERGE).await.unwrap();
        Watched { lab, agent, pins }
    }

    fn status(&self) -> Status {
        self.agent.status.borrow().clone()
    }

    /// Waits until the agent has read the directory again (after `seen` events) and
    /// synced; returns its status.
    async fn read_again(&mut self, seen: u64, what: &str) -> Status {
        tokio::time::timeout(READ, self.agent.status.wait_for(|s| s.source_events > seen))
            .await
            .unwrap_or_else(|_| panic!("{what}: the agent did not read the directory again"))
            .unwrap()
            .clone()
    }

    /// Probes until every verdict is `expected`'s, or fails after [`CONVERGE`].
    async fn converge(&self, expected: &BTreeMap<String, bool>) -> Reachability {
        let start = Instant::now();
        loop {
            let r = self.lab.probe_all().await.unwrap();
            let wrong = differences(&r, expected);
            if wrong.is_empty() {
                return r;
            }
            assert!(
                start.elapsed() < CONVERGE,
                "not converged:\n{}\n{}",
                wrong.join("\n"),
                self.status()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(self) {
        self.agent.stop().await.unwrap();
        self.lab.shutdown().await;
        bpffs::remove_instance_dir(&self.pins);
    }
}

/// A probe as a key.
fn key(p: &Probe) -> String {
    format!(
        "{} -> {} {}/{} {:?}",
        p.from, p.to, p.protocol, p.port, p.family
    )
}

fn verdicts(r: &Reachability) -> BTreeMap<String, bool> {
    r.probes.iter().map(|p| (key(p), p.allowed)).collect()
}

fn differences(r: &Reachability, expected: &BTreeMap<String, bool>) -> Vec<String> {
    r.probes
        .iter()
        .filter(|p| expected.get(&key(p)) != Some(&p.allowed))
        .map(|p| format!("  {}: {}", key(p), p.allowed))
        .collect()
}

/// The reference semantics' verdicts on the lab's cluster: what the base must enforce.
fn reference(lab: &Lab) -> BTreeMap<String, bool> {
    let hosts: Vec<plan::Host> = lab.hosts().iter().map(|h| h.spec.clone()).collect();
    let reference = Reference::new(lab.cluster());
    verdicts(&plan::answer(&hosts, |q| {
        Flow::of(&hosts, q).is_some_and(|f| reference.allows(&f))
    }))
}

/// What is wrong with `now` against `before`: a probe allowed that was denied, or a
/// verdict changed that is not about the case.
fn worse(case: &Case, before: &Reachability, now: &Reachability) -> Vec<String> {
    let before: BTreeMap<String, &Probe> = before.probes.iter().map(|p| (key(p), p)).collect();
    let mut wrong = Vec::new();
    for p in &now.probes {
        let Some(was) = before.get(&key(p)) else {
            wrong.push(format!("  {}: new", key(p)));
            continue;
        };
        if p.allowed && !was.allowed {
            wrong.push(format!("  {}: allowed, was denied", key(p)));
        } else if p.allowed != was.allowed && !case.about(&p.from, &p.to) {
            wrong.push(format!("  {}: changed, not about the case", key(p)));
        }
    }
    wrong
}

/// Runs `cases` one after another on one lab: each written in place over the base, then
/// the good change, then the base restored.
fn run_cases(cases: &[Case]) {
    block_on(async {
        let dir = Dir::new();
        let mut w = Watched::start(&dir).await;
        let base = reference(&w.lab);
        let before = w.converge(&base).await;
        assert!(
            before.probes.iter().any(|p| !p.allowed),
            "the base denies something"
        );
        for case in cases {
            let path = dir.0.join(&case.file);
            let original = std::fs::read(&path).ok();

            // Halfway and once written, nothing is more reachable than before.
            let seen = w.status().source_events;
            let writing = start_write(&path, &case.bytes).await;
            w.read_again(seen, &format!("{} halfway", case.name)).await;
            let halfway = w.lab.probe_all().await.unwrap();
            let seen = w.status().source_events;
            finish_write(writing);
            let status = w.read_again(seen, &case.name).await;
            let after = w.lab.probe_all().await.unwrap();
            let mut wrong = worse(case, &before, &halfway);
            wrong.extend(worse(case, &before, &after));

            // Reported where an operator looks (or, valid input, nothing rejected).
            let shown = status.to_string();
            if case.exit == 0 {
                if !status.rejected.is_empty() {
                    wrong.push(format!(
                        "  valid input, yet rejected: {:?}",
                        status.rejected
                    ));
                }
            } else {
                if status.rejected.is_empty() {
                    wrong.push("  nothing reported as rejected".to_owned());
                }
                for report in &case.reports {
                    if !shown.contains(report.as_str()) {
                        wrong.push(format!("  status does not say {report:?}"));
                    }
                }
            }
            assert!(
                wrong.is_empty(),
                "{}:\n{}\n{shown}",
                case.name,
                wrong.join("\n")
            );

            // A later good change applies: nothing reaches ops/monitor any more.
            let mut later = verdicts(&after);
            for p in &after.probes {
                if p.to == LATER_POD && p.from != p.to {
                    later.insert(key(p), false);
                }
            }
            finish_write(start_write(&dir.0.join(LATER), LATER_POLICY.as_bytes()).await);
            w.converge(&later).await;

            // The base again.
            std::fs::remove_file(dir.0.join(LATER)).unwrap();
            match &original {
                Some(bytes) => std::fs::write(&path, bytes).unwrap(),
                None => std::fs::remove_file(&path).unwrap(),
            }
            w.converge(&base).await;
            tokio::time::timeout(CONVERGE, w.agent.status.wait_for(|s| s.rejected.is_empty()))
                .await
                .unwrap_or_else(|_| panic!("{}: still rejected after the base is back", case.name))
                .unwrap();
        }
        w.stop().await;
    });
}

fn corpus_cases(names: Option<&[&str]>) -> Vec<Case> {
    let all = cases(&corpus());
    match names {
        None => all,
        Some(names) => {
            let chosen: Vec<Case> = all
                .into_iter()
                .filter(|c| names.contains(&c.name.as_str()))
                .collect();
            assert_eq!(chosen.len(), names.len(), "a default case is missing");
            chosen
        }
    }
}

#[test]
fn bad_edits_of_a_watched_directory_make_no_pod_more_reachable() {
    run_cases(&corpus_cases(Some(DEFAULT_CASES)));
}

#[test]
#[ignore = "the whole corpus through the agent: minutes (cargo xtask test --deep)"]
fn every_hostile_input_through_the_agent() {
    run_cases(&corpus_cases(None));
}

/// The rewritten policy, before and after: ops/monitor's scrape port admits the cluster's
/// addresses but the guests', then but the guests' and the shop's.
const REWRITE_FILE: &str = "monitor.yaml";
fn monitor_policy(excepts: &[&str]) -> String {
    let mut text = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: monitor-ingress\n  namespace: ops\nspec:\n  podSelector:\n    matchLabels: {app: monitor}\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: 10.60.0.0/16\n        except:\n",
    );
    for e in excepts {
        text.push_str("        - ");
        text.push_str(e);
        text.push('\n');
    }
    text.push_str("    ports:\n    - port: 9100\n");
    text
}
/// Pieces each rewrite is written in, with [`PIECE_PAUSE`] between them.
const PIECES: usize = 6;
/// Longer than the watcher's settling time: it reads the file after every piece.
const PIECE_PAUSE: Duration = Duration::from_millis(1000);
/// Rewrites, alternating between the two versions.
const REWRITES: usize = 4;

#[test]
fn a_policy_file_rewritten_in_place_in_pieces_never_opens_what_it_closed() {
    block_on(async {
        let dir = Dir::new();
        let guests_only = monitor_policy(&["10.60.3.0/24"]);
        let guests_and_shop = monitor_policy(&["10.60.3.0/24", "10.60.1.0/24"]);
        std::fs::write(dir.0.join(REWRITE_FILE), &guests_only).unwrap();
        let w = Watched::start(&dir).await;
        let mut enforced = w.converge(&reference(&w.lab)).await;
        let mut saw_busy = false;
        for i in 0..REWRITES {
            let next = if i % 2 == 0 {
                &guests_and_shop
            } else {
                &guests_only
            };
            // What the policy in force denies must stay denied the whole time.
            let denied: Vec<Probe> = enforced
                .probes
                .iter()
                .filter(|p| !p.allowed && p.to == LATER_POD)
                .cloned()
                .collect();
            assert!(!denied.is_empty());
            let bytes = next.clone().into_bytes();
            let path = dir.0.join(REWRITE_FILE);
            let writer = tokio::task::spawn_blocking(move || {
                let mut file = std::fs::File::create(&path).unwrap();
                for piece in bytes.chunks(bytes.len().div_ceil(PIECES)) {
                    std::thread::sleep(PIECE_PAUSE);
                    file.write_all(piece).unwrap();
                    file.flush().unwrap();
                }
                std::thread::sleep(PIECE_PAUSE);
                // Closed here: complete.
            });
            let mut rounds = 0;
            while !writer.is_finished() {
                let verdicts = futures::future::join_all(
                    denied
                        .iter()
                        .map(|p| w.lab.probe(&p.from, &p.to, p.port, p.protocol, p.family)),
                )
                .await;
                // The writer may have closed the file while these ran: only rounds that
                // ended before it did count.
                if writer.is_finished() {
                    break;
                }
                for (p, allowed) in denied.iter().zip(verdicts) {
                    assert!(
                        !allowed.unwrap(),
                        "rewrite {i}: {} passed while the file was half-written\n{}",
                        key(p),
                        w.status()
                    );
                }
                saw_busy |= w
                    .status()
                    .rejected
                    .iter()
                    .any(|r| r.contains("being written"));
                rounds += 1;
            }
            writer.await.unwrap();
            assert!(rounds >= 1, "no probe ran during rewrite {i}");
            // The new version is enforced.
            let cluster = manifests::load_dir(&dir.0).unwrap().cluster;
            let expected = {
                let hosts: Vec<plan::Host> = w.lab.hosts().iter().map(|h| h.spec.clone()).collect();
                let mut placed = w.lab.cluster().clone();
                placed.policies = cluster.policies;
                let reference = Reference::new(&placed);
                verdicts(&plan::answer(&hosts, |q| {
                    Flow::of(&hosts, q).is_some_and(|f| reference.allows(&f))
                }))
            };
            enforced = w.converge(&expected).await;
            assert!(w.status().rejected.is_empty(), "{}", w.status());
        }
        assert!(
            saw_busy,
            "the agent never reported the file as being written: the test did not catch it half-way"
        );
        w.stop().await;
    });
}
