//! The eBPF toolchain: a nightly rustc with rust-src, and bpf-linker built against that
//! nightly's own LLVM (see TOOLCHAIN notes in the README).
//!
//! [`bootstrap`] installs what is missing and is what `cargo xtask build-ebpf` runs;
//! [`locate`] only looks, and is what policy-agent's build script runs before
//! [`build_object`], so that a plain `cargo build` never downloads anything behind the
//! developer's back.

use std::{
    env,
    ffi::OsString,
    fmt, fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, bail};

/// Toolchains tried in order: the preinstalled `nightly`, then the dated one we know works.
pub const NIGHTLY_CANDIDATES: [&str; 2] = ["nightly", PINNED_NIGHTLY];
/// The nightly whose LLVM bpf-linker is built against.
pub const PINNED_NIGHTLY: &str = "nightly-2026-05-20";
/// LLVM major version of [`PINNED_NIGHTLY`]; bpf-linker's `llvm-XX` feature must match it.
pub const LLVM_MAJOR: u32 = 22;
/// bpf-linker release known to build against LLVM 22.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// Target triple of the eBPF object.
pub const BPF_TARGET: &str = "bpfel-unknown-none";
/// Package and binary name of the eBPF crate.
pub const EBPF_PACKAGE: &str = "policy-ebpf";

/// A toolchain ready to build the eBPF crate.
#[derive(Clone, Debug)]
pub struct Toolchain {
    /// rustup toolchain name, e.g. `nightly`.
    pub rustup_name: String,
    /// Directory holding the `bpf-linker` binary.
    pub linker_dir: PathBuf,
}

/// What [`locate`] found missing, with the command that fixes it.
#[derive(Debug)]
pub struct Missing(String);

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\nRun `cargo xtask build-ebpf` once: it installs the eBPF toolchain into {}.",
            self.0,
            cache_dir().display()
        )
    }
}

impl std::error::Error for Missing {}

/// Where the bootstrap keeps bpf-linker and its LLVM shim:
/// `$POLICY_AGENT_CACHE`, else `$XDG_CACHE_HOME/policy-agent`, else `~/.cache/policy-agent`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("POLICY_AGENT_CACHE") {
        return dir.into();
    }
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("policy-agent")
}

fn linker_root() -> PathBuf {
    cache_dir().join("bpf-linker")
}

fn linker_bin() -> PathBuf {
    linker_root().join("bin").join("bpf-linker")
}

fn run(cmd: &mut Command) -> std::io::Result<Output> {
    cmd.output()
}

fn rustup(toolchain: &str, program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain, program]);
    // The outer cargo's choices must not leak into the nightly build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The `LLVM version: X.Y.Z` line of `rustc -vV`.
fn llvm_version(toolchain: &str) -> Option<String> {
    let out = run(rustup(toolchain, "rustc").arg("-vV")).ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .map(str::to_owned)
}

fn sysroot(toolchain: &str) -> anyhow::Result<PathBuf> {
    let out = run(rustup(toolchain, "rustc").args(["--print", "sysroot"]))
        .with_context(|| format!("running rustc +{toolchain} --print sysroot"))?;
    if !out.status.success() {
        bail!("rustc +{toolchain} --print sysroot failed");
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    ))
}

/// The first installed candidate nightly whose LLVM major is [`LLVM_MAJOR`].
fn find_nightly() -> Option<(String, String)> {
    NIGHTLY_CANDIDATES.iter().find_map(|name| {
        let llvm = llvm_version(name)?;
        let major: u32 = llvm.split('.').next()?.parse().ok()?;
        (major == LLVM_MAJOR).then(|| ((*name).to_owned(), llvm))
    })
}

fn has_rust_src(toolchain: &str) -> bool {
    sysroot(toolchain)
        .map(|s| {
            s.join("lib/rustlib/src/rust/library/core/Cargo.toml")
                .exists()
        })
        .unwrap_or(false)
}

