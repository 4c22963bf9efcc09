//! A controller instance driven without Switchyard's server, for the
//! benchmarks: a [`Probe`] takes a connection's events the way the
//! connection's task hands them over (submitted to the instance, run in the
//! caller's task when the instance is free and queued for its drainer when
//! busy, the reply queued for the connection and taken off its queue as the
//! writer takes it), and leaves the socket to the caller.
//!
//! The bench's native server uses it to serve `/echo` through the echo
//! controller while tokio-tungstenite reads and writes the socket: what
//! that costs over the plain native server is the WebAssembly layer alone,
//! without Switchyard's own reader, writer and connection task.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::runtime::Runtime;
use crate::runtime::instance::ControllerInstance;
use crate::wire::CLOSE_ABNORMAL;
use crate::wire::ConnectionInfo;
use crate::wire::Event;
use crate::wire::frame::Frame;
use crate::wire::outbound::ConnHandle;
use crate::wire::writer::WRITE_BATCH;

/// One shared instance of a controller module, with connections of its own.
pub struct Probe {
    config: Arc<crate::Config>,
    instance: Arc<ControllerInstance>,
    route: Arc<str>,
    next_id: AtomicU64,
}

impl Probe {
    /// Loads the module at `path` and creates its instance (shared by every
    /// connection of the probe, whatever mode the module asks for).
    pub async fn load(config: crate::Config, path: &Path) -> anyhow::Result<Probe> {
        let config = Arc::new(config);
        let runtime = Runtime::new(config.clone())?;
        let (module, _) = crate::runtime::module::load(&runtime, path).await?;
        let route = module.name.clone();
        let instance = ControllerInstance::new(
            runtime.clone(),
            Arc::new(module),
            runtime.detached_owned(),
            None,
        );
        Ok(Probe {
            config,
            instance,
            route,
            next_id: AtomicU64::new(1),
        })
    }

    /// A new connection on the module's route, after its `on-open` has run;
    /// what `on-open` queued for it is dropped.
    pub async fn open(&self) -> ProbeConnection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ConnectionInfo {
            id,
            route: self.route.clone(),
            path: format!("/{}", self.route),
            params: Vec::new(),
            query: Vec::new(),
            user: None,
            roles: Vec::new(),
            expires_at: None,
            peer: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            deflate: None,
            metrics: crate::metrics::RouteMetrics::detached(),
        });
        let conn = Arc::new(ConnHandle::new(
            id,
            &self.config.limits,
            None,
            crate::metrics::RouteMetrics::detached(),
        ));
        let mut connection = ProbeConnection {
            instance: self.instance.clone(),
            conn: conn.clone(),
            batch: Vec::new(),
        };
        connection.run(Event::Open { info, handle: conn }).await;
        connection.batch.clear();
        connection
    }
}

/// A connection of a [`Probe`]; [`ProbeConnection::close`] ends it.
pub struct ProbeConnection {
    instance: Arc<ControllerInstance>,
    conn: Arc<ConnHandle>,
    /// Frames taken off the connection's queue, as the writer takes them.
    batch: Vec<Frame>,
}

impl ProbeConnection {
    /// Runs `on-message` with `msg` (a text or binary message) and returns
    /// the first message the controller queued for this connection meanwhile
    /// (its reply, for the echo controller); anything else queued is
    /// dropped.
    pub async fn message(&mut self, msg: WsMessage) -> Option<WsMessage> {
        let id = self.conn.id();
        self.run(Event::Message { id, msg }).await;
        let reply = self.batch.drain(..).next();
        reply.and_then(Frame::into_message)
    }

    /// Runs `on-close` (code 1006, no close frame): the instance forgets
    /// the connection.
    pub async fn close(mut self) {
        let id = self.conn.id();
        self.run(Event::Close {
            id,
            code: CLOSE_ABNORMAL,
            reason: String::new(),
        })
        .await;
    }

    /// Submits `event` and waits until it has run, then takes what is
    /// queued for the connection into `batch`.
    async fn run(&mut self, event: Event) {
        match self.instance.submit(event, &self.conn) {
            Some(turn) => turn.await,
            // Queued for the busy instance: its drainer says when it ran.
            None => {
                std::future::poll_fn(|cx| {
                    self.conn.register_waker(cx.waker());
                    if self.conn.events_waiting() == 0 {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await
            }
        }
        self.conn.dequeue_into(&mut self.batch, WRITE_BATCH);
    }
}
