//! What every benchmark of this crate shares: the `cargo bench` probe, the kernel it ran
//! on, where its JSON report goes, and its charts ([`chart`]).

pub mod chart;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

/// Whether `cargo bench` is only listing the benchmarks (it probes harness=false
/// benchmarks with `--list`): there is nothing to list.
pub fn listing() -> bool {
    std::env::args().any(|a| a == "--list")
}

/// The value of `--<name> N` on the command line (after `cargo xtask bench <bench> --`),
/// or `default`; an error if it is not a number in `range`.
#[allow(dead_code, reason = "not every bench takes counts")]
pub fn count_arg(
    name: &str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> anyhow::Result<usize> {
    let flag = format!("--{name}");
    let args: Vec<String> = std::env::args().collect();
    let Some(i) = args.iter().position(|a| *a == flag) else {
        return Ok(default);
    };
    let value = args
        .get(i + 1)
        .with_context(|| format!("{flag} needs a number"))?;
    let n: usize = value.parse().with_context(|| format!("{flag} {value}"))?;
    anyhow::ensure!(
        range.contains(&n),
        "{flag} {n}: between {} and {}",
        range.start(),
        range.end()
    );
    Ok(n)
}

/// The running kernel's release.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The workspace's `target/bench`, where reports and charts go.
pub fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .join("target/bench")
}

/// Writes `report` to `target/bench/<name>.json` of the workspace and says where.
pub fn write_report(name: &str, report: &impl Serialize) -> anyhow::Result<()> {
    let dir = bench_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("\nwritten to {}", path.display());
    Ok(())
}
