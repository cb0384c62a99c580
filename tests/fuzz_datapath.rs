//! The datapath fuzzer in the test suite: every case of its corpus (`corpus/datapath/`)
//! replays clean, and a short seeded run finds nothing. `cargo xtask fuzz datapath
//! --seconds N` runs it for longer (the `deep` test).
//!
//! `POLICY_FUZZ_SEED` replays a run; a failure is minimised and saved to the corpus.

use std::{collections::BTreeSet, time::Duration};

use policy_tests::fuzz::{self, Budget, Harness, Report};

const DEFAULT_SEED: u64 = 0xf022_2026;
/// Scenarios of the short run (each about 50 frames).
const SHORT_RUN: usize = 60;

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn summary(report: &Report) -> String {
    format!(
        "{} scenarios, {} frames ({} with a required verdict), {} violation(s); dropped {:?}; passed {:?}",
        report.scenarios,
        report.frames,
        report.judged,
        report.violations,
        report.drops,
        report.passes
    )
}

/// Fuzzes; every new kind of violation is minimised and saved to the corpus. With
/// `keep_going`, a run goes on after a violation, to find the other kinds.
fn fuzz(seed: u64, budget: Budget, keep_going: bool) {
    let mut kinds = BTreeSet::new();
    let mut failures = Vec::new();
    let report = fuzz::run(seed, budget, |case| {
        if kinds.insert(fuzz::kind(&case)) {
            let saved = fuzz::save(&case)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|e| format!("(not saved: {e})"));
            failures.push(format!(
                "{}\n{} frame(s), saved to {saved}",
                case.violation,
                case.steps.len()
            ));
        }
        keep_going
    });
    eprintln!("seed {seed}: {}", summary(&report));
    assert!(
        failures.is_empty(),
        "seed {seed} (rerun with POLICY_FUZZ_SEED={seed}) found {} kind(s) of violation:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_corpus_replays_clean() {
    let corpus = fuzz::corpus();
    assert!(!corpus.is_empty(), "the corpus is empty");
    let mut harness = Harness::new();
    for (name, case) in corpus {
        if let Some(violation) = fuzz::replay(&mut harness, &case) {
            panic!(
                "corpus case {name} (found as: {}) fails again: {violation}",
                case.violation
            );
        }
    }
}

#[test]
fn a_short_seeded_run_finds_nothing() {
    let seed = env_number("POLICY_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    fuzz(seed, Budget::Scenarios(SHORT_RUN), false);
}

#[test]
#[ignore = "long; `cargo xtask fuzz datapath --seconds N` runs it"]
fn deep() {
    let seconds = env_number("POLICY_FUZZ_SECONDS").unwrap_or(60);
    let seed = env_number("POLICY_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(DEFAULT_SEED, |d| d.as_secs())
    });
    fuzz(seed, Budget::Time(Duration::from_secs(seconds)), true);
}
