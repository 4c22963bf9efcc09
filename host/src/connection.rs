//! One WebSocket connection after the upgrade: its outbound queue and the
//! task that serves it.
//!
//! One task per connection does everything: it reads frames, submits each
//! event to the controller instance (running it right there when the
//! instance is free, queueing it for the instance's drainer when busy), and
//! writes what is queued for the connection. Frames leave through a
//! [`ConnHandle`] (see [`crate::outbound`]): the controller (and the host
//! functions it calls) push them onto a bounded queue without ever waiting,
//! and the task feeds them to the socket, flushing once per batch. Writing goes on while the
//! connection's events wait in the instance's queue, so a busy route never
//! stalls its own deliveries; it pauses only while the task runs its own
//! event, so one event may queue at most the outbound limits for its own
//! connection. A queue that fills up marks a slow consumer: the connection
//! is closed with 1008 instead of growing. However the connection ends,
//! [`run`] submits exactly one [`Event::Close`], after which nothing of the
//! connection is left.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::deflate::Deflate;
use crate::instance::{ControllerInstance, Event};
use crate::outbound::ConnHandle;
use crate::reader::{ReadError, Reader};
use crate::writer::{Frame, Writer, WriterExit};

/// Events of one connection that may wait for its busy controller before
/// the connection's task stops reading (back-pressure to the client).
const MAX_EVENTS_WAITING: usize = 4;

/// Close code for an abnormal closure (no close frame); never sent on the wire.
pub const CLOSE_ABNORMAL: u16 = 1006;
/// Close code when the peer's close frame carried no code.
pub const CLOSE_NO_STATUS: u16 = 1005;

/// What the host knows about a connection from its upgrade request.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Unique for the life of the process.
    pub id: u64,
    /// The route name the connection matched.
    pub route: Arc<str>,
    /// The request path, without the query.
    pub path: String,
    /// Route captures, decoded.
    pub params: Vec<(String, String)>,
    /// Query pairs, decoded.
    pub query: Vec<(String, String)>,
    /// The authenticated subject, if any.
    pub user: Option<String>,
    /// The subject's roles.
    pub roles: Vec<String>,
    /// When to close the connection because its token expired
    /// (`auth.close_on_expiry`).
    pub expires_at: Option<std::time::SystemTime>,
    /// The client's address, for logs.
    pub peer: std::net::SocketAddr,
    /// permessage-deflate, when the client and the route agreed on it.
    pub deflate: Option<Deflate>,
}

