//! `matrix --from/--to/--namespace` and `matrix --summary` through the real binary: a
//! filtered matrix is the whole matrix restricted to the filter, and the summary by
//! workload is the whole matrix folded by the pods' controllers.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
};

use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_policy-agent");

/// Two namespaces: in `a`, Deployment `web` (three replicas, ReplicaSet `web-7f9c`),
/// Deployment `api` (two replicas, one a canary) and a bare pod `debug`; in `b`,
/// StatefulSet `db` (two pods), a Job's pod, and Service `db`. `db` admits `web`, and
/// `api` except its canary, on 5432; `web` admits only pods of `a`.
const CLUSTER: &str = r#"
kind: Namespace
metadata: {name: a}
---
kind: Namespace
metadata: {name: b}
---
kind: Pod
metadata: {name: web-7f9c-aaaaa, namespace: a, labels: {app: web, pod-template-hash: 7f9c},
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7f9c, uid: u1, controller: true}]}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: web-7f9c-bbbbb, namespace: a, labels: {app: web, pod-template-hash: 7f9c},
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7f9c, uid: u1, controller: true}]}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.2}
---
kind: Pod
metadata: {name: web-7f9c-ccccc, namespace: a, labels: {app: web, pod-template-hash: 7f9c},
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7f9c, uid: u1, controller: true}]}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.3}
---
kind: Pod
metadata: {name: api-5d4b-aaaaa, namespace: a, labels: {app: api, pod-template-hash: 5d4b},
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: api-5d4b, uid: u2, controller: true}]}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.0.4}
---
kind: Pod
metadata: {name: api-5d4b-bbbbb, namespace: a, labels: {app: api, canary: "true", pod-template-hash: 5d4b},
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: api-5d4b, uid: u2, controller: true}]}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.0.5}
---
kind: Pod
metadata: {name: debug, namespace: a, labels: {app: debug}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.6}
---
kind: Pod
metadata: {name: db-0, namespace: b, labels: {app: db},
  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: db, uid: u3, controller: true}]}
spec: {containers: [{name: c, ports: [{containerPort: 5432}]}]}
status: {podIP: 10.0.1.1}
---
kind: Pod
metadata: {name: db-1, namespace: b, labels: {app: db},
  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: db, uid: u3, controller: true}]}
spec: {containers: [{name: c, ports: [{containerPort: 5432}]}]}
status: {podIP: 10.0.1.2}
---
kind: Pod
metadata: {name: migrate-x1, namespace: b, labels: {app: migrate},
  ownerReferences: [{apiVersion: batch/v1, kind: Job, name: migrate, uid: u4, controller: true}]}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.1.3}
---
kind: Service
metadata: {name: db, namespace: b}
spec: {clusterIP: 10.96.0.10, selector: {app: db}, ports: [{port: 5432}]}
---
kind: NetworkPolicy
metadata: {name: db, namespace: b}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector: {matchLabels: {app: web}}
    - namespaceSelector: {}
      podSelector:
        matchLabels: {app: api}
        matchExpressions: [{key: canary, operator: DoesNotExist}]
    ports: [{port: 5432}]
---
kind: NetworkPolicy
metadata: {name: web, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {}}]}]
"#;

/// Each pod's workload, as the summary should name it.
const WORKLOADS: &[(&str, &str)] = &[
    ("a/web-7f9c-aaaaa", "a/deployment/web"),
    ("a/web-7f9c-bbbbb", "a/deployment/web"),
    ("a/web-7f9c-ccccc", "a/deployment/web"),
    ("a/api-5d4b-aaaaa", "a/deployment/api"),
    ("a/api-5d4b-bbbbb", "a/deployment/api"),
    ("a/debug", "a/pod/debug"),
    ("b/db-0", "b/statefulset/db"),
    ("b/db-1", "b/statefulset/db"),
    ("b/migrate-x1", "b/job/migrate"),
];

/// A manifest directory removed when dropped.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(test: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("policy-agent-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cluster.yaml"), CLUSTER).unwrap();
    Dir(dir)
}

