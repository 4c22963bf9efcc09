//! # switchyard-sdk
//!
//! Write WebSocket controllers for the [Switchyard] host in Rust. A controller
//! is a struct holding its state, an implementation of [`Controller`] with up
//! to four event methods, and a [`socket_route`] attribute naming the route it
//! serves, like the PHP framework's `#[SocketRoute]`:
//!
//! ```no_run
//! use switchyard_sdk::{socket_route, Connection, Controller, Message};
//! use switchyard_sdk::serde_json::json;
//!
//! /// Greets each client, counts messages, and shares them with the others.
//! #[socket_route(route = "/chat/", name = "chat", is_granted = ["ROLE_USER"])]
//! #[derive(Default)]
//! struct Chat {
//!     messages_seen: u64,
//! }
//!
//! impl Controller for Chat {
//!     fn on_open(&mut self, conn: &Connection) -> Option<Message> {
//!         conn.broadcast_others(&Message::text(format!("{} joined", conn.id)));
//!         Some(Message::json(&json!({"type": "system", "data": "Hello world!"})))
//!     }
//!
//!     fn on_message(&mut self, conn: &Connection, msg: Message) -> Option<Message> {
//!         self.messages_seen += 1;
//!         conn.broadcast_others(&msg);
//!         None
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (the crate is a
//! `cdylib`) or `switchyard build`, and drop the `.wasm` file into the host's
//! controllers folder.
//!
//! ## How events arrive
//!
//! The host creates one value of your type (with [`Default`]) per controller
//! instance and calls one method at a time, in the order events happened, so
//! `&mut self` needs no locking. A message returned from `on_open`,
//! `on_message` or `on_error` goes to the connection that caused the event;
//! everything else goes through [`send`], [`broadcast`], [`close`] or the
//! helpers on [`Connection`].
//!
//! A panic inside an event handler ends that instance: the host closes the
//! connection whose event failed (1011) and serves the others from a fresh
//! instance.
//!
//! [Switchyard]: https://example.invalid/switchyard

#![deny(missing_docs)]

// Lets the generated bindings name this crate by its absolute path.
extern crate self as switchyard_sdk;

pub use serde;
pub use serde_json;
/// Marks a struct as a controller and exports it from the component.
///
/// ```text
/// #[socket_route(route = "/rooms/{room}", name = "rooms", is_granted = ["ROLE_USER"])]
/// ```
///
/// - `route` (required): the path pattern. Literal segments, `{name}`
///   single-segment captures, and a trailing `{*rest}` catch-all.
/// - `name` (optional, defaults to the crate name): the route's unique name.
/// - `is_granted` (optional): roles of which a client needs at least one;
///   a single string or a list.
/// - `instance` (optional): `"shared"` (the default: one instance for the
///   route), `"keyed:<param>"` (one instance per value of a route
///   parameter, e.g. `"keyed:room"` on `/rooms/{room}`) or
///   `"per-connection"`.
///
/// The struct must implement [`Default`] and [`Controller`]. Use the
/// attribute once per component.
pub use switchyard_sdk_macros::socket_route;

#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated code
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "controller",
        pub_export_macro: true,
        export_macro_name: "__export",
        default_bindings_module: "::switchyard_sdk::bindings",
        runtime_path: "::switchyard_sdk::__private::wit_bindgen::rt",
    });
}

use bindings::switchyard::controller::host as wit_host;
pub use bindings::switchyard::controller::types::{
    CloseInfo, Connection, ConnectionId, ErrorInfo, HostError, InstanceMode, Limits, LogLevel,
    Message, RouteInfo,
};

/// The sizes the host enforces on what this controller sends and stores
/// (its configuration's `limits.max_message_bytes`, `sandbox.*_bytes`).
/// Asked once per instance: they do not change while the host runs.
pub fn limits() -> Limits {
    static LIMITS: std::sync::OnceLock<Limits> = std::sync::OnceLock::new();
    *LIMITS.get_or_init(wit_host::get_limits)
}

/// Why a [`Message`] could not be built.
#[derive(Debug)]
pub enum MessageError {
    /// The value could not be serialized as JSON.
    Json(serde_json::Error),
    /// The message is larger than the host accepts
    /// ([`Limits::max_message_bytes`]): the host would refuse to send it
    /// (or drop it, returned from a handler).
    TooLarge {
        /// The message's size.
        bytes: usize,
        /// The host's limit.
        limit: u64,
    },
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageError::Json(err) => write!(f, "cannot serialize the message as JSON: {err}"),
            MessageError::TooLarge { bytes, limit } => write!(
                f,
                "a message of {bytes} bytes exceeds the host's limit of {limit} bytes"
            ),
        }
    }
}

