//! The load generator: clients for the echo, broadcast and idle scenarios.
//!
//! Each scenario takes the address of a running server (and the server's
//! process, to sample its CPU time and memory), opens its connections,
//! runs a warm-up, then a measured window, and returns what it saw. Every
//! task records into its own counters and [`Histogram`]; nothing is shared
//! per message except the flow-control counters of the broadcast scenario.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::histogram::Histogram;
use crate::process::{ServerProcess, cpu_time, machine_busy};

type Ws = WebSocketStream<TcpStream>;

/// Opens one client connection to `path`, with a read buffer of
/// `read_buffer` bytes (small for idle clients, larger for big messages).
pub async fn connect(addr: SocketAddr, path: &str, read_buffer: usize) -> anyhow::Result<Ws> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20));
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
        .await
        .with_context(|| format!("WebSocket upgrade at {url}"))?;
    Ok(ws)
}

/// The next data message, skipping control frames.
async fn next_data(
    stream: &mut (impl StreamExt<Item = tokio_tungstenite::tungstenite::Result<Message>> + Unpin),
) -> anyhow::Result<Message> {
    loop {
        match stream.next().await {
            Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => return Ok(msg),
            Some(Ok(Message::Close(frame))) => bail!("server closed the connection: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(err)) => bail!("connection failed: {err}"),
            None => bail!("server closed the connection"),
        }
    }
}

/// Switches shared by the tasks of one run.
#[derive(Default)]
struct Window {
    /// Set during the measured window: tasks record only then.
    measuring: AtomicBool,
    /// Set at the end: tasks finish.
    stop: AtomicBool,
}

/// CPU use over the measured window.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// CPU time the server used (every server, when several share the
    /// load).
    pub server: Duration,
    /// CPU time the broker (Redis) used, when servers share one.
    pub broker: Duration,
    /// CPU time this process (the load generator) used.
    pub client: Duration,
    /// CPU time the whole machine used: server, client, the kernel's
    /// network work not charged to either, and anything else running.
    pub machine: Duration,
}

impl Window {
    /// Warm-up, then the measured window; returns the window's length and
    /// CPU use, and tells the tasks to stop.
    async fn run(
        &self,
        servers: &[&ServerProcess],
        broker: Option<u32>,
        warmup: Duration,
        duration: Duration,
    ) -> anyhow::Result<(Duration, CpuUse)> {
        let servers_cpu =
            || -> anyhow::Result<Duration> { servers.iter().map(|server| server.cpu_time()).sum() };
        let broker_cpu = || -> anyhow::Result<Duration> {
            broker.map_or(Ok(Duration::ZERO), |pid| cpu_time(&pid.to_string()))
        };
        tokio::time::sleep(warmup).await;
        let server_before = servers_cpu()?;
        let broker_before = broker_cpu()?;
        let client_before = cpu_time("self")?;
        let machine_before = machine_busy()?;
        let start = Instant::now();
        self.measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(duration).await;
        self.measuring.store(false, Ordering::Relaxed);
        let elapsed = start.elapsed();
        let cpu = CpuUse {
            server: servers_cpu()? - server_before,
            broker: broker_cpu()? - broker_before,
            client: cpu_time("self")? - client_before,
            machine: machine_busy()? - machine_before,
        };
        self.stop.store(true, Ordering::Relaxed);
        Ok((elapsed, cpu))
    }