/// `matrix --json ARGS` on `dir`, parsed; it must succeed with nothing rejected.
fn matrix(dir: &Dir, args: &[&str]) -> Value {
    let out = Command::new(AGENT)
        .args(["matrix", "--json", "--manifests"])
        .arg(&dir.0)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn probes(v: &Value) -> Vec<Value> {
    v["probes"].as_array().unwrap().clone()
}

fn text(p: &Value, field: &str) -> String {
    p[field].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_filtered_matrix_is_the_whole_matrix_restricted_to_the_filter() {
    let dir = dir("matrix-filters");
    let whole = probes(&matrix(&dir, &[]));
    let from = |p: &Value| text(p, "from");
    let to = |p: &Value| text(p, "to");
    let service = |p: &Value| text(p, "service");
    let by_address = |p: &Value| p.get("service").is_none();
    let db_pods = ["b/db-0", "b/db-1"];
    type Keep = Box<dyn Fn(&Value) -> bool>;
    let cases: Vec<(Vec<&str>, Keep)> = vec![
        (
            vec!["--from", "a/*"],
            Box::new(move |p| from(p).starts_with("a/")),
        ),
        (
            vec!["--from", "a/web-*", "--from", "b/migrate-x1"],
            Box::new(move |p| from(p).starts_with("a/web-") || from(p) == "b/migrate-x1"),
        ),
        // A label selector picks pods, never a Service.
        (
            vec!["--to", "app=db"],
            Box::new(move |p| by_address(p) && db_pods.contains(&to(p).as_str())),
        ),
        (
            vec!["--from", "app in (api,web),canary", "--to", "b/*"],
            Box::new(move |p| {
                from(p) == "a/api-5d4b-bbbbb"
                    && if by_address(p) {
                        to(p).starts_with("b/")
                    } else {
                        service(p).starts_with("b/")
                    }
            }),
        ),
        // `!=` holds where the label is absent, as in kubectl.
        (
            vec!["--from", "app!=web", "--to", "10.0.1.0/24"],
            Box::new(move |p| {
                !from(p).starts_with("a/web-") && by_address(p) && to(p).starts_with("b/")
            }),
        ),
        (
            vec!["--namespace", "b"],
            Box::new(move |p| {
                from(p).starts_with("b/")
                    && if by_address(p) {
                        to(p).starts_with("b/")
                    } else {
                        service(p).starts_with("b/")
                    }
            }),
        ),
        // A name picks the Service of that name (through its frontend) too.
        (
            vec!["--to", "b/db"],
            Box::new(move |p| service(p) == "b/db"),
        ),
    ];
    for (args, keep) in cases {
        let filtered = probes(&matrix(&dir, &args));
        let restricted: Vec<Value> = whole.iter().filter(|p| keep(p)).cloned().collect();
        assert!(
            !restricted.is_empty(),
            "{args:?} keeps nothing: a weak case"
        );
        assert!(restricted.len() < whole.len(), "{args:?} keeps everything");
        assert_eq!(filtered, restricted, "{args:?}");
    }
}

#[test]
fn a_filter_that_is_no_selector_is_refused() {
    let dir = dir("matrix-bad-filter");
    for bad in ["web", "a/b/c", "env in prod"] {
        let out = Command::new(AGENT)
            .args(["matrix", "--manifests"])
            .arg(&dir.0)
            .args(["--from", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(out.stdout.is_empty(), "{bad}");
    }
}

/// A workload pair of one table: from, to, protocol, port, family, Service.
type PairKey = (String, String, String, u64, String, String);

#[test]
fn the_summary_is_the_whole_matrix_folded_by_workload() {
    let dir = dir("matrix-summary");
    let whole = probes(&matrix(&dir, &[]));
    let summary = matrix(&dir, &["--summary"]);
    let workloads: BTreeMap<&str, &str> = WORKLOADS.iter().copied().collect();
    // An external host is its own group.
    let workload = |host: String| {
        workloads
            .get(host.as_str())
            .map_or(host.clone(), |w| (*w).to_owned())
    };
    // (from, to, protocol, port, family, service) -> [allowed, denied, backend-dependent]
    let mut folded: BTreeMap<PairKey, [u64; 3]> = BTreeMap::new();
    for p in &whole {
        let (to, service) = match p.get("service") {
            Some(s) => (
                s.as_str().unwrap().to_owned(),
                s.as_str().unwrap().to_owned(),
            ),
            None => (workload(text(p, "to")), String::new()),
        };
        let key = (
            workload(text(p, "from")),
            to,
            text(p, "protocol"),
            p["port"].as_u64().unwrap(),
            text(p, "family"),
            service,
        );
        let slot = if p.get("backend-dependent").is_some() {
            2
        } else if p["allowed"].as_bool().unwrap() {
            0
        } else {
            1
        };
        folded.entry(key).or_default()[slot] += 1;
    }
    let pairs = summary["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), folded.len(), "{summary:#}");
    for pair in pairs {
        let key = (
            text(pair, "from"),
            text(pair, "to"),
            text(pair, "protocol"),
            pair["port"].as_u64().unwrap(),
            text(pair, "family"),
            text(pair, "service"),
        );
        let counts = folded
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} in the summary only"));
        let got = [
            pair["allowed"].as_u64().unwrap(),
            pair["denied"].as_u64().unwrap(),
            pair["backend-dependent"].as_u64().unwrap(),
        ];
        assert_eq!(&got, counts, "{key:?}");
        let verdict = match counts {
            [_, 0, 0] => "allowed",
            [0, _, 0] => "denied",
            [0, 0, _] => "backend-dependent",
            _ => "partly",
        };
        assert_eq!(text(pair, "verdict"), verdict, "{key:?}");
    }
    // The canary makes api -> db partly; web -> db is allowed whole.
    let verdict = |from: &str, to: &str| {
        pairs
            .iter()
            .find(|p| text(p, "from") == from && text(p, "to") == to)
            .map(|p| text(p, "verdict"))
    };
    assert_eq!(
        verdict("a/deployment/api", "b/statefulset/db").as_deref(),
        Some("partly")
    );
    assert_eq!(
        verdict("a/deployment/web", "b/statefulset/db").as_deref(),
        Some("allowed")
    );
    assert_eq!(
        verdict("b/job/migrate", "a/deployment/web").as_deref(),
        Some("denied")
    );
    // Every workload is listed with its pods.
    let listed: BTreeSet<(String, String)> = summary["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| {
            let name = text(w, "workload");
            w["pods"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |p| (p.as_str().unwrap().to_owned(), name.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = WORKLOADS
        .iter()
        .map(|(p, w)| ((*p).to_owned(), (*w).to_owned()))
        .collect();
    assert_eq!(listed, expected);

    // The tables say the same, and a filter applies before the folding.
    let out = Command::new(AGENT)
        .args(["matrix", "--summary", "--namespace", "a", "--manifests"])
        .arg(&dir.0)
        .output()
        .unwrap();
    let tables = String::from_utf8(out.stdout).unwrap();
    assert!(tables.contains("TCP/80 IPv4 by workload"), "{tables}");
    assert!(!tables.contains("b/statefulset/db"), "{tables}");
    assert!(tables.contains("workload pairs:"), "{tables}");
}
