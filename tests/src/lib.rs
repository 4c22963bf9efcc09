//! Helpers for the end-to-end tests: start a real server on `127.0.0.1:0`
//! with chosen modules, connect real WebSocket clients, and wait for what
//! they receive with bounded waits (never a bare sleep).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
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
    // One compiled-module cache for every test server: each module is
    // compiled once per test run instead of once per server.
    config.module_cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-module-cache");
    config
}

/// The test config with the default close timeout (5 s): for tests whose
/// clients do answer, where a loaded test machine may need more than 500 ms
/// to read what many clients are still sending before they close.
pub fn patient_config() -> Config {
    let mut config = test_config();
    config.limits.close_timeout_ms = Config::default().limits.close_timeout_ms;
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
    /// Where its admin listener listens, when the config asks for one.
    pub admin: Option<SocketAddr>,
    logs: Logs,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

/// What a server thread reports once it listens.
struct Ready {
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    rejected: Vec<String>,
    reloads: tokio::sync::broadcast::Receiver<ReloadEvent>,
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
    ///
    /// The server runs on a thread of its own, with a runtime of its own
    /// shaped like the test's: one thread, or two workers (as the binary
    /// has several) when the test is multi-threaded. Every thread of that
    /// runtime logs into this server's [`Logs`] only: a test's log
    /// assertions never see another test's server.
    pub async fn start_in(dir: tempfile::TempDir, mut config: Config) -> TestServer {
        config.controllers = dir.path().to_owned();
        let logs = Logs::default();
        let dispatch = logs.dispatch();
        let multi_threaded = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        let (ready_tx, ready_rx) = oneshot::channel();
        let (shutdown, stop) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("test-server".into())
            .spawn(move || {
                let _logs = tracing::dispatcher::set_default(&dispatch);
                let mut builder = if multi_threaded {
                    let mut builder = tokio::runtime::Builder::new_multi_thread();
                    builder.worker_threads(2);
                    builder
                } else {
                    tokio::runtime::Builder::new_current_thread()
                };
                // Each worker and blocking thread logs here for its life
                // (the runtime's threads end with it).
                let runtime = builder
                    .enable_all()
                    .on_thread_start(move || {
                        std::mem::forget(tracing::dispatcher::set_default(&dispatch));
                    })
                    .build()?;
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                    let server = switchyard::Server::new(config).await?;
                    let ready = Ready {
                        addr: listener.local_addr()?,
                        admin: server.admin_addr(),
                        rejected: server.rejected().iter().map(|e| e.to_string()).collect(),
                        reloads: server.reload_events(),
                    };
                    let _ = ready_tx.send(ready);
                    server
                        .serve(listener, async {
                            let _ = stop.await;
                        })
                        .await;
                    anyhow::Ok(())
                })
            })
            .unwrap();
        let ready = match tokio::time::timeout(WAIT, ready_rx).await {
            Ok(Ok(ready)) => ready,
            _ => {
                let ended = tokio::task::spawn_blocking(move || thread.join()).await;
                panic!("the server did not start: {ended:?}");
            }
        };
        TestServer {
            addr: ready.addr,
            rejected: ready.rejected,
            dir,
            reloads: ready.reloads,
            admin: ready.admin,
            logs,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// What this server (and its controllers) logged: everything from
    /// Switchyard and the guests, at every level, and `info` and above
    /// from the libraries. Cheap to clone; readable after [`Self::stop`].
    pub fn logs(&self) -> Logs {
        self.logs.clone()
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

    /// Connects to `path`, retrying while the upgrade is refused with
    /// `status` (a place freed by a closing connection is given back once
    /// its task has ended).
    pub async fn connect_when_admitted(&self, path: &str, status: u16) -> Ws {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio_tungstenite::connect_async(self.url(path)).await {
                Ok((ws, _)) => return ws,
                Err(tokio_tungstenite::tungstenite::Error::Http(response))
                    if response.status() == status && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(err) => panic!("connect to {path}: {err}"),
            }
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
        let thread = self.thread.take().unwrap();
        let ended = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || thread.join()))
            .await
            .expect("server did not stop")
            .unwrap();
        ended.expect("the server thread panicked").unwrap();
    }
}

