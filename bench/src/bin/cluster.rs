//! Broadcast across a cluster, against the same load on one node:
//!
//! ```sh
//! cargo run --release -p switchyard-bench --bin cluster -- --rounds 5
//! ```
//!
//! 1,000 chat clients of which 10 send 64-byte messages (the compare
//! tool's broadcast scenario) either all on one Switchyard node, or spread
//! over two nodes (500 each) joined through a `redis-server` this bench
//! starts on a free port; the two setups alternate, one round each, in one
//! run. Every server is a process of its own. Reports deliveries/s,
//! delivery latency p50/p99, the servers' CPU per delivery, and what Redis
//! spends per message that crossed to the other node.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use switchyard_bench::load::{self, BroadcastResult, BroadcastSpec};
use switchyard_bench::process::{self, ServerKind, ServerProcess};
use switchyard_bench::stats::{median, min_max};

#[derive(Parser)]
#[command(about = "Broadcast across two Switchyard nodes over Redis, against one node")]
struct Cli {
    #[command(subcommand)]
    child: Option<Child>,
    /// Rounds; each runs one node, then two.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of load before each measured window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds of each measured window.
    #[arg(long, default_value_t = 4.0)]
    duration: f64,
    /// Broadcast messages each sender may have in flight.
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
}

/// The servers, run as child processes of the bench itself.
#[derive(Subcommand)]
enum Child {
    /// Serve Switchyard with the modules in DIR until stdin closes.
    #[command(hide = true)]
    ServeSwitchyard(process::ServeSwitchyard),
}

/// A `redis-server` on a free port, killed when dropped.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    fn start() -> anyhow::Result<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("cannot run redis-server (Debian: apt-get install redis-server)")?;
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Redis { child, port });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("redis-server on port {port} did not start")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One round's figures.
struct Round {
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    server_us_per_delivery: f64,
    /// Redis CPU per message that crossed nodes (two nodes only).
    broker_us_per_message: f64,
}

fn round_of(result: &BroadcastResult, receivers: u64) -> Round {
    let secs = result.elapsed.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // Each broadcast goes to every receiver; half of them, on the other
    // node, through one Redis message.
    let broadcasts = result.deliveries as f64 / receivers as f64;
    Round {
        deliveries_per_s: result.deliveries as f64 / secs,
        p50_ms: ms(result.latency.quantile(0.5)),
        p99_ms: ms(result.latency.quantile(0.99)),
        server_us_per_delivery: result.cpu.server.as_secs_f64() * 1e6
            / result.deliveries.max(1) as f64,
        broker_us_per_message: result.cpu.broker.as_secs_f64() * 1e6 / broadcasts.max(1.0),
    }
}

fn config_file(dir: &Path, redis: Option<u16>) -> anyhow::Result<PathBuf> {
    let file = dir.join(match redis {
        Some(_) => "cluster.toml",
        None => "single.toml",
    });
    let cluster = redis.map_or(String::new(), |port| {
        format!("[cluster]\nredis_url = \"redis://127.0.0.1:{port}/\"\n")
    });
    // The compare tool's settings: modules cached, nothing else changed.
    std::fs::write(
        &file,
        format!(
            "module_cache = \"{}\"\n{cluster}",
            dir.join("modules").display()
        ),
    )?;
    Ok(file)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Child::ServeSwitchyard(args)) = cli.child {
        process::raise_open_file_limit()?;
        process::exit_when_stdin_closes();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            process::serve_switchyard(listener, args).await
        });
    }
    process::raise_open_file_limit()?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let controllers = repo.join("controllers");
    switchyard::builder::build_controllers(&controllers)?;
    let scratch = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let spec = BroadcastSpec {
        connections: 1000,
        senders: 10,
        message_bytes: 64,
        in_flight: cli.in_flight,
        warmup: Duration::from_secs_f64(cli.warmup),
        duration: Duration::from_secs_f64(cli.duration),
    };
    println!(
        "cores: {}   rounds: {}   broadcast 1000 conns, 10 send 64 B, {} in flight   warm-up {} s, window {} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cli.rounds,
        cli.in_flight,
        cli.warmup,
        cli.duration
    );
    let receivers = spec.connections as u64 - 1;
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for round in 1..=cli.rounds {
        process::wait_for_quiet(Duration::from_secs(10))?;
        let single = config_file(scratch.path(), None)?;
        let server = ServerProcess::start(ServerKind::Switchyard, &controllers, Some(&single))?;
        let result = runtime.block_on(load::broadcast(&server, &spec))?;
        drop(server);
        let figures = round_of(&result, receivers);
        print_round(round, "one node", &figures);
        one.push(figures);

        process::wait_for_quiet(Duration::from_secs(10))?;
        let redis = Redis::start()?;
        let clustered = config_file(scratch.path(), Some(redis.port))?;
        let a = ServerProcess::start(ServerKind::Switchyard, &controllers, Some(&clustered))?;
        let b = ServerProcess::start(ServerKind::Switchyard, &controllers, Some(&clustered))?;
        let result = runtime.block_on(load::broadcast_across(
            &[&a, &b],
            Some(redis.child.id()),
            &spec,
        ))?;
        drop((a, b, redis));
        let figures = round_of(&result, receivers);
        print_round(round, "two nodes", &figures);
        two.push(figures);
    }
    println!("\n== summary: medians over {} rounds (min–max)", cli.rounds);
    println!(
        "{:<28} {:>22} {:>22} {:>8}",
        "metric", "one node", "two nodes + Redis", "ratio"
    );
    type Field = fn(&Round) -> f64;
    let rows: [(&str, Field); 4] = [
        ("deliveries/s", |r| r.deliveries_per_s),
        ("latency p50 ms", |r| r.p50_ms),
        ("latency p99 ms", |r| r.p99_ms),
        ("server CPU us/delivery", |r| r.server_us_per_delivery),
    ];
    for (name, field) in rows {
        let a: Vec<f64> = one.iter().map(field).collect();
        let b: Vec<f64> = two.iter().map(field).collect();
        let ratios: Vec<f64> = one
            .iter()
            .zip(&two)
            .map(|(x, y)| field(y) / field(x))
            .collect();
        println!(
            "{name:<28} {:>22} {:>22} {:>8.3}",
            spread(&a),
            spread(&b),
            median(ratios)
        );
    }
    let broker: Vec<f64> = two.iter().map(|r| r.broker_us_per_message).collect();
    println!(
        "{:<28} {:>22} {:>22}",
        "Redis CPU us/crossing msg",
        "-",
        spread(&broker)
    );
    Ok(())
}

fn spread(values: &[f64]) -> String {
    let (low, high) = min_max(values);
    let mid = median(values.to_vec());
    if mid >= 1000.0 {
        format!("{mid:.0} ({low:.0}–{high:.0})")
    } else {
        format!("{mid:.3} ({low:.3}–{high:.3})")
    }
}

fn print_round(round: usize, setup: &str, r: &Round) {
    println!(
        "round {round} {setup:<10} {:>9.0} deliveries/s  latency p50 {:>7.3} p99 {:>7.3} ms  server {:>5.3} us/delivery  redis {:>5.2} us/msg",
        r.deliveries_per_s, r.p50_ms, r.p99_ms, r.server_us_per_delivery, r.broker_us_per_message
    );
}
