//! The hostile-input corpus (`tests/corpus/hostile/`) through `matrix`, run as a user runs
//! it: a valid cluster (`base/`), and one case per file in `cases/`, each the base plus one
//! bad thing. For every case, the verdicts of the base that are not about the bad object
//! stay as they were, no pair becomes allowed that the base denies (what never read is
//! enforced fail-closed, never open), the exit status says whether something was rejected,
//! and stderr names the file, the object and the field.
//!
//! A case file starts with comment lines `# key: value` that say what it is and what must
//! happen (see [`Case`]); a new case is one new file.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_policy-agent");
/// How long one `matrix` run may take, however hostile its input (an alias bomb, deep
/// nesting): the parser's budgets must refuse such input quickly.
const MATRIX_DEADLINE: Duration = Duration::from_secs(60);
/// How often the deadline is checked.
const POLL: Duration = Duration::from_millis(20);

#[path = "../../tests/support/hostile.rs"]
mod case;
use case::{Case, cases};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/hostile")
}

/// A manifest directory under /tmp, removed on drop.
struct Dir(PathBuf);

/// Directories made so far: tests run in parallel, each needs its own.
static DIRS: AtomicUsize = AtomicUsize::new(0);

impl Dir {
    /// The base cluster, with `case` written into it.
    fn new(case: Option<&Case>) -> Dir {
        let tag = case.map_or("base", |c| c.name.trim_end_matches(".yaml"));
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hostile-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(corpus().join("base")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
        if let Some(case) = case {
            std::fs::write(dir.join(&case.file), &case.bytes).unwrap();
        }
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One probe of `matrix --json`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Probe {
    from: String,
    to: String,
    port: u64,
    protocol: String,
    family: String,
}

/// What `matrix --json` said.
struct Run {
    code: Option<i32>,
    verdicts: BTreeMap<Probe, bool>,
    stderr: String,
}

/// Runs `policy-agent matrix --json --manifests DIR`, killed at [`MATRIX_DEADLINE`].
fn matrix(dir: &Dir) -> Run {
    let mut child = Command::new(AGENT)
        .args(["matrix", "--json", "--manifests"])
        .arg(&dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read both pipes on threads: a large stderr must not block the child.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut v).unwrap();
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut v).unwrap();
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > MATRIX_DEADLINE {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("matrix on {} ran past {MATRIX_DEADLINE:?}", dir.0.display());
        }
        std::thread::sleep(POLL);
    };
    let stdout = out.join().unwrap();
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    let json: Value = serde_json::from_slice(&stdout)
        .unwrap_or_else(|e| panic!("{}: no JSON ({e}): {stderr}", dir.0.display()));
    let verdicts = json["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert!(
                p.get("service").is_none(),
                "the corpus has no Services: {p}"
            );
            let s = |k: &str| p[k].as_str().unwrap().to_owned();
            let probe = Probe {
                from: s("from"),
                to: s("to"),
                port: p["port"].as_u64().unwrap(),
                protocol: s("protocol"),
                family: s("family"),
            };
            (probe, p["allowed"].as_bool().unwrap())
        })
        .collect();
    Run {
        code: status.code(),
        verdicts,
        stderr,
    }
}

/// What is wrong with `run`, the case's matrix, against `base`'s; empty when nothing is.
fn violations(case: &Case, base: &Run, run: &Run) -> Vec<String> {
    let mut wrong = Vec::new();
    if run.code != Some(case.exit) {
        wrong.push(format!("exit status {:?}, want {}", run.code, case.exit));
    }
    for report in &case.reports {
        if !run.stderr.contains(report.as_str()) {
            wrong.push(format!("stderr does not say {report:?}"));
        }
    }
    // Names are escaped on stderr: no raw control character may reach the terminal.
    if let Some(c) = run
        .stderr
        .chars()
        .find(|c| c.is_control() && *c != '\n' && *c != '\t')
    {
        wrong.push(format!("stderr holds a raw control character {c:?}"));
    }
    for (probe, &allowed) in &run.verdicts {
        match base.verdicts.get(probe) {
            // More reachable than the base: never, whatever the case is about.
            Some(false) if allowed => wrong.push(format!("{probe:?} allowed, the base denies it")),
            Some(&was) if was != allowed && !case.about(&probe.from, &probe.to) => {
                wrong.push(format!(
                    "{probe:?} changed to {allowed}, not about the bad object"
                ));
            }
            None if !case.about(&probe.from, &probe.to) => wrong.push(format!("{probe:?} is new")),
            _ => {}
        }
    }
    for probe in base.verdicts.keys() {
        if !run.verdicts.contains_key(probe) && !case.about(&probe.from, &probe.to) {
            wrong.push(format!("{probe:?} is gone"));
        }
    }
    wrong
}

