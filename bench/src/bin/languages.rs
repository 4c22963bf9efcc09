//! Controllers in Rust, Python and JavaScript, side by side: the same echo
//! controller (`controllers/echo`, `bench/guests/python/echo`,
//! `bench/guests/js/echo`) built by `switchyard build`'s code and measured
//! the same way, the languages taking turns within each round (their order
//! rotating), so every ratio to Rust comes from one round of one run.
//!
//! Per language and round:
//! - start-up with an empty compiled-module cache (the module compiled by
//!   Cranelift) and again with the cache that start filled (read back), as
//!   a restart finds it;
//! - instantiations per second (a fresh store and instance each, as a new
//!   keyed instance gets);
//! - the in-process event cost: `on-message` with 32 B through one
//!   instance, no socket ([`switchyard::module::time_events`]);
//! - echo over real sockets: 100 clients with 32 B each in a closed loop
//!   against a server child serving that one module: messages per second,
//!   the server's CPU per message, round-trip p50 and p99;
//! - hot-reload latency: a changed module renamed into place under a live
//!   server, to the first echo a new client gets from it.
//!
//! `cargo run --release -p switchyard-bench --bin languages -- [--rounds 5]`
//!
//! It builds the Python and JavaScript echoes with the tools `switchyard
//! build` uses (`SWITCHYARD_COMPONENTIZE_PY`, `SWITCHYARD_JS_TOOLS`, else
//! installed on first use under `bench/guests/.switchyard/`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use switchyard::{Config, ReloadEvent, Server};
use switchyard_bench::load::{self, EchoSpec};
use switchyard_bench::modules::{built, time_start};
use switchyard_bench::process::{ServeSwitchyard, ServerKind, ServerProcess};
use switchyard_bench::stats::{median, min_max};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    child: Option<Child>,
    /// Rounds; each measures every language once.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Measured seconds of each echo run (after one second of warm-up).
    #[arg(long, default_value_t = 4)]
    duration: u64,
}

#[derive(clap::Subcommand)]
enum Child {
    /// Serve a folder of modules (run by the bench itself).
    #[command(hide = true)]
    ServeSwitchyard(ServeSwitchyard),
}

/// One language's echo module.
struct Lang {
    name: &'static str,
    module: PathBuf,
    /// A controllers folder holding only `echo.wasm`, for the server child.
    folder: tempfile::TempDir,
}

/// What one round measured of one language.
#[derive(Default, Clone, Copy)]
struct Sample {
    cold_ms: f64,
    warm_ms: f64,
    instances_per_s: f64,
    event_us: f64,
    echo_per_s: f64,
    cpu_us: f64,
    p50_us: f64,
    p99_us: f64,
    reload_ms: f64,
}

/// Reads one metric from a sample.
type Read = fn(&Sample) -> f64;

