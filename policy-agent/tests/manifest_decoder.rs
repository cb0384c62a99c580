//! The manifest decoder against arbitrary and hostile input: arbitrary bytes, valid
//! manifests mutated (bytes inserted, deleted, replaced, documents cut, keys repeated,
//! collections nested deep, anchors and aliases), through the entry point the directory
//! source and `matrix` use. Whatever the input, the decoder returns without panicking, its
//! work and memory stay within a bound of the input's length (counted by this binary's
//! allocator, per thread), and it yields no object the input does not name.
//!
//! The default run tries a few hundred inputs; `cargo xtask test --deep` (which runs
//! ignored tests) many more.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    path::Path,
};

use policy_agent::{
    model::ObjectRef,
    source::manifests::{self, LastGood, Loaded},
};
use proptest::{prelude::*, test_runner::Config};

/// Counts what this thread allocates: the peak of live bytes and the number of
/// allocations, while a probe is armed.
struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn record(delta: isize) {
    // A thread being torn down has no counters left: nothing to record.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            LIVE.with(|live| {
                live.set(live.get() + delta);
                PEAK.with(|peak| peak.set(peak.get().max(live.get())));
            });
            if delta > 0 {
                ALLOCATIONS.with(|n| n.set(n.get() + 1));
            }
        }
    });
}

// SAFETY: every call is passed on to the system allocator unchanged; the counters are
// thread-local cells with constant initializers, which neither allocate nor lock.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(isize::try_from(layout.size()).unwrap_or(isize::MAX));
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(-isize::try_from(layout.size()).unwrap_or(isize::MAX));
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let grow = isize::try_from(new_size).unwrap_or(isize::MAX)
            - isize::try_from(layout.size()).unwrap_or(isize::MAX);
        record(grow);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What decoding one input cost this thread.
#[derive(Debug)]
struct Cost {
    /// Most bytes live at once, over what was live before.
    peak: usize,
    /// Allocations made: a measure of work that does not depend on the machine.
    allocations: usize,
}

/// Runs `f`, counting what it allocates on this thread.
fn measured<T>(f: impl FnOnce() -> T) -> (T, Cost) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    ALLOCATIONS.with(|n| n.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    let cost = Cost {
        peak: usize::try_from(PEAK.with(Cell::get)).unwrap_or(0),
        allocations: ALLOCATIONS.with(Cell::get),
    };
    (out, cost)
}

/// Memory any input may cost: what the parser's budgets let one small document expand to
/// (aliases replaying up to 100,000 events into a parsed tree), plus the objects it holds.
const BASE_BYTES: usize = 64 * 1024 * 1024;
/// Memory per byte of input, for what the input itself holds (its objects, its errors).
const BYTES_PER_INPUT_BYTE: usize = 2_048;
/// Allocations any input may cost (the same replays).
const BASE_ALLOCATIONS: usize = 2_000_000;
/// Allocations per byte of input.
const ALLOCATIONS_PER_INPUT_BYTE: usize = 200;

/// Decodes `input` as one file of a manifest directory.
fn decode(input: &[u8]) -> (Loaded, Cost) {
    // `load_str` and `load_dir_with` share the reader; bytes that are not UTF-8 can only
    // come through a file.
    match std::str::from_utf8(input) {
        Ok(text) => measured(|| {
            let mut loaded = Loaded::default();
            manifests::load_str(text, Path::new("fuzz.yaml"), &mut loaded);
            loaded
        }),
        Err(_) => {
            let dir = tempdir();
            std::fs::write(dir.0.join("fuzz.yaml"), input).unwrap();
            measured(|| manifests::load_dir_with(&dir.0, &mut LastGood::default()).unwrap())
        }
    }
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "policy-agent-decoder-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// Every name the decoder yielded (objects, and their namespaces).
fn names(loaded: &Loaded) -> Vec<String> {
    let c = &loaded.cluster;
    let mut names: Vec<String> = Vec::new();
    let refs = c
        .pods
        .keys()
        .chain(c.policies.keys())
        .chain(c.services.keys());
    for r in refs {
        names.push(r.name.clone());
        names.push(r.namespace.clone());
    }
    for r in c.endpoint_slices.keys() {
        // The control plane's slices of a Service are named after it.
        let derived = r
            .name
            .rsplit_once("-derived-")
            .filter(|(service, n)| {
                n.bytes().all(|b| b.is_ascii_digit())
                    && c.services
                        .contains_key(&ObjectRef::new(r.namespace.as_str(), *service))
            })
            .map(|(service, _)| service.to_owned());
        names.push(derived.unwrap_or_else(|| r.name.clone()));
        names.push(r.namespace.clone());
    }
    names.extend(c.namespaces.keys().cloned());
    names.extend(c.nodes.keys().cloned());
    names
}

/// Checks the properties on one input.
fn check(input: &[u8]) -> Result<(), TestCaseError> {
    let (loaded, cost) = decode(input);
    let len = input.len();
    prop_assert!(
        cost.peak <= BASE_BYTES + BYTES_PER_INPUT_BYTE * len,
        "{len} bytes of input cost {cost:?}"
    );
    prop_assert!(
        cost.allocations <= BASE_ALLOCATIONS + ALLOCATIONS_PER_INPUT_BYTE * len,
        "{len} bytes of input cost {cost:?}"
    );
    // An escape (`"\x41"`) can spell a name that the input does not hold as such; a
    // multi-line scalar folds its lines into words.
    let text = String::from_utf8_lossy(input);
    if !text.contains('\\') {
        for name in names(&loaded) {
            let named =
                name == "default" || name.split_whitespace().all(|word| text.contains(word));
            prop_assert!(named, "{name:?} is not in the input");
        }
    }
    Ok(())
}

/// A valid directory's worth of manifests: every kind, a List, a policy with rules.
const VALID: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: web}}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: web-0, namespace: shop, labels: {app: web}}
  spec:
    nodeName: node-1
    containers:
    - name: c
      ports: [{containerPort: 80, name: http}, {containerPort: 53, protocol: UDP}]
  status:
    podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]