/// The server's shutdown, as the connections' tasks watch it. A task looks
/// at it on every wake-up, so that look is one atomic load: polling the
/// token's wait there would take two locks shared by every connection.
#[derive(Clone, Default)]
pub struct Shutdown {
    started: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Shutdown {
    /// Tells every connection (and every handshake) to close.
    pub fn start(&self) {
        self.started.store(true, Ordering::Release);
        self.token.cancel();
    }

    /// Resolves once the shutdown has started.
    pub async fn started(&self) {
        self.token.cancelled().await
    }

    fn has_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

/// The code and reason of a close frame, as `on-close` reports them.
fn code_and_reason(frame: &CloseFrame) -> (u16, String) {
    (u16::from(frame.code), frame.reason.to_string())
}

/// What woke the connection's task.
enum Wake {
    Io(Io),
    Due(Due),
    Expired,
    CloseDeadline,
    Shutdown,
}

/// What the connection's socket and queue have for its task.
enum Io {
    /// A frame from the peer, an error, or the end of the stream.
    Read(Option<Result<WsMessage, ReadError>>),
    /// The write side ended.
    Wrote(WriterExit),
    /// Closing started (the controller, the idle timeout, the token's
    /// expiry, the shutdown, a slow consumer).
    ClosingStarted,
}

/// Server pings and the idle timeout of one connection. Every frame
/// received counts as a sign of life; one timer per connection checks, a few
/// times per interval, whether a ping or the idle close is due.
struct Keepalive {
    ping: Option<Duration>,
    idle: Option<Duration>,
    check: tokio::time::Interval,
    last_received: Instant,
    last_ping: Instant,
}

/// What a keepalive check found due.
enum Due {
    Ping,
    IdleClose,
}

impl Keepalive {
    fn new(limits: &crate::config::Limits) -> Keepalive {
        let (ping, idle) = (limits.ping_interval(), limits.idle_timeout());
        // Checks at half the shorter period: a ping goes out at most half an
        // interval late, an idle client is closed at most that much late.
        let period = match (ping, idle) {
            (Some(p), Some(i)) => p.min(i) / 2,
            (Some(d), None) | (None, Some(d)) => d / 2,
            (None, None) => Duration::from_secs(3600),
        }
        .max(Duration::from_millis(1));
        let now = Instant::now();
        let mut check = tokio::time::interval_at(now + period, period);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Keepalive {
            ping,
            idle,
            check,
            last_received: now,
            last_ping: now,
        }
    }

    fn is_on(&self) -> bool {
        self.ping.is_some() || self.idle.is_some()
    }

    fn received(&mut self) {
        self.last_received = Instant::now();
    }

    /// Ready at the next check at which something is due.
    fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<Due> {
        loop {
            let now = std::task::ready!(self.check.poll_tick(cx));
            let quiet = now.saturating_duration_since(self.last_received);
            if self.idle.is_some_and(|idle| quiet >= idle) {
                return Poll::Ready(Due::IdleClose);
            }
            if let Some(ping) = self.ping
                && quiet >= ping
                && now.saturating_duration_since(self.last_ping) >= ping
            {
                self.last_ping = now;
                return Poll::Ready(Due::Ping);
            }
        }
    }
}

/// Polls the socket and the queue once: writes what is queued, and reads
/// the next frame when `reading` allows.
fn poll_io(
    tcp: &mut TcpStream,
    reader: &mut Reader,
    handle: &ConnHandle,
    writer: &mut Writer,
    reading: bool,
    closing_seen: bool,
    cx: &mut Context<'_>,
) -> Poll<Io> {
    // Whoever queues a frame or starts closing wakes this task.
    handle.register_waker(cx.waker());
    if !closing_seen && handle.is_closing() {
        return Poll::Ready(Io::ClosingStarted);
    }
    // Frames were waiting: this wake-up is most likely for writing.
    let to_write = handle.has_queued();
    if !writer.is_done()
        && let Poll::Ready(exit) = writer.poll(tcp, handle, cx)
    {
        return Poll::Ready(Io::Wrote(exit));
    }
    // Reading pauses while the controller has enough of this connection's
    // events to run; `event_done` wakes the task.
    if !reading || handle.events_waiting() >= MAX_EVENTS_WAITING {
        return Poll::Pending;
    }
    // Most wake-ups of a busy route's connections are for writing: after a
    // wake-up that found frames to write, read only when bytes already read
    // wait to be parsed or the socket reports data (tokio forgets the
    // socket's readiness after a short read, so a drained socket reports
    // none). A wake-up that found nothing to write was most likely for
    // reading: read at once, without asking the socket first.
    if (reader.has_pending() || !to_write || tcp.poll_read_ready(cx).is_ready())
        && let Poll::Ready(frame) = reader.poll_next(tcp, cx)
    {
        return Poll::Ready(Io::Read(frame));
    }
    Poll::Pending
}

/// A lingering close (as nginx does it): our close frame is written, but
/// the peer may still be sending (the rest of a message too large, a flood
/// after a protocol error). Dropping the socket with unread input makes the
/// kernel answer with a reset, and a peer that gets one before it has read
/// our close frame throws the frame away and sees 1006 instead of our code.
/// So: tell the peer we are done writing, and read and discard what it sends
/// until it closes its side, up to `max_bytes` and `deadline`; then the
/// socket is dropped.
async fn linger(mut tcp: TcpStream, mut reader: Reader, deadline: Instant, max_bytes: usize) {
    use tokio::io::AsyncWriteExt as _;
    if tcp.shutdown().await.is_err() {
        return;
    }
    let mut discarded = 0;
    let drained = tokio::time::timeout_at(deadline, async {
        while discarded < max_bytes {
            match std::future::poll_fn(|cx| reader.poll_discard(&mut tcp, cx)).await {
                Ok(0) | Err(_) => return true,
                Ok(read) => discarded += read,
            }
        }
        false
    })
    .await;
    debug!(
        discarded,
        drained = drained == Ok(true),
        "lingering close done"
    );
}

/// Sets the close deadline `timeout` from now.
fn arm(deadline: &mut Option<Pin<Box<Sleep>>>, timeout: Duration) {
    let at = Instant::now() + timeout;
    match deadline {
        Some(sleep) => sleep.as_mut().reset(at),
        None => *deadline = Some(Box::pin(tokio::time::sleep_until(at))),
    }
}

/// Submits one of the connection's events from the connection's task.
/// While the task runs the event itself, what the event queues for this
/// connection does not wake the task: the loop writes it right after. (Only
/// a runtime teardown cancels this midway, and the task is gone then.) A
/// plain function: the event moves on before the first await, so the
/// connection's future does not keep room for it.
fn submit<'a>(
    controller: &'a Arc<ControllerInstance>,
    event: Event,
    handle: &'a Arc<ConnHandle>,
) -> impl Future<Output = ()> + Send + 'a {
    handle.begin_turn();
    let turn = controller.submit(event, handle);
    async move {
        if let Some(turn) = turn {
            turn.await;
        }
        handle.end_turn();
    }
}

