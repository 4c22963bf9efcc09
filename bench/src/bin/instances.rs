//! Keyed instances: how fast instances are created, and what spreading a
//! route over many instances buys.
//!
//! 1. Instance creations per second for the sample `rooms` controller (a
//!    keyed route): fresh store and instance each time, exactly as a new room
//!    gets, on both cores; wasmtime's pooling allocator against on-demand
//!    allocation (the baseline), alternating in the same run.
//! 2. Echo throughput with 100 clients spread over 100 rooms of a keyed
//!    route (100 instances, run in parallel) against the same 100 clients
//!    on the same controller made shared by the config (one instance, one
//!    event at a time), alternating in the same run. The controller is the
//!    `keyed` test guest: once with plain echoes (almost no guest work), once
//!    with `work 20000` messages (about 20 µs of guest CPU per message), where
//!    one shared instance is bound to one core.
//!
//! Run: `cargo run --release -p switchyard-bench --bin instances [ROUNDS]`

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use switchyard::Config;
use switchyard_bench::modules::built;
use switchyard_bench::stats::median;
use tokio_tungstenite::tungstenite::Message;

const CREATIONS: usize = 20_000;
const CLIENTS: usize = 100;
const ECHO_TIME: Duration = Duration::from_secs(4);

async fn creations_per_second(module: &Path, pooling: bool) -> anyhow::Result<f64> {
    let mut config = Config::default();
    config.sandbox.pooling = pooling;
    let took = switchyard::module::time_instantiation(config, module, CREATIONS, 2).await?;
    Ok(CREATIONS as f64 / took.as_secs_f64())
}

/// Serves `dir` with `config` and runs `CLIENTS` echo clients, client `i` in
/// room `r{i}`, each sending and awaiting one message at a time for
/// `ECHO_TIME`. Returns messages per second.
async fn echo_rate(dir: &Path, mut config: Config, payload: &'static str) -> anyhow::Result<f64> {
    config.controllers = dir.to_owned();
    config.hot_reload = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = switchyard::Server::new(config).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/keyed/r{i}")).await?;
        clients.push(ws);
    }
    let start = Instant::now();
    let deadline = start + ECHO_TIME;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut sent = 0u64;
                while Instant::now() < deadline {
                    ws.send(Message::text(payload)).await?;
                    match ws.next().await {
                        Some(Ok(Message::Text(_))) => sent += 1,
                        other => anyhow::bail!("unexpected reply {other:?}"),
                    }
                }
                let _ = ws.close(None).await;
                anyhow::Ok(sent)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let _ = stop.send(());
    serving.await?;
    Ok(rate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(3);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let rooms = built(&repo.join("controllers"), "rooms")?;
    let keyed = built(&repo.join("tests/guests"), "keyed")?;

    println!("instance creations: {CREATIONS} per sample, 2 tasks, rooms.wasm");
    let (mut pooled, mut on_demand) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let p = creations_per_second(&rooms, true).await?;
        let o = creations_per_second(&rooms, false).await?;
        println!("  round {round}: pooling {p:>9.0}/s   on-demand {o:>9.0}/s");
        pooled.push(p);
        on_demand.push(o);
    }
    let (p, o) = (median(pooled), median(on_demand));
    println!(
        "  median: pooling {p:.0}/s, on-demand {o:.0}/s, ratio {:.2}",
        p / o
    );

    let dir = tempfile::tempdir()?;
    std::fs::copy(&keyed, dir.path().join("keyed.wasm"))?;
    for (label, payload) in [
        ("plain echo, 32 B", "ping 32 bytes of payload........"),
        ("echo with ~20 µs of guest work", "work 20000"),
    ] {
        println!(
            "{label}, {CLIENTS} clients for {ECHO_TIME:?}: 100 rooms (keyed) vs one shared instance"
        );
        let (mut spread, mut shared) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let k = echo_rate(dir.path(), Config::default(), payload).await?;
            let mut config = Config::default();
            config.routes.entry("keyed".into()).or_default().instance =
                Some(switchyard::config::InstanceMode::Shared);
            let s = echo_rate(dir.path(), config, payload).await?;
            println!("  round {round}: keyed {k:>9.0} msg/s   shared {s:>9.0} msg/s");
            spread.push(k);
            shared.push(s);
        }
        let (k, s) = (median(spread), median(shared));
        println!(
            "  median: keyed {k:.0} msg/s, shared {s:.0} msg/s, ratio {:.2}",
            k / s
        );
    }
    Ok(())
}
