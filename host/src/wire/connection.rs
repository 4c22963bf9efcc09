//! One WebSocket connection after the upgrade: a [`Connection`] and the
//! task that serves it.
//!
//! One task per connection does everything: it reads frames, submits each
//! event to the connection's [`EventSink`] (the controller instance, which
//! runs the event right there when it is free and queues it when busy), and
//! writes what is queued for the connection. Frames leave through a
//! [`ConnHandle`] (see [`crate::wire::outbound`]): the controller (and the
//! host functions it calls) push them onto a bounded queue without ever
//! waiting, and the task feeds them to the socket, flushing once per batch.
//! Writing goes on while the connection's events wait for a busy
//! controller, so a busy route never stalls its own deliveries; it pauses
//! only while the task runs its own event, so one event may queue at most
//! the outbound limits for its own connection. A queue that fills up marks
//! a slow consumer: the connection is closed with 1008 instead of growing.
//!
//! The task's loop waits for one [`Wake`] (a frame read, a batch written,
//! a close asked for, a timer) and hands it to one method of
//! [`Connection`]; the closing handshake is one state machine
//! ([`Closing`]) that only this task changes. However the connection ends,
//! exactly one [`Event::Close`] is submitted, after which nothing of the
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

use crate::config::Config;
use crate::wire::frame::Frame;
use crate::wire::keepalive::{Due, Keepalive};
use crate::wire::outbound::ConnHandle;
use crate::wire::reader::{ReadError, Reader};
use crate::wire::writer::{Writer, WriterExit};
use crate::wire::{CLOSE_ABNORMAL, CLOSE_NO_STATUS, ConnectionInfo, Event, EventSink};

/// Events of one connection that may wait for its busy controller before
/// the connection's task stops reading (back-pressure to the client).
const MAX_EVENTS_WAITING: usize = 4;

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

/// Where the closing handshake (RFC 6455 §7) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Neither side has started closing.
    Open,
    /// A close of ours was asked for (by the controller, the idle timeout,
    /// the token's expiry, the shutdown, a slow consumer) and goes out
    /// after the queued frames; reading goes on until the peer answers.
    Requested,
    /// Our close frame is written; the peer's answer is awaited.
    Sent,
    /// The peer broke the protocol: nothing more is read. Its `on-error`
    /// runs, and the close that follows ends the connection once written.
    Broken,
    /// The peer's close frame arrived: the close frame on its way (our
    /// answer, or ours if it had left the queue already) ends the
    /// connection once written.
    Answering,
    /// Over. `linger`: a close frame of ours went out while the peer may
    /// still be sending, so the socket needs a lingering close.
    Over { linger: bool },
}

/// The closing handshake of one connection, changed only by its task.
/// Other tasks *ask* for a close through the [`ConnHandle`] (a close queued
/// after the frames, or a kill that goes first), and the writer only
/// reports which close frame it has written; what the connection does next
/// is decided here.
struct Closing {
    phase: Phase,
    /// The close that `on-close` reports: whichever side's came first.
    first: Option<(u16, String)>,
    /// The peer's deadline to finish closing, set once closing starts.
    /// Boxed and made only then: an open connection carries no timer.
    deadline: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
}

impl Closing {
    fn new(timeout: Duration) -> Closing {
        Closing {
            phase: Phase::Open,
            first: None,
            deadline: None,
            timeout,
        }
    }

    fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Over { .. })
    }

    /// Whether frames from the peer are still read.
    fn reading(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::Requested | Phase::Sent)
    }

    /// Whether the peer's deadline runs (closing started on either side).
    fn started(&self) -> bool {
        self.deadline.is_some()
    }

    /// Whether the connection ended with a lingering close to do.
    fn lingers(&self) -> bool {
        matches!(self.phase, Phase::Over { linger: true })
    }

    fn record(&mut self, code: u16, reason: impl FnOnce() -> String) {
        self.first.get_or_insert_with(|| (code, reason()));
    }

    /// Gives the peer the close timeout from now to finish closing.
    fn arm(&mut self) {
        let at = Instant::now() + self.timeout;
        match &mut self.deadline {
            Some(sleep) => sleep.as_mut().reset(at),
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// A close was asked for through the handle. However it was asked
    /// for, the peer gets the close timeout to finish closing, even if it
    /// stopped reading and writing.
    fn requested(&mut self) {
        if self.phase == Phase::Open {
            self.phase = Phase::Requested;
        }
        self.arm();
    }

    /// The peer's close frame arrived; `ours_taken` says whether a close
    /// frame of ours has left the queue already. Returns whether the peer's
    /// close must be answered.
    fn peer_closed(&mut self, frame: Option<&CloseFrame>, ours_taken: bool) -> bool {
        self.record(
            frame.map_or(CLOSE_NO_STATUS, |frame| u16::from(frame.code)),
            || {
                frame
                    .map(|frame| frame.reason.to_string())
                    .unwrap_or_default()
            },
        );
        match self.phase {
            // The answer to ours: the handshake is complete.
            Phase::Sent => {
                self.phase = Phase::Over { linger: false };
                false
            }
            Phase::Open | Phase::Requested => {
                self.phase = Phase::Answering;
                self.arm();
                !ours_taken
            }
            // Nothing is read in the other phases.
            _ => false,
        }
    }

    /// The peer broke the protocol; our close with `code` follows.
    fn peer_failed(&mut self, code: u16, message: &str) {
        self.record(code, || message.to_owned());
        self.phase = match self.phase {
            Phase::Sent => Phase::Over { linger: true },
            _ => Phase::Broken,
        };
    }

    /// The peer's stream ended or the socket failed.
    fn peer_gone(&mut self) {
        self.phase = Phase::Over { linger: false };
    }

    /// The writer ended.
    fn written(&mut self, exit: WriterExit) {
        let phase = match exit {
            WriterExit::Closed(frame) => {
                self.record(u16::from(frame.code), || frame.reason.to_string());
                match self.phase {
                    Phase::Broken => Phase::Over { linger: true },
                    Phase::Answering => Phase::Over { linger: false },
                    _ => {
                        // The peer has the close timeout from now to answer.
                        self.arm();
                        Phase::Sent
                    }
                }
            }
            WriterExit::Killed(frame) => {
                self.record(u16::from(frame.code), || frame.reason.to_string());
                Phase::Over { linger: true }
            }
            WriterExit::Answered | WriterExit::Failed => Phase::Over { linger: false },
        };
        self.phase = phase;
    }

    /// The peer's deadline passed; `ours_taken` as for
    /// [`peer_closed`](Closing::peer_closed).
    fn timed_out(&mut self, ours_taken: bool) {
        let linger = ours_taken && self.phase != Phase::Answering;
        self.phase = Phase::Over { linger };
    }
}

/// What woke the connection's task.
enum Wake {
    /// A frame from the peer, an error, or the end of the stream.
    Read(Option<Result<WsMessage, ReadError>>),
    /// The write side ended.
    Wrote(WriterExit),
    /// A close was asked for through the handle.
    CloseRequested,
    /// A ping or the idle close is due.
    Due(Due),
    /// The token expired.
    Expired,
    /// The peer did not finish closing in time.
    CloseDeadline,
    /// The server is shutting down.
    Shutdown,
}

/// One upgraded connection, owned by its task.
pub struct Connection<C> {
    tcp: TcpStream,
    reader: Reader,
    writer: Writer,
    /// Where anyone (the controller, host functions, broadcasts) queues
    /// frames for the peer or asks to close.
    handle: Arc<ConnHandle>,
    /// Where the connection's events go.
    controller: C,
    /// The route's name, for logs.
    route: Arc<str>,
    config: Arc<Config>,
    keepalive: Keepalive,
    /// The token's expiry, when it has one to enforce.
    expiry: Option<Pin<Box<Sleep>>>,
    closing: Closing,
}

impl<C: EventSink> Connection<C> {
    /// A connection over `tcp`, upgraded as `info` says, whose events go
    /// to `controller`. `reader` holds what was read past the upgrade.
    pub fn new(
        tcp: TcpStream,
        reader: Reader,
        info: &ConnectionInfo,
        controller: C,
        config: Arc<Config>,
    ) -> Connection<C> {
        let limits = &config.limits;
        let expiry = info.expires_at.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Box::pin(tokio::time::sleep(left))
        });
        Connection {
            tcp,
            reader,
            writer: Writer::new(info.deflate),
            handle: Arc::new(ConnHandle::new(
                info.id,
                limits,
                info.deflate,
                info.metrics.clone(),
            )),
            controller,
            route: info.route.clone(),
            keepalive: Keepalive::new(limits),
            expiry,
            closing: Closing::new(limits.close_timeout()),
            config,
        }
    }

    /// Serves the connection until it ends, then runs its `on-close`;
    /// `keep` is dropped after that. A plain function returning an `async`
    /// block, not an `async fn`: the connection then lives once in the
    /// future, not twice, and every idle connection carries that future.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would copy its arguments into the future a second time"
    )]
    pub fn run(
        mut self,
        info: Arc<ConnectionInfo>,
        shutdown: Shutdown,
        keep: impl Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let id = info.id;
            info!(route = %self.route, conn = id, peer = %info.peer, path = %info.path, "connection opened");
            self.handle.metrics().connections.inc();
            let handle = self.handle.clone();
            self.submit(Event::Open { info, handle }).await;
            // Polled once to join the token's waiter list, which wakes this
            // task when the shutdown starts; after that only when the flag
            // says so.
            let shutdown_started = shutdown.token.cancelled();
            tokio::pin!(shutdown_started);
            let mut watching_shutdown = false;
            while !self.closing.is_over() {
                let wake = std::future::poll_fn(|cx| {
                    let open = !self.handle.is_closing();
                    if open && (!watching_shutdown || shutdown.has_started()) {
                        watching_shutdown = true;
                        if shutdown_started.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Wake::Shutdown);
                        }
                    }
                    self.poll_wake(cx)
                })
                .await;
                let event = match wake {
                    Wake::Read(frame) => self.on_read(frame),
                    Wake::Wrote(exit) => {
                        self.closing.written(exit);
                        None
                    }
                    Wake::CloseRequested => {
                        self.closing.requested();
                        None
                    }
                    Wake::Due(due) => {
                        self.on_due(due);
                        None
                    }
                    Wake::Expired => {
                        self.expiry = None;
                        debug!(route = %self.route, conn = id, "token expired");
                        let _ = self.handle.close(1008, "token expired");
                        None
                    }
                    Wake::CloseDeadline => {
                        self.closing.timed_out(self.writer.close_taken());
                        None
                    }
                    Wake::Shutdown => {
                        let _ = self.handle.close(1001, "server shutting down");
                        None
                    }
                };
                if let Some(event) = event {
                    self.submit(event).await;
                }
            }
            self.handle.finish();
            let (code, reason) = self
                .closing
                .first
                .take()
                .unwrap_or((CLOSE_ABNORMAL, String::new()));
            info!(route = %self.route, conn = id, code, reason = %reason, "connection closed");
            self.handle.metrics().connections.dec();
            self.handle.metrics().closed(code);
            // Events still queued run first; then on-close, and this returns
            // once it has run, so that whoever drops the instance after this
            // (the lease) never overlaps it with its successor.
            self.submit(Event::Close { id, code, reason }).await;
            std::future::poll_fn(|cx| {
                self.handle.register_waker(cx.waker());
                if self.handle.events_waiting() == 0 {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            let max_bytes = self.config.limits.close_linger_bytes;
            if self.closing.lingers() && max_bytes > 0 {
                let deadline = self.closing.deadline.take().map_or_else(
                    || Instant::now() + self.closing.timeout,
                    |sleep| sleep.deadline(),
                );
                // Boxed: only a connection that lingers pays for its future.
                Box::pin(linger(self.tcp, self.reader, deadline, max_bytes)).await;
            }
            drop(keep);
        }
    }

    /// Submits one of the connection's events from the connection's task.
    /// While the task runs the event itself, what the event queues for this
    /// connection does not wake the task: the loop writes it right after.
    /// (Only a runtime teardown cancels this midway, and the task is gone
    /// then.) A plain function: the event moves on before the first await,
    /// so the connection's future does not keep room for it.
    fn submit(&self, event: Event) -> impl Future<Output = ()> + Send + '_ {
        self.handle.begin_turn();
        let turn = self.controller.submit(event, &self.handle);
        async move {
            if let Some(turn) = turn {
                turn.await;
            }
            self.handle.end_turn();
        }
    }

    /// Polls what the task waits for besides the shutdown, in a fixed
    /// order: the timers first (cheap while pending, and a peer that keeps
    /// sending cannot hold off the close deadline), then the socket and
    /// the queue.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        if let Some(deadline) = &mut self.closing.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Wake::CloseDeadline);
        }
        let open = !self.handle.is_closing();
        if open
            && let Some(at) = &mut self.expiry
            && at.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Wake::Expired);
        }
        if open
            && self.keepalive.is_on()
            && let Poll::Ready(due) = self.keepalive.poll_due(cx)
        {
            return Poll::Ready(Wake::Due(due));
        }
        self.poll_io(cx)
    }

    /// Polls the socket and the queue once: writes what is queued, and
    /// reads the next frame when reading is on.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        // Whoever queues a frame or asks to close wakes this task.
        self.handle.register_waker(cx.waker());
        if !self.closing.started() && self.handle.is_closing() {
            return Poll::Ready(Wake::CloseRequested);
        }
        // Frames were waiting: this wake-up is most likely for writing.
        let to_write = self.handle.has_queued();
        if !self.writer.is_done()
            && let Poll::Ready(exit) = self.writer.poll(&self.tcp, &self.handle, cx)
        {
            return Poll::Ready(Wake::Wrote(exit));
        }
        // Reading pauses while the controller has enough of this
        // connection's events to run; `event_done` wakes the task.
        if !self.closing.reading() || self.handle.events_waiting() >= MAX_EVENTS_WAITING {
            return Poll::Pending;
        }
        // Most wake-ups of a busy route's connections are for writing:
        // after a wake-up that found frames to write, read only when bytes
        // already read wait to be parsed or the socket reports data (tokio
        // forgets the socket's readiness after a short read, so a drained
        // socket reports none). A wake-up that found nothing to write was
        // most likely for reading: read at once, without asking the socket
        // first.
        if (self.reader.has_pending() || !to_write || self.tcp.poll_read_ready(cx).is_ready())
            && let Poll::Ready(frame) = self.reader.poll_next(&mut self.tcp, cx)
        {
            return Poll::Ready(Wake::Read(frame));
        }
        Poll::Pending
    }

    /// Handles what was read; returns the event it makes for the
    /// controller, if any.
    fn on_read(&mut self, frame: Option<Result<WsMessage, ReadError>>) -> Option<Event> {
        self.keepalive.received();
        let id = self.handle.id();
        match frame {
            Some(Ok(msg @ (WsMessage::Text(_) | WsMessage::Binary(_)))) => {
                let metrics = self.handle.metrics();
                metrics.messages_in.inc();
                metrics.bytes_in.inc_by(msg.len() as u64);
                (!self.handle.is_closing()).then_some(Event::Message { id, msg })
            }
            Some(Ok(WsMessage::Close(frame))) => {
                // Nothing is sent after a close frame: the queued frames
                // are dropped.
                self.handle.finish();
                if self
                    .closing
                    .peer_closed(frame.as_ref(), self.writer.close_taken())
                {
                    // Answered with the same frame once a frame
                    // half-written is finished.
                    self.writer.answer_close(frame.as_ref());
                }
                None
            }
            // Pings are answered in turn with the queued frames (not once
            // closing has started); pongs only prove life.
            Some(Ok(WsMessage::Ping(payload))) => {
                let _ = self.handle.push(Frame::pong(payload));
                None
            }
            Some(Ok(_)) => None,
            Some(Err(err)) => match err.close() {
                Some((code, message)) => {
                    warn!(route = %self.route, conn = id, code, error = %message, "client error");
                    self.closing.peer_failed(code, &message);
                    // The controller replies, then its close is queued; the
                    // close deadline starts then (a close asked for), not
                    // while the event waits for a busy instance.
                    Some(Event::Error { id, code, message })
                }
                None => {
                    debug!(route = %self.route, conn = id, error = %err, "connection dropped");
                    self.closing.peer_gone();
                    None
                }
            },
            None => {
                self.closing.peer_gone();
                None
            }
        }
    }

    /// A keepalive check found something due.
    fn on_due(&mut self, due: Due) {
        match due {
            Due::Ping => {
                let _ = self.handle.push(Frame::ping());
            }
            Due::IdleClose if self.handle.events_waiting() > 0 => {
                // Reading is paused for the controller: the client is not
                // idle, the controller is behind.
                self.keepalive.received();
            }
            Due::IdleClose => {
                debug!(route = %self.route, conn = self.handle.id(), "idle timeout");
                let _ = self.handle.close(1001, "idle timeout");
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    use super::*;
    use crate::wire::outbound::close_frame;

    fn close(code: u16, reason: &str) -> CloseFrame {
        close_frame(CloseCode::from(code), reason)
    }

    #[tokio::test]
    async fn the_peer_closing_first_is_answered_then_over() {
        let mut closing = Closing::new(Duration::from_secs(5));
        assert!(closing.reading() && !closing.started());
        assert!(closing.peer_closed(Some(&close(4001, "bye")), false));
        assert_eq!(closing.phase, Phase::Answering);
        assert!(closing.started() && !closing.reading());
        closing.written(WriterExit::Answered);
        assert_eq!(closing.phase, Phase::Over { linger: false });
        assert_eq!(closing.first, Some((4001, "bye".to_owned())));
    }

    #[tokio::test]
    async fn our_close_waits_for_the_answer() {
        let mut closing = Closing::new(Duration::from_secs(5));
        closing.requested();
        assert_eq!(closing.phase, Phase::Requested);
        assert!(closing.reading());
        closing.written(WriterExit::Closed(close(4000, "done")));
        assert_eq!(closing.phase, Phase::Sent);
        assert!(closing.reading());
        assert!(!closing.peer_closed(Some(&close(4000, "done")), true));
        assert!(!closing.lingers() && closing.is_over());
        assert_eq!(closing.first, Some((4000, "done".to_owned())));
    }

    #[tokio::test]
    async fn closes_that_cross_are_not_answered_twice() {
        let mut closing = Closing::new(Duration::from_secs(5));
        closing.requested();
        // Our close frame left the queue before the peer's arrived.
        assert!(!closing.peer_closed(None, true));
        assert_eq!(closing.phase, Phase::Answering);
        closing.written(WriterExit::Closed(close(4000, "done")));
        assert_eq!(closing.phase, Phase::Over { linger: false });
        assert_eq!(closing.first, Some((CLOSE_NO_STATUS, String::new())));
        // Still in the queue: the peer's close is answered instead.
        let mut closing = Closing::new(Duration::from_secs(5));
        closing.requested();
        assert!(closing.peer_closed(None, false));
    }

    #[tokio::test]
    async fn a_protocol_error_ends_with_our_close_and_a_linger() {
        let mut closing = Closing::new(Duration::from_secs(5));
        closing.peer_failed(1002, "reserved bits");
        assert_eq!(closing.phase, Phase::Broken);
        assert!(!closing.reading() && !closing.started());
        // on-error ran and the close was queued.
        closing.requested();
        assert_eq!(closing.phase, Phase::Broken);
        assert!(closing.started());
        closing.written(WriterExit::Closed(close(1002, "reserved bits")));
        assert!(closing.lingers());
        assert_eq!(closing.first, Some((1002, "reserved bits".to_owned())));
        // After our close frame, an error ends the wait for the answer.
        let mut closing = Closing::new(Duration::from_secs(5));
        closing.requested();
        closing.written(WriterExit::Closed(close(1000, "")));
        closing.peer_failed(1002, "bad frame");
        assert!(closing.lingers());
        assert_eq!(closing.first, Some((1000, String::new())));
    }

    #[tokio::test]
    async fn the_deadline_lingers_only_after_a_close_of_ours() {
        for (ours_taken, lingers) in [(true, true), (false, false)] {
            let mut closing = Closing::new(Duration::from_secs(5));
            closing.requested();
            closing.timed_out(ours_taken);
            assert_eq!(closing.lingers(), lingers);
        }
        let mut closing = Closing::new(Duration::from_secs(5));
        closing.peer_closed(None, false);
        closing.timed_out(true);
        assert!(!closing.lingers(), "the peer sends nothing after its close");
        let mut closing = Closing::new(Duration::from_secs(5));
        closing.written(WriterExit::Killed(close(1008, "slow consumer")));
        assert!(closing.lingers());
        assert_eq!(closing.first, Some((1008, "slow consumer".to_owned())));
    }

    /// A controller that records what it is told; it echoes messages,
    /// closes with 4000 when asked to with "close", and after `on-error`
    /// closes with the error's code, as the runtime does.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<String>>,
    }

    impl EventSink for Arc<Recorder> {
        fn submit<'a>(
            &'a self,
            event: Event,
            conn: &'a Arc<ConnHandle>,
        ) -> Option<impl Future<Output = ()> + Send + 'a> {
            let seen = match event {
                Event::Open { .. } => "open".to_owned(),
                Event::Message { msg, .. } => {
                    let text = msg.into_text().expect("text");
                    conn.push(Frame::text(text.clone())).expect("room to echo");
                    if text.as_str() == "close" {
                        conn.close(4000, "asked").expect("not closing yet");
                    }
                    format!("message {text}")
                }
                Event::Error { code, message, .. } => {
                    let _ = conn.close(code, &message);
                    format!("error {code}")
                }
                Event::Close { code, reason, .. } => format!("close {code} {reason}"),
            };
            self.seen.lock().unwrap().push(seen);
            Some(std::future::ready(()))
        }
    }

    impl Recorder {
        fn seen(&self) -> Vec<String> {
            self.seen.lock().unwrap().clone()
        }
    }

    /// A connection served by a [`Recorder`], and the client's end of it.
    struct Served {
        client: TcpStream,
        recorder: Arc<Recorder>,
        task: tokio::task::JoinHandle<()>,
        shutdown: Shutdown,
    }

    async fn serve(config: Config) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let info = ConnectionInfo {
            id: 7,
            route: "test".into(),
            path: "/test".to_owned(),
            params: Vec::new(),
            query: Vec::new(),
            user: None,
            roles: Vec::new(),
            expires_at: None,
            peer,
            deflate: None,
            metrics: crate::metrics::RouteMetrics::detached(),
        };
        let config = Arc::new(config);
        let reader = Reader::new(Vec::new(), &config.limits, None);
        let recorder = Arc::new(Recorder::default());
        let shutdown = Shutdown::default();
        let connection = Connection::new(tcp, reader, &info, recorder.clone(), config);
        let task = tokio::spawn(connection.run(Arc::new(info), shutdown.clone(), ()));
        Served {
            client,
            recorder,
            task,
            shutdown,
        }
    }

    async fn websocket(client: TcpStream) -> WebSocketStream<TcpStream> {
        WebSocketStream::from_raw_socket(client, Role::Client, None).await
    }

    async fn ended(task: tokio::task::JoinHandle<()>) {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the connection ends")
            .expect("without a panic");
    }

    #[tokio::test]
    async fn a_close_from_the_client_is_answered_and_reported() {
        let served = serve(Config::default()).await;
        let mut ws = websocket(served.client).await;
        ws.send(WsMessage::text("hi")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), WsMessage::text("hi"));
        ws.send(WsMessage::Close(Some(close(4001, "bye"))))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            WsMessage::Close(Some(close(4001, "bye")))
        );
        assert!(ws.next().await.is_none());
        ended(served.task).await;
        assert_eq!(
            served.recorder.seen(),
            ["open", "message hi", "close 4001 bye"]
        );
    }

    #[tokio::test]
    async fn the_controllers_close_follows_what_it_queued() {
        let served = serve(Config::default()).await;
        let mut ws = websocket(served.client).await;
        ws.send(WsMessage::text("close")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), WsMessage::text("close"));
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            WsMessage::Close(Some(close(4000, "asked")))
        );
        // The client's answer completes the handshake.
        assert!(ws.next().await.is_none());
        ended(served.task).await;
        assert_eq!(
            served.recorder.seen(),
            ["open", "message close", "close 4000 asked"]
        );
    }

    #[tokio::test]
    async fn a_peer_that_never_answers_is_let_go_at_the_deadline() {
        let mut config = Config::default();
        config.limits.close_timeout_ms = 200;
        let served = serve(config).await;
        let mut ws = websocket(served.client).await;
        ws.send(WsMessage::text("close")).await.unwrap();
        // The client reads nothing more, so it never answers.
        ended(served.task).await;
        assert_eq!(
            served.recorder.seen(),
            ["open", "message close", "close 4000 asked"]
        );
        // What was sent before the deadline arrives, then the end.
        assert_eq!(ws.next().await.unwrap().unwrap(), WsMessage::text("close"));
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            WsMessage::Close(Some(close(4000, "asked")))
        );
    }

    #[tokio::test]
    async fn a_protocol_error_reaches_on_error_and_its_code_the_client() {
        let mut served = serve(Config::default()).await;
        // A masked, empty text frame with the three reserved bits set.
        served
            .client
            .write_all(&[0xF1, 0x80, 0, 0, 0, 0])
            .await
            .unwrap();
        let mut received = Vec::new();
        served.client.read_to_end(&mut received).await.unwrap();
        // One close frame, 1002, and then the end of the stream.
        assert_eq!(received[0], 0x88, "{received:?}");
        assert_eq!(&received[2..4], &1002u16.to_be_bytes(), "{received:?}");
        assert_eq!(usize::from(received[1]), received.len() - 2);
        ended(served.task).await;
        let seen = served.recorder.seen();
        assert_eq!(seen[..2], ["open", "error 1002"]);
        assert!(seen[2].starts_with("close 1002 "), "{seen:?}");
    }

    #[tokio::test]
    async fn the_shutdown_closes_with_1001_and_a_dropped_socket_is_1006() {
        let served = serve(Config::default()).await;
        let mut ws = websocket(served.client).await;
        ws.send(WsMessage::text("hi")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), WsMessage::text("hi"));
        served.shutdown.start();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            WsMessage::Close(Some(close(1001, "server shutting down")))
        );
        assert!(ws.next().await.is_none());
        ended(served.task).await;
        assert_eq!(
            served.recorder.seen().last().unwrap(),
            "close 1001 server shutting down"
        );

        let served = serve(Config::default()).await;
        drop(served.client);
        ended(served.task).await;
        assert_eq!(served.recorder.seen(), ["open", "close 1006 "]);
    }
}