- apiVersion: v1
  kind: Pod
  metadata: {name: db-0, namespace: shop, labels: {app: db}}
  status: {podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: db}}
    - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}
    ports: [{port: http}, {port: 8000, endPort: 8080}]
  egress: [{to: [{namespaceSelector: {}}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
--- # a note
apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 192.168.0.10}]}
...
"#;

/// Hostile fragments spliced into valid manifests.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        // Deep nesting, flow and block.
        (1usize..5_000).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        (1usize..300).prop_map(|n| (0..n).map(|i| format!("{}a:\n", " ".repeat(i))).collect()),
        // A billion laughs: each level aliases the one below ten times.
        (1usize..12).prop_map(|levels| {
            let mut s = "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n".to_owned();
            for i in 1..levels {
                let prev = format!("*l{}", i - 1);
                s.push_str(&format!("l{i}: &l{i} [{}]\n", vec![prev; 10].join(", ")));
            }
            s
        }),
        // Repeated keys, merge keys, tags, anchors on names.
        Just("metadata: {name: a}\nmetadata: {name: b}\n".to_owned()),
        Just("base: &b {name: m}\nmetadata: {<<: *b}\n".to_owned()),
        Just("kind: !!binary aGVsbG8=\nmetadata: !custom {name: t}\n".to_owned()),
        Just("metadata: &m {name: x, namespace: *m}\n".to_owned()),
        // Markers where they do not belong.
        Just("a: |\n---\n  b\n...\n%YAML 1.2\n".to_owned()),
        Just("---#\n--- \t\n...#\n".to_owned()),
        // Long scalars.
        (1usize..100_000).prop_map(|n| format!("x: {}\n", "y".repeat(n))),
        (1usize..10_000).prop_map(|n| format!("x: \"{}\"\n", "\\u00e9".repeat(n))),
        // Arbitrary text.
        ".{0,64}",
    ]
}

