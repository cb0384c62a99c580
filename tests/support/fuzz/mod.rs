//! The datapath fuzzer: structure-aware frames ([`frames`]) through both programs with
//! BPF_PROG_TEST_RUN, each judged by a model that reads the frame as the kernel would and
//! decides with the reference semantics ([`oracle`], [`view`]).
//!
//! A run draws random valid scenarios (as the property test does), loads each onto one node
//! where every pod is an endpoint, and sends sequences of frames to and from the pods. Each
//! frame must do what the model demands, and the counters and flow record must say what
//! the program did. A violation is minimised (frames that do not matter are removed) and
//! saved as a [`Case`] in the corpus (`tests/corpus/datapath/`), which the tests replay.

pub mod frames;
pub mod oracle;
pub mod view;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use policy_agent::{
    compiler::{Compiled, Compiler, NodeConfig},
    datapath::{BpfDatapath, Datapath as _, TableSizes},
    model::{Cluster, ObjectRef},
    semantics,
};
use policy_common::{
    event::FlowEvent,
    maps::{Direction, EP_HAS_LINK_LOCAL, StatsKey, programs},
    reason::{TC_ACT_SHOT, Verdict, reason_name},
};
use proptest::{
    strategy::{Strategy, ValueTree},
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use self::{
    frames::{Generator, Step},
    oracle::{Expect, Model, Sent},
};
use crate::scenarios::{Scenario, scenario_with_services};

/// Where test packets appear.
const LOOPBACK_IFINDEX: u32 = 1;
const PIN_PREFIX: &str = "fuzz-";
/// The node every scenario's pods are on.
pub const NODE_NAME: &str = "fuzz";
/// The node's own addresses in every scenario (its link-local one too: a pod must never
/// claim it).
pub const NODE_ADDRESSES: [&str; 3] = ["10.0.255.254", "fd00:ff::fe", "fe80::fe"];
/// The UDP port of the node's own tunnel device, not a well-known one (as an agent reads
/// it from the node's links): one of the ports frames go to.
pub const NODE_TUNNEL_PORT: u16 = 9000;
/// The link-local address of `pod`'s interface, as the agent would have read it: one per
/// pod name, and none (not read yet) for about a quarter of them.
pub fn pod_link_local(pod: &ObjectRef) -> Option<Ipv6Addr> {
    let hash = pod.to_string().bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    (hash % 4 != 0).then(|| Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 1, (hash >> 16) as u16, hash as u16))
}

/// Frames per scenario before the next one is drawn.
const STEPS_PER_SCENARIO: usize = 48;
/// Tables big enough that no fuzzed sequence fills them.
const TABLES: TableSizes = TableSizes {
    conntrack: 4096,
    fragments: 256,
};

/// A frame of a saved case.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedStep {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// `egress` (`from_pod`) or `ingress` (`to_pod`).
    pub direction: String,
    /// Entering: made by the node's own stack.
    pub from_node: bool,
    /// Made without deliberate damage.
    pub clean: bool,
    /// The frame, in hex.
    pub frame: String,
}

/// A failing sequence, as saved in the corpus.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Case {
    /// What went wrong when it was found.
    pub violation: String,
    /// The cluster, as manifests.
    pub manifests: String,
    /// External hosts.
    pub externals: Vec<IpAddr>,
    /// The frames, in order.
    pub steps: Vec<SavedStep>,
}

