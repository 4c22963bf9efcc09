//! The server: loads the controllers, owns the routing table and runs the
//! accept loop.
//!
//! [`Server::new`] loads every `*.wasm` in the controllers folder (a module
//! that fails any check is reported in [`Server::rejected`] and skipped),
//! starts one shared instance per route and, with hot reload on, watches the
//! folder (see [`crate::reload`]). [`Server::serve`] accepts TCP
//! connections until the shutdown future resolves, routes each upgrade
//! request, and hands accepted sockets to [`Connection`]. On
//! shutdown every connection is closed with 1001, so each controller sees
//! `on-close`, within `limits.shutdown_timeout_ms`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::admin::Admin;
use crate::cluster::Cluster;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::reload::{self, Registry, ReloadEvent, Routes};
use crate::routing::admission::{Admission, Permit, UpgradePermit};
use crate::routing::auth::{Authorized, Guard, Principal};
use crate::routing::route::Lease;
use crate::routing::router::parse_query;
use crate::runtime::Runtime;
use crate::runtime::module::LoadError;
use crate::web::dashboard::{self, Dashboard};
use crate::web::files::Public;
use crate::wire::ConnectionInfo;
use crate::wire::connection::{self, Connection};
use crate::wire::deflate;
use crate::wire::handshake::{self, ReadError, Rejection, Request};
use crate::wire::reader::Reader;

/// A route as the server serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSummary {
    /// The route name.
    pub name: String,
    /// The path pattern.
    pub pattern: String,
    /// Roles of which a client needs one (the config's, when it sets
    /// them for this route).
    pub is_granted: Vec<String>,
    /// How its connections are spread over instances.
    pub instance: String,
    /// The module file serving it.
    pub file: PathBuf,
}

/// The routes of `routes`, as the server with `config` serves them.
fn summaries(routes: &Routes, config: &Config) -> Vec<RouteSummary> {
    routes
        .routes()
        .map(|(pattern, handle)| {
            let module = handle.module();
            RouteSummary {
                name: module.name.to_string(),
                pattern: pattern.to_string(),
                is_granted: config
                    .route_is_granted(&module.name, &module.is_granted)
                    .to_vec(),
                instance: module.instance.to_string(),
                file: module.file.clone(),
            }
        })
        .collect()
}

/// Loads `file` as a server already serving every other module of its
/// folder would when the file is added (compiled, linked, checked against
/// the controller world, its `describe()` run, its route checked against
/// the others), and returns the route it would serve. Serves nothing.
pub async fn check_module(config: Config, file: &Path) -> Result<RouteSummary, CheckError> {
    let mut config = config;
    config.hot_reload = false;
    config.admin.listen = None;
    // Only `describe()` runs: no pool to reserve.
    config.sandbox.pooling = false;
    let config = Arc::new(config);
    let runtime = Runtime::new(config.clone()).map_err(|err| ServeError::Engine(err.into()))?;
    let file = std::path::absolute(file).map_err(|err| LoadError::Read {
        file: file.display().to_string(),
        reason: err.to_string(),
    })?;
    let mut registry = Registry::new(runtime);
    if let Some(dir) = file.parent() {
        for other in module_files(dir).unwrap_or_default() {
            if other != file {
                // A module that would be refused serves nothing to
                // conflict with.
                let _ = registry.add_initial(&other).await;
            }
        }
    }
    registry.add_initial(&file).await?;
    let routes = registry.routes().load();
    Ok(summaries(&routes, &config)
        .into_iter()
        .find(|route| route.file == file)
        .expect("the module just added serves a route"))
}

