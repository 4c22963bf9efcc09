//! What a connection tells its controller, and the one trait through which
//! it does.
//!
//! The wire hands each [`Event`] to an [`EventSink`] (the runtime's
//! controller instance implements it) and never learns how or where the
//! event runs; the sink queues frames back on the connection's
//! [`ConnHandle`].

use std::future::Future;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::metrics::RouteMetrics;
use crate::wire::deflate::Deflate;
use crate::wire::outbound::ConnHandle;

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
    /// The route's counters.
    pub metrics: Arc<RouteMetrics>,
}

/// Something that happened on a connection, for its controller.
pub enum Event {
    /// A client connected; its handle joins the connection table.
    Open {
        /// What the upgrade request said.
        info: Arc<ConnectionInfo>,
        /// Where to queue frames for it.
        handle: Arc<ConnHandle>,
    },
    /// A complete text or binary message arrived.
    Message {
        /// The connection.
        id: u64,
        /// The frame, text or binary.
        msg: WsMessage,
    },
    /// The host detected a client error and will close with `code`.
    Error {
        /// The connection.
        id: u64,
        /// The close code that will be sent.
        code: u16,
        /// What went wrong.
        message: String,
    },
    /// The connection ended. Always the last event of a connection.
    Close {
        /// The connection.
        id: u64,
        /// The close code (1006 when the socket dropped).
        code: u16,
        /// The close reason.
        reason: String,
    },
}

/// Where a connection's events go: the controller serving it.
pub trait EventSink: Send + Sync + 'static {
    /// Hands `event` of connection `conn` on. When the event can run at
    /// once, the returned future runs it in the caller's task; otherwise
    /// the event is queued and `conn`'s
    /// [`events_waiting`](ConnHandle::events_waiting) counts it until it
    /// has run. Never waits for another connection's event, and runs the
    /// events of one connection in the order they were submitted.
    fn submit<'a>(
        &'a self,
        event: Event,
        conn: &'a Arc<ConnHandle>,
    ) -> Option<impl Future<Output = ()> + Send + 'a>;
}
