// Shared by the build scripts of `wtrace` (the default hook) and
// `wtrace-tests` (test guests): builds guest crates of this workspace for
// wasm32-wasip2 with the `guest` profile. Included with `include!`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `packages` and returns each one's component path, in order.
fn build_guests(workspace: &Path, packages: &[&str], watch: &[&Path]) -> Vec<PathBuf> {
    for path in watch {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for shared in ["wit", "guest-sdk/rust/src", "guest-sdk/rust/Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(shared).display());
    }
    let target_dir = workspace.join("target").join("wasm-guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--profile", "guest", "--target", "wasm32-wasip2"])
        .arg("--target-dir")
        .arg(&target_dir);
    for package in packages {
        command.args(["-p", package]);
    }
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(var);
    }
    let status = command.status().expect("run cargo to build wasm guests");
    if !status.success() {
        panic!(
            "building the wasm guests {packages:?} failed (see above). If the error says the \
             wasm32-wasip2 target is missing, run `rustup target add wasm32-wasip2`."
        );
    }
    packages
        .iter()
        .map(|package| {
            target_dir
                .join("wasm32-wasip2")
                .join("guest")
                .join(format!("{}.wasm", package.replace('-', "_")))
        })
        .collect()
}