/// Why `check_module` refused a module.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The server could not have started.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The module would be refused.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// A server with its controllers loaded, ready to serve.
pub struct Server {
    config: Arc<Config>,
    routes: Arc<ArcSwap<Routes>>,
    registry: Registry,
    /// The folder watcher and its changes, when hot reload is on.
    watcher: Option<(
        notify::RecommendedWatcher,
        mpsc::UnboundedReceiver<reload::Change>,
    )>,
    rejected: Vec<LoadError>,
    guard: Arc<Guard>,
    metrics: Arc<Metrics>,
    /// The admin listener and what it answers from, when configured.
    admin: Option<(Arc<Admin>, TcpListener)>,
    /// The cluster this node is part of, if any.
    cluster: Option<Arc<Cluster>>,
    /// Made here so that the admin listener's dashboard feeds end with the
    /// connections.
    stopping: connection::Shutdown,
    /// The static files, when `public` is set.
    public: Option<Arc<Public>>,
    /// The dashboard on the public listener: when it is on and there is no
    /// admin listener to serve it.
    dashboard: Option<Arc<Dashboard>>,
}

/// Where connection ids come from: a counter from 1, or in a cluster the
/// cluster's (unique across nodes).
enum ConnIds {
    Counter(AtomicU64),
    Cluster(Arc<Cluster>),
}

impl ConnIds {
    fn next(&self) -> u64 {
        match self {
            ConnIds::Counter(next) => next.fetch_add(1, Ordering::Relaxed),
            ConnIds::Cluster(cluster) => cluster.next_id(),
        }
    }
}

/// Why a server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is unusable (a bad value, a key file, the
    /// controllers folder): the user's to fix.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The controllers folder cannot be watched for hot reload.
    #[error("cannot watch the controllers folder {} for hot reload: {error}", path.display())]
    Watch {
        /// The folder.
        path: PathBuf,
        /// What the watcher said.
        error: notify::Error,
    },
    /// The admin listener cannot listen.
    #[error("cannot listen on {addr} for the admin listener (`[admin] listen`): {error}")]
    AdminListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the system said.
        error: std::io::Error,
    },
    /// The WebAssembly engine cannot start.
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(Box<dyn std::error::Error + Send + Sync>),
}

/// The `*.wasm` files of a folder, sorted by name so that conflicts are
/// decided the same way on every start.
fn module_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|error| ConfigError::ControllersDir {
        path: dir.to_owned(),
        error,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "wasm"))
        .collect();
    files.sort();
    Ok(files)
}

impl Server {
    /// Loads the controllers of `config.controllers` and starts their
    /// instances. Fails only when the folder cannot be read or the engine
    /// cannot start; bad modules are reported by [`Server::rejected`].
    /// With `config.hot_reload`, the folder is watched from now on.
    pub async fn new(config: Config) -> Result<Server, ServeError> {
        config.validate()?;
        let mut config = config;
        config.controllers = config.controllers_dir()?;
        let config = Arc::new(config);
        let guard = Arc::new(Guard::new(&config)?);
        if config.auth.cookie.is_some() && config.allowed_origins.is_empty() {
            warn!(
                "tokens are read from a cookie but any origin may connect: set `allowed_origins` \
                 so that other sites cannot open sockets with your users' cookies"
            );
        }
        let runtime =
            Runtime::serving(config.clone()).map_err(|err| ServeError::Engine(err.into()))?;
        let cluster = runtime.cluster().cloned();
        // Watch before the first scan so no change slips between the two.
        let watcher = if config.hot_reload {
            Some(
                reload::watch_modules(&config.controllers).map_err(|error| ServeError::Watch {
                    path: config.controllers.clone(),
                    error,
                })?,
            )
        } else {
            None
        };
        let metrics = runtime.metrics().clone();
        let mut registry = Registry::new(runtime.clone());
        let mut rejected = Vec::new();
        for file in module_files(&config.controllers)? {
            if let Err(err) = registry.add_initial(&file).await {
                error!("{err}");
                rejected.push(err);
            }
        }
        for (pattern, handle) in registry.routes().load().routes() {
            let module = handle.module();
            let required = config.route_is_granted(&module.name, &module.is_granted);
            if !required.is_empty() && !guard.accepts_tokens() {
                warn!(route = %module.name, %pattern, "the route requires a role but no token key is configured \
                    (`auth.hs256_secret`, `auth.rs256_public_key` or `auth.es256_public_key`): every client will get 401");
            }
        }
        if registry.routes().load().routes().next().is_none() {
            warn!(dir = %config.controllers.display(), "no controller loaded: every path will get 404");
        }
        // Static files are not what the server is for: a folder that is
        // missing (a copied config) is said once, not fatal.
        let public = config.public().and_then(|dir| match Public::new(dir) {
            Ok(public) => Some(Arc::new(public)),
            Err(err) => {
                warn!(folder = %dir.display(), error = %err,
                    "no static files: the public folder cannot be served, so plain GETs get 404 \
                     (create it, or set `public = \"\"` to serve no files)");
                None
            }
        });
        let stopping = connection::Shutdown::default();
        let mut dashboard = config.admin.dashboard.then(|| {
            Dashboard::new(
                runtime.clone(),
                registry.routes().clone(),
                registry.subscribe(),
            )
        });
        let admin = match config.admin.listen {
            Some(addr) => {
                let listener =
                    crate::bind(addr).map_err(|error| ServeError::AdminListen { addr, error })?;
                let admin = Admin::new(
                    runtime,
                    registry.routes().clone(),
                    dashboard.take(),
                    stopping.clone(),
                );
                Some((admin, listener))
            }
            None => None,
        };
        Ok(Server {
            config,
            routes: registry.routes().clone(),
            registry,
            watcher,
            rejected,
            guard,
            metrics,
            admin,
            cluster,
            stopping,
            public,
            dashboard,
        })
    }