    fn measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Parameters of the echo scenario.
#[derive(Debug, Clone)]
pub struct EchoSpec {
    /// Client connections, each with one message in flight.
    pub connections: usize,
    /// Payload size of each (binary) message.
    pub message_bytes: usize,
    /// Time before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
}

/// What an echo run saw during its measured window.
#[derive(Clone)]
pub struct EchoResult {
    /// Round trips completed in the window.
    pub messages: u64,
    /// Length of the window.
    pub elapsed: Duration,
    /// Round-trip times.
    pub rtt: Histogram,
    /// CPU use in the window.
    pub cpu: CpuUse,
}

/// Each client sends a message to `/echo`, waits for it to come back, and
/// sends the next: a closed loop, so throughput is set by the server.
pub async fn echo(server: &ServerProcess, spec: &EchoSpec) -> anyhow::Result<EchoResult> {
    let read_buffer = (2 * spec.message_bytes).clamp(4096, 1 << 20);
    let payload = Bytes::from(vec![0xA5; spec.message_bytes]);
    let window = Arc::new(Window::default());
    let mut clients = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections {
        let ws = connect(server.addr, "/echo", read_buffer).await?;
        clients.push(tokio::spawn(echo_client(
            ws,
            payload.clone(),
            window.clone(),
        )));
    }
    let (elapsed, cpu) = window
        .run(&[server], None, spec.warmup, spec.duration)
        .await?;
    let mut result = EchoResult {
        messages: 0,
        elapsed,
        rtt: Histogram::default(),
        cpu,
    };
    for client in clients {
        let rtt = client.await??;
        result.messages += rtt.len();
        result.rtt.merge(&rtt);
    }
    Ok(result)
}

async fn echo_client(mut ws: Ws, payload: Bytes, window: Arc<Window>) -> anyhow::Result<Histogram> {
    let mut rtt = Histogram::default();
    while !window.stopped() {
        let start = Instant::now();
        ws.send(Message::Binary(payload.clone())).await?;
        let reply = next_data(&mut ws).await?;
        ensure!(
            reply.len() == payload.len(),
            "echo changed the message size"
        );
        if window.measuring() {
            rtt.record(start.elapsed());
        }
    }
    Ok(rtt)
}

/// Parameters of the broadcast scenario.
#[derive(Debug, Clone)]
pub struct BroadcastSpec {
    /// Client connections on `/chat/`; every one receives.
    pub connections: usize,
    /// How many of them also send.
    pub senders: usize,
    /// Payload size of each (binary) message; at least [`STAMP_BYTES`].
    pub message_bytes: usize,
    /// Messages each sender may have not yet delivered to every receiver.
    pub in_flight: usize,
    /// Time before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
}

/// What a broadcast run saw during its measured window.
#[derive(Clone)]
pub struct BroadcastResult {
    /// Messages received by clients in the window.
    pub deliveries: u64,
    /// Length of the window.
    pub elapsed: Duration,
    /// Time from the sender's stamp to the receiver reading the message.
    pub latency: Histogram,
    /// CPU use in the window.
    pub cpu: CpuUse,
}

/// Bytes at the start of each broadcast payload: sender index (u32),
/// sequence number (u64) and send time (u64 ns since the run's start).
pub const STAMP_BYTES: usize = 20;

/// Flow control of one sender. Receivers count each of its messages in the
/// slot `seq % in_flight`; before sending `seq` the sender waits until
/// message `seq - in_flight` (the slot's previous tenant) has reached every
/// receiver, then empties the slot. Messages from one sender arrive in
/// order, so this bounds every receiver's backlog to `in_flight` messages
/// per sender, well under the servers' 1024-message outbound queues.
struct Flow {
    slots: Box<[AtomicU32]>,
    delivered: Notify,
}

/// Shared state of a broadcast run.
struct Broadcast {
    flows: Vec<Flow>,
    /// Receivers of each message: every connection but its sender.
    receivers: u32,
    /// Connections that got their greeting (so the server has them in its
    /// room and will not miss a broadcast).
    greeted: AtomicUsize,
    ready: Notify,
    /// Set when a receiver failed: senders stop waiting for it.
    failed: AtomicBool,
    epoch: Instant,
    window: Window,
}

/// Clients join `/chat/`; `senders` of them send binary messages carrying
/// a stamp, as fast as flow control allows; every client measures each
/// delivery's latency from the stamp.
pub async fn broadcast(
    server: &ServerProcess,
    spec: &BroadcastSpec,
) -> anyhow::Result<BroadcastResult> {
    broadcast_across(&[server], None, spec).await
}

/// [`broadcast`] with the clients spread over `servers` in turn (nodes of
/// one cluster, whose broker is the process `broker`, charged separately).
pub async fn broadcast_across(
    servers: &[&ServerProcess],
    broker: Option<u32>,
    spec: &BroadcastSpec,
) -> anyhow::Result<BroadcastResult> {
    ensure!(
        spec.message_bytes >= STAMP_BYTES,
        "broadcast messages need at least {STAMP_BYTES} bytes"
    );
    ensure!(spec.senders < spec.connections && spec.in_flight > 0);
    let shared = Arc::new(Broadcast {
        flows: (0..spec.senders)
            .map(|_| Flow {
                slots: (0..spec.in_flight).map(|_| AtomicU32::new(0)).collect(),
                delivered: Notify::new(),
            })
            .collect(),
        receivers: spec.connections as u32 - 1,
        greeted: AtomicUsize::new(0),
        ready: Notify::new(),
        failed: AtomicBool::new(false),
        epoch: Instant::now(),
        window: Window::default(),
    });
    let cancel = CancellationToken::new();
    let mut receivers = Vec::with_capacity(spec.connections);
    let mut sinks = Vec::with_capacity(spec.senders);
    // One at a time, each reading at once: every join notice the server
    // sends is drained as it comes.
    for i in 0..spec.connections {
        let server = servers[i % servers.len()];
        let ws = connect(server.addr, &format!("/chat/?name=c{i}"), 4096).await?;
        let (sink, stream) = ws.split();
        receivers.push(tokio::spawn(receive(
            stream,
            shared.clone(),
            cancel.clone(),
        )));
        if i < spec.senders {
            sinks.push(sink);
        }
    }
    let everyone = async {
        while shared.greeted.load(Ordering::Acquire) < spec.connections {
            shared.ready.notified().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), everyone)
        .await
        .context("not every client was greeted within 30 s")?;
    if servers.len() > 1 {
        // Each node learns of the others' clients through the broker, in
        // milliseconds; a broadcast before that would miss some.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let senders: Vec<_> = sinks
        .into_iter()
        .enumerate()
        .map(|(index, sink)| tokio::spawn(send(sink, index, spec.message_bytes, shared.clone())))
        .collect();
    let window = shared
        .window
        .run(servers, broker, spec.warmup, spec.duration)
        .await;
    for sender in senders {
        sender.await??;
    }
    // Let the last messages arrive, then stop the receivers.
    tokio::time::sleep(Duration::from_millis(100)).await;
    cancel.cancel();
    let (elapsed, cpu) = window?;
    let mut result = BroadcastResult {
        deliveries: 0,
        elapsed,
        latency: Histogram::default(),
        cpu,
    };
    for receiver in receivers {
        let latency = receiver.await??;
        result.deliveries += latency.len();
        result.latency.merge(&latency);
    }
    Ok(result)
}

async fn send(
    mut sink: SplitSink<Ws, Message>,
    index: usize,
    message_bytes: usize,
    shared: Arc<Broadcast>,
) -> anyhow::Result<()> {
    let flow = &shared.flows[index];
    let in_flight = flow.slots.len() as u64;
    let mut payload = vec![0u8; message_bytes];
    payload[..4].copy_from_slice(&(index as u32).to_le_bytes());
    let mut seq: u64 = 0;
    while !shared.window.stopped() {
        let slot = &flow.slots[(seq % in_flight) as usize];
        if seq >= in_flight {
            while slot.load(Ordering::Acquire) < shared.receivers {
                if shared.failed.load(Ordering::Relaxed) {
                    bail!("a receiver failed; see its error");
                }
                tokio::time::timeout(Duration::from_secs(10), flow.delivered.notified())
                    .await
                    .with_context(|| {
                        format!(
                            "sender {index}: message {} not delivered to every client within 10 s",
                            seq - in_flight
                        )
                    })?;
            }
            slot.store(0, Ordering::Release);
        }
        let now = shared.epoch.elapsed().as_nanos() as u64;
        payload[4..12].copy_from_slice(&seq.to_le_bytes());
        payload[12..20].copy_from_slice(&now.to_le_bytes());
        sink.send(Message::Binary(Bytes::copy_from_slice(&payload)))
            .await?;
        seq += 1;
    }
    Ok(())
}

async fn receive(
    mut stream: SplitStream<Ws>,
    shared: Arc<Broadcast>,
    cancel: CancellationToken,
) -> anyhow::Result<Histogram> {
    let mut latency = Histogram::default();
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        // The stream first: while messages are ready the cancellation is not
        // polled (each poll of it locks the token's node and registers a
        // waker, a quarter of the receivers' CPU when it went first). The
        // senders stop at the cancellation, so the stream soon has nothing
        // ready and the cancellation is seen.
        let msg = tokio::select! {
            biased;
            msg = next_data(&mut stream) => msg,
            () = &mut cancelled => return Ok(latency),
        };
        let msg = match msg {
            Ok(msg) => msg,
            Err(err) => {
                shared.failed.store(true, Ordering::Relaxed);
                for flow in &shared.flows {
                    flow.delivered.notify_one();
                }
                return Err(err);
            }
        };
        match msg {
            Message::Binary(payload) => {
                let now = shared.epoch.elapsed().as_nanos() as u64;
                let sender = u32::from_le_bytes(payload[..4].try_into()?) as usize;
                let seq = u64::from_le_bytes(payload[4..12].try_into()?);
                let sent = u64::from_le_bytes(payload[12..20].try_into()?);
                let flow = &shared.flows[sender];
                let slot = &flow.slots[(seq % flow.slots.len() as u64) as usize];
                if slot.fetch_add(1, Ordering::AcqRel) + 1 == shared.receivers {
                    flow.delivered.notify_one();
                }
                if shared.window.measuring() {
                    latency.record(Duration::from_nanos(now.saturating_sub(sent)));
                }
            }
            Message::Text(text) if text.contains("Hello world!") => {
                shared.greeted.fetch_add(1, Ordering::AcqRel);
                shared.ready.notify_one();
            }
            _ => {} // join and leave notices
        }
    }
}

/// Parameters of the idle scenario.
#[derive(Debug, Clone)]
pub struct IdleSpec {
    /// Connections to open and hold.
    pub connections: usize,
    /// Connections being opened at once.
    pub concurrency: usize,
}

/// Server memory with the connections open.
#[derive(Debug, Clone)]
pub struct IdleResult {
    /// Connections held.
    pub connections: usize,
    /// Server resident memory before opening them.
    pub rss_before: u64,
    /// Server resident memory with all of them open.
    pub rss_after: u64,
    /// Time to open them all (upgrade and one echo each).
    pub open_time: Duration,
}

impl IdleResult {
    /// Server memory per open connection.
    pub fn bytes_per_connection(&self) -> f64 {
        (self.rss_after as f64 - self.rss_before as f64) / self.connections as f64
    }
}

/// Opens `connections` clients on `/echo`, each of which sends one small
/// message and waits for it (so every connection is live and known to the
/// controller), then holds them all and reads the server's resident memory.
pub async fn idle(server: &ServerProcess, spec: &IdleSpec) -> anyhow::Result<IdleResult> {
    // Warm up first so one-time costs (first event, thread-local caches)
    // are not counted per connection.
    let warm = open_idle(server.addr, 100, 10).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = settled_rss(server).await?;
    let start = Instant::now();
    let held = open_idle(server.addr, spec.connections, spec.concurrency).await?;
    let open_time = start.elapsed();
    let rss_after = settled_rss(server).await?;
    drop(held);
    Ok(IdleResult {
        connections: spec.connections,
        rss_before,
        rss_after,
        open_time,
    })
}

/// Reads the server's RSS until two readings 250 ms apart agree within
/// 64 KiB (or for at most 5 s).
async fn settled_rss(server: &ServerProcess) -> anyhow::Result<u64> {
    let mut last = server.resident_bytes()?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = server.resident_bytes()?;
        if now.abs_diff(last) < 64 << 10 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// Opens `count` connections to `/echo`, `concurrency` at a time, with one
/// small echo each, and returns them.
pub async fn open_idle(
    addr: SocketAddr,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Ws>> {
    let next = Arc::new(AtomicUsize::new(0));
    let openers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let next = next.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let mut ws = connect(addr, "/echo", 4096).await?;
                    ws.send(Message::Binary(Bytes::from_static(b"hi"))).await?;
                    next_data(&mut ws).await?;
                    mine.push(ws);
                }
                anyhow::Ok(mine)
            })
        })
        .collect();
    let mut held = Vec::with_capacity(count);
    for opener in openers {
        held.extend(opener.await??);
    }
    Ok(held)
}