impl std::error::Error for MessageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MessageError::Json(err) => Some(err),
            MessageError::TooLarge { .. } => None,
        }
    }
}

/// The event handlers of a controller. Every method has a default that does
/// nothing, so implement only the events you care about.
///
/// Every handler gets the connection's record. The host sends it once, with
/// `on_open`; the SDK keeps it in the instance's memory (a couple of hundred
/// bytes per connection, counted against `sandbox.max_memory_bytes`) until
/// after `on_close`, and asks the host for it when the instance took over a
/// connection from another (after a trap or a hot reload).
pub trait Controller: Default + 'static {
    /// A client connected. A returned message is sent to it first.
    fn on_open(&mut self, conn: &Connection) -> Option<Message> {
        let _ = conn;
        None
    }

    /// A client sent `msg`. A returned message is sent back to it.
    fn on_message(&mut self, conn: &Connection, msg: Message) -> Option<Message> {
        let _ = (conn, msg);
        None
    }

    /// The connection ended. Called exactly once per connection; it can no
    /// longer be sent to, and [`connections`] no longer lists it.
    fn on_close(&mut self, conn: &Connection, info: CloseInfo) {
        let _ = (conn, info);
    }

    /// The host detected a problem (`err.code` is the close code it will
    /// send); `on_close` follows. A returned message is sent before the close
    /// frame when the connection can still take it.
    fn on_error(&mut self, conn: &Connection, err: ErrorInfo) -> Option<Message> {
        let _ = (conn, err);
        None
    }
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<String>) -> Self {
        Message::Text(text.into())
    }

    /// A binary message.
    pub fn binary(bytes: impl Into<Vec<u8>>) -> Self {
        Message::Binary(bytes.into())
    }

    /// A text message holding `value` as JSON, like the PHP `JsonMessage`.
    /// It is not checked against the host's size limit: where what goes in
    /// can grow (lists of members, history), build with
    /// [`Message::try_json`] and handle [`MessageError::TooLarge`].
    ///
    /// # Panics
    /// When `value`'s `Serialize` implementation fails (for example a map
    /// with non-string keys).
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Self {
        Message::Text(serde_json::to_string(value).expect("value cannot be serialized as JSON"))
    }

    /// A text message holding `value` as JSON, if it serializes and fits
    /// within the host's [`Limits::max_message_bytes`].
    pub fn try_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, MessageError> {
        serde_json::to_string(value)
            .map_err(MessageError::Json)
            .map(Message::Text)?
            .checked()
    }

    /// The message, if it fits within the host's
    /// [`Limits::max_message_bytes`]; else [`MessageError::TooLarge`]
    /// (the host would refuse to send it).
    pub fn checked(self) -> Result<Self, MessageError> {
        let limit = limits().max_message_bytes;
        let bytes = self.len();
        if bytes as u64 > limit {
            return Err(MessageError::TooLarge { bytes, limit });
        }
        Ok(self)
    }

    /// The payload size in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses the message (text or binary) as JSON.
    pub fn json_as<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(self.as_bytes())
    }

    /// The text of a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(text) => Some(text),
            Message::Binary(_) => None,
        }
    }

    /// The payload bytes, for either kind.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(bytes) => bytes,
        }
    }

    /// Whether this is a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, Message::Text(_))
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Message::Text(text)
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Message::Text(text.to_owned())
    }
}

impl From<Vec<u8>> for Message {
    fn from(bytes: Vec<u8>) -> Self {
        Message::Binary(bytes)
    }
}

impl Connection {
    /// The value captured by the route parameter `{name}`.
    pub fn param(&self, name: &str) -> Option<&str> {
        lookup(&self.params, name)
    }

