//! `switchyard build`: compiles controller crates to `wasm32-wasip2`
//! components and places them as `<dir>/<name>.wasm`.
//!
//! A folder with a `Cargo.toml` of its own is built as one workspace;
//! otherwise each sub-folder holding a `Cargo.toml` is built on its own.
//! Cargo's JSON messages say which `.wasm` files it produced; each is copied
//! next to the sources through a temporary file and a rename, so a watcher
//! never sees half a module. This file depends on `std`, `anyhow` and
//! `serde_json` only: the test crate's build script includes it to build the
//! samples the same way.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// The target controllers are built for.
pub const TARGET: &str = "wasm32-wasip2";

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Settings meant for the outer build must not leak into a wasm build.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Makes sure the `wasm32-wasip2` standard library is installed, installing
/// it with rustup when it is missing.
pub fn ensure_target() -> anyhow::Result<()> {
    let sysroot = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .context("cannot run rustc; is the Rust toolchain installed?")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(TARGET).exists() {
        return Ok(());
    }
    eprintln!("switchyard: installing the {TARGET} target with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status();
    match status {
        Ok(status) if status.success() => Ok(()),
        Ok(_) => bail!("`rustup target add {TARGET}` failed; run it yourself and retry"),
        Err(_) => bail!(
            "the {TARGET} target is missing and rustup was not found; \
             install it with `rustup target add {TARGET}`"
        ),
    }
}

/// The manifests to build under `dir`.
fn manifests(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let root = dir.join("Cargo.toml");
    if root.is_file() {
        return Ok(vec![root]);
    }
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the controllers folder {}", dir.display()))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path().join("Cargo.toml")))
        .filter(|manifest| manifest.is_file())
        .collect();
    found.sort();
    Ok(found)
}

/// Whether `dir` holds any controller crate.
pub fn has_crates(dir: &Path) -> anyhow::Result<bool> {
    Ok(!manifests(dir)?.is_empty())
}

/// Builds every controller crate under `dir` in release mode and returns
/// the `.wasm` files placed in `dir`.
pub fn build_controllers(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    ensure_target()?;
    let manifests = manifests(dir)?;
    if manifests.is_empty() {
        bail!(
            "no controllers in {}: expected a Cargo.toml there or in a sub-folder, or a \
             sub-folder with a pyproject.toml and an app.py",
            dir.display()
        );
    }
    let mut placed = Vec::new();
    for manifest in manifests {
        for wasm in build_manifest(&manifest)? {
            let name = wasm.file_name().context("artifact without a file name")?;
            let dest = dir.join(name);
            let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
            std::fs::copy(&wasm, &tmp)
                .with_context(|| format!("cannot copy {} to {}", wasm.display(), tmp.display()))?;
            std::fs::rename(&tmp, &dest)
                .with_context(|| format!("cannot move {} to {}", tmp.display(), dest.display()))?;
            placed.push(dest);
        }
    }
    Ok(placed)
}

/// Runs cargo on one manifest and returns the `.wasm` artifacts it made.
pub fn build_manifest(manifest: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut child = cargo()
        .args(["build", "--release", "--target", TARGET, "--workspace"])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot run cargo")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut artifacts = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's output")?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let files = message["filenames"].as_array().into_iter().flatten();
        artifacts.extend(
            files
                .filter_map(|f| f.as_str())
                .filter(|f| f.ends_with(".wasm"))
                .map(PathBuf::from),
        );
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!(
            "building {} for {TARGET} failed (see the compiler output above)",
            manifest.display()
        );
    }
    Ok(artifacts)
}
