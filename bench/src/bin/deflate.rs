//! permessage-deflate on the chat broadcast: bytes on the wire and server
//! CPU per delivery, compressed and not, in the same run.
//!
//! Each round starts the `switchyard` binary three times, one after the
//! other, serving the sample `chat` controller: with `[compression] enabled
//! = false`; with the defaults (compression on, no context takeover either
//! way, so a broadcast is compressed once and the compressed frame shared);
//! and with context takeover on both sides (each connection its own
//! compressor and decompressor). The same load runs against each:
//! `--receivers` clients on `/chat/` that offer compression as browsers do
//! (`permessage-deflate; client_max_window_bits`), send one compressed
//! greeting when it is agreed (so that a server keeping the client's context
//! holds a decompressor for each) and inflate what they receive, and
//! `--senders` clients that send chat lines of about `--bytes` bytes at a
//! fixed total rate. The report gives, per server, medians over the rounds
//! (and their range) of the bytes the receivers read from their sockets per
//! delivery, the server's CPU time per delivery, and its resident memory per
//! connection once all are open and greeted (idle) and after the traffic
//! (busy).
//!
//! ```sh
//! cargo build --release -p switchyard
//! cargo run --release -p switchyard-bench --bin deflate -- --rounds 5
//! ```

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress};
use switchyard_bench::process;
use switchyard_bench::stats::{median, min_max};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// Rounds; each runs both servers.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Clients that only receive.
    #[arg(long, default_value_t = 200)]
    receivers: usize,
    /// Clients that send (they receive too).
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Chat lines sent per second, all senders together.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Size of a chat line, about.
    #[arg(long, default_value_t = 600)]
    bytes: usize,
    /// Seconds measured per server and round (after a second of warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

/// The three servers of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    On,
    Takeover,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Off, Mode::On, Mode::Takeover];

    fn name(self) -> &'static str {
        match self {
            Mode::Off => "compression off",
            Mode::On => "compression on (default)",
            Mode::Takeover => "on, context takeover",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Mode::Off => "off.toml",
            Mode::On => "on.toml",
            Mode::Takeover => "takeover.toml",
        }
    }
}

/// A `switchyard serve` child; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(controllers: &Path, mode: Mode, dir: &Path) -> anyhow::Result<Server> {
        let exe = std::env::current_exe()?.with_file_name("switchyard");
        ensure!(
            exe.is_file(),
            "{} is missing: run `cargo build --release -p switchyard` first",
            exe.display()
        );
        let (enabled, takeover) = match mode {
            Mode::Off => (false, false),
            Mode::On => (true, false),
            Mode::Takeover => (true, true),
        };
        let config = dir.join(mode.file());
        std::fs::write(
            &config,
            format!(
                "hot_reload = false\n[compression]\nenabled = {enabled}\n\
                 server_context_takeover = {takeover}\nclient_context_takeover = {takeover}\n"
            ),
        )?;
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--controllers"])
            .arg(controllers)
            .arg("--config")
            .arg(&config)
            .env("SWITCHYARD_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start switchyard")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening on ws://") else {
            let _ = child.kill();
            bail!("switchyard did not start: {line:?}");
        };
        Ok(Server {
            addr: addr.parse()?,
            child,
        })
    }

    fn cpu(&self) -> anyhow::Result<Duration> {
        process::cpu_time(&self.child.id().to_string())
    }

    fn resident_bytes(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .context("no VmRSS")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kib * 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the server agreed on with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Agreed {
    deflate: bool,
    /// The server keeps its compression context: inflate without resets.
    server_takeover: bool,
}

/// Opens a connection to `/chat/`, offering compression as a browser does;
/// when the server agrees, sends one compressed greeting.
async fn connect(addr: SocketAddr, name: &str) -> anyhow::Result<(TcpStream, Agreed)> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let request = format!(
        "GET /chat/?name={name} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await?);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    ensure!(head.starts_with("http/1.1 101"), "upgrade refused: {head}");
    let agreed = Agreed {
        deflate: head.contains("permessage-deflate"),
        server_takeover: head.contains("permessage-deflate")
            && !head.contains("server_no_context_takeover"),
    };
    if agreed.deflate {
        let mut compressor = Compress::new(flate2::Compression::new(1), false);
        let mut greeting = Vec::with_capacity(256);
        compressor.compress_vec(
            format!("hello from {name}, ready to chat").as_bytes(),
            &mut greeting,
            FlushCompress::Sync,
        )?;
        greeting.truncate(greeting.len() - 4);
        let mut frame = client_frame(&greeting);
        frame[0] |= 0x40;
        tcp.write_all(&frame).await?;
    }
    Ok((tcp, agreed))
}

/// Counters the receivers share (added to once per read, not per message).
#[derive(Default)]
struct Counts {
    deliveries: AtomicU64,
    wire_bytes: AtomicU64,
    plain_bytes: AtomicU64,
}

/// Reads server frames until the connection ends, inflating compressed
/// messages, and counts.
async fn receive(mut tcp: TcpStream, agreed: Agreed, counts: Arc<Counts>) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(64 << 10);
    let mut inflater = Decompress::new(false);
    let mut input = Vec::new();
    let mut plain = Vec::with_capacity(4096);
    loop {
        let start = buf.len();
        buf.resize(start + (64 << 10), 0);
        let read = tcp.read(&mut buf[start..]).await?;
        buf.truncate(start + read);
        if read == 0 {
            return Ok(());
        }
        counts.wire_bytes.fetch_add(read as u64, Ordering::Relaxed);
        let (mut at, mut messages, mut inflated) = (0, 0, 0);
        while let Some((head_len, len)) = frame_at(&buf[at..]) {
            let payload = &buf[at + head_len..at + head_len + len];
            match buf[at] & 0x0f {
                0x1 | 0x2 if buf[at] & 0x40 != 0 => {
                    if !agreed.server_takeover {
                        inflater.reset(false);
                    }
                    input.clear();
                    input.extend_from_slice(payload);
                    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
                    plain.clear();
                    let start = inflater.total_in();
                    loop {
                        plain.reserve(4096);
                        let used = (inflater.total_in() - start) as usize;
                        inflater.decompress_vec(
                            &input[used..],
                            &mut plain,
                            FlushDecompress::Sync,
                        )?;
                        let used = (inflater.total_in() - start) as usize;
                        if used == input.len() && plain.len() < plain.capacity() {
                            break;
                        }
                    }
                    inflated += plain.len();
                    messages += 1;
                }
                0x1 | 0x2 => {
                    inflated += len;
                    messages += 1;
                }
                0x8 => return Ok(()),
                _ => {}
            }
            at += head_len + len;
        }
        buf.drain(..at);
        counts.deliveries.fetch_add(messages, Ordering::Relaxed);
        counts
            .plain_bytes
            .fetch_add(inflated as u64, Ordering::Relaxed);
    }
}