/// The metrics reported, with how to read each from a sample.
const METRICS: [(&str, Read); 9] = [
    ("start-up, cold cache, ms", |s| s.cold_ms),
    ("start-up, warm cache, ms", |s| s.warm_ms),
    ("instantiations/s", |s| s.instances_per_s),
    ("in-process event, µs", |s| s.event_us),
    ("echo 100 × 32 B, msgs/s", |s| s.echo_per_s),
    ("echo, server CPU µs/msg", |s| s.cpu_us),
    ("echo, p50 round trip µs", |s| s.p50_us),
    ("echo, p99 round trip µs", |s| s.p99_us),
    ("hot reload → first echo, ms", |s| s.reload_ms),
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn build(repo: &Path) -> anyhow::Result<Vec<Lang>> {
    let rust = built(&repo.join("controllers"), "echo")?;
    let guests = repo.join("bench/guests");
    let python = switchyard::languages::python::build_projects(&guests.join("python"))?;
    let js = switchyard::languages::javascript::build_projects(&guests.join("js"))?;
    let one = |mut built: Vec<PathBuf>, what: &str| {
        anyhow::ensure!(
            built.len() == 1,
            "the {what} echo did not build (is its tool installed?): {built:?}"
        );
        Ok(built.remove(0))
    };
    let modules = [
        ("Rust", rust),
        ("Python", one(python, "Python")?),
        ("JavaScript", one(js, "JavaScript")?),
    ];
    modules
        .into_iter()
        .map(|(name, module)| {
            let folder = tempfile::tempdir()?;
            std::fs::copy(&module, folder.path().join("echo.wasm"))?;
            Ok(Lang {
                name,
                module,
                folder,
            })
        })
        .collect()
}

/// Runs `timed(count)` with a count that makes it last about `target`,
/// and returns the seconds per unit.
async fn per_unit<F, Fut>(target: Duration, timed: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Duration>>,
{
    let probe = timed(20).await?.as_secs_f64() / 20.0;
    let count = ((target.as_secs_f64() / probe) as usize).clamp(20, 2_000_000);
    Ok(timed(count).await?.as_secs_f64() / count as f64)
}

/// Appends a custom section holding `n`: the same component, new bytes,
/// so a reload compiles it for real.
fn variant(module: &[u8], n: u64) -> Vec<u8> {
    let name = b"bench";
    let mut bytes = module.to_vec();
    bytes.push(0);
    bytes.push((1 + name.len() + 8) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&n.to_le_bytes());
    bytes
}

/// A server with hot reload on `lang`'s echo; renames a changed module
/// into place and times it to the first echo of a new client.
async fn reload(lang: &Lang, round: u64) -> anyhow::Result<Duration> {
    let folder = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    let live = folder.path().join("echo.wasm");
    let bytes = std::fs::read(&lang.module)?;
    std::fs::write(&live, &bytes)?;
    let config = Config {
        controllers: folder.path().to_owned(),
        module_cache: cache.path().to_owned(),
        ..Config::default()
    };
    let server = Server::new(config).await?;
    let mut reloads = server.reload_events();
    let listener = switchyard::bind("127.0.0.1:0".parse()?)?;
    let url = format!("ws://{}/echo", listener.local_addr()?);
    let serving = tokio::spawn(server.serve(listener, std::future::pending()));

    let start = Instant::now();
    let staged = folder.path().join(".echo.wasm.tmp");
    std::fs::write(&staged, variant(&bytes, round))?;
    std::fs::rename(&staged, &live)?;
    match tokio::time::timeout(Duration::from_secs(60), reloads.recv()).await?? {
        ReloadEvent::Live { .. } => {}
        other => anyhow::bail!("the reload did not go live: {other:?}"),
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
    ws.send(Message::binary(vec![7u8; 32])).await?;
    let echoed = ws.next().await.context("no echo")??;
    anyhow::ensure!(echoed.len() == 32, "unexpected reply {echoed:?}");
    let took = start.elapsed();
    serving.abort();
    Ok(took)
}

async fn measure(lang: &Lang, round: u64, duration: Duration) -> anyhow::Result<Sample> {
    let cache = tempfile::tempdir()?;
    let cold = time_start(lang.folder.path(), cache.path(), 1).await?;
    let warm = time_start(lang.folder.path(), cache.path(), 1).await?;
    let config = || Config {
        module_cache: cache.path().to_owned(),
        ..Config::default()
    };
    let instance = per_unit(Duration::from_millis(500), |count| {
        switchyard::module::time_instantiation(config(), &lang.module, count, 1)
    })
    .await?;
    let event = per_unit(Duration::from_millis(500), |count| {
        switchyard::module::time_events(config(), &lang.module, count, 32)
    })
    .await?;

    let server = ServerProcess::start(ServerKind::Switchyard, lang.folder.path(), None)?;
    let spec = EchoSpec {
        connections: 100,
        message_bytes: 32,
        warmup: Duration::from_secs(1),
        duration,
    };
    let echo = load::echo(&server, &spec).await?;
    drop(server);
    let secs = echo.elapsed.as_secs_f64();
    let micros = |q: f64| echo.rtt.quantile(q).as_secs_f64() * 1e6;
    Ok(Sample {
        cold_ms: ms(cold),
        warm_ms: ms(warm),
        instances_per_s: 1.0 / instance,
        event_us: event * 1e6,
        echo_per_s: echo.messages as f64 / secs,
        cpu_us: echo.cpu.server.as_secs_f64() * 1e6 / echo.messages.max(1) as f64,
        p50_us: micros(0.5),
        p99_us: micros(0.99),
        reload_ms: ms(reload(lang, round).await?),
    })
}

fn report(langs: &[Lang], rounds: &[Vec<Sample>]) {
    let cell = |values: Vec<f64>| {
        let (lo, hi) = min_max(&values);
        let m = median(values);
        if m >= 100.0 {
            format!("{m:.0} [{lo:.0}–{hi:.0}]")
        } else if m >= 0.1 {
            format!("{m:.2} [{lo:.2}–{hi:.2}]")
        } else {
            format!("{m:.4} [{lo:.4}–{hi:.4}]")
        }
    };
    print!("\n| metric |");
    for lang in langs {
        print!(" {} |", lang.name);
    }
    for lang in &langs[1..] {
        print!(" {} / Rust |", lang.name);
    }
    print!("\n|---|");
    for _ in 0..(2 * langs.len() - 1) {
        print!("---:|");
    }
    println!();
    for (label, read) in METRICS {
        print!("| {label} |");
        for at in 0..langs.len() {
            print!(" {} |", cell(rounds.iter().map(|r| read(&r[at])).collect()));
        }
        for at in 1..langs.len() {
            let ratios = rounds.iter().map(|r| read(&r[at]) / read(&r[0])).collect();
            print!(" {} |", cell(ratios));
        }
        println!();
    }
    println!("\n(medians over {} rounds, [min–max])", rounds.len());
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some(Child::ServeSwitchyard(args)) = cli.child {
        switchyard_bench::process::exit_when_stdin_closes();
        return runtime.block_on(async {
            let listener = switchyard::bind("127.0.0.1:0".parse()?)?;
            switchyard_bench::process::serve_switchyard(listener, args).await
        });
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let langs = build(repo)?;
    for lang in &langs {
        println!(
            "{}: {} ({:.1} MB)",
            lang.name,
            lang.module.display(),
            std::fs::metadata(&lang.module)?.len() as f64 / 1e6
        );
    }
    let duration = Duration::from_secs(cli.duration);
    let mut rounds = Vec::new();
    for round in 0..cli.rounds {
        let mut samples = vec![Sample::default(); langs.len()];
        for turn in 0..langs.len() {
            let at = (round + turn) % langs.len();
            let sample = runtime.block_on(measure(&langs[at], round as u64, duration))?;
            eprintln!(
                "round {} {}: {:.0} msgs/s, {:.2} µs CPU/msg, event {:.2} µs, reload {:.0} ms",
                round + 1,
                langs[at].name,
                sample.echo_per_s,
                sample.cpu_us,
                sample.event_us,
                sample.reload_ms
            );
            samples[at] = sample;
        }
        rounds.push(samples);
    }
    report(&langs, &rounds);
    Ok(())
}