    /// Where the admin listener listens, when there is one.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|(_, listener)| listener.local_addr().ok())
    }

    /// The modules that were not loaded at start, and why.
    pub fn rejected(&self) -> &[LoadError] {
        &self.rejected
    }

    /// Hot-reload outcomes from now on.
    pub fn reload_events(&self) -> tokio::sync::broadcast::Receiver<ReloadEvent> {
        self.registry.subscribe()
    }

    /// The routes being served.
    pub fn routes(&self) -> Vec<RouteSummary> {
        summaries(&self.routes.load(), &self.config)
    }

    /// Serves clients from `listener` until `shutdown` resolves, then closes
    /// every connection (1001) and returns once they are closed or the
    /// shutdown timeout has passed.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let tracker = TaskTracker::new();
        let Server {
            config,
            routes,
            registry,
            watcher,
            guard,
            metrics,
            admin,
            cluster,
            stopping,
            public,
            dashboard,
            ..
        } = self;
        let admin = admin.map(|(admin, listener)| {
            let task = tokio::spawn(admin.clone().serve(listener));
            (admin, task)
        });
        // The reload task ends when the watcher (and so its sender) is
        // dropped. It is watched: should it panic, hot reload is over (the
        // modules keep serving), and the log must say so.
        let _watcher = watcher.map(|(watcher, changes)| {
            let reloads = tokio::spawn(reload::run(registry, changes));
            tokio::spawn(async move {
                if let Err(err) = reloads.await
                    && err.is_panic()
                {
                    error!(error = %err, "hot reload stopped: the reload task panicked; \
                        the loaded controllers keep serving, restart the server to reload again");
                }
            });
            watcher
        });
        let next_id = Arc::new(match &cluster {
            Some(cluster) => ConnIds::Cluster(cluster.clone()),
            None => ConnIds::Counter(AtomicU64::new(1)),
        });
        let admission = Admission::new(config.clone());
        tokio::pin!(shutdown);
        let mut backoff = AcceptBackoff::default();
        if let Some((admin, _)) = &admin {
            admin.accepting.store(true, Ordering::Release);
        }
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => {
                    backoff.succeeded();
                    accepted
                }
                Err(err) => {
                    if let Some(pause) = backoff.failed(&err) {
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                    continue;
                }
            };
            let upgrading = match admission.begin_upgrade(peer.ip()) {
                Ok(permit) => permit,
                Err(rejection) => {
                    debug!(%peer, status = rejection.status, reason = %rejection.body, "connection refused before its upgrade");
                    metrics.upgrade("", rejection.status);
                    handshake::refuse_now(stream, &rejection);
                    continue;
                }
            };
            let conn = Accepted {
                config: config.clone(),
                routes: routes.clone(),
                next_id: next_id.clone(),
                admission: admission.clone(),
                guard: guard.clone(),
                stopping: stopping.clone(),
                metrics: metrics.clone(),
                public: public.clone(),
                dashboard: dashboard.clone(),
                tracker: tracker.clone(),
                peer,
            };
            tracker.spawn(conn.run(stream, upgrading));
        }
        drop(listener);
        if let Some((admin, _)) = &admin {
            admin.accepting.store(false, Ordering::Release);
        }
        info!(
            connections = admission.total(),
            "shutting down: closing connections"
        );
        stopping.start();
        tracker.close();
        let timeout = config.limits.shutdown_timeout();
        if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
            warn!(
                timeout_ms = timeout.as_millis() as u64,
                "shutdown timeout: dropping remaining connections"
            );
        }
        if let Some(cluster) = cluster {
            cluster.leave().await;
        }
        if let Some((_, task)) = admin {
            task.abort();
        }
    }
}