impl Drop for TestServer {
    /// A test that ends early (it failed) lets the server shut down on its
    /// own thread.
    fn drop(&mut self) {
        drop(self.shutdown.take());
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

/// The body of an HTTP `GET path` to `addr`, with its status.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = raw_http(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")).await;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// The server's metrics, as `/metrics` on its admin listener shows them.
pub async fn metrics(server: &TestServer) -> String {
    let admin = server.admin.expect("the test config sets [admin] listen");
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the series `series` (name and labels, as printed), or
/// `None` while it does not exist.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}

/// Asserts that the series `series` of the scrape `text` has `value`.
#[track_caller]
pub fn assert_metric(text: &str, series: &str, value: f64) {
    assert_eq!(
        metric_value(text, series),
        Some(value),
        "{series} in\n{text}"
    );
}

/// Waits until the series `series` has the value `value` (metrics change
/// as the server's tasks get to them); returns the whole text then.
pub async fn wait_for_metric(server: &TestServer, series: &str, value: f64) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = metrics(server).await;
        if metric_value(&text, series) == Some(value) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{series}` never became {value}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The log output of one server, captured from `tracing`: Switchyard's own
/// lines and the guests' at every level, other crates' at `info` and above.
#[derive(Clone, Default)]
pub struct Logs {
    text: Arc<Mutex<String>>,
}

/// An `io::Write` appending to the captured log.
struct LogWriter(Arc<Mutex<String>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// A subscriber writing into this capture.
    fn dispatch(&self) -> tracing::Dispatch {
        let sink = self.text.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info,switchyard=trace,guest=trace")
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        tracing::Dispatch::new(subscriber)
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Lines captured so far that contain every one of `parts`.
    pub fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|line| parts.iter().all(|part| line.contains(part)))
            .map(str::to_owned)
            .collect()
    }

    /// Waits (polling, bounded by [`WAIT`]) for a line containing every one
    /// of `parts`, and returns it.
    pub async fn wait_for(&self, parts: &[&str]) -> String {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(line) = self.lines_with(parts).into_iter().next() {
                    return line;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no log line with {parts:?}; log:\n{}", self.text()))
    }
}

/// Opens a TCP connection and completes a WebSocket upgrade to `path` by
/// hand, so a test can then read and write raw frames.
pub async fn raw_upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    raw_upgrade_on(TcpStream::connect(addr).await.unwrap(), path).await
}

/// [`raw_upgrade`] over a stream the test connected itself (with its own
/// socket options).
pub async fn raw_upgrade_on(mut stream: TcpStream, path: &str) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Read the 101 head byte by byte so no frame byte is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(WAIT, stream.read_u8())
            .await
            .expect("no upgrade answer")
            .unwrap();
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    stream
}

/// A client frame as it goes on the wire: FIN set, masked.
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x6d, 0x1b, 0xa2, 0x48];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        len @ 0..126 => out.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

/// Reads one unmasked server frame: its opcode and payload.
pub async fn read_raw_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.unwrap();
    let opcode = head[0] & 0x0f;
    let len = match head[1] & 0x7f {
        126 => u64::from(stream.read_u16().await.unwrap()),
        127 => stream.read_u64().await.unwrap(),
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await.unwrap();
    (opcode, payload)
}

/// Sends a text message and returns the text reply.
pub async fn ask(ws: &mut Ws, command: &str) -> String {
    send_text(ws, command).await;
    recv_text(ws).await
}

/// The probe controller's record of this connection.
pub async fn whoami(ws: &mut Ws) -> serde_json::Value {
    serde_json::from_str(&ask(ws, "whoami").await).unwrap()
}

/// The probe controller's event log.
pub async fn events(ws: &mut Ws) -> Vec<String> {
    serde_json::from_str(&ask(ws, "events").await).unwrap()
}

/// Polls the probe's event log until `done` holds (bounded by [`WAIT`]).
pub async fn events_until(ws: &mut Ws, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = events(ws).await;
        if done(&log) {
            return log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events never matched: {log:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// The bytes of test module `name` with a custom section holding `round`
/// appended: still the same component, but a new file for hot reload.
pub fn module_variant(name: &str, round: u8) -> Vec<u8> {
    let mut bytes = std::fs::read(module(name)).unwrap();
    // Custom section (id 0): size, name length, name "variant", payload.
    bytes.extend_from_slice(&[0, 9, 7]);
    bytes.extend_from_slice(b"variant");
    bytes.push(round);
    bytes
}

/// The id of a connection to the probe controller.
pub async fn id_of(ws: &mut Ws) -> u64 {
    whoami(ws).await["id"].as_u64().unwrap()
}

/// The highest connection id opened in a probe event log (0 if none).
pub fn newest_open(log: &[String]) -> u64 {
    log.iter()
        .filter_map(|e| e.strip_prefix("open ")?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

/// An outside tool the tests drive (Python with `websockets`, `kosoku`),
/// found through the variable `scripts/test.sh` sets. Missing, the test
/// fails and says how to install it: a test that skipped would prove
/// nothing.
pub fn outside_tool(variable: &str) -> PathBuf {
    match std::env::var_os(variable) {
        Some(path) if Path::new(&path).is_file() => PathBuf::from(path),
        _ => panic!(
            "{variable} is not set to an installed tool: run the tests with `scripts/test.sh`, \
             which installs tests/requirements.txt into target/test-venv, or install them \
             yourself (python3 -m venv target/test-venv && target/test-venv/bin/pip install \
             -r tests/requirements.txt) and set SWITCHYARD_TEST_PYTHON=target/test-venv/bin/python \
             and SWITCHYARD_TEST_KOSOKU=target/test-venv/bin/kosoku"
        ),
    }
}

/// Runs `tests/clients/{script}` with the test Python and `args`; returns
/// what it printed, one JSON value per line.
pub async fn python_clients(script: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let python = outside_tool("SWITCHYARD_TEST_PYTHON");
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(script);
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python)
            .arg(&script)
            .args(args)
            .output(),
    )
    .await
    .expect("the Python clients did not finish")
    .expect("cannot run the test Python");
    assert!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// A server in a process of its own (`serve_alone`), for tests that limit
/// or measure the whole process: its open-file limit, its memory.
pub struct AloneServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its admin listener listens, when the config has one.
    pub admin: Option<SocketAddr>,
    child: tokio::process::Child,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl AloneServer {
    /// Runs `serve_alone` (pass `env!("CARGO_BIN_EXE_serve_alone")`: only
    /// the tests themselves know where cargo put it) on `modules`, with
    /// `config` appended to a config file that listens on a free port,
    /// without hot reload, giving handshakes 60 s and close answers 500 ms;
    /// the process may hold `file_limit` open files.
    pub async fn start(
        serve_alone: &str,
        modules: &[&str],
        config: &str,
        file_limit: usize,
    ) -> AloneServer {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::tempdir().unwrap();
        for name in modules {
            std::fs::copy(module(name), dir.path().join(format!("{name}.wasm"))).unwrap();
        }
        let file = dir.path().join("switchyard.toml");
        std::fs::write(
            &file,
            format!(
                "listen = \"127.0.0.1:0\"\ncontrollers = \".\"\nhot_reload = false\n\
                 [limits]\nhandshake_timeout_ms = 60000\nclose_timeout_ms = 500\n{config}"
            ),
        )
        .unwrap();
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {file_limit} && exec \"$0\" \"$1\""))
            .arg(serve_alone)
            .arg(&file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut errors = child.stderr.take().unwrap();
        let mut line = String::new();
        let started = tokio::time::timeout(WAIT, stdout.read_line(&mut line)).await;
        let Some(addr) = line.trim().strip_prefix("listening on ws://") else {
            use tokio::io::AsyncReadExt;
            let mut stderr = String::new();
            let _ = tokio::time::timeout(WAIT, errors.read_to_string(&mut stderr)).await;
            panic!("serve_alone did not start ({started:?}, {line:?}): {stderr}");
        };
        let addr = addr.parse().unwrap();
        let mut admin = None;
        if config.contains("[admin]") {
            line.clear();
            let _ = tokio::time::timeout(WAIT, stdout.read_line(&mut line)).await;
            admin = line
                .trim()
                .strip_prefix("admin on ")
                .map(|a| a.parse().unwrap());
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut lines = tokio::io::BufReader::new(errors).lines();
        let log = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        AloneServer {
            addr,
            admin,
            child,
            stderr,
            _dir: dir,
        }
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the log holds `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        tokio::time::timeout(WAIT, async {
            while !self.log().contains(needle) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} in the server's log:\n{}", self.log()));
    }

    /// The server's resident memory, in bytes.
    pub fn rss(&self) -> u64 {
        let pid = self.child.id().expect("the server is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// A TCP connection from `from` (any 127.x.y.z address is this
    /// machine's).
    pub async fn socket_from(&self, from: std::net::Ipv4Addr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        tokio::time::timeout(WAIT, socket.connect(self.addr))
            .await
            .unwrap_or_else(|_| panic!("connect timed out; server log:\n{}", self.log()))
            .unwrap()
    }

    /// A WebSocket client from `from` on `path`.
    pub async fn connect_from(&self, from: std::net::Ipv4Addr, path: &str) -> Ws {
        let stream = self.socket_from(from).await;
        let url = format!("ws://{}{path}", self.addr);
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the upgrade from {from} was not answered; server log:\n{}",
                self.log()
            )
        })
        .unwrap();
        ws
    }

    /// A WebSocket client on `path`.
    pub async fn connect(&self, path: &str) -> Ws {
        self.connect_from(std::net::Ipv4Addr::LOCALHOST, path).await
    }

    /// Closes its standard input and waits for it to stop.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }

    /// Kills it (SIGKILL): no shutdown, no goodbye.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }

    /// Sends it `signal` (`STOP`, `CONT`, …).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the server is running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Its admin listener's `/metrics`.
    pub async fn metrics(&self) -> String {
        let admin = self.admin.expect("the config has an [admin] listener");
        let (status, body) = http_get(admin, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until `series` has `value` in its `/metrics`; returns them.
    pub async fn wait_for_metric(&self, series: &str, value: f64) -> String {
        let mut last = String::new();
        let reached = tokio::time::timeout(WAIT, async {
            loop {
                last = self.metrics().await;
                if metric_value(&last, series) == Some(value) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "{series} never became {value}:\n{last}\nlog:\n{}",
            self.log()
        );
        last
    }
}

/// A real `redis-server` on a free port of this machine, with nothing
/// saved to disk; killed when dropped.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts one on a free port.
    pub fn start() -> RedisServer {
        let mut redis = RedisServer {
            port: free_port(),
            child: None,
        };
        redis.restart();
        redis
    }

    /// A free port on which nothing listens yet.
    pub fn unstarted() -> RedisServer {
        RedisServer {
            port: free_port(),
            child: None,
        }
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts it (again) on its port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is running");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot run redis-server ({err}): install it (Debian: apt-get install \
                     redis-server), or run scripts/test.sh, which does"
                )
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if self.answers() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server on port {} never answered PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL) and waits for it to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nothing listens on now (the system's pick, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
