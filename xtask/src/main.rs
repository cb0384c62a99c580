//! `cargo xtask`: the project's commands beyond plain cargo.
//!
//! - `build-ebpf`: bootstrap the eBPF toolchain (idempotent) and build the eBPF object;
//! - `lab DIR [ARGS]`: build everything and run `policy-agent lab --manifests DIR` (root);
//! - `test [--deep] [ARGS]`: build everything and run the whole test suite (`--deep`: the
//!   long runs too);
//! - `lint`: rustfmt and clippy on every crate, the eBPF crate included;
//! - `bench [datapath|cni|remote-pod|flows|control-plane|veth] [ARGS]`: run a benchmark
//!   suite (root, except control-plane), results and charts under `target/bench/`
//!   (`bench veth --full`: the longer run);
//! - `fuzz datapath [--seconds N] [--seed S]`: fuzz the eBPF programs with crafted frames
//!   (root); what it finds is minimised and saved to `tests/corpus/datapath/`.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use xtask::{ebpf, workspace_root};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "policy-agent project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain if missing (nightly rust-src, bpf-linker) and build the
    /// eBPF object.
    BuildEbpf,
    /// Run the network-namespace lab on a manifest directory (needs root).
    Lab {
        /// Directory of Namespace, Pod and NetworkPolicy manifests.
        manifests: PathBuf,
        /// Further arguments for `policy-agent lab` (e.g. `--nodes 2 --json`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run every test (unit, BPF_PROG_TEST_RUN, network-namespace end-to-end).
    Test {
        /// The long runs too: the ignored tests (the fuzzer for ten minutes) and a larger
        /// sample of random scenarios in the lab.
        #[arg(long)]
        deep: bool,
        /// Further arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Check formatting and lints of every crate, the eBPF crate included.
    Lint,
    /// Run a benchmark suite and write JSON and PNG charts under target/bench/.
    Bench {
        /// Which suite.
        #[arg(value_enum, default_value_t = Suite::Datapath)]
        suite: Suite,
        /// Further arguments for the benchmark (e.g. `--full` for veth).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Fuzz a target; violations are minimised and saved to its corpus (needs root).
    Fuzz {
        /// What to fuzz.
        #[arg(value_enum)]
        target: FuzzTarget,
        /// How long to run.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Seed of the run (default: the current time).
        #[arg(long)]
        seed: Option<u64>,
    },
}

/// What `cargo xtask fuzz` can fuzz.
#[derive(Clone, Copy, ValueEnum)]
enum FuzzTarget {
    /// The eBPF programs, with frames through BPF_PROG_TEST_RUN (tests/fuzz_datapath.rs).
    Datapath,
}

/// The benchmark suites (each a `[[bench]]` of policy-agent).
#[derive(Clone, Copy, ValueEnum)]
enum Suite {
    /// Cost per packet of the programs (BPF_PROG_TEST_RUN).
    Datapath,
    /// Latency of the chained CNI plugin's ADD in a lab node.
    Cni,
    /// How long a new pod is "world" on other nodes: its kubelet's report to their ipcache.
    RemotePod,
    /// The agent's CPU per new connection for flow records, and idle at a full conntrack.
    Flows,
    /// The compiler on generated clusters: full compile time and memory, single changes.
    ControlPlane,
    /// Real packets between lab pods: no filter, this datapath, iptables, ipset, nftables.
    Veth,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Self::Datapath => "datapath",
            Self::Cni => "cni",
            Self::RemotePod => "remote_pod",
            Self::Flows => "flows",
            Self::ControlPlane => "control_plane",
            Self::Veth => "veth",
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn log(msg: &str) {
    eprintln!("xtask: {msg}");
}

fn run(task: Task) -> anyhow::Result<()> {
    match task {
        Task::BuildEbpf => {
            let object = build_ebpf()?;
            log(&format!("eBPF object: {}", object.display()));
            Ok(())
        }
        Task::Lab { manifests, args } => {
            build_ebpf()?;
            cargo(["build", "--release", "--package", "policy-agent"])?;
            require_root("the lab creates network namespaces and loads eBPF programs")?;
            ensure_packages()?;
            let agent = workspace_root().join("target/release/policy-agent");
            let status = Command::new(&agent)
                .arg("lab")
                .arg("--manifests")
                .arg(&manifests)
                .args(args)
                .status()
                .with_context(|| format!("running {}", agent.display()))?;
            exit_status("policy-agent lab", status)
        }
        Task::Test { deep, mut args } => {
            require_root("the tests create network namespaces and load eBPF programs")?;
            ensure_packages()?;
            build_ebpf()?;
            let mut cmd = cargo_cmd();
            if deep {
                cmd.env("POLICY_LAB_SCENARIOS", DEEP_LAB_SCENARIOS)
                    .env("POLICY_FUZZ_SECONDS", DEEP_FUZZ_SECONDS);
                if !args.iter().any(|a| a == "--") {
                    args.push("--".into());
                }
                args.push("--include-ignored".into());
            }
            cmd.args(["test", "--workspace"]).args(args);
            exit_status("cargo test", cmd.status()?)
        }
        Task::Lint => {
            let toolchain = ebpf::bootstrap(log)?;
            cargo(["fmt", "--all", "--", "--check"])?;
            cargo([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            let root = workspace_root();
            ebpf::lint(
                &toolchain,
                &root.join(ebpf::EBPF_PACKAGE),
                &root.join("target").join("ebpf"),
            )
        }
        Task::Fuzz {
            target: FuzzTarget::Datapath,
            seconds,
            seed,
        } => {
            require_root("the fuzzer loads eBPF programs")?;
            build_ebpf()?;
            let mut cmd = cargo_cmd();
            cmd.args([
                "test",
                "--release",
                "--package",
                "policy-tests",
                "--test",
                "fuzz_datapath",
                "--",
                "--ignored",
                "--nocapture",
                "--exact",
                "deep",
            ])
            .env("POLICY_FUZZ_SECONDS", seconds.to_string());
            if let Some(seed) = seed {
                cmd.env("POLICY_FUZZ_SEED", seed.to_string());
            }
            exit_status("the datapath fuzzer", cmd.status()?)
        }
        Task::Bench { suite, args } => {
            build_ebpf()?;
            // The compiler alone loads nothing into the kernel.
            if !matches!(suite, Suite::ControlPlane) {
                require_root("the benchmarks load eBPF programs")?;
            }
            match suite {
                Suite::Datapath | Suite::ControlPlane => install_missing(&BENCH_PACKAGES)?,
                Suite::Cni | Suite::RemotePod | Suite::Flows => {
                    ensure_packages()?;
                    install_missing(&BENCH_PACKAGES)?;
                }
                Suite::Veth => {
                    ensure_packages()?;
                    install_missing(&BENCH_PACKAGES)?;
                    install_missing(&VETH_BENCH_PACKAGES)?;
                }
            }
            let status = cargo_cmd()
                .args([
                    "bench",
                    "--package",
                    "policy-agent",
                    "--bench",
                    suite.name(),
                ])
                .arg("--")
                .args(args)
                .status()?;
            exit_status(&format!("the {} benchmark", suite.name()), status)
        }
    }
}

/// Bootstraps the toolchain and builds the object where policy-agent's build script expects it.
fn build_ebpf() -> anyhow::Result<PathBuf> {
    let toolchain = ebpf::bootstrap(log)?;
    let root = workspace_root();
    log("building the eBPF object");
    ebpf::build_object(
        &toolchain,
        &root.join(ebpf::EBPF_PACKAGE),
        &root.join("target").join("ebpf"),
    )
}

/// Random scenarios per proxy mode in the lab with `test --deep` (the default run: 8).
const DEEP_LAB_SCENARIOS: &str = "40";
/// How long the fuzzer runs with `test --deep`.
const DEEP_FUZZ_SECONDS: &str = "600";

/// System tools the lab and the tests use (a command on PATH, or a file), by the Debian
/// package that provides them. The lab's pods get their network from the reference CNI
/// plugins, as on a real node.
const PACKAGES: [(&str, &str); 7] = [
    ("ip", "iproute2"),
    ("bpftool", "bpftool"),
    ("nsenter", "util-linux"),
    ("/usr/lib/cni/ptp", "containernetworking-plugins"),
    // kube-proxy's rule layouts on the lab's nodes.
    ("iptables-restore", "iptables"),
    ("nft", "nftables"),
    // The lab's cluster DNS server.
    ("/usr/sbin/dnsmasq", "dnsmasq-base"),
];

/// What every benchmark needs: the font its charts' text is drawn with.
const BENCH_PACKAGES: [(&str, &str); 1] = [(
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "fonts-dejavu-core",
)];

/// What the veth benchmark compares against besides the lab's tools: kube-router's ipsets.
const VETH_BENCH_PACKAGES: [(&str, &str); 1] = [("ipset", "ipset")];

/// Installs the lab's and the tests' packages that are missing, with apt-get (the lab and
/// the tests run as root anyway).
fn ensure_packages() -> anyhow::Result<()> {
    install_missing(&PACKAGES)
}

/// Installs those of `packages` whose tool (a command on PATH, or a file) is missing.
fn install_missing(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(tool, _)| match tool.strip_prefix('/') {
            Some(_) => !Path::new(tool).exists(),
            // Spawning at all means the tool is on PATH.
            None => Command::new(tool).arg("-V").output().is_err(),
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    log(&format!("installing {}", missing.join(" ")));
    let update = Command::new("apt-get").args(["update", "-qq"]).status();
    let install = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    match (update, install) {
        (Ok(u), Ok(i)) if u.success() && i.success() => Ok(()),
        _ => bail!(
            "could not install {} with apt-get; install them by hand and rerun",
            missing.join(" ")
        ),
    }
}

fn cargo_cmd() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

fn cargo<const N: usize>(args: [&str; N]) -> anyhow::Result<()> {
    let status = cargo_cmd().args(args).status()?;
    exit_status(&format!("cargo {}", args.join(" ")), status)
}

fn exit_status(what: &str, status: std::process::ExitStatus) -> anyhow::Result<()> {
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn require_root(why: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this needs root: {why}. Rerun as root (e.g. with sudo -E).");
    }
    Ok(())
}