/// One accepted TCP connection, before and after its upgrade.
struct Accepted {
    config: Arc<Config>,
    routes: Arc<ArcSwap<Routes>>,
    next_id: Arc<ConnIds>,
    admission: Arc<Admission>,
    guard: Arc<Guard>,
    stopping: connection::Shutdown,
    metrics: Arc<Metrics>,
    public: Option<Arc<Public>>,
    dashboard: Option<Arc<Dashboard>>,
    /// Where an upgraded connection's task is spawned (the server waits
    /// for them at shutdown).
    tracker: TaskTracker,
    peer: std::net::SocketAddr,
}

impl Accepted {
    /// The handshake, in the accepted socket's task. The connection it
    /// upgrades to runs in a task of its own, spawned at the size of its
    /// future, and this one ends: nothing of the handshake (this struct,
    /// its future) stays allocated for the connection's life.
    async fn run(self, stream: TcpStream, upgrading: UpgradePermit) {
        self.upgrade(stream).await;
        drop(upgrading);
    }

    /// Reads and checks the upgrade request, then answers it: with a
    /// rejection, or with the upgrade and the connection's task.
    async fn upgrade(&self, mut stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let limits = &self.config.limits;
        let request = tokio::select! {
            read = tokio::time::timeout(limits.handshake_timeout(), handshake::read_request(&mut stream)) => read,
            () = self.stopping.started() => return,
        };
        let request = match request {
            Ok(Ok(request)) => request,
            Ok(Err(ReadError::TooLarge)) => {
                self.metrics.upgrade("", 431);
                let _ =
                    handshake::reject(&mut stream, &Rejection::new(431, "request head too large"))
                        .await;
                return;
            }
            Ok(Err(ReadError::Malformed(reason))) => {
                self.metrics.upgrade("", 400);
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
                self.metrics.upgrade("", 408);
                let rejection = Rejection::new(408, "the upgrade request did not arrive in time");
                // The peer may not be reading; do not wait on it for long.
                let _ = tokio::time::timeout(
                    limits.close_timeout(),
                    handshake::reject(&mut stream, &rejection),
                )
                .await;
                return;
            }
        };

        if !request.is_upgrade()
            && let Some(response) = self.plain(&request).await
        {
            // The page's files are small; a client that does not take one
            // in the handshake's time is not waited for.
            let head_only = request.method == "HEAD";
            let _ = tokio::time::timeout(
                limits.handshake_timeout(),
                response.write(&mut stream, head_only),
            )
            .await;
            return;
        }
        if let Some(dashboard) = &self.dashboard
            && request.path == dashboard::FEED
        {
            return self
                .dashboard_feed(stream, request, dashboard.clone())
                .await;
        }

        let admitted = match self.check(&request) {
            Ok(admitted) => admitted,
            Err(rejection) => {
                // The body names the reason; it never holds the token.
                if rejection.status == 404 || rejection.status == 426 {
                    debug!(peer = %self.peer, path = %request.path, status = rejection.status, reason = %rejection.body, "upgrade refused");
                } else {
                    info!(peer = %self.peer, path = %request.path, status = rejection.status, reason = %rejection.body, "upgrade refused");
                }
                let route = self
                    .routes
                    .load()
                    .lookup(&request.path)
                    .map(|matched| matched.target.module().name.to_string())
                    .unwrap_or_default();
                self.metrics.upgrade(&route, rejection.status);
                let _ = handshake::reject(&mut stream, &rejection).await;
                return;
            }
        };
        let module = admitted.lease.route().module();
        let deflate = deflate::negotiate(
            request.headers("Sec-WebSocket-Extensions"),
            &self.config.route_compression(&module.name),
        );
        let extensions = deflate.as_ref().map(|(_, response)| response.as_str());
        if let Err(err) = handshake::accept(&mut stream, &admitted.key, extensions).await {
            debug!(peer = %self.peer, error = %err, "upgrade failed");
            return;
        }
        self.metrics.upgrade(&module.name, 101);
        let Admitted {
            id,
            lease,
            params,
            query,
            principal,
            _permit,
            ..
        } = admitted;
        let (user, roles, expires_at) = match principal {
            Some(p) => (
                p.user,
                p.roles,
                p.expires_at.filter(|_| self.config.auth.close_on_expiry),
            ),
            None => (None, Vec::new(), None),
        };
        let info = ConnectionInfo {
            id,
            route: lease.route().module().name.clone(),
            path: request.path.clone(),
            params,
            query,
            user,
            roles,
            expires_at,
            peer: self.peer,
            deflate: deflate.map(|(agreed, _)| agreed),
            metrics: lease.route().metrics().clone(),
        };
        let mut request = request;
        let reader = Reader::new(std::mem::take(&mut request.leftover), limits, info.deflate);
        // Headers are not needed past the upgrade; do not keep them for the
        // connection's life.
        drop(request);
        let controller = lease.handle.clone();
        // The lease (dropping it may drop the instance) and the permit end
        // with the connection, after its on-close.
        let connection = Connection::new(stream, reader, &info, controller, self.config.clone());
        self.tracker
            .spawn(connection.run(Arc::new(info), self.stopping.clone(), (lease, _permit)));
    }

