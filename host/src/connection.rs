//! One WebSocket connection after the upgrade: its outbound queue and the
//! task that serves it.
//!
//! One task per connection does everything: it reads frames, submits each
//! event to the controller instance (running it right there when the
//! instance is free, queueing it for the instance's drainer when busy), and
//! writes what is queued for the connection. Frames leave through a
//! [`ConnHandle`]: the controller (and the host functions it calls) push
//! them onto a bounded queue without ever waiting, and the task feeds them
//! to the socket, flushing once per batch. Writing goes on while the
//! connection's events wait in the instance's queue, so a busy route never
//! stalls its own deliveries; it pauses only while the task runs its own
//! event, so one event may queue at most the outbound limits for its own
//! connection. A queue that fills up marks a slow consumer: the connection
//! is closed with 1008 instead of growing. However the connection ends,
//! [`run`] submits exactly one [`Event::Close`], after which nothing of the
//! connection is left.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::deflate::{self, Deflate};
use crate::instance::{ControllerHandle, Event};
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

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection is closing or closed.
    Closed,
    /// The queue is full; the connection is now being closed with 1008.
    SlowConsumer,
}

/// What waits in a connection's queue.
enum Outgoing {
    /// A data or ping frame, encoded.
    Frame(Frame),
    /// Our close frame: the last thing written.
    Close(CloseFrame),
}

/// What waits to be written, with its payload size. Allocated on first use
/// and given back when drained after a burst, so an idle connection holds
/// no queue memory.
#[derive(Default)]
struct Queue {
    frames: VecDeque<Outgoing>,
    bytes: usize,
    /// The writer is gone: nothing queued from now on would be written.
    done: bool,
}

/// Queue capacity kept after draining; a larger one is given back.
const KEEP_QUEUE_CAPACITY: usize = 8;

/// The sending side of a connection, shared by its task, its controller
/// and the host functions. Every method returns at once.
pub struct ConnHandle {
    id: u64,
    /// A std mutex: held only to push or pop, never across an await.
    queue: Mutex<Queue>,
    /// Wakes the connection's task when frames are queued or closing starts.
    waker: AtomicWaker,
    /// `queue` holds something: set and cleared under its lock, read
    /// without it, so the writer takes the lock only when there is work.
    queued: AtomicBool,
    max_queued_messages: usize,
    max_queued_bytes: usize,
    /// Set once a close has been queued or forced; later sends are refused.
    closing: AtomicBool,
    /// The close frame to send at once, dropping what is queued. A std
    /// mutex: held only to store or take the frame, never across an await.
    kill_frame: Mutex<Option<CloseFrame>>,
    /// Set with `kill_frame`, so the task checks it without the lock.
    killed: AtomicBool,
    /// Events of this connection queued for its busy controller.
    events: AtomicUsize,
    /// The connection's task is running one of its own events, and polls
    /// its queue right after: a frame queued meanwhile need not wake it.
    in_turn: AtomicBool,
    /// permessage-deflate, when agreed: a broadcast hands this connection
    /// its shared compressed frame.
    deflate: Option<Deflate>,
}

/// Why [`ConnHandle::enqueue`] refused.
enum EnqueueError {
    Full,
    Done,
}

impl ConnHandle {
    pub(crate) fn new(
        id: u64,
        limits: &crate::config::Limits,
        deflate: Option<Deflate>,
    ) -> ConnHandle {
        ConnHandle {
            id,
            queue: Mutex::new(Queue::default()),
            waker: AtomicWaker::new(),
            queued: AtomicBool::new(false),
            max_queued_messages: limits.outbound_queue_messages,
            max_queued_bytes: limits.outbound_queue_bytes,
            closing: AtomicBool::new(false),
            kill_frame: Mutex::new(None),
            killed: AtomicBool::new(false),
            events: AtomicUsize::new(0),
            in_turn: AtomicBool::new(false),
            deflate,
        }
    }

    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Events of this connection waiting for its controller.
    pub fn events_waiting(&self) -> usize {
        self.events.load(Ordering::Acquire)
    }

    /// An event of this connection was queued for its controller (see
    /// `instance::Ticket`).
    pub fn event_queued(&self) {
        self.events.fetch_add(1, Ordering::AcqRel);
    }

