//! Hot-reload latency: time from replacing a module file to the first event
//! served by the new version, for the sample chat controller.
//!
//! Each round writes a new version of `chat.wasm` (the real module with a
//! unique custom section appended, so its hash changes and it is compiled
//! for real), by rename or by overwriting in place, then opens a new client
//! as soon as the server reports the version live and waits for its
//! greeting. As a baseline measured in the same run, the bench also times
//! compiling the same bytes with a bare wasmtime engine: the floor any
//! reload pays.
//!
//! Run: `cargo run --release -p switchyard-bench --bin reload-latency [ROUNDS]`

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use switchyard::{Config, ReloadEvent, Server};

/// The module with a custom section `bench` holding `round` appended; still
/// a valid component, with different bytes each round.
fn variant(module: &[u8], round: u64) -> Vec<u8> {
    let name = b"bench";
    let payload = round.to_le_bytes();
    let mut bytes = module.to_vec();
    bytes.push(0); // custom section id
    bytes.push((1 + name.len() + payload.len()) as u8); // section size (LEB128, < 128)
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&payload);
    bytes
}

fn stats(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{label:<44} median {:>7.1} ms   p90 {:>7.1} ms   min {:>7.1} ms   max {:>7.1} ms",
        ms(pick(0.5)),
        ms(pick(0.9)),
        ms(samples[0]),
        ms(samples[samples.len() - 1])
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: u64 = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(30);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let controllers = repo.join("controllers");
    switchyard::builder::build_controllers(&controllers)?;
    let chat = std::fs::read(controllers.join("chat.wasm"))?;

    let dir = tempfile::tempdir()?;
    let live = dir.path().join("chat.wasm");
    std::fs::write(&live, &chat)?;
    let config = Config {
        controllers: dir.path().to_owned(),
        ..Config::default()
    };
    let server = Server::new(config).await?;
    let mut reloads = server.reload_events();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/chat/", listener.local_addr()?);
    tokio::spawn(server.serve(listener, std::future::pending()));

    // Baseline: compiling the same module on a plain engine.
    let engine = wasmtime::Engine::default();
    let mut compile = Vec::new();
    for round in 0..rounds {
        let bytes = variant(&chat, 1_000_000 + round);
        let start = Instant::now();
        wasmtime::component::Component::new(&engine, &bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        compile.push(start.elapsed());
    }

    let mut by_rename = Vec::new();
    let mut in_place = Vec::new();
    let mut notify_to_live = Vec::new();
    for round in 0..rounds * 2 {
        let bytes = variant(&chat, round);
        let rename = round % 2 == 0;
        let start = Instant::now();
        if rename {
            let tmp = dir.path().join(".chat.wasm.tmp");
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, &live)?;
        } else {
            std::fs::write(&live, &bytes)?;
        }
        match tokio::time::timeout(Duration::from_secs(10), reloads.recv()).await?? {
            ReloadEvent::Live { elapsed, .. } => notify_to_live.push(elapsed),
            ReloadEvent::Rejected { error, .. } => anyhow::bail!("reload rejected: {error}"),
            ReloadEvent::Retired { .. } => anyhow::bail!("module retired"),
        }
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
        let greeting = ws
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("no greeting"))??;
        anyhow::ensure!(greeting.to_text()?.contains("Hello world!"));
        let elapsed = start.elapsed();
        if rename {
            by_rename.push(elapsed)
        } else {
            in_place.push(elapsed)
        }
    }

    println!("chat.wasm: {} bytes, {rounds} rounds each", chat.len());
    stats("baseline: compile only (plain engine)", compile.clone());
    stats("file renamed into place -> first event", by_rename.clone());
    stats("file overwritten in place -> first event", in_place.clone());
    stats("first watcher event -> live (server log)", notify_to_live);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    println!(
        "ratio rename/compile: {:.2}   in-place/compile: {:.2}",
        median(by_rename) / median(compile.clone()),
        median(in_place) / median(compile)
    );
    Ok(())
}