    /// The first value of the query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        lookup(&self.query, name)
    }

    /// Whether the connection's user has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Queues `msg` for this connection; see [`send`].
    pub fn send(&self, msg: &Message) -> bool {
        send(self.id, msg)
    }

    /// Queues `msg` for this connection, or says why not; see [`try_send`].
    pub fn try_send(&self, msg: &Message) -> Result<(), HostError> {
        try_send(self.id, msg)
    }

    /// Queues `msg` for every other connection of this controller and returns
    /// how many it goes to; see [`broadcast`].
    pub fn broadcast_others(&self, msg: &Message) -> u32 {
        broadcast(msg, Some(self.id))
    }

    /// [`Connection::broadcast_others`], or why it was refused.
    pub fn try_broadcast_others(&self, msg: &Message) -> Result<u32, HostError> {
        try_broadcast(msg, Some(self.id))
    }

    /// Closes this connection with `code` and `reason` after what is already
    /// queued for it.
    pub fn close(&self, code: u16, reason: &str) -> Result<(), HostError> {
        close(self.id, code, reason)
    }

    /// Adds this connection to `group` (see [`groups`]).
    pub fn join(&self, group: &str) -> Result<(), HostError> {
        groups::join(self.id, group)
    }

    /// Removes this connection from `group`; returns whether it was in it.
    pub fn leave(&self, group: &str) -> Result<bool, HostError> {
        groups::leave(self.id, group)
    }

    /// Attaches `value` to this connection, replacing what was there. The
    /// host keeps it across traps and reloads, until after `on_close`.
    pub fn set_attachment(&self, value: &[u8]) -> Result<(), HostError> {
        wit_host::set_attachment(self.id, value)
    }

    /// This connection's attachment.
    pub fn attachment(&self) -> Option<Vec<u8>> {
        attachment(self.id)
    }

    /// Attaches `value` as JSON.
    ///
    /// # Panics
    /// When `value`'s `Serialize` implementation fails.
    pub fn set_attachment_json<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<(), HostError> {
        let bytes = serde_json::to_vec(value).expect("value cannot be serialized as JSON");
        self.set_attachment(&bytes)
    }

    /// This connection's attachment parsed as JSON.
    pub fn attachment_json<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        attachment_json(self.id)
    }
}

/// The attachment of any open connection of this route.
pub fn attachment(conn: ConnectionId) -> Option<Vec<u8>> {
    wit_host::attachment(conn)
}

/// The attachment of any open connection of this route, parsed as JSON.
pub fn attachment_json<T: serde::de::DeserializeOwned>(conn: ConnectionId) -> Option<T> {
    attachment(conn).and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

/// Groups (tags) of connections, owned by the host and scoped to the route:
/// members may be served by different instances (a keyed or per-connection
/// route), and a connection leaves every group when it closes.
pub mod groups {
    use super::{ConnectionId, HostError, Message, wit_host};

    /// Adds connection `conn` (one of this instance's) to `group`.
    pub fn join(conn: ConnectionId, group: &str) -> Result<(), HostError> {
        wit_host::join(conn, group)
    }

    /// Removes `conn` from `group`; returns whether it was a member.
    pub fn leave(conn: ConnectionId, group: &str) -> Result<bool, HostError> {
        wit_host::leave(conn, group)
    }

    /// Queues `msg` for every member of `group` except `except`; returns how
    /// many it was queued for. A message over the host's limit is sent to
    /// no one and logged as an error; [`try_publish`] returns the reason.
    pub fn publish(group: &str, msg: &Message, except: Option<ConnectionId>) -> u32 {
        super::logged(try_publish(group, msg, except), "publish").unwrap_or(0)
    }

    /// [`publish`], or why it was refused.
    pub fn try_publish(
        group: &str,
        msg: &Message,
        except: Option<ConnectionId>,
    ) -> Result<u32, HostError> {
        wit_host::publish(group, msg, except)
    }

    /// The members of `group`, sorted.
    pub fn members(group: &str) -> Vec<ConnectionId> {
        wit_host::members(group)
    }
}

fn lookup<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// The value of a host call whose failure the caller chose not to handle:
/// a connection that is gone or closing is part of life (`None`, quietly),
/// a message over the host's limit is a mistake, logged as an error.
fn logged<T>(result: Result<T, HostError>, call: &str) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(HostError::TooLarge) => {
            log(
                LogLevel::Error,
                &format!(
                    "{call} refused: the message exceeds the host's limit of {} bytes \
                     (build it with Message::try_json, or check Message::len)",
                    limits().max_message_bytes
                ),
            );
            None
        }
        Err(_) => None,
    }
}

/// Queues `msg` for connection `to` of this controller; returns whether it
/// was queued. A connection that has gone or is closing is not an error
/// (the result says so, for code that cares); a message over the host's
/// limit is logged as an error. [`try_send`] returns the reason instead.
pub fn send(to: ConnectionId, msg: &Message) -> bool {
    logged(try_send(to, msg), "send").is_some()
}

/// Queues `msg` for connection `to`, or says why not: the connection is not
/// this controller's or is closing, its queue is full, or the message is
/// too large.
pub fn try_send(to: ConnectionId, msg: &Message) -> Result<(), HostError> {
    wit_host::send(to, msg)
}

