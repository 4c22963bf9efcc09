//! The admin listener: what operators and their tools ask the server.
//!
//! A plain HTTP/1.1 listener on an address of its own (`[admin] listen`,
//! off by default, never the public port) answering `GET`s, each with
//! `Connection: close`:
//!
//! - `/metrics`: every [`Metrics`] family in the Prometheus text format
//!   (OpenMetrics), with the pool's use read at scrape time;
//! - `/healthz`: 200 while the process serves;
//! - `/readyz`: 200 once controllers are loaded and connections are
//!   accepted, 503 otherwise (no controller loaded, shutting down), with a
//!   short JSON body saying what is wrong;
//! - `/_switchyard/`: the dashboard and its live feed (see
//!   [`crate::web::dashboard`]), unless `admin.dashboard` is off.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::reload::Routes;
use crate::runtime::Runtime;
use crate::web::Response;
use crate::web::dashboard::{self, Dashboard};
use crate::wire::connection::Shutdown;
use crate::wire::handshake;

/// What the admin answers are made from.
pub struct Admin {
    runtime: Arc<Runtime>,
    routes: Arc<ArcSwap<Routes>>,
    /// The dashboard, unless `admin.dashboard` is off.
    dashboard: Option<Arc<Dashboard>>,
    /// Ends the dashboard's feeds when the server stops.
    stopping: Shutdown,
    /// The accept loop runs and the shutdown has not started.
    pub accepting: AtomicBool,
}

fn json(status: u16, body: serde_json::Value) -> Response {
    Response::bytes(status, "application/json", format!("{body}\n").into_bytes())
}

impl Admin {
    /// Answers from `runtime` and `routes`; not ready until
    /// [`accepting`](Admin::accepting) is set.
    pub fn new(
        runtime: Arc<Runtime>,
        routes: Arc<ArcSwap<Routes>>,
        dashboard: Option<Arc<Dashboard>>,
        stopping: Shutdown,
    ) -> Arc<Admin> {
        Arc::new(Admin {
            runtime,
            routes,
            dashboard,
            stopping,
            accepting: AtomicBool::new(false),
        })
    }

    /// Serves admin requests from `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                // Out of descriptors, most likely: the public listener
                // backs off and logs; here, wait a moment.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let admin = self.clone();
            tokio::spawn(async move {
                if let Err(err) = admin.answer(stream).await {
                    debug!(%peer, error = %err, "admin request failed");
                }
            });
        }
    }

    async fn answer(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let timeout = self.runtime.config().limits.handshake_timeout();
        let Ok(Ok(request)) =
            tokio::time::timeout(timeout, handshake::read_request(&mut stream)).await
        else {
            return Ok(());
        };
        if let Some(dashboard) = &self.dashboard
            && request.path == dashboard::FEED
        {
            let key = match handshake::check_upgrade(&request) {
                Ok(key) => key,
                Err(rejection) => return handshake::reject(&mut stream, &rejection).await,
            };
            handshake::accept(&mut stream, &key, None).await?;
            let stopping = self.stopping.clone();
            let feed = dashboard.clone();
            feed.feed(
                stream,
                request.leftover,
                async move { stopping.started().await },
            )
            .await;
            return Ok(());
        }
        let reading = request.method == "GET" || request.method == "HEAD";
        let page = self
            .dashboard
            .as_ref()
            .and_then(|_| Dashboard::page(&request.path));
        let is_page = page.is_some();
        let answer = match (reading, request.path.as_str(), page) {
            (true, _, Some(page)) => page,
            (true, "/metrics", _) => self.metrics(),
            (true, "/healthz", _) => json(200, serde_json::json!({"status": "ok"})),
            (true, "/readyz", _) => self.readiness(),
            (false, "/metrics" | "/healthz" | "/readyz", _) | (false, _, Some(_)) => {
                Response::text(405, "use GET").with_header("Allow", "GET, HEAD")
            }
            (_, path, _) => Response::text(
                404,
                format!("no {path} here: try /metrics, /healthz, /readyz or /_switchyard/"),
            ),
        };
        // The dashboard's files say how to cache them; nothing else here
        // may be cached.
        let answer = if is_page {
            answer
        } else {
            answer.with_header("Cache-Control", "no-store")
        };
        answer.write(&mut stream, request.method == "HEAD").await
    }

    fn metrics(&self) -> Response {
        let metrics = self.runtime.metrics();
        let (used, slots) = self.runtime.instances_in_use();
        metrics.pool(used, slots.unwrap_or(0));
        if let Some(cluster) = self.runtime.cluster() {
            cluster.refresh_metrics();
        }
        Response::bytes(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode().into_bytes(),
        )
    }

    fn readiness(&self) -> Response {
        let routes = self.routes.load().routes().count();
        let mut problems = Vec::new();
        if routes == 0 {
            problems.push("no controller is loaded: every path gets 404".to_owned());
        }
        if !self.accepting.load(Ordering::Acquire) {
            problems.push("not accepting connections (starting or shutting down)".to_owned());
        }
        // A broker outage does not make a node unready: it still serves its
        // own clients, and every node would be taken out at once. It shows
        // here and in the metrics.
        let cluster = self.runtime.cluster().map(|cluster| {
            serde_json::json!({
                "node": cluster.node(),
                "broker": if cluster.broker_up() { "up" } else { "down" },
                "peers": cluster.peers(),
                "remote_connections": cluster.remote_connections(),
            })
        });
        let mut body = serde_json::json!({"ready": problems.is_empty(), "routes": routes});
        if !problems.is_empty() {
            body["problems"] = problems.into();
        }
        if let Some(cluster) = cluster {
            body["cluster"] = cluster;
        }
        let status = if body["ready"] == true { 200 } else { 503 };
        json(status, body)
    }
}
