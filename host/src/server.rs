//! The server: loads the controllers, owns the routing table and runs the
//! accept loop.
//!
//! [`Server::new`] loads every `*.wasm` in the controllers folder (a module
//! that fails any check is reported in [`Server::rejected`] and skipped) and
//! starts one shared instance per route. [`Server::serve`] accepts TCP
//! connections until the shutdown future resolves, routes each upgrade
//! request, and hands accepted sockets to [`crate::connection::run`]. On
//! shutdown every connection is closed with 1001, so each controller sees
//! `on-close`, within `limits.shutdown_timeout_ms`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::connection::{self, ConnectionInfo};
use crate::handshake::{self, ReadError, Rejection};
use crate::instance::ControllerHandle;
use crate::module::{self, LoadError, Module};
use crate::router::{RouteTable, parse_query};
use crate::runtime::Runtime;

/// A route as the server serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSummary {
    /// The route name.
    pub name: String,
    /// The path pattern.
    pub pattern: String,
    /// Roles of which a client needs one.
    pub is_granted: Vec<String>,
    /// The module file serving it.
    pub file: PathBuf,
}

type Routes = RouteTable<Arc<ControllerHandle>>;

/// A server with its controllers loaded, ready to serve.
pub struct Server {
    config: Arc<Config>,
    routes: Arc<ArcSwap<Routes>>,
    rejected: Vec<LoadError>,
}

/// The `*.wasm` files of a folder, sorted by name so that conflicts are
/// decided the same way on every start.
fn module_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot read the controllers folder {}; create it or pass --controllers DIR",
            dir.display()
        )
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "wasm"))
        .collect();
    files.sort();
    Ok(files)
}

/// Accepts `candidate` into `accepted` unless its route or name is taken.
fn admit(accepted: &[Arc<Module>], candidate: &Module) -> Result<(), LoadError> {
    for other in accepted {
        if other.pattern.conflicts_with(&candidate.pattern) {
            return Err(LoadError::RouteTaken {
                file: candidate.file_name(),
                route: candidate.pattern.to_string(),
                other: other.file_name(),
                other_route: other.pattern.to_string(),
            });
        }
        if other.name == candidate.name {
            return Err(LoadError::NameTaken {
                file: candidate.file_name(),
                name: candidate.name.to_string(),
                other: other.file_name(),
            });
        }
    }
    Ok(())
}

impl Server {
    /// Loads the controllers of `config.controllers` and starts their
    /// instances. Fails only when the folder cannot be read or the engine
    /// cannot start; bad modules are reported by [`Server::rejected`].
    pub async fn new(config: Config) -> anyhow::Result<Server> {
        config.validate()?;
        let runtime = Runtime::new(&config)?;
        let mut accepted: Vec<Arc<Module>> = Vec::new();
        let mut rejected = Vec::new();
        for file in module_files(&config.controllers)? {
            let loaded = module::load(&runtime, &file)
                .await
                .and_then(|m| admit(&accepted, &m).map(|()| m));
            match loaded {
                Ok(module) => {
                    info!(route = %module.name, pattern = %module.pattern, file = %file.display(),
                        "controller loaded");
                    accepted.push(Arc::new(module));
                }
                Err(err) => {
                    error!("{err}");
                    rejected.push(err);
                }
            }
        }
        if accepted.is_empty() {
            warn!(dir = %config.controllers.display(), "no controller loaded: every path will get 404");
        }
        let table = accepted
            .into_iter()
            .map(|module| {
                let pattern = module.pattern.clone();
                let handle =
                    ControllerHandle::spawn(runtime.clone(), module, config.limits.event_queue);
                (pattern, handle)
            })
            .collect();
        Ok(Server {
            config: Arc::new(config),
            routes: Arc::new(ArcSwap::from_pointee(RouteTable::new(table))),
            rejected,
        })
    }

    /// The modules that were not loaded, and why.
    pub fn rejected(&self) -> &[LoadError] {
        &self.rejected
    }

