//! The upstream NetworkPolicy e2e suite's cases (see `policy_tests::conformance`), each step
//! answered three ways: the reference semantics, the compiled maps, and the kernel
//! programs through BPF_PROG_TEST_RUN. All three must give the expected verdict on every
//! pod pair, port, protocol and family of the model.

use std::fmt::Write as _;

use policy_agent::{
    evaluate::{Flow, compiled::CompiledEvaluator, reference::Reference},
    plan,
};
use policy_tests::{
    conformance::{cases, conn},
    kernel::KernelEvaluator,
};

#[test]
fn every_upstream_case_holds_for_all_three_evaluators() {
    let mut kernel = KernelEvaluator::new();
    let mut failures = String::new();
    let mut checked = 0usize;
    let cases = cases();
    for case in &cases {
        for (i, step) in case.steps.iter().enumerate() {
            let cluster = step.cluster();
            let hosts = plan::hosts(&cluster, &[], &[]);
            let reference = Reference::new(&cluster);
            assert!(
                reference.rejected().is_empty(),
                "{}: {:?}",
                case.name,
                reference.rejected()
            );
            let compiled = CompiledEvaluator::new(&cluster);
            kernel.load(&cluster);
            for q in plan::questions(&hosts) {
                let flow = Flow::of(&hosts, &q).expect("the model is dual-stack");
                let expected = conn(
                    &flow.from.label,
                    &flow.to.label,
                    q.protocol,
                    q.port,
                    q.family,
                )
                .is_none_or(|c| (step.expect)(&c));
                let answers = [
                    ("reference", reference.allows(&flow)),
                    ("compiled", compiled.allows(&flow)),
                    ("kernel", kernel.allows(&flow)),
                ];
                checked += 1;
                for (evaluator, got) in answers {
                    if got != expected {
                        let _ = writeln!(
                            failures,
                            "{} (step {}): {evaluator}: {} -> {} {}/{} {:?}: got {got}, want {expected}",
                            case.name,
                            i + 1,
                            flow.from.label,
                            flow.to.label,
                            q.protocol,
                            q.port,
                            q.family,
                        );
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "conformance failures:\n{failures}");
    eprintln!(
        "{} cases, {checked} connections, three evaluators each: all as expected",
        cases.len()
    );
}