/// An edit of an input.
#[derive(Clone, Debug)]
enum Edit {
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Replace(usize, u8),
    Splice(usize, String),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, b)| Edit::Insert(at, b)),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Edit::Delete(at, n)),
        (
            any::<usize>(),
            prop_oneof![
                any::<u8>(),
                Just(b'-'),
                Just(b'.'),
                Just(b':'),
                Just(b'['),
                Just(b'{'),
                Just(b'&'),
                Just(b'*'),
                Just(b'\n'),
                Just(b' '),
                Just(b'#'),
                Just(b'"'),
                Just(b'\''),
            ]
        )
            .prop_map(|(at, b)| Edit::Replace(at, b)),
        (any::<usize>(), hostile()).prop_map(|(at, s)| Edit::Splice(at, s)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// `VALID` with `edits` applied (positions wrap around the current length).
fn mutated(edits: &[Edit]) -> Vec<u8> {
    let mut bytes = VALID.as_bytes().to_vec();
    for e in edits {
        let at = |i: usize| i % (bytes.len() + 1);
        match e {
            Edit::Insert(i, b) => {
                let i = at(*i);
                bytes.splice(i..i, b.iter().copied());
            }
            Edit::Delete(i, n) => {
                let i = at(*i);
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Edit::Replace(i, b) => {
                if !bytes.is_empty() {
                    let i = *i % bytes.len();
                    bytes[i] = *b;
                }
            }
            Edit::Splice(i, s) => {
                // At a line's start, so that the fragment is read as YAML.
                let i = at(*i);
                let i = bytes[..i]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |p| p + 1);
                bytes.splice(i..i, s.bytes());
            }
            Edit::Truncate(i) => bytes.truncate(at(*i)),
        }
    }
    bytes
}

/// Inputs of the default run, and of the deep one.
const CASES: u32 = 256;
const DEEP_CASES: u32 = 20_000;

/// `cases` inputs; a failure is reported with its input, not saved to the source tree.
fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn arbitrary_bytes(cases: u32) {
    proptest!(config(cases), |(input in proptest::collection::vec(any::<u8>(), 0..2_048))| {
        check(&input)?;
    });
}

fn mutated_manifests(cases: u32) {
    proptest!(config(cases), |(edits in proptest::collection::vec(edit(), 1..6))| {
        check(&mutated(&edits))?;
    });
}

#[test]
fn arbitrary_bytes_decode_within_bounds() {
    arbitrary_bytes(CASES);
}

#[test]
fn mutated_manifests_decode_within_bounds() {
    mutated_manifests(CASES);
}

#[test]
#[ignore = "deep: many more inputs (cargo xtask test --deep)"]
fn deep_arbitrary_bytes_decode_within_bounds() {
    arbitrary_bytes(DEEP_CASES);
}

#[test]
#[ignore = "deep: many more inputs (cargo xtask test --deep)"]
fn deep_mutated_manifests_decode_within_bounds() {
    mutated_manifests(DEEP_CASES);
}

#[test]
fn the_valid_manifests_decode_whole() {
    let (loaded, _) = decode(VALID.as_bytes());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let c = &loaded.cluster;
    assert_eq!(
        (
            c.pods.len(),
            c.policies.len(),
            c.services.len(),
            c.nodes.len()
        ),
        (2, 1, 1, 1)
    );
}

/// A billion laughs and a scalar repeated by aliases: the parser's budgets stop both
/// early, and the rest of the file still loads.
#[test]
fn alias_bombs_are_errors_of_their_document() {
    let mut bomb =
        "kind: Namespace\nmetadata: {name: bomb}\nl0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
            .to_owned();
    for i in 1..10 {
        let prev = format!("*l{}", i - 1);
        bomb.push_str(&format!("l{i}: &l{i} [{}]\n", vec![prev; 10].join(", ")));
    }
    let long = format!(
        "kind: Namespace\nmetadata: {{name: long}}\ns: &s \"{}\"\nl: [{}]\n",
        "y".repeat(1_000_000),
        vec!["*s"; 1_000].join(", ")
    );
    let input = format!("{bomb}---\n{long}---\nkind: Namespace\nmetadata: {{name: fine}}\n");
    let (loaded, cost) = decode(input.as_bytes());
    assert!(cost.peak < BASE_BYTES, "{cost:?}");
    assert_eq!(loaded.errors.len(), 2, "{:?}", loaded.errors);
    let namespaces: Vec<&String> = loaded.cluster.namespaces.keys().collect();
    assert_eq!(namespaces, ["fine"]);
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for deep in [
        format!(
            "kind: Namespace\nx: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
        format!(
            "kind: Namespace\nx: {}{}\n",
            "{a: ".repeat(100_000),
            "}".repeat(100_000)
        ),
        // Block nesting, within an object's length (deeper takes over 3 MiB of indent).
        (0..2_000)
            .map(|i| format!("{}- \n", " ".repeat(i)))
            .collect(),
    ] {
        let (loaded, cost) = decode(deep.as_bytes());
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        assert!(cost.peak < BASE_BYTES, "{cost:?}");
    }
}

/// A List longer than an object is read an item at a time, and an item's parsed tree is
/// bounded as an object's document is: an item of a million values is an error, and costs
/// the memory of its text and of what an object may hold (45 MiB), not of its values (held
/// and decoded, they took 218 MiB).
#[test]
fn a_long_list_holds_one_bounded_item_at_a_time() {
    /// Values in the long item.
    const VALUES: usize = 1_000_000;
    /// A long scalar, to make the List longer than an object cheaply.
    const PADDING: usize = 1_500_000;
    let mut input = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {{kind: ConfigMap, data: {{a: {}}}}}\n",
        "x".repeat(PADDING)
    );
    for i in 0..100 {
        input.push_str(&format!(
            "- {{kind: Namespace, metadata: {{name: ns-{i}}}}}\n"
        ));
    }
    input.push_str(
        "- kind: NetworkPolicy\n  metadata: {name: long, namespace: ns-0}\n  spec: {x: [",
    );
    input.push_str(&"1,".repeat(VALUES));
    input.push_str("1]}\n");
    let (loaded, cost) = decode(input.as_bytes());
    assert_eq!(loaded.cluster.namespaces.len(), 100);
    assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
    let error = loaded.errors[0].to_string();
    assert!(
        error.contains("NetworkPolicy ns-0/long: an item of a List over the limit")
            && error.contains("enforced fail-closed"),
        "{error}"
    );
    assert!(cost.peak < BASE_BYTES, "{cost:?}");
}
