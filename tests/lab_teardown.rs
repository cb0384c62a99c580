//! A lab that fails half-built, or is dropped without shutdown, leaves nothing behind.
//! Its own test binary, so that no other lab of this process runs meanwhile.

use std::path::PathBuf;

use policy_agent::lab::{Lab, LabConfig, resources_of};
use policy_tests::{block_on, cluster, standard_with};

fn leftovers() -> Vec<PathBuf> {
    resources_of(std::process::id())
}

#[test]
fn failing_and_dropped_labs_leave_nothing_behind() {
    // Two pods with one address: the second route cannot be added, half-way through.
    let clash = cluster(
        r#"
kind: Pod
metadata: {name: a, namespace: x}
status: {podIP: 10.1.1.1}
---
kind: Pod
metadata: {name: b, namespace: x}
status: {podIP: 10.1.1.1}
"#,
    );
    block_on(async {
        let err = Lab::start(&clash, &LabConfig::default()).await.err();
        assert!(
            err.is_some(),
            "two pods with one address cannot both be routed"
        );
        assert_eq!(leftovers(), Vec::<PathBuf>::new(), "after a failed start");

        let lab = Lab::start(&standard_with(""), &LabConfig::default())
            .await
            .unwrap();
        assert!(!leftovers().is_empty());
        drop(lab);
        assert_eq!(
            leftovers(),
            Vec::<PathBuf>::new(),
            "after a drop without shutdown"
        );
    });
}