impl SavedStep {
    fn of(step: &Step) -> Self {
        Self {
            pod: step.pod.to_string(),
            direction: step.dir.as_str().to_owned(),
            from_node: step.from_node,
            clean: step.clean,
            frame: step.frame.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    fn step(&self) -> Step {
        let (ns, name) = self.pod.split_once('/').expect("namespace/name");
        Step {
            pod: ObjectRef::new(ns, name),
            dir: if self.direction == "egress" {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            from_node: self.from_node,
            clean: self.clean,
            frame: (0..self.frame.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&self.frame[i..i + 2], 16).expect("hex"))
                .collect(),
        }
    }
}

/// One datapath, loaded with one scenario at a time.
pub struct Harness {
    datapath: BpfDatapath,
    compiler: Compiler,
    compiled: Compiled,
    endpoint: Option<ObjectRef>,
}

/// What a program did with one frame.
#[derive(Debug)]
struct Outcome {
    dropped: bool,
    counted: Vec<(StatsKey, u64)>,
    events: Vec<FlowEvent>,
}

impl Harness {
    /// A fresh datapath (its pins go when it is dropped).
    pub fn new() -> Self {
        Self {
            datapath: crate::test_datapath(PIN_PREFIX, TABLES),
            compiler: Compiler::new(),
            compiled: Compiled::default(),
            endpoint: None,
        }
    }

    /// Loads `cluster` with every pod on the node, and forgets every connection.
    fn load(&mut self, cluster: &Cluster) {
        let node = NodeConfig {
            name: NODE_NAME.to_owned(),
            addresses: NODE_ADDRESSES.iter().map(|a| a.parse().unwrap()).collect(),
            ..NodeConfig::default()
        };
        let cluster = on_node(cluster);
        self.compiled = self.compiler.compile(&cluster, &node);
        self.datapath.sync(&self.compiled).expect("maps sync");
        self.datapath
            .set_tunnel_ports(&BTreeSet::from([NODE_TUNNEL_PORT]))
            .expect("tunnel ports written");
        self.datapath.clear_conntrack().expect("tables clear");
        self.datapath.drain_events();
        self.endpoint = None;
    }

    /// Runs `step` through its program.
    fn run(&mut self, step: &Step) -> Outcome {
        if self.endpoint.as_ref() != Some(&step.pod) {
            let mut info = self.compiled.endpoints[&step.pod];
            // What the agent reads from the pod's interface when it attaches.
            if let Some(addr) = pod_link_local(&step.pod) {
                info.link_local = addr.octets();
                info.flags |= EP_HAS_LINK_LOCAL;
            }
            self.datapath
                .set_endpoint(LOOPBACK_IFINDEX, &info)
                .expect("endpoint written");
            self.endpoint = Some(step.pod.clone());
        }
        let before = self.datapath.stats().expect("stats");
        let program = match step.dir {
            Direction::Egress => programs::FROM_POD,
            Direction::Ingress => programs::TO_POD,
        };
        let action = if step.from_node {
            self.datapath.test_run_from_node(program, &step.frame)
        } else {
            self.datapath.test_run(program, &step.frame)
        }
        .unwrap_or_else(|e| {
            panic!(
                "test run of {} bytes {:02x?}: {e}",
                step.frame.len(),
                step.frame
            )
        });
        let after = self.datapath.stats().expect("stats");
        let counted = after
            .iter()
            .filter_map(|(k, v)| {
                let was = before.get(k).map_or(0, |b| b.packets);
                (v.packets > was).then_some((*k, v.packets - was))
            })
            .collect();
        Outcome {
            dropped: action == TC_ACT_SHOT,
            counted,
            events: self.datapath.drain_events(),
        }
    }

    /// The endpoint id of `pod`.
    fn endpoint_id(&self, pod: &ObjectRef) -> u32 {
        self.compiled.endpoints[pod].endpoint_id
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Scenarios drawn.
    pub scenarios: usize,
    /// Frames sent.
    pub frames: usize,
    /// Frames dropped, by reason.
    pub drops: BTreeMap<&'static str, usize>,
    /// Frames passed, by reason.
    pub passes: BTreeMap<&'static str, usize>,
    /// Frames the model held to a verdict (the rest could go either way).
    pub judged: usize,
    /// Violations found.
    pub violations: usize,
}

/// Checks one frame's outcome against the model and the counters: `None` if all is well.
fn check(expect: &Expect, outcome: &Outcome, endpoint_id: u32, dir: Direction) -> Option<String> {
    match expect {
        Expect::Drop(why) if !outcome.dropped => return Some(format!("passed, but {why}")),
        Expect::Pass(why) if outcome.dropped => {
            return Some(format!("dropped, but must pass: {why}"));
        }
        _ => {}
    }
    let verdict = if outcome.dropped {
        Verdict::Drop
    } else {
        Verdict::Allow
    } as u8;
    let counted: u64 = outcome.counted.iter().map(|(_, n)| n).sum();
    let Some((key, _)) = outcome.counted.first().filter(|_| counted == 1) else {
        return Some(format!("counted {counted} packets: {:?}", outcome.counted));
    };
    if key.endpoint_id != endpoint_id || key.direction != dir as u8 || key.verdict != verdict {
        return Some(format!("counted as {key:?}"));
    }
    let records: Vec<&FlowEvent> = outcome.events.iter().collect();
    let record_ok = match (outcome.dropped, records.as_slice()) {
        (true, [r]) | (false, [r]) => {
            r.verdict == verdict
                && r.reason == key.reason
                && r.endpoint_id == endpoint_id
                && r.direction == dir as u8
        }
        (false, []) => true,
        _ => false,
    };
    (!record_ok).then(|| format!("flow records {records:?} for a packet counted as {key:?}"))
}

/// `cluster` with every pod on [`NODE_NAME`].
fn on_node(cluster: &Cluster) -> Cluster {
    let mut cluster = cluster.clone();
    for pod in cluster.pods.values_mut() {
        pod.node = Some(NODE_NAME.to_owned());
    }
    cluster
}

/// A scenario's model, harness state and checks, frame by frame.
struct Session<'h> {
    harness: &'h mut Harness,
    model: Model,
}

impl<'h> Session<'h> {
    fn start(harness: &'h mut Harness, cluster: &Cluster, externals: &[IpAddr]) -> Self {
        harness.load(cluster);
        let node: Vec<IpAddr> = NODE_ADDRESSES.iter().map(|a| a.parse().unwrap()).collect();
        Self {
            harness,
            model: Model::new(&on_node(cluster), externals, NODE_NAME, &node),
        }
    }

    /// Sends `step`; returns a violation, if any.
    fn send(&mut self, step: &Step, report: &mut Report) -> Option<String> {
        let sent = Sent {
            pod: &step.pod,
            dir: step.dir,
            from_node: step.from_node,
            clean: step.clean,
            frame: &step.frame,
        };
        let expect = self.model.expect(&sent);
        let outcome = self.harness.run(step);
        let id = self.harness.endpoint_id(&step.pod);
        report.frames += 1;
        if expect != Expect::Either {
            report.judged += 1;
        }
        if let Some((key, _)) = outcome.counted.first() {
            let tally = if outcome.dropped {
                &mut report.drops
            } else {
                &mut report.passes
            };
            *tally
                .entry(reason_name(key.verdict, key.reason))
                .or_default() += 1;
        }
        let violation = check(&expect, &outcome, id, step.dir).map(|v| {
            format!(
                "{} {} (from node: {}, clean: {}): {v}\n  frame: {:02x?}\n  view: {:?}",
                step.pod,
                step.dir.as_str(),
                step.from_node,
                step.clean,
                step.frame,
                view::read(&step.frame)
            )
        });
        self.model.observe(&sent, !outcome.dropped);
        violation
    }
}

/// Replays `case`: the first violation, if any.
pub fn replay(harness: &mut Harness, case: &Case) -> Option<String> {
    let cluster = crate::cluster(&case.manifests);
    let mut session = Session::start(harness, &cluster, &case.externals);
    let mut report = Report::default();
    case.steps
        .iter()
        .find_map(|s| session.send(&s.step(), &mut report))
}

/// Removes the frames `case` fails without, as long as it still fails.
pub fn minimise(harness: &mut Harness, mut case: Case) -> Case {
    let mut chunk = case.steps.len() / 2;
    while chunk >= 1 {
        let mut at = 0;
        while at < case.steps.len().saturating_sub(1) {
            let mut candidate = case.clone();
            let end = (at + chunk).min(candidate.steps.len() - 1);
            candidate.steps.drain(at..end);
            match replay(harness, &candidate) {
                Some(violation) if end > at => {
                    candidate.violation = violation;
                    case = candidate;
                }
                _ => at += chunk,
            }
        }
        chunk /= 2;
    }
    case
}

/// The random scenario drawn with `seed` (the same one every time).
pub fn draw(seed: u64) -> Scenario {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    scenario_with_services()
        .new_tree(&mut runner)
        .expect("scenarios are always generated")
        .current()
}

/// How long a run goes on.
#[derive(Clone, Copy, Debug)]
pub enum Budget {
    /// This many scenarios.
    Scenarios(usize),
    /// Until this much time has passed.
    Time(Duration),
}

/// Fuzzes from `seed` within `budget`. Each violation is minimised and handed to `found`,
/// which says whether to go on (with the next scenario).
pub fn run(seed: u64, budget: Budget, mut found: impl FnMut(Case) -> bool) -> Report {
    let mut harness = Harness::new();
    let mut report = Report::default();
    let started = Instant::now();
    for n in 0u64.. {
        match budget {
            Budget::Scenarios(max) if report.scenarios >= max => break,
            Budget::Time(max) if started.elapsed() >= max => break,
            _ => {}
        }
        let scenario_seed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(n);
        let s = draw(scenario_seed);
        report.scenarios += 1;
        let pods: Vec<(ObjectRef, Vec<IpAddr>)> = s
            .cluster
            .pods
            .values()
            .map(|p| (p.id.clone(), p.ips.clone()))
            .collect();
        let node: Vec<IpAddr> = NODE_ADDRESSES.iter().map(|a| a.parse().unwrap()).collect();
        let frontends = semantics::services::forwards(&on_node(&s.cluster), NODE_NAME, &node)
            .iter()
            .flat_map(|f| &f.frontends)
            .map(|f| (f.address, f.port))
            .collect();
        let mut generator = Generator::new(
            StdRng::seed_from_u64(scenario_seed),
            pods,
            s.externals.clone(),
            node,
            frontends,
        );
        let mut session = Session::start(&mut harness, &s.cluster, &s.externals);
        let mut sent: Vec<Step> = Vec::new();
        let violation = 'scenario: {
            for _ in 0..STEPS_PER_SCENARIO {
                for step in generator.frames() {
                    let violation = session.send(&step, &mut report);
                    sent.push(step);
                    if violation.is_some() {
                        break 'scenario violation;
                    }
                }
            }
            None
        };
        if let Some(violation) = violation {
            report.violations += 1;
            let case = Case {
                violation,
                manifests: s.to_yaml(),
                externals: s.externals.clone(),
                steps: sent.iter().map(SavedStep::of).collect(),
            };
            if !found(minimise(&mut harness, case)) {
                break;
            }
        }
    }
    report
}

/// What kind of violation `case` found: the rule broken and the direction, without the
/// frame (to keep one case per kind).
pub fn kind(case: &Case) -> String {
    let first = case.violation.lines().next().unwrap_or_default();
    let (who, what) = first.split_once(": ").unwrap_or(("", first));
    let direction = who.split_whitespace().nth(1).unwrap_or_default();
    format!("{direction}: {what}")
}

/// The corpus directory.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/datapath")
}

/// Saves `case` in the corpus under a name from its contents; returns the path.
pub fn save(case: &Case) -> std::io::Result<PathBuf> {
    let text = serde_json::to_string_pretty(case).map_err(std::io::Error::other)?;
    let digest = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{digest:016x}.json"));
    std::fs::write(&path, text + "\n")?;
    Ok(path)
}

/// Every case in the corpus, with its file name.
pub fn corpus() -> Vec<(String, Case)> {
    let mut cases: Vec<(String, Case)> = std::fs::read_dir(corpus_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).expect("readable corpus file");
            let case = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
            (e.file_name().to_string_lossy().into_owned(), case)
        })
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    cases
}