fn linker_works() -> bool {
    Command::new(linker_bin())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Finds a complete toolchain without installing anything.
pub fn locate() -> Result<Toolchain, Missing> {
    let Some((rustup_name, _)) = find_nightly() else {
        return Err(Missing(format!(
            "no nightly toolchain with LLVM {LLVM_MAJOR} (tried {NIGHTLY_CANDIDATES:?})."
        )));
    };
    if !has_rust_src(&rustup_name) {
        return Err(Missing(format!(
            "the {rustup_name} toolchain lacks the rust-src component."
        )));
    }
    if !linker_works() {
        return Err(Missing(format!(
            "bpf-linker is not installed at {}.",
            linker_bin().display()
        )));
    }
    Ok(Toolchain {
        rustup_name,
        linker_dir: linker_root().join("bin"),
    })
}

/// Installs whatever [`locate`] would find missing, then returns the toolchain.
/// Every step says what failed and how to fix it.
pub fn bootstrap(log: impl Fn(&str)) -> anyhow::Result<Toolchain> {
    let (name, llvm) = match find_nightly() {
        Some(found) => found,
        None => {
            log(&format!(
                "no nightly with LLVM {LLVM_MAJOR}; installing {PINNED_NIGHTLY}"
            ));
            let status = Command::new("rustup")
                .args([
                    "toolchain",
                    "install",
                    PINNED_NIGHTLY,
                    "--profile",
                    "minimal",
                ])
                .args(["--component", "rust-src"])
                .status()
                .context("running rustup (is rustup installed and on PATH?)")?;
            if !status.success() {
                bail!(
                    "step 1/3 (nightly toolchain) failed: `rustup toolchain install {PINNED_NIGHTLY}` \
                     exited with {status}. Install a nightly with LLVM {LLVM_MAJOR} by hand and \
                     name it `nightly`."
                );
            }
            find_nightly().with_context(|| {
                format!("step 1/3: {PINNED_NIGHTLY} installed but its LLVM is not {LLVM_MAJOR}")
            })?
        }
    };
    log(&format!("nightly toolchain: {name} (LLVM {llvm})"));

    if !has_rust_src(&name) {
        log("installing rust-src");
        let status = Command::new("rustup")
            .args(["component", "add", "rust-src", "--toolchain", &name])
            .status()
            .context("running rustup")?;
        if !status.success() {
            bail!(
                "step 2/3 (rust-src) failed: `rustup component add rust-src --toolchain {name}` \
                 exited with {status}. Check network access to static.rust-lang.org."
            );
        }
    }

    if !linker_works() {
        install_bpf_linker(&name, &llvm, &log).context(
            "step 3/3 (bpf-linker) failed. It needs a C toolchain and network access to \
             crates.io; rerun `cargo xtask build-ebpf` after fixing the cause above",
        )?;
    }
    log(&format!("bpf-linker: {}", linker_bin().display()));

    Ok(Toolchain {
        rustup_name: name,
        linker_dir: linker_root().join("bin"),
    })
}

/// bpf-linker links with LLVM through `llvm-config`; no LLVM 22 package exists here, but the
/// nightly ships `libLLVM.so`, so a shim prefix with a fake `llvm-config` points at it. The
/// installed binary keeps an rpath to the shim, so the shim stays in the cache.
fn install_bpf_linker(toolchain: &str, llvm: &str, log: &impl Fn(&str)) -> anyhow::Result<()> {
    let lib = sysroot(toolchain)?.join("lib");
    let so = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib.display()))?;

    let shim = cache_dir().join("llvm-shim");
    fs::create_dir_all(shim.join("bin"))?;
    fs::create_dir_all(shim.join("lib"))?;
    let config = shim.join("bin/llvm-config");
    fs::write(&config, format!("#!/bin/sh\necho {llvm}\n"))?;
    fs::set_permissions(&config, fs::Permissions::from_mode(0o755))?;
    for link in ["libLLVM.so".to_owned(), so.clone()] {
        let path = shim.join("lib").join(link);
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(lib.join(&so), &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }

    log(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against {so} (about a minute and a half)"
    ));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let status = Command::new(cargo)
        .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{LLVM_MAJOR}"))
        .arg("--root")
        .arg(linker_root())
        .env("LLVM_PREFIX", &shim)
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!("cargo install bpf-linker exited with {status}");
    }
    if !linker_works() {
        bail!("{} was installed but does not run", linker_bin().display());
    }
    Ok(())
}

/// Flags for the eBPF build: BTF for typed maps and `bpftool map dump`, as aya-build does.
fn encoded_rustflags() -> OsString {
    let arch = env::consts::ARCH;
    [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .join("\x1f")
    .into()
}

/// `cargo <subcommand>` of the nightly for the eBPF crate at `crate_dir`: the BPF target,
/// `core` built from source, bpf-linker on PATH, and the outer cargo's settings removed.
fn bpf_cargo(
    tc: &Toolchain,
    subcommand: &str,
    crate_dir: &Path,
    target_dir: &Path,
) -> anyhow::Result<Command> {
    let path = env::var_os("PATH").unwrap_or_default();
    let path =
        env::join_paths(std::iter::once(tc.linker_dir.clone()).chain(env::split_paths(&path)))?;
    let mut cmd = rustup(&tc.rustup_name, "cargo");
    cmd.args([subcommand, "--release", "--target", BPF_TARGET])
        .args(["-Z", "build-std=core", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .env("PATH", path)
        .env("CARGO_ENCODED_RUSTFLAGS", encoded_rustflags())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET");
    Ok(cmd)
}

/// Builds the eBPF crate at `crate_dir` into `target_dir` and returns the object's path.
/// On failure the error carries the compiler's output.
pub fn build_object(
    tc: &Toolchain,
    crate_dir: &Path,
    target_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let mut cmd = bpf_cargo(tc, "build", crate_dir, target_dir)?;
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "building {EBPF_PACKAGE} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(target_dir
        .join(BPF_TARGET)
        .join("release")
        .join(EBPF_PACKAGE))
}

/// `cargo fmt --check` and `cargo clippy -D warnings` on the eBPF crate, for its target.
pub fn lint(tc: &Toolchain, crate_dir: &Path, target_dir: &Path) -> anyhow::Result<()> {
    let mut fmt = rustup(&tc.rustup_name, "cargo");
    fmt.args(["fmt", "--check", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"));
    let mut clippy = bpf_cargo(tc, "clippy", crate_dir, target_dir)?;
    clippy.args(["--", "-D", "warnings"]);
    for (what, mut cmd) in [("rustfmt", fmt), ("clippy", clippy)] {
        let status = cmd.status().with_context(|| format!("running {what}"))?;
        if !status.success() {
            bail!("{what} found problems in {}", crate_dir.display());
        }
    }
    Ok(())
}