/// Serves one upgraded connection until it ends, then runs its `on-close`;
/// `keep` is dropped after that. A plain function returning an `async`
/// block, not an `async fn`: its arguments then live once in the future,
/// not twice, and every idle connection carries that future.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would copy its arguments into the future a second time"
)]
#[allow(
    clippy::too_many_arguments,
    reason = "each is moved into the connection's future once"
)]
pub fn run(
    mut tcp: TcpStream,
    mut reader: Reader,
    info: Arc<ConnectionInfo>,
    controller: Arc<ControllerInstance>,
    config: Arc<crate::config::Config>,
    shutdown: Shutdown,
    keep: impl Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let limits = &config.limits;
        let id = info.id;
        let route = info.route.clone();
        let expires_at = info.expires_at;
        let deflate = info.deflate;
        let handle = Arc::new(ConnHandle::new(id, limits, deflate));
        let close_timeout = limits.close_timeout();
        info!(route = %route, conn = id, peer = %info.peer, path = %info.path, "connection opened");

        submit(
            &controller,
            Event::Open {
                info,
                handle: handle.clone(),
            },
            &handle,
        )
        .await;

        // The close that on-close reports: whichever side closed first.
        let mut first_close: Option<(u16, String)> = None;
        let mut reading = true;
        // The peer sends nothing more: its close frame or the end of its
        // stream has been read, or the socket failed. Until then, ending the
        // connection after our close frame needs a lingering close.
        let mut peer_done = false;
        let mut writer = Writer::new(deflate);
        // The peer's deadline to finish closing, set once closing starts.
        // Boxed and made only then: an open connection carries no timer.
        let mut close_deadline: Option<Pin<Box<Sleep>>> = None;
        let mut keepalive = Keepalive::new(limits);
        // The token's expiry, when it has one to enforce.
        let mut expiry: Option<Pin<Box<Sleep>>> = expires_at.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Box::pin(tokio::time::sleep(left))
        });
        // Polled once to join the token's waiter list, which wakes this task
        // when the shutdown starts; after that only when the flag says so.
        let shutdown_started = shutdown.token.cancelled();
        tokio::pin!(shutdown_started);
        let mut watching_shutdown = false;
        loop {
            // One poll of everything this task waits for, in a fixed order:
            // the timers first (cheap while pending, and a peer that keeps
            // sending cannot hold off the close deadline), then the socket.
            let step = std::future::poll_fn(|cx| {
                if let Some(deadline) = &mut close_deadline
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Wake::CloseDeadline);
                }
                let open = !handle.is_closing();
                if open && (!watching_shutdown || shutdown.has_started()) {
                    watching_shutdown = true;
                    if shutdown_started.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Shutdown);
                    }
                }
                if open
                    && let Some(at) = &mut expiry
                    && at.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Wake::Expired);
                }
                if open
                    && keepalive.is_on()
                    && let Poll::Ready(due) = keepalive.poll_due(cx)
                {
                    return Poll::Ready(Wake::Due(due));
                }
                let closing = close_deadline.is_some();
                poll_io(
                    &mut tcp,
                    &mut reader,
                    &handle,
                    &mut writer,
                    reading,
                    closing,
                    cx,
                )
                .map(Wake::Io)
            })
            .await;
            match step {
                Wake::Io(io) => match io {
                    Io::Read(frame) => {
                        keepalive.received();
                        match frame {
                            Some(Ok(msg @ (WsMessage::Text(_) | WsMessage::Binary(_)))) => {
                                if !handle.is_closing() {
                                    submit(&controller, Event::Message { id, msg }, &handle).await;
                                }
                            }
                            Some(Ok(WsMessage::Close(frame))) => {
                                first_close.get_or_insert_with(|| match &frame {
                                    Some(frame) => code_and_reason(frame),
                                    None => (CLOSE_NO_STATUS, String::new()),
                                });
                                reading = false;
                                peer_done = true;
                                // Nothing is sent after a close frame: the
                                // queued frames are dropped.
                                handle.finish();
                                if writer.close_sent() {
                                    // The answer to ours: the handshake is
                                    // complete once ours is written (then
                                    // the loop ends, as reading is over).
                                    if writer.is_done() {
                                        break;
                                    }
                                } else {
                                    // Answered with the same frame once a
                                    // frame half-written is finished; then
                                    // the connection ends.
                                    writer.answer_close(frame.as_ref());
                                }
                                arm(&mut close_deadline, close_timeout);
                            }
                            // Pings are answered in turn with the queued
                            // frames (not once closing has started); pongs
                            // only prove life.
                            Some(Ok(WsMessage::Ping(payload))) => {
                                let _ = handle.push(Frame::pong(payload));
                            }
                            Some(Ok(_)) => {}
                            Some(Err(err)) => {
                                reading = false;
                                match err.close() {
                                    Some((code, message)) => {
                                        warn!(route = %route, conn = id, code, error = %message, "client error");
                                        first_close.get_or_insert_with(|| (code, message.clone()));
                                        // The controller replies, then queues
                                        // the close; the close deadline starts
                                        // then (closing started), not while
                                        // the event waits for a busy instance.
                                        submit(
                                            &controller,
                                            Event::Error { id, code, message },
                                            &handle,
                                        )
                                        .await;
                                    }
                                    None => {
                                        debug!(route = %route, conn = id, error = %err, "connection dropped");
                                        peer_done = true;
                                        break;
                                    }
                                }
                            }
                            None => {
                                peer_done = true;
                                break;
                            }
                        }
                    }
                    Io::Wrote(exit) => match exit {
                        WriterExit::Closed(frame) => {
                            first_close.get_or_insert_with(|| code_and_reason(&frame));
                            if !reading {
                                break;
                            }
                            arm(&mut close_deadline, close_timeout);
                        }
                        WriterExit::Killed(frame) => {
                            first_close.get_or_insert_with(|| code_and_reason(&frame));
                            break;
                        }
                        WriterExit::Answered => break,
                        WriterExit::Failed => {
                            peer_done = true;
                            break;
                        }
                    },
                    // However closing started, the peer gets the close timeout
                    // to finish it, even if it stopped reading and writing.
                    Io::ClosingStarted => {
                        arm(&mut close_deadline, close_timeout);
                    }
                },
                Wake::Due(Due::Ping) => {
                    let _ = handle.push(Frame::ping());
                }
                Wake::Due(Due::IdleClose) => {
                    if handle.events_waiting() > 0 {
                        // Reading is paused for the controller: the client
                        // is not idle, the controller is behind.
                        keepalive.received();
                    } else {
                        debug!(route = %route, conn = id, "idle timeout");
                        let _ = handle.close(1001, "idle timeout");
                    }
                }
                Wake::Expired => {
                    expiry = None;
                    debug!(route = %route, conn = id, "token expired");
                    let _ = handle.close(1008, "token expired");
                }
                Wake::CloseDeadline => break,
                Wake::Shutdown => {
                    let _ = handle.close(1001, "server shutting down");
                }
            }
        }
        handle.finish();
        let (code, reason) = first_close.unwrap_or((CLOSE_ABNORMAL, String::new()));
        info!(route = %route, conn = id, code, reason = %reason, "connection closed");
        // Events still queued run first; then on-close, and this returns once it
        // has run, so that whoever drops the instance after this (the lease)
        // never overlaps it with its successor.
        submit(&controller, Event::Close { id, code, reason }, &handle).await;
        std::future::poll_fn(|cx| {
            handle.register_waker(cx.waker());
            if handle.events_waiting() == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        if writer.close_sent() && !peer_done && limits.close_linger_bytes > 0 {
            // Boxed: only a connection that lingers pays for its future.
            let deadline = close_deadline
                .take()
                .map_or_else(|| Instant::now() + close_timeout, |sleep| sleep.deadline());
            Box::pin(linger(tcp, reader, deadline, limits.close_linger_bytes)).await;
        }
        drop(keep);
    }
}
