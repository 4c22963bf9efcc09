//! The dashboard: a page at `/_switchyard/` and its live feed at
//! `/_switchyard/live`.
//!
//! The page (HTML, CSS and a small script, built into the binary) opens
//! the feed, a WebSocket on which the server sends a [snapshot](Dashboard::snapshot)
//! of itself as JSON every second and at once after every hot reload:
//! each route with its pattern, roles, instance mode and module hash, its
//! open connections and live instances, messages per second in and out
//! and traps by kind; the last reloads and traps with their time; the
//! instance pool and the cluster.
//!
//! On the admin listener the feed is open to whoever reaches that address.
//! Without an admin listener, the page is served on the public listener,
//! and its feed needs a token with one of `admin.dashboard_roles` (in the
//! `access_token` query parameter: a browser cannot set headers on a
//! WebSocket), checked like any route's.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};
use tracing::debug;

use super::Response;
use crate::journal;
use crate::reload::{ReloadEvent, Routes};
use crate::runtime::Runtime;

/// Where the dashboard lives, on either listener.
pub const PREFIX: &str = "/_switchyard";
/// The feed's path.
pub const FEED: &str = "/_switchyard/live";
/// How often the feed sends a snapshot.
const EVERY: Duration = Duration::from_secs(1);

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// What the dashboard shows, read from the running server.
pub struct Dashboard {
    runtime: Arc<Runtime>,
    routes: Arc<ArcSwap<Routes>>,
    /// Kept only to subscribe each feed to the reloads from then on.
    reloads: broadcast::Receiver<ReloadEvent>,
    started: Instant,
}

/// Each route's message counts at the previous snapshot, for the rates.
#[derive(Default)]
struct Rates {
    at: Option<Instant>,
    counts: HashMap<String, (u64, u64)>,
}

impl Dashboard {
    /// A dashboard of the server that serves `routes` with `runtime`.
    pub fn new(
        runtime: Arc<Runtime>,
        routes: Arc<ArcSwap<Routes>>,
        reloads: broadcast::Receiver<ReloadEvent>,
    ) -> Arc<Dashboard> {
        Arc::new(Dashboard {
            runtime,
            routes,
            reloads,
            started: Instant::now(),
        })
    }

    /// The page or one of its files, for a plain `GET` of `path` under
    /// [`PREFIX`]; `None` for any other path.
    pub fn page(path: &str) -> Option<Response> {
        let (content_type, body) = match path {
            PREFIX => {
                return Some(Response::empty(301).with_header("Location", format!("{PREFIX}/")));
            }
            "/_switchyard/" | "/_switchyard/index.html" => ("text/html; charset=utf-8", PAGE),
            "/_switchyard/dashboard.js" => ("text/javascript; charset=utf-8", SCRIPT),
            "/_switchyard/dashboard.css" => ("text/css; charset=utf-8", STYLE),
            _ => return None,
        };
        Some(
            Response::bytes(200, content_type, body.as_bytes())
                .with_header("Cache-Control", "no-cache")
                .with_header("X-Content-Type-Options", "nosniff"),
        )
    }

    /// The server now, as the feed sends it.
    fn snapshot(&self, rates: &mut Rates) -> Value {
        let now = Instant::now();
        let seconds = rates
            .at
            .map(|at| now.duration_since(at).as_secs_f64())
            .filter(|s| *s > 0.0);
        let metrics = self.runtime.metrics();
        let config = self.runtime.config();
        let table = self.routes.load();
        let mut counts = HashMap::new();
        let mut totals = (0i64, 0i64, 0.0f64, 0.0f64);
        let routes: Vec<Value> = table
            .routes()
            .map(|(pattern, handle)| {
                let module = handle.module();
                let name = module.name.to_string();
                let counters = metrics.route(&name);
                let (messages_in, messages_out) =
                    (counters.messages_in.get(), counters.messages_out.get());
                let rate = |now: u64, before: Option<u64>| match (seconds, before) {
                    (Some(s), Some(before)) => now.saturating_sub(before) as f64 / s,
                    _ => 0.0,
                };
                let before = rates.counts.get(&name);
                let in_per_s = rate(messages_in, before.map(|b| b.0));
                let out_per_s = rate(messages_out, before.map(|b| b.1));
                counts.insert(name.clone(), (messages_in, messages_out));
                let connections = counters.connections.get();
                let instances = counters.instances.get();
                totals.0 += connections;
                totals.1 += instances;
                totals.2 += in_per_s;
                totals.3 += out_per_s;
                let traps: serde_json::Map<String, Value> = metrics
                    .traps_of(&name)
                    .into_iter()
                    .map(|(kind, count)| (kind.to_owned(), count.into()))
                    .collect();
                json!({
                    "name": name,
                    "pattern": pattern.to_string(),
                    "is_granted": config.route_is_granted(&module.name, &module.is_granted),
                    "instance": module.instance.to_string(),
                    "file": module.file.file_name().map(|f| f.to_string_lossy().into_owned()),
                    "hash": module.hash,
                    "connections": connections,
                    "instances": instances,
                    "messages_in": messages_in,
                    "messages_out": messages_out,
                    "deliveries": counters.deliveries.get(),
                    "in_per_s": in_per_s,
                    "out_per_s": out_per_s,
                    "traps": traps,
                })
            })
            .collect();
        rates.at = Some(now);
        rates.counts = counts;
        let (used, slots) = self.runtime.instances_in_use();
        let cluster = self.runtime.cluster().map(|cluster| {
            json!({
                "node": cluster.node(),
                "broker": if cluster.broker_up() { "up" } else { "down" },
                "peers": cluster.peers(),
                "remote_connections": cluster.remote_connections(),
            })
        });
        json!({
            "at_ms": journal::now_ms(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "totals": {
                "routes": routes.len(),
                "connections": totals.0,
                "instances": totals.1,
                "in_per_s": totals.2,
                "out_per_s": totals.3,
            },
            "routes": routes,
            "reloads": metrics.journal().reloads(),
            "traps": metrics.journal().traps(),
            "pool": {"used": used, "slots": slots},
            "cluster": cluster,
        })
    }

    /// Runs one feed on `stream`, whose upgrade was answered with 101
    /// (`leftover`: what the client sent after its request), until the
    /// client goes or `stop` resolves (then with 1001).
    pub async fn feed(
        self: Arc<Self>,
        stream: TcpStream,
        leftover: Vec<u8>,
        stop: impl Future<Output = ()>,
    ) {
        let mut ws =
            WebSocketStream::from_partially_read(stream, leftover, Role::Server, None).await;
        let mut reloads = self.reloads.resubscribe();
        let mut rates = Rates::default();
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                event = reloads.recv() => {
                    if matches!(event, Err(broadcast::error::RecvError::Closed)) {
                        // Hot reload is off or over: ticks only.
                        reloads = broadcast::channel(1).1;
                    }
                }
                incoming = ws.next() => match incoming {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                },
                () = &mut stop => {
                    let _ = ws
                        .close(Some(CloseFrame {
                            code: CloseCode::Away,
                            reason: "server shutting down".into(),
                        }))
                        .await;
                    return;
                }
            }
            let snapshot = self.snapshot(&mut rates).to_string();
            if let Err(err) = ws.send(Message::text(snapshot)).await {
                debug!(error = %err, "dashboard feed ended");
                return;
            }
        }
        let _ = ws.close(None).await;
    }
}
