//! Builds the sample controllers (`../controllers`) and the test guests
//! (`guests/`) for wasm32-wasip2, the same way `switchyard build` does, and
//! tells the tests where the modules are (`SWITCHYARD_TEST_MODULES`).

use std::path::{Path, PathBuf};

#[path = "../host/src/builder.rs"]
#[allow(dead_code)]
mod builder;

fn watch_workspace(root: &Path) {
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let crate_dir = entry.path();
        if crate_dir.join("Cargo.toml").is_file() {
            println!(
                "cargo:rerun-if-changed={}",
                crate_dir.join("Cargo.toml").display()
            );
            println!("cargo:rerun-if-changed={}", crate_dir.join("src").display());
        }
    }
}

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let repo = manifest_dir.parent().unwrap().to_owned();
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("modules");
    std::fs::create_dir_all(&out)?;

    for dir in [
        "wit",
        "guest-sdk/src",
        "guest-sdk/macros/src",
        "guest-sdk/Cargo.toml",
        "grammar/src",
        "grammar/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", repo.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("guests/tag.rs").display()
    );
    let workspaces = [repo.join("controllers"), manifest_dir.join("guests")];
    builder::ensure_target()?;
    for workspace in &workspaces {
        watch_workspace(workspace);
        for wasm in builder::build_manifest(&workspace.join("Cargo.toml"))? {
            std::fs::copy(&wasm, out.join(wasm.file_name().unwrap()))?;
        }
    }
    println!("cargo:rustc-env=SWITCHYARD_TEST_MODULES={}", out.display());
    Ok(())
}
