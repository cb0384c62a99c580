//! Builds the eBPF object (policy-ebpf, with the nightly toolchain) and hands its path to
//! the crate, which embeds it: the agent is one self-contained binary.
//!
//! Nothing is installed here; if the eBPF toolchain is missing the error says to run
//! `cargo xtask build-ebpf`, which bootstraps it.

use std::{env, fs, path::PathBuf};

use xtask::ebpf;

fn main() {
    let root = xtask::workspace_root();
    for watched in [
        "policy-ebpf/src",
        "policy-ebpf/Cargo.toml",
        "policy-ebpf/Cargo.lock",
        "policy-common/src",
        "policy-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=POLICY_AGENT_CACHE");

    let toolchain = ebpf::locate().unwrap_or_else(|missing| {
        panic!("cannot build the eBPF object: {missing}");
    });
    let object = ebpf::build_object(
        &toolchain,
        &root.join(ebpf::EBPF_PACKAGE),
        &root.join("target").join("ebpf"),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let embedded = out.join("policy-ebpf.o");
    fs::copy(&object, &embedded)
        .unwrap_or_else(|e| panic!("copying {} to OUT_DIR: {e}", object.display()));
    println!("cargo:rustc-env=POLICY_EBPF_OBJECT={}", embedded.display());
}
