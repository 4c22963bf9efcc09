//! The admin listener: what operators and their tools ask the server.
//!
//! A plain HTTP/1.1 listener on an address of its own (`[admin] listen`,
//! off by default, never the public port) answering three `GET`s, each with
//! `Connection: close`:
//!
//! - `/metrics`: every [`Metrics`] family in the Prometheus text format
//!   (OpenMetrics), with the pool's use read at scrape time;
//! - `/healthz`: 200 while the process serves;
//! - `/readyz`: 200 once controllers are loaded and connections are
//!   accepted, 503 otherwise (no controller loaded, shutting down), with a
//!   short JSON body saying what is wrong.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::reload::Routes;
use crate::runtime::Runtime;
use crate::wire::handshake;

/// What the admin answers are made from.
pub struct Admin {
    runtime: Arc<Runtime>,
    routes: Arc<ArcSwap<Routes>>,
    /// The accept loop runs and the shutdown has not started.
    pub accepting: AtomicBool,
}

/// One answer.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn json(status: u16, body: serde_json::Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: format!("{body}\n"),
        }
    }
}

impl Admin {
    /// Answers from `runtime` and `routes`; not ready until
    /// [`accepting`](Admin::accepting) is set.
    pub fn new(runtime: Arc<Runtime>, routes: Arc<ArcSwap<Routes>>) -> Arc<Admin> {
        Arc::new(Admin {
            runtime,
            routes,
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
        let answer = match (request.method.as_str(), request.path.as_str()) {
            ("GET" | "HEAD", "/metrics") => self.metrics(),
            ("GET" | "HEAD", "/healthz") => Answer::json(200, serde_json::json!({"status": "ok"})),
            ("GET" | "HEAD", "/readyz") => self.readiness(),
            (_, "/metrics" | "/healthz" | "/readyz") => Answer {
                status: 405,
                content_type: "text/plain; charset=utf-8",
                body: "use GET\n".to_owned(),
            },
            (_, path) => Answer {
                status: 404,
                content_type: "text/plain; charset=utf-8",
                body: format!("no {path} here: try /metrics, /healthz or /readyz\n"),
            },
        };
        let reason = match answer.status {
            200 => "OK",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Service Unavailable",
        };
        let mut response = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
            answer.status,
            answer.content_type,
            answer.body.len()
        );
        if request.method != "HEAD" {
            response.push_str(&answer.body);
        }
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    }

    fn metrics(&self) -> Answer {
        let metrics = self.runtime.metrics();
        let (used, slots) = self.runtime.instances_in_use();
        metrics.pool(used, slots.unwrap_or(0));
        if let Some(cluster) = self.runtime.cluster() {
            cluster.refresh_metrics();
        }
        Answer {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: metrics.encode(),
        }
    }

    fn readiness(&self) -> Answer {
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
        Answer::json(status, body)
    }
}
