//! Project tasks shared by `cargo xtask` and policy-agent's build script.

pub mod ebpf;

use std::path::{Path, PathBuf};

/// The workspace root (where the top-level Cargo.toml is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}
