//! Helpers for the end-to-end tests: start a real server on `127.0.0.1:0`
//! with chosen modules, connect real WebSocket clients, and wait for what
//! they receive with bounded waits (never a bare sleep).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use switchyard::{Config, ReloadEvent};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A WebSocket client.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The path of a module built for the tests (`echo`, `chat`, `wrong_world`…).
pub fn module(name: &str) -> PathBuf {
    let path = Path::new(env!("SWITCHYARD_TEST_MODULES")).join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "test module {} was not built",
        path.display()
    );
    path
}

/// The default config, except that peers get 500 ms to answer a close
/// frame: test clients that are not being read from never answer, and
/// stopping the server waits for them.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.limits.close_timeout_ms = 500;
    config
}

/// A server running in this process on a free port.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The load errors of rejected modules, as displayed.
    pub rejected: Vec<String>,
    /// The controllers folder (a temporary directory).
    pub dir: tempfile::TempDir,
    /// Hot-reload outcomes since the server started.
    pub reloads: tokio::sync::broadcast::Receiver<ReloadEvent>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts a server whose controllers folder holds the named test modules.
    pub async fn start(modules: &[&str]) -> TestServer {
        Self::start_with(modules, test_config()).await
    }

    /// Like [`TestServer::start`] with a given config (its `listen` and
    /// `controllers` are replaced).
    pub async fn start_with(modules: &[&str], config: Config) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        for name in modules {
            std::fs::copy(module(name), dir.path().join(format!("{name}.wasm"))).unwrap();
        }
        Self::start_in(dir, config).await
    }

    /// Starts a server on a prepared controllers folder.
    pub async fn start_in(dir: tempfile::TempDir, mut config: Config) -> TestServer {
        config.controllers = dir.path().to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = switchyard::Server::new(config)
            .await
            .expect("server starts");
        let rejected = server.rejected().iter().map(|e| e.to_string()).collect();
        let reloads = server.reload_events();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            rejected,
            dir,
            reloads,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// `ws://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Connects a WebSocket client to `path`.
    pub async fn connect(&self, path: &str) -> Ws {
        let (ws, response) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(self.url(path)))
                .await
                .expect("connect timed out")
                .unwrap_or_else(|err| panic!("connect to {path}: {err}"));
        assert_eq!(response.status(), 101);
        ws
    }

    /// Tries to connect and returns the HTTP status of a refused upgrade.
    pub async fn refused_status(&self, path: &str) -> u16 {
        match tokio_tungstenite::connect_async(self.url(path)).await {
            Ok(_) => panic!("upgrade to {path} was accepted"),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                response.status().as_u16()
            }
            Err(err) => panic!("unexpected error for {path}: {err}"),
        }
    }

    /// The path of `name` in the controllers folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Waits for the next reload outcome about `file` (others are skipped).
    pub async fn next_reload(&mut self, file: &str) -> ReloadEvent {
        let path = self.file(file);
        tokio::time::timeout(WAIT, async {
            loop {
                let event = self.reloads.recv().await.expect("reload events");
                let about = match &event {
                    ReloadEvent::Live { file, .. }
                    | ReloadEvent::Rejected { file, .. }
                    | ReloadEvent::Retired { file, .. } => file,
                };
                if *about == path {
                    return event;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no reload event for {file}"))
    }

    /// Waits until a change to `file` is live (skipping rejections of
    /// half-written versions) and returns the event.
    pub async fn until_live(&mut self, file: &str) -> ReloadEvent {
        loop {
            let event = self.next_reload(file).await;
            if matches!(event, ReloadEvent::Live { .. }) {
                return event;
            }
        }
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        self.shutdown.take().unwrap().send(()).ok();
        let task = self.task.take().unwrap();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("server did not stop")
            .unwrap()
            .unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The next data message (pings and pongs skipped).
pub async fn recv(ws: &mut Ws) -> Message {
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a message");
        match next {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(msg)) => return msg,
            Some(Err(err)) => panic!("connection failed: {err}"),
            None => panic!("connection ended"),
        }
    }
}

/// The next message, which must be text.
pub async fn recv_text(ws: &mut Ws) -> String {
    match recv(ws).await {
        Message::Text(text) => text.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// The next message, which must be JSON text.
pub async fn recv_json(ws: &mut Ws) -> serde_json::Value {
    let text = recv_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

/// Sends a text message.
pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

/// Waits for the server's close frame and returns it, then for the end of
/// the stream.
pub async fn expect_close(ws: &mut Ws) -> CloseFrame {
    loop {
        match recv(ws).await {
            Message::Close(Some(frame)) => {
                // Drain until the connection ends.
                let _ =
                    tokio::time::timeout(WAIT, async { while ws.next().await.is_some() {} }).await;
                return frame;
            }
            Message::Close(None) => panic!("close frame without a code"),
            _ => continue,
        }
    }
}

/// Sends raw bytes over a new TCP connection and returns everything the
/// server answers until it closes.
pub async fn raw_http(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("no answer")
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}
