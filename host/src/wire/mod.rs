//! The wire: WebSocket over TCP, and nothing of WebAssembly.
//!
//! An accepted socket goes through the upgrade ([`handshake`]), then one
//! task per connection ([`connection`]) reads frames ([`reader`], with
//! [`utf8`] checks and [`deflate`] inflation), hands each event to the
//! connection's controller through the [`EventSink`] trait, and writes the
//! frames queued for it ([`outbound`], [`writer`], [`frame`]) until the
//! closing handshake is over. The layers above implement [`EventSink`] and
//! queue frames on a [`ConnHandle`](outbound::ConnHandle); this layer
//! imports only the configuration from them.

pub mod connection;
pub mod deflate;
mod event;
pub mod feed;
pub mod frame;
pub mod handshake;
mod keepalive;
pub mod opcode;
pub mod outbound;
pub mod reader;
mod utf8;
pub mod writer;

pub use event::{CLOSE_ABNORMAL, CLOSE_NO_STATUS, ConnectionInfo, Event, EventSink};