/// The header length and payload length of the server frame `buf` starts
/// with, once it is all there.
fn frame_at(buf: &[u8]) -> Option<(usize, usize)> {
    let (head_len, len) = match *buf.get(1)? & 0x7f {
        126 => (
            4,
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
        ),
        n => (2, usize::from(n)),
    };
    (buf.len() >= head_len + len).then_some((head_len, len))
}

/// A masked client text frame.
fn client_frame(text: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![0x81];
    match text.len() {
        len @ 0..126 => out.push(0x80 | len as u8),
        len => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(text.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

/// Chat lines of about `bytes` bytes: English words in varying order, as a
/// conversation reads (compressible, but not a repeated string).
fn chat_lines(bytes: usize, count: usize) -> Vec<Vec<u8>> {
    const WORDS: &[&str] = &[
        "the",
        "meeting",
        "moved",
        "to",
        "Thursday",
        "afternoon",
        "can",
        "you",
        "send",
        "me",
        "latest",
        "draft",
        "of",
        "report",
        "before",
        "lunch",
        "I",
        "think",
        "we",
        "should",
        "ask",
        "Alice",
        "about",
        "budget",
        "numbers",
        "and",
        "deployment",
        "plan",
        "for",
        "next",
        "week",
        "sounds",
        "good",
        "thanks",
        "will",
        "check",
        "with",
        "Bob",
        "later",
        "today",
        "release",
        "notes",
        "are",
        "almost",
        "done",
        "just",
        "need",
        "a",
        "review",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..count)
        .map(|_| {
            let mut line = String::new();
            while line.len() < bytes {
                line.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
                line.push(if next() % 9 == 0 { '.' } else { ' ' });
            }
            line.truncate(bytes);
            line.into_bytes()
        })
        .collect()
}

/// One measurement of one server.
struct Sample {
    wire_per_delivery: f64,
    plain_per_delivery: f64,
    cpu_us_per_delivery: f64,
    deliveries_per_s: f64,
    idle_bytes_per_conn: f64,
    busy_bytes_per_conn: f64,
}

async fn measure(server: &Server, args: &Args) -> anyhow::Result<(Sample, Agreed)> {
    let counts = Arc::new(Counts::default());
    let mut all_agreed = None;
    let mut tasks = Vec::new();
    let rss_empty = server.resident_bytes()?;
    for i in 0..args.receivers {
        let (tcp, agreed) = connect(server.addr, &format!("r{i}")).await?;
        ensure!(
            *all_agreed.get_or_insert(agreed) == agreed,
            "clients agreed differently"
        );
        tasks.push(tokio::spawn(receive(tcp, agreed, counts.clone())));
    }
    let mut senders = Vec::new();
    for i in 0..args.senders {
        let (tcp, agreed) = connect(server.addr, &format!("s{i}")).await?;
        let (read, write) = tcp.into_split();
        // Senders receive what the others send, and drop it.
        tasks.push(tokio::spawn(async move {
            let _agreed = agreed;
            let mut read = read;
            let mut sink = vec![0u8; 64 << 10];
            while read.read(&mut sink).await? > 0 {}
            Ok(())
        }));
        senders.push(write);
    }
    let connections = (args.receivers + args.senders) as f64;
    // Let the greetings (and the join notices they cause) settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_bytes_per_conn = (server.resident_bytes()? - rss_empty) / connections;
    let lines: Vec<Vec<u8>> = chat_lines(args.bytes, 64)
        .iter()
        .map(|line| client_frame(line))
        .collect();
    let period = Duration::from_secs_f64(args.senders as f64 / args.rate as f64);
    let stop = Instant::now() + Duration::from_secs(1 + args.seconds);
    let mut sending = Vec::new();
    for (i, mut write) in senders.into_iter().enumerate() {
        let lines = lines.clone();
        sending.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut n = i;
            while Instant::now() < stop {
                tick.tick().await;
                write.write_all(&lines[n % lines.len()]).await?;
                n += 1;
            }
            anyhow::Ok(write)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (d0, w0, p0) = (
        counts.deliveries.load(Ordering::Relaxed),
        counts.wire_bytes.load(Ordering::Relaxed),
        counts.plain_bytes.load(Ordering::Relaxed),
    );
    let cpu0 = server.cpu()?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let cpu = server.cpu()? - cpu0;
    let elapsed = t0.elapsed();
    let busy_bytes_per_conn = (server.resident_bytes()? - rss_empty) / connections;
    let deliveries = (counts.deliveries.load(Ordering::Relaxed) - d0) as f64;
    let wire = (counts.wire_bytes.load(Ordering::Relaxed) - w0) as f64;
    let plain = (counts.plain_bytes.load(Ordering::Relaxed) - p0) as f64;
    for task in sending {
        drop(task.await??);
    }
    for task in &tasks {
        task.abort();
    }
    ensure!(deliveries > 0.0, "no deliveries");
    Ok((
        Sample {
            wire_per_delivery: wire / deliveries,
            plain_per_delivery: plain / deliveries,
            cpu_us_per_delivery: cpu.as_secs_f64() * 1e6 / deliveries,
            deliveries_per_s: deliveries / elapsed.as_secs_f64(),
            idle_bytes_per_conn,
            busy_bytes_per_conn,
        },
        all_agreed.context("no receivers")?,
    ))
}

/// Prints a table row for `mode`; returns its median wire bytes and CPU
/// per delivery.
fn summary(mode: Mode, samples: &[Sample]) -> (f64, f64) {
    let pick = |f: fn(&Sample) -> f64| {
        let v: Vec<f64> = samples.iter().map(f).collect();
        let (lo, hi) = min_max(&v);
        (median(v), lo, hi)
    };
    let range = |(m, lo, hi): (f64, f64, f64), digits: usize| {
        format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
    };
    let wire = pick(|s| s.wire_per_delivery);
    let cpu = pick(|s| s.cpu_us_per_delivery);
    println!(
        "| {} | {} | {:.0} | {} | {:.0} | {} | {} |",
        mode.name(),
        range(wire, 0),
        pick(|s| s.plain_per_delivery).0,
        range(cpu, 2),
        pick(|s| s.deliveries_per_s).0,
        range(pick(|s| s.idle_bytes_per_conn / 1024.0), 1),
        range(pick(|s| s.busy_bytes_per_conn / 1024.0), 1),
    );
    (wire.0, cpu.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    process::raise_open_file_limit()?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let controllers: PathBuf = repo.join("controllers");
    switchyard::builder::build_controllers(&controllers)?;
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut samples: Vec<Vec<Sample>> = Mode::ALL.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for (i, mode) in Mode::ALL.into_iter().enumerate() {
            let server = Server::start(&controllers, mode, dir.path())?;
            let (sample, agreed) = runtime.block_on(measure(&server, &args))?;
            let expected = Agreed {
                deflate: mode != Mode::Off,
                server_takeover: mode == Mode::Takeover,
            };
            ensure!(
                agreed == expected,
                "{}: the server agreed on {agreed:?}",
                mode.name()
            );
            eprintln!(
                "round {round}, {}: {:.0} B/delivery on the wire, {:.2} us CPU/delivery, \
                 {:.0} deliveries/s, {:.1} / {:.1} KiB per connection idle / busy",
                mode.name(),
                sample.wire_per_delivery,
                sample.cpu_us_per_delivery,
                sample.deliveries_per_s,
                sample.idle_bytes_per_conn / 1024.0,
                sample.busy_bytes_per_conn / 1024.0
            );
            samples[i].push(sample);
        }
    }
    println!(
        "chat broadcast: {} receivers, {} senders, {} lines/s of {} B, {} s per server and round, \
         {} rounds (medians, range over rounds)",
        args.receivers, args.senders, args.rate, args.bytes, args.seconds, args.rounds
    );
    println!(
        "| server | wire B/delivery | message B/delivery | server CPU µs/delivery | deliveries/s \
         | RSS KiB/conn idle | RSS KiB/conn busy |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let figures: Vec<(f64, f64)> = Mode::ALL
        .iter()
        .zip(&samples)
        .map(|(mode, samples)| summary(*mode, samples))
        .collect();
    for (mode, (wire, cpu)) in Mode::ALL.iter().zip(&figures).skip(1) {
        println!(
            "{} / compression off: wire bytes {:.3}, server CPU {:.3}",
            mode.name(),
            wire / figures[0].0,
            cpu / figures[0].1
        );
    }
    Ok(())
}
