//! Start-up time: from nothing to a server ready to accept, with the four
//! sample controllers, with an empty compiled-module cache (cold: every
//! module compiled by Cranelift) and with the cache the cold start filled
//! (warm: every module read back). Cold and warm alternate within each
//! round; medians and ranges over the rounds.
//!
//! `cargo run --release -p switchyard-bench --bin startup -- [ROUNDS]`

use std::path::Path;

use switchyard_bench::modules::time_start;
use switchyard_bench::stats::{median, min_max};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(5);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let built = switchyard::builder::build_controllers(&repo.join("controllers"))?;
    let controllers = tempfile::tempdir()?;
    let mut bytes = 0;
    for module in &built {
        bytes += std::fs::metadata(module)?.len();
        std::fs::copy(module, controllers.path().join(module.file_name().unwrap()))?;
    }
    println!(
        "start-up to listening: {} sample modules ({} KiB in all), {rounds} rounds",
        built.len(),
        bytes / 1024
    );
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let cache = tempfile::tempdir()?;
        let c = time_start(controllers.path(), cache.path(), 4)
            .await?
            .as_secs_f64()
            * 1e3;
        let w = time_start(controllers.path(), cache.path(), 4)
            .await?
            .as_secs_f64()
            * 1e3;
        println!("  round {round}: cold {c:8.1} ms   warm {w:8.1} ms");
        cold.push(c);
        warm.push(w);
    }
    let range = |values: &[f64]| {
        let (min, max) = min_max(values);
        format!("{min:.1}-{max:.1}")
    };
    let (c, w) = (median(cold.clone()), median(warm.clone()));
    println!(
        "  median: cold {c:.1} ms ({}), warm {w:.1} ms ({}), warm/cold {:.3}",
        range(&cold),
        range(&warm),
        w / c
    );
    Ok(())
}