/// Queues `msg` for every open connection of this controller except `except`,
/// encoding it once. Returns how many open connections it goes to. A
/// message over the host's limit goes to no one and is logged as an error;
/// [`try_broadcast`] returns the reason instead.
pub fn broadcast(msg: &Message, except: Option<ConnectionId>) -> u32 {
    logged(try_broadcast(msg, except), "broadcast").unwrap_or(0)
}

/// [`broadcast`], or why it was refused (only a message over the limit is).
pub fn try_broadcast(msg: &Message, except: Option<ConnectionId>) -> Result<u32, HostError> {
    wit_host::broadcast(msg, except)
}

/// The ids of this controller's open connections, oldest first.
pub fn connections() -> Vec<ConnectionId> {
    wit_host::connections()
}

/// Closes connection `conn` with `code` and `reason` after what is already
/// queued for it.
pub fn close(conn: ConnectionId, code: u16, reason: &str) -> Result<(), HostError> {
    wit_host::close(conn, code, reason)
}

/// Writes `message` to the host's log, tagged with this controller's route.
pub fn log(level: LogLevel, message: &str) {
    wit_host::log(level, message)
}

/// The instance's key-value store, owned by the host.
///
/// What is stored here survives a trap in the controller and a hot reload of
/// its module, unlike the fields of the controller struct, which start from
/// `Default` in every new instance. Values are bytes; the `*_json` helpers
/// store any serde value.
///
/// ```no_run
/// use switchyard_sdk::state;
///
/// let visits: u64 = state::get_json("visits").unwrap_or(0);
/// state::set_json("visits", &(visits + 1)).expect("store has room");
/// ```
pub mod state {
    use super::{HostError, wit_host};

    /// The value under `key`.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        wit_host::state_get(key)
    }

    /// Stores `value` under `key`. Fails with [`HostError::TooLarge`] when
    /// the host's size caps would be exceeded; nothing changes then.
    pub fn set(key: &str, value: &[u8]) -> Result<(), HostError> {
        wit_host::state_set(key, value)
    }

    /// Removes `key`; returns whether it was there.
    pub fn delete(key: &str) -> bool {
        wit_host::state_delete(key)
    }

    /// Every key, sorted.
    pub fn keys() -> Vec<String> {
        wit_host::state_keys()
    }

    /// The value under `key` parsed as JSON; `None` when missing or when it
    /// does not parse as `T`.
    pub fn get_json<T: serde::de::DeserializeOwned>(key: &str) -> Option<T> {
        get(key).and_then(|bytes| serde_json::from_slice(&bytes).ok())
    }

    /// Stores `value` as JSON under `key`.
    ///
    /// # Panics
    /// When `value`'s `Serialize` implementation fails.
    pub fn set_json<T: serde::Serialize + ?Sized>(key: &str, value: &T) -> Result<(), HostError> {
        let bytes = serde_json::to_vec(value).expect("value cannot be serialized as JSON");
        set(key, &bytes)
    }
}

/// Used by the code that `#[socket_route]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::{Connection, ConnectionId, wit_host};

    pub use crate::bindings::__export as export;
    pub use crate::bindings::Guest;
    pub use wit_bindgen;

    std::thread_local! {
        // The record of every connection this instance has seen, from its
        // `on-open` (or from the host, for connections inherited from an
        // instance that trapped or was reloaded) until its `on-close`. Later
        // events carry only the id, so a message costs no copy of the record.
        static CONNECTIONS: RefCell<BTreeMap<ConnectionId, Connection>> =
            const { RefCell::new(BTreeMap::new()) };
    }

    /// Keeps the record `on-open` received.
    pub fn keep_connection(conn: Connection) {
        CONNECTIONS.with(|all| all.borrow_mut().insert(conn.id, conn));
    }

    /// Runs `f` with the record of connection `id`, asking the host for it
    /// if this instance has not seen its `on-open`.
    pub fn with_connection<R>(id: ConnectionId, f: impl FnOnce(&Connection) -> R) -> R {
        CONNECTIONS.with(|all| {
            // Held across `f`: the host never re-enters an export, and
            // nothing else borrows the map.
            let mut all = all.borrow_mut();
            let conn = all.entry(id).or_insert_with(|| {
                // The host sends events only for connections it has a record
                // of; a bare record keeps the controller going regardless.
                wit_host::connection_info(id).unwrap_or_else(|| Connection {
                    id,
                    route: String::new(),
                    path: String::new(),
                    params: Vec::new(),
                    query: Vec::new(),
                    user: None,
                    roles: Vec::new(),
                })
            });
            f(conn)
        })
    }

    /// Drops the record after `on-close`.
    pub fn forget_connection(id: ConnectionId) {
        CONNECTIONS.with(|all| all.borrow_mut().remove(&id));
    }
}