/// The base cluster is valid, and probes enough of each kind for the cases to mean
/// something: allowed and denied pairs, on named and numbered ports.
#[test]
fn the_base_cluster_is_valid() {
    let base = matrix(&Dir::new(None));
    assert_eq!(base.code, Some(0), "{}", base.stderr);
    let allowed = base.verdicts.values().filter(|a| **a).count();
    let denied = base.verdicts.len() - allowed;
    assert!(
        allowed >= 10 && denied >= 10,
        "{allowed} allowed, {denied} denied"
    );
}

#[test]
fn no_hostile_input_makes_a_pod_more_reachable_and_each_is_reported() {
    let base = matrix(&Dir::new(None));
    assert_eq!(base.code, Some(0), "{}", base.stderr);
    let cases = cases(&corpus());
    assert!(cases.len() >= 25, "{} cases", cases.len());
    let mut failures = String::new();
    for case in &cases {
        let run = matrix(&Dir::new(Some(case)));
        let wrong = violations(case, &base, &run);
        if !wrong.is_empty() {
            let _ = writeln!(
                failures,
                "{}:\n  {}\n  stderr: {}",
                case.name,
                wrong.join("\n  "),
                run.stderr.trim_end().replace('\n', "\n          ")
            );
        }
    }
    assert!(failures.is_empty(), "{failures}");
}

/// The checks themselves: a case that opened a pod, changed a verdict it is not about,
/// exited 0 after a rejection or said nothing would be caught.
#[test]
fn the_checks_catch_a_broken_promise() {
    let base = matrix(&Dir::new(None));
    let case = Case {
        name: "probe".to_owned(),
        exit: 3,
        reports: vec!["NetworkPolicy shop/db-ingress".to_owned()],
        about: vec!["shop/db".to_owned()],
        ..Case::default()
    };
    let denied = base.verdicts.iter().find(|(_, a)| !**a).unwrap().0.clone();
    let allowed = base
        .verdicts
        .iter()
        .find(|(p, a)| **a && p.from != p.to && !case.about(&p.from, &p.to))
        .unwrap()
        .0
        .clone();
    let mut opened = Run {
        code: Some(3),
        verdicts: base.verdicts.clone(),
        stderr: "error: x.yaml: NetworkPolicy shop/db-ingress: spec: bad".to_owned(),
    };
    assert!(violations(&case, &base, &opened).is_empty());
    opened.verdicts.insert(denied.clone(), true);
    assert!(violations(&case, &base, &opened)[0].contains("the base denies it"));
    opened.verdicts.insert(denied, false);
    opened.verdicts.insert(allowed.clone(), false);
    assert!(violations(&case, &base, &opened)[0].contains("not about the bad object"));
    opened.verdicts.remove(&allowed);
    assert!(violations(&case, &base, &opened)[0].contains("is gone"));
    let silent = Run {
        code: Some(0),
        verdicts: base.verdicts.clone(),
        stderr: String::new(),
    };
    let wrong = violations(&case, &base, &silent);
    assert!(wrong.iter().any(|w| w.contains("exit status")), "{wrong:?}");
    assert!(
        wrong.iter().any(|w| w.contains("stderr does not say")),
        "{wrong:?}"
    );
}