    /// The answer to a request that is no WebSocket upgrade, when it is
    /// not a route's: the dashboard's page, or a static file (or the 404
    /// of the static files). `None` leaves it to the routes (426 for a
    /// route's path, 404 for any other without static files).
    async fn plain(&self, request: &Request) -> Option<crate::web::Response> {
        if self.dashboard.is_some()
            && request.path.starts_with(dashboard::PREFIX)
            && let Some(page) = Dashboard::page(&request.path)
        {
            return Some(page);
        }
        let public = self.public.as_ref()?;
        if self.routes.load().lookup(&request.path).is_some() {
            return None;
        }
        Some(public.answer(request).await)
    }

    /// Upgrades the dashboard's feed on the public listener, for a client
    /// whose token has one of `admin.dashboard_roles`.
    async fn dashboard_feed(
        &self,
        mut stream: TcpStream,
        request: Request,
        dashboard: Arc<Dashboard>,
    ) {
        let checked = (|| {
            let key = handshake::check_upgrade(&request)?;
            self.guard.check_origin(&request)?;
            let mut query = parse_query(&request.query);
            let token = self.guard.take_token(&request, &mut query);
            self.guard
                .authorize(token.as_deref(), &self.config.admin.dashboard_roles)?;
            let permit = self
                .admission
                .admit(&Arc::from("_switchyard"), self.peer.ip())?;
            Ok::<_, Rejection>((key, permit))
        })();
        let (key, permit) = match checked {
            Ok(checked) => checked,
            Err(rejection) => {
                info!(peer = %self.peer, path = %request.path, status = rejection.status, reason = %rejection.body, "dashboard feed refused");
                let _ = handshake::reject(&mut stream, &rejection).await;
                return;
            }
        };
        if let Err(err) = handshake::accept(&mut stream, &key, None).await {
            debug!(peer = %self.peer, error = %err, "dashboard upgrade failed");
            return;
        }
        let stopping = self.stopping.clone();
        self.tracker.spawn(async move {
            dashboard
                .feed(stream, request.leftover, stopping.started())
                .await;
            drop(permit);
        });
    }

