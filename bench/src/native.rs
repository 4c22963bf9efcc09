//! The baseline: the echo and chat jobs of the sample controllers written
//! by hand on tokio and tokio-tungstenite, the way a careful Rust developer
//! would, with nothing in between.
//!
//! - `/echo`: one task per connection reads a message and sends it back.
//! - `/chat/`: the sample chat's behaviour (greeting, join and leave notices,
//!   text wrapped in JSON, binary forwarded unchanged, never back to the
//!   sender). Each connection has a writer task draining a bounded queue
//!   (feed many frames, flush once); a [`Room`] holds every connection's
//!   queue, and a broadcast clones one `Message` (its payload is shared
//!   `Bytes`, so a clone is a reference count) into each. A full queue
//!   drops that client as a slow consumer instead of growing.
//!
//! With a [`Probe`] (`serve-native --wasm echo.wasm`, the kind
//! `native+wasm` of the compare tool), `/echo` hands each message to the
//! echo controller through Switchyard's instance and sends back what it
//! returns, while tokio-tungstenite still reads and writes the socket: the
//! native server plus the WebAssembly layer, and nothing else of
//! Switchyard.
//!
//! Connections use the same WebSocket settings as Switchyard's defaults
//! (4 KiB initial read buffer, 1 MiB message and frame limits, 1024-message
//! outbound queue), so the two servers differ only in how they are built.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use switchyard::probe::Probe;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Messages one connection's outbound queue holds (Switchyard's default).
const OUTBOUND_QUEUE: usize = 1024;
/// Frames written per flush at most.
const WRITE_BATCH: usize = 64;

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Serves `/echo` and `/chat/` on `listener` forever; `/echo` through
/// `probe` when given.
pub async fn serve(listener: TcpListener, probe: Option<Arc<Probe>>) -> anyhow::Result<()> {
    let room = Arc::new(Room::default());
    let next_id = AtomicU64::new(1);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: wait a little.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(stream, id, room.clone(), probe.clone()));
    }
}

enum Route {
    Echo,
    Chat { name: String },
}

fn route(request: &Request, id: u64) -> Option<Route> {
    let path = request.uri().path().trim_end_matches('/');
    match path {
        "/echo" => Some(Route::Echo),
        "/chat" => {
            let name = request
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|pair| pair.strip_prefix("name="))
                .map(str::to_owned)
                .unwrap_or_else(|| format!("guest-{id}"));
            Some(Route::Chat { name })
        }
        _ => None,
    }
}

async fn connection(stream: TcpStream, id: u64, room: Arc<Room>, probe: Option<Arc<Probe>>) {
    let _ = stream.set_nodelay(true);
    let mut matched = None;
    // The signature tungstenite's handshake callback has.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        matched = route(request, id);
        if matched.is_some() {
            return Ok(response);
        }
        let mut refusal = ErrorResponse::new(Some("no route".to_owned()));
        *refusal.status_mut() = StatusCode::NOT_FOUND;
        Err(refusal)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config())).await
    else {
        return;
    };
    match matched {
        Some(Route::Echo) => match probe {
            Some(probe) => echo_through(ws, &probe).await,
            None => echo(ws).await,
        },
        Some(Route::Chat { name }) => chat(ws, id, name, &room).await,
        None => {}
    }
}

async fn echo(mut ws: WebSocketStream<TcpStream>) {
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(_) | Message::Binary(_) => msg,
            Message::Close(_) => return,
            // tungstenite answers pings itself.
            _ => continue,
        };
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}

/// `/echo` with each message answered by the controller behind `probe`.
async fn echo_through(mut ws: WebSocketStream<TcpStream>, probe: &Probe) {
    let mut conn = probe.open().await;
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(_) | Message::Binary(_) => conn.message(msg).await,
            Message::Close(_) => break,
            // tungstenite answers pings itself.
            _ => continue,
        };
        if let Some(reply) = reply
            && ws.send(reply).await.is_err()
        {
            break;
        }
    }
    conn.close().await;
}

/// The chat's connections: each one's outbound queue, by connection id.
#[derive(Default)]
pub struct Room {
    /// A std lock: held only to clone a message into each queue
    /// (`try_send` never waits), never across an await.
    peers: RwLock<HashMap<u64, mpsc::Sender<Message>>>,
}

impl Room {
    fn join(&self, id: u64, queue: mpsc::Sender<Message>) {
        self.peers.write().expect("room lock").insert(id, queue);
    }

    fn leave(&self, id: u64) {
        self.peers.write().expect("room lock").remove(&id);
    }

    /// Queues `msg` for every connection but `from`. A connection whose
    /// queue is full is dropped from the room, which ends its writer.
    fn broadcast_others(&self, from: u64, msg: &Message) {
        let mut slow = Vec::new();
        {
            let peers = self.peers.read().expect("room lock");
            for (&id, queue) in peers.iter() {
                if id != from
                    && let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(msg.clone())
                {
                    slow.push(id);
                }
            }
        }
        for id in slow {
            self.leave(id);
        }
    }
}

fn text(value: serde_json::Value) -> Message {
    Message::text(value.to_string())
}

async fn chat(ws: WebSocketStream<TcpStream>, id: u64, name: String, room: &Room) {
    let (mut sink, mut stream) = ws.split();
    let (queue, mut outbound) = mpsc::channel(OUTBOUND_QUEUE);
    let _ = queue.try_send(text(json!({"type": "system", "data": "Hello world!"})));
    room.join(id, queue);
    room.broadcast_others(id, &text(json!({"type": "join", "user": name})));

    // Ends when the room drops this connection's queue (it left, or was too
    // slow) or the socket fails.
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while outbound.recv_many(&mut batch, WRITE_BATCH).await > 0 {
            for msg in batch.drain(..) {
                sink.feed(msg).await?;
            }
            sink.flush().await?;
        }
        sink.close().await
    });

    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Binary(_) => room.broadcast_others(id, &msg),
            Message::Text(data) => room.broadcast_others(
                id,
                &text(json!({"type": "message", "user": name, "data": data.as_str()})),
            ),
            Message::Close(_) => break,
            _ => {}
        }
    }
    room.leave(id);
    room.broadcast_others(id, &text(json!({"type": "leave", "user": name})));
    let _ = writer.await;
}