    /// A queued event has run; wakes the connection's task, which may read
    /// again.
    pub fn event_done(&self) {
        self.events.fetch_sub(1, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Wakes `waker` when frames are queued, closing starts or a queued
    /// event has run (for a probe, which has no connection task).
    pub(crate) fn register_waker(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// Whether frames wait in the queue (a hint: read without the lock).
    fn has_queued(&self) -> bool {
        self.queued.load(Ordering::Acquire)
    }

    /// Whether the connection has started closing.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().expect("outbound queue lock")
    }

    /// Appends `out` (of `len` payload bytes) if the limits allow, and
    /// wakes the connection's task.
    fn enqueue(&self, out: Outgoing, len: usize) -> Result<(), EnqueueError> {
        let mut queue = self.queue();
        if queue.done {
            return Err(EnqueueError::Done);
        }
        if queue.frames.len() >= self.max_queued_messages
            || queue.bytes + len > self.max_queued_bytes
        {
            return Err(EnqueueError::Full);
        }
        // A close always wakes the task: it must start the peer's close
        // deadline even while its writer waits on a full socket.
        let quiet = !queue.frames.is_empty() && matches!(out, Outgoing::Frame(_));
        queue.frames.push_back(out);
        queue.bytes += len;
        if quiet {
            // The frame before this one already set `queued` and woke the
            // task (or found it in its turn), and the task comes back for
            // whatever it leaves queued (a full batch wakes it again, a full
            // socket when it drains): a broadcast touches no more of this
            // connection than its queue.
            return Ok(());
        }
        self.queued.store(true, Ordering::SeqCst);
        drop(queue);
        // Waking the task from within its own turn would only poll it once
        // more for nothing: it looks at the queue right after. Here we set
        // `queued` and then read `in_turn`; the task clears `in_turn` and
        // then reads `queued` (without the lock). All four in one order
        // (SeqCst), at least one side sees the other's store: either the
        // task finds this frame, or this sees the turn over and wakes it.
        // (Release and Acquire alone would let both read the old values.)
        if !self.in_turn.load(Ordering::SeqCst) {
            self.waker.wake();
        }
        Ok(())
    }

    /// Moves queued frames into `batch` until it holds `max`; returns our
    /// close frame when it comes next (nothing is queued after it). One
    /// lock for the lot, none when the queue is empty.
    pub(crate) fn dequeue_into(&self, batch: &mut Vec<Frame>, max: usize) -> Option<CloseFrame> {
        // SeqCst: see `enqueue`.
        if !self.queued.load(Ordering::SeqCst) {
            return None;
        }
        let mut queue = self.queue();
        let mut close = None;
        batch.reserve(queue.frames.len().min(max.saturating_sub(batch.len())));
        while batch.len() < max {
            match queue.frames.pop_front() {
                Some(Outgoing::Frame(frame)) => {
                    queue.bytes -= frame.len();
                    batch.push(frame);
                }
                Some(Outgoing::Close(frame)) => {
                    close = Some(frame);
                    break;
                }
                None => break,
            }
        }
        if queue.frames.is_empty() {
            self.queued.store(false, Ordering::Release);
            if queue.frames.capacity() > KEEP_QUEUE_CAPACITY {
                queue.frames = VecDeque::new();
            }
        }
        close
    }

    /// Drops what is queued, for a close that goes first.
    pub(crate) fn clear(&self) {
        let mut queue = self.queue();
        queue.frames = VecDeque::new();
        queue.bytes = 0;
        self.queued.store(false, Ordering::Release);
    }

    /// The writer is gone: drop what is queued and refuse the rest.
    fn finish(&self) {
        let mut queue = self.queue();
        queue.done = true;
        queue.frames = VecDeque::new();
        queue.bytes = 0;
        self.queued.store(false, Ordering::Release);
    }

    /// Queues `frame`, one of many recipients' (a broadcast, a publish): a
    /// connection that agreed on compression gets the compressed frame
    /// `shared` makes once for all of them, when it can share it; the
    /// others get the plain frame (and compress it themselves if they keep
    /// their own context).
    pub fn push_shared(
        &self,
        frame: &Frame,
        shared: &mut deflate::Shared<'_>,
    ) -> Result<(), PushError> {
        match self.deflate.as_ref().and_then(|d| shared.compressed_for(d)) {
            Some(compressed) => self.push(frame.compressed(compressed)),
            None => self.push(frame.clone()),
        }
    }

    /// Queues a data frame. The payload is shared, not copied, so one
    /// broadcast frame is encoded once for all recipients.
    pub fn push(&self, frame: Frame) -> Result<(), PushError> {
        if self.is_closing() {
            return Err(PushError::Closed);
        }
        let len = frame.len();
        match self.enqueue(Outgoing::Frame(frame), len) {
            Ok(()) => Ok(()),
            Err(EnqueueError::Full) => {
                self.force_close(CloseCode::Policy, "slow consumer");
                Err(PushError::SlowConsumer)
            }
            Err(EnqueueError::Done) => Err(PushError::Closed),
        }
    }

    /// Closes the connection after what is already queued. Fails when it is
    /// already closing.
    pub fn close(&self, code: u16, reason: &str) -> Result<(), PushError> {
        if self.closing.swap(true, Ordering::AcqRel) {
            return Err(PushError::Closed);
        }
        let frame = close_frame(CloseCode::from(code), reason);
        match self.enqueue(Outgoing::Close(frame.clone()), 0) {
            Ok(()) => Ok(()),
            Err(EnqueueError::Full) => {
                // No room behind the queued frames: close at once instead.
                self.kill_with(frame);
                Ok(())
            }
            Err(EnqueueError::Done) => Err(PushError::Closed),
        }
    }

    /// Drops whatever is queued and closes with `code` as soon as possible.
    pub fn force_close(&self, code: CloseCode, reason: &str) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        warn!(
            conn = self.id,
            code = u16::from(code),
            reason,
            "closing connection"
        );
        self.kill_with(close_frame(code, reason));
    }

    fn kill_with(&self, frame: CloseFrame) {
        *self.kill_frame.lock().expect("kill frame lock") = Some(frame);
        self.killed.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(crate) fn take_kill(&self) -> Option<CloseFrame> {
        if !self.killed.load(Ordering::Acquire) {
            return None;
        }
        self.kill_frame.lock().expect("kill frame lock").take()
    }
}

/// Builds a close frame, cutting the reason to the 123 bytes a control frame
/// allows, at a character boundary.
pub fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }
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
enum Step {
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
    handle.waker.register(cx.waker());
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
    controller: &'a Arc<ControllerHandle>,
    event: Event,
    handle: &'a Arc<ConnHandle>,
) -> impl Future<Output = ()> + Send + 'a {
    handle.in_turn.store(true, Ordering::Release);
    let turn = controller.submit(event, handle);
    async move {
        if let Some(turn) = turn {
            turn.await;
        }
        // SeqCst: see `ConnHandle::enqueue`.
        handle.in_turn.store(false, Ordering::SeqCst);
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
    controller: Arc<ControllerHandle>,
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
                    return Poll::Ready(Step::CloseDeadline);
                }
                let open = !handle.is_closing();
                if open && (!watching_shutdown || shutdown.has_started()) {
                    watching_shutdown = true;
                    if shutdown_started.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Step::Shutdown);
                    }
                }
                if open
                    && let Some(at) = &mut expiry
                    && at.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Step::Expired);
                }
                if open
                    && keepalive.is_on()
                    && let Poll::Ready(due) = keepalive.poll_due(cx)
                {
                    return Poll::Ready(Step::Due(due));
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
                .map(Step::Io)
            })
            .await;
            match step {
                Step::Io(io) => match io {
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
                Step::Due(Due::Ping) => {
                    let _ = handle.push(Frame::ping());
                }
                Step::Due(Due::IdleClose) => {
                    if handle.events_waiting() > 0 {
                        // Reading is paused for the controller: the client
                        // is not idle, the controller is behind.
                        keepalive.received();
                    } else {
                        debug!(route = %route, conn = id, "idle timeout");
                        let _ = handle.close(1001, "idle timeout");
                    }
                }
                Step::Expired => {
                    expiry = None;
                    debug!(route = %route, conn = id, "token expired");
                    let _ = handle.close(1008, "token expired");
                }
                Step::CloseDeadline => break,
                Step::Shutdown => {
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
            handle.waker.register(cx.waker());
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
