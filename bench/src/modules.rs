//! What several benchmarks share around the modules they measure: building
//! one, and timing a server's start on a folder of them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Builds the Rust controllers' workspace `workspace` and returns the
/// module `name` (`<name>.wasm` in cargo's target folder).
pub fn built(workspace: &Path, name: &str) -> anyhow::Result<PathBuf> {
    switchyard::builder::ensure_target()?;
    switchyard::builder::build_manifest(&workspace.join("Cargo.toml"))?
        .into_iter()
        .find(|path| path.file_stem().is_some_and(|stem| stem == name))
        .ok_or_else(|| anyhow::anyhow!("{name}.wasm was not built"))
}

/// Starts a server on `controllers` with its compiled-module cache in
/// `cache`, as the binary does (load every module, bind), checks that it
/// serves `routes` routes, and returns how long it took.
pub async fn time_start(
    controllers: &Path,
    cache: &Path,
    routes: usize,
) -> anyhow::Result<Duration> {
    let config = switchyard::Config {
        controllers: controllers.to_owned(),
        hot_reload: false,
        module_cache: cache.to_owned(),
        ..Default::default()
    };
    let started = Instant::now();
    let server = switchyard::Server::new(config).await?;
    let listener = switchyard::bind("127.0.0.1:0".parse()?)?;
    let took = started.elapsed();
    anyhow::ensure!(
        server.rejected().is_empty() && server.routes().len() == routes,
        "expected {routes} routes, serving {}; rejected: {:?}",
        server.routes().len(),
        server.rejected()
    );
    drop((server, listener));
    Ok(took)
}