    /// The routes being served.
    pub fn routes(&self) -> Vec<RouteSummary> {
        self.routes
            .load()
            .routes()
            .map(|(pattern, handle)| RouteSummary {
                name: handle.module().name.to_string(),
                pattern: pattern.to_string(),
                is_granted: handle.module().is_granted.clone(),
                file: handle.module().file.clone(),
            })
            .collect()
    }

    /// Serves clients from `listener` until `shutdown` resolves, then closes
    /// every connection (1001) and returns once they are closed or the
    /// shutdown timeout has passed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let stopping = CancellationToken::new();
        let next_id = Arc::new(AtomicU64::new(1));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let conn = Accepted {
                            config: self.config.clone(),
                            routes: self.routes.clone(),
                            next_id: next_id.clone(),
                            stopping: stopping.clone(),
                            peer,
                        };
                        tracker.spawn(conn.run(stream));
                    }
                    Err(err) => {
                        // Out of file descriptors and the like: wait a little.
                        warn!(error = %err, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        info!("shutting down: closing connections");
        stopping.cancel();
        tracker.close();
        let timeout = self.config.limits.shutdown_timeout();
        if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
            warn!(
                timeout_ms = timeout.as_millis() as u64,
                "shutdown timeout: dropping remaining connections"
            );
        }
        Ok(())
    }
}

/// One accepted TCP connection, before and after its upgrade.
struct Accepted {
    config: Arc<Config>,
    routes: Arc<ArcSwap<Routes>>,
    next_id: Arc<AtomicU64>,
    stopping: CancellationToken,
    peer: std::net::SocketAddr,
}

impl Accepted {
    async fn run(self, mut stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let limits = &self.config.limits;
        let request = tokio::select! {
            read = tokio::time::timeout(limits.handshake_timeout(), handshake::read_request(&mut stream)) => read,
            () = self.stopping.cancelled() => return,
        };
        let request = match request {
            Ok(Ok(request)) => request,
            Ok(Err(ReadError::TooLarge)) => {
                let _ =
                    handshake::reject(&mut stream, &Rejection::new(431, "request head too large"))
                        .await;
                return;
            }
            Ok(Err(ReadError::Malformed(reason))) => {
                let _ = handshake::reject(
                    &mut stream,
                    &Rejection::new(400, format!("malformed request: {reason}")),
                )
                .await;
                return;
            }
            Ok(Err(err)) => {
                debug!(peer = %self.peer, error = %err, "no request");
                return;
            }
            Err(_elapsed) => {
                debug!(peer = %self.peer, "handshake timeout");
                return;
            }
        };

        let routes = self.routes.load_full();
        let Some(matched) = routes.lookup(&request.path) else {
            debug!(peer = %self.peer, path = %request.path, "no route");
            let body = format!("no route for {}", request.path);
            let _ = handshake::reject(&mut stream, &Rejection::new(404, body)).await;
            return;
        };
        let controller = matched.target.clone();
        let params = matched.params;
        let key = match handshake::check_upgrade(&request) {
            Ok(key) => key,
            Err(rejection) => {
                debug!(peer = %self.peer, path = %request.path, status = rejection.status, "upgrade refused");
                let _ = handshake::reject(&mut stream, &rejection).await;
                return;
            }
        };
        if let Err(err) = handshake::accept(&mut stream, &key).await {
            debug!(peer = %self.peer, error = %err, "upgrade failed");
            return;
        }

        let info = ConnectionInfo {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            route: controller.module().name.clone(),
            path: request.path.clone(),
            params,
            query: parse_query(&request.query),
            user: None,
            roles: Vec::new(),
            peer: self.peer,
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(limits.read_buffer_bytes)
            .max_message_size(Some(limits.max_message_bytes))
            .max_frame_size(Some(limits.max_frame_bytes))
            .write_buffer_size(0)
            .max_write_buffer_size(limits.outbound_queue_bytes + limits.max_message_bytes);
        let ws = WebSocketStream::from_partially_read(
            stream,
            request.leftover,
            Role::Server,
            Some(ws_config),
        )
        .await;
        connection::run(ws, info, controller, limits, self.stopping).await;
    }
}