    /// Routes an upgrade request and runs every check that may refuse it,
    /// in order: route (404), upgrade headers (426/405/400), origin (403),
    /// token and roles (401/403), connection limits (503/429).
    fn check(&self, request: &Request) -> Result<Admitted, Rejection> {
        let routes = self.routes.load_full();
        let matched = routes
            .lookup(&request.path)
            .ok_or_else(|| Rejection::new(404, format!("no route for {}", request.path)))?;
        let route = matched.target.clone();
        let key = handshake::check_upgrade(request)?;
        self.guard.check_origin(request)?;
        let module = route.module();
        let required = self
            .config
            .route_is_granted(&module.name, &module.is_granted);
        let mut query = parse_query(&request.query);
        let token = self.guard.take_token(request, &mut query);
        let Authorized { principal, ignored } = self.guard.authorize(token.as_deref(), required)?;
        if let Some(reason) = ignored {
            debug!(peer = %self.peer, route = %module.name, reason = %reason, "token ignored on a public route");
        }
        let permit = self.admission.admit(&module.name, self.peer.ip())?;
        let id = self.next_id.next();
        let lease = route.lease(&matched.params, id)?;
        Ok(Admitted {
            id,
            lease,
            key,
            params: matched.params,
            query,
            principal,
            _permit: permit,
        })
    }
}

/// An upgrade request that passed every check.
struct Admitted {
    /// The connection's id, unique for the life of the process.
    id: u64,
    /// The instance that will serve the connection.
    lease: Lease,
    /// The client's `Sec-WebSocket-Key`, for the 101 answer.
    key: String,
    params: Vec<(String, String)>,
    /// The query without the `access_token` parameter.
    query: Vec<(String, String)>,
    principal: Option<Principal>,
    /// Holds the connection's places in the limits until it ends.
    _permit: Permit,
}

/// Paces the accept loop while accepting fails for want of a resource (out
/// of file descriptors, buffers or memory): the listening socket stays
/// ready then, and retrying at once would spin. The pause doubles from
/// 5 ms to 1 s. The first failure of a run is logged, and the run's end,
/// at most once per 10 s: a server hovering at its file limit starts and
/// ends a run with every descriptor freed and taken.
#[derive(Default)]
struct AcceptBackoff {
    failures: u64,
    pause: std::time::Duration,
    /// When a run was last logged, and whether the current one was.
    last_logged: Option<std::time::Instant>,
    logged: bool,
}

impl AcceptBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(5);
    const LONGEST: std::time::Duration = std::time::Duration::from_secs(1);
    const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    /// An accept failed: how long to wait before the next one (`None`
    /// for a failure that concerns only the connection that failed).
    fn failed(&mut self, err: &std::io::Error) -> Option<std::time::Duration> {
        use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
        if matches!(
            err.kind(),
            ConnectionAborted | ConnectionReset | Interrupted
        ) {
            debug!(error = %err, "accept failed for one connection");
            return None;
        }
        if self.failures == 0 {
            self.pause = Self::FIRST;
            self.logged = self
                .last_logged
                .is_none_or(|at| at.elapsed() >= Self::LOG_EVERY);
            if self.logged {
                self.last_logged = Some(std::time::Instant::now());
                warn!(error = %err, "accept failed; pausing new connections until it succeeds \
                    (raise the open-file limit, `ulimit -n`, or lower limits.max_connections)");
            }
        } else {
            self.pause = (self.pause * 2).min(Self::LONGEST);
        }
        self.failures += 1;
        Some(self.pause)
    }

    /// An accept succeeded.
    fn succeeded(&mut self) {
        if self.failures > 0 {
            if self.logged {
                info!(failures = self.failures, "accepting connections again");
            }
            self.failures = 0;
        }
    }
}
