//! The guest runtime: everything that knows wasmtime.
//!
//! A controller module is compiled and checked once ([`module`]) by the
//! shared [`engine`]; its instances ([`instance`]) run a connection's events
//! in the guest, each with its CPU budget, and the guest calls back into the
//! host ([`host_api`]) to queue frames, close connections, keep state
//! ([`kv`]) and reach the route's other connections ([`shared`]). Guest
//! output goes to the log tagged with its route ([`guest_log`]).
//!
//! Data enters as [`Event`](crate::wire::Event)s from the wire and leaves
//! as frames queued on a connection's
//! [`ConnHandle`](crate::wire::outbound::ConnHandle): the runtime knows
//! nothing of sockets. The generated bindings ([`bindings`]) stay private to
//! this layer.

mod bindings;
pub mod cache;
pub mod engine;
mod fanout;
mod guest_log;
pub mod host_api;
pub mod instance;
pub mod kv;
pub mod module;
#[cfg(feature = "bench")]
pub mod probe;
pub mod shared;

pub use engine::{InstanceSlot, Runtime};
