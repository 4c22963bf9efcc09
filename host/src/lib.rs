//! # Switchyard
//!
//! A WebSocket application server whose endpoints are WebAssembly
//! components. The host owns every socket, the routing table and all shared
//! state; each route is served by a *controller* compiled to
//! `wasm32-wasip2` against `wit/switchyard.wit`.
//!
//! The server is a library: [`serve`] (or [`Server::new`] then
//! [`Server::serve`]) runs it on a listener you bind, and the `switchyard`
//! binary is a thin command line around it. See `docs/ARCHITECTURE.md` for
//! how the parts fit together.

#![deny(missing_docs)]

mod admission;
pub mod auth;
mod bindings;
pub mod builder;
pub mod config;
mod connection;
mod deflate;
mod guest_log;
mod handshake;
mod host_api;
mod instance;
pub mod module;
mod opcode;
pub mod probe;
mod reader;
pub mod reload;
mod route;
pub mod router;
mod runtime;
mod server;
mod state;
mod utf8;
mod writer;

pub use config::Config;
pub use module::LoadError;
pub use reload::ReloadEvent;
pub use server::{RouteSummary, Server};

/// Loads the controllers of `config` and serves clients from `listener`
/// until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    Server::new(config).await?.serve(listener, shutdown).await
}
