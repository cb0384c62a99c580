//! Property test: on random valid scenarios, the reference semantics and the compiled maps
//! (read with the datapath's own decision code) give the same verdict on every question,
//! and so does the kernel (BPF_PROG_TEST_RUN) on a sample.
//!
//! Seeded and reproducible: `POLICY_TEST_SEED=<n>` replays a run, `POLICY_TEST_CASES=<n>`
//! changes how many scenarios it tries (default 10,000). A failure prints the seed and the
//! smallest failing scenario as manifests.

use std::cell::{Cell, RefCell};

use policy_agent::{
    compiler::Compiler,
    evaluate::{Flow, compiled::CompiledEvaluator, reference::Reference},
    plan,
};
use policy_tests::{kernel::KernelEvaluator, scenarios::scenario};
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

const DEFAULT_SEED: u64 = 0x5eed_2026;
const DEFAULT_CASES: u32 = 10_000;
/// Every n-th scenario also goes through the kernel.
const KERNEL_SAMPLE_EVERY: u32 = 50;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn reference_compiled_and_kernel_agree_on_random_scenarios() {
    let seed = env_number("POLICY_TEST_SEED", DEFAULT_SEED);
    let cases = env_number("POLICY_TEST_CASES", u64::from(DEFAULT_CASES)) as u32;
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    });
    // One compiler for all scenarios: its ids carry over, as in a running agent. The
    // runner takes a `Fn`, hence the cells.
    let compiler = RefCell::new(Compiler::new());
    let kernel = RefCell::new(KernelEvaluator::new());
    let count = Cell::new(0u32);
    let questions = Cell::new(0usize);

    let result = runner.run(&scenario(), |s| {
        count.set(count.get() + 1);
        let hosts = plan::hosts(
            &s.cluster,
            &s.externals,
            &[(policy_agent::model::Protocol::Tcp, 22)],
        );
        let reference = Reference::new(&s.cluster);
        let compiled = CompiledEvaluator::with_compiler(&mut compiler.borrow_mut(), &s.cluster);
        let in_kernel = count.get().is_multiple_of(KERNEL_SAMPLE_EVERY);
        let mut kernel = kernel.borrow_mut();
        if in_kernel {
            kernel.load(&s.cluster);
        }
        for q in plan::questions(&hosts) {
            let flow = Flow::of(&hosts, &q).expect("planned with a common family");
            questions.set(questions.get() + 1);
            let want = reference.allows(&flow);
            let describe = || {
                format!(
                    "{} -> {} {}/{} {:?}: reference says {}",
                    flow.from.label,
                    flow.to.label,
                    flow.protocol,
                    flow.port,
                    q.family,
                    if want { "allowed" } else { "denied" }
                )
            };
            if compiled.allows(&flow) != want {
                return Err(TestCaseError::fail(format!(
                    "compiled maps disagree: {}",
                    describe()
                )));
            }
            if in_kernel && kernel.allows(&flow) != want {
                return Err(TestCaseError::fail(format!(
                    "kernel disagrees: {}",
                    describe()
                )));
            }
        }
        Ok(())
    });

    match result {
        Ok(()) => eprintln!(
            "{cases} scenarios, {} questions, seed {seed}: all agree",
            questions.get()
        ),
        Err(TestError::Fail(why, s)) => panic!(
            "evaluators disagree (seed {seed}; rerun with POLICY_TEST_SEED={seed}): {why}\n\
             smallest failing scenario:\n{}",
            s.to_yaml()
        ),
        Err(e) => panic!("property run aborted (seed {seed}): {e}"),
    }
}
