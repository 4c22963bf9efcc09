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

mod admin;
pub mod builder;
mod cluster;
pub mod config;
pub mod journal;
pub mod languages;
pub mod metrics;
pub mod reload;
mod routing;
mod runtime;
pub mod scaffold;
mod server;
mod web;
mod wire;

pub use config::{Config, ConfigError};
pub use reload::ReloadEvent;
pub use routing::{auth, router};
pub use runtime::module::{self, LoadError};
#[cfg(feature = "bench")]
pub use runtime::probe;
pub use server::{CheckError, RouteSummary, ServeError, Server, check_module};

/// Connections the kernel may hold completed for the server before it
/// accepts them (capped by `net.core.somaxconn`). The usual default, 128,
/// drops connections during a reconnect storm or while the server waits
/// for a free file descriptor.
pub const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `addr` with a backlog of [`LISTEN_BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Builds every controller under `dir` (`switchyard build`, and `up` at
/// start and on each change): the Rust crates with cargo, then the Python
/// and JavaScript projects (see [`languages`]). Returns the modules placed.
pub fn build_controllers(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut placed = if !languages::has_projects(dir)? || builder::has_crates(dir)? {
        builder::build_controllers(dir)?
    } else {
        Vec::new()
    };
    placed.extend(languages::build_projects(dir)?);
    Ok(placed)
}

/// Loads the controllers of `config` and serves clients from `listener`
/// until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    Server::new(config).await?.serve(listener, shutdown).await;
    Ok(())
}
