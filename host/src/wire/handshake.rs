//! The HTTP side of a WebSocket upgrade.
//!
//! The server reads the request head itself so that it can answer with a
//! real HTTP status before any upgrade: 404 when no route matches, 426 when
//! a plain HTTP request reaches a route, 400 for a malformed upgrade. Only an
//! accepted request gets `101 Switching Protocols`; the bytes read past the
//! head are handed to the WebSocket layer.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest request head accepted.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Most headers accepted in a request head.
const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug)]
pub struct Request {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// The minor HTTP version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub minor_version: u8,
    headers: Vec<(String, String)>,
    /// Bytes received after the head (the client may not wait for the 101).
    pub leftover: Vec<u8>,
}

impl Request {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Every header called `name` (case-insensitive), in order.
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Whether the request asks for a WebSocket (`Upgrade: websocket`),
    /// however well or badly.
    pub fn is_upgrade(&self) -> bool {
        self.header_has_token("Upgrade", "websocket")
    }

    /// Whether the comma-separated header `name` lists `token`.
    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .flat_map(|(_, value)| value.split(','))
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    }
}

/// Why no request could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed before a complete head.
    #[error("connection closed before a complete request")]
    Closed,
    /// The head exceeds the size or header-count limit.
    #[error("request head too large")]
    TooLarge,
    /// Not HTTP/1.1.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads and parses one request head.
pub async fn read_request(stream: &mut TcpStream) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        // Read into the vector itself: a buffer on the stack would live in
        // the connection task's future for the connection's whole life.
        buf.reserve(1024);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(ReadError::Closed);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let target = parsed.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let request = Request {
                    method: parsed.method.unwrap_or("").to_owned(),
                    path: path.to_owned(),
                    query: query.to_owned(),
                    minor_version: parsed.version.unwrap_or(0),
                    headers: parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    leftover: buf[len..].to_vec(),
                };
                return Ok(request);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_HEAD => {}
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return Err(ReadError::TooLarge);
            }
            Err(err) => return Err(ReadError::Malformed(err.to_string())),
        }
    }
}

/// An HTTP answer that refuses the upgrade.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Status code.
    pub status: u16,
    /// Plain-text body, one line.
    pub body: String,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
}

impl Rejection {
    /// A rejection with a status and body.
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Rejection {
            status,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// A refusal for lack of room (503, or 429 for one client's share)
    /// that may succeed later: it carries `Retry-After: 1`.
    pub fn try_later(status: u16, body: impl Into<String>) -> Self {
        Rejection::new(status, body).with_header("Retry-After", "1")
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    /// The whole HTTP answer.
    fn response(&self) -> String {
        let body = format!("{}\n", self.body);
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
            self.status,
            reason_phrase(self.status),
            body.len()
        );
        if !self.headers.iter().any(|(name, _)| *name == "Connection") {
            head.push_str("Connection: close\r\n");
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head + &body
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Checks that the request is a WebSocket upgrade this server speaks, as
/// RFC 6455 §4.2.1 describes it, and returns its `Sec-WebSocket-Key`.
pub fn check_upgrade(request: &Request) -> Result<String, Rejection> {
    if !request.is_upgrade() {
        return Err(Rejection::new(
            426,
            format!(
                "{} is a WebSocket endpoint: connect with a WebSocket client",
                request.path
            ),
        )
        .with_header("Upgrade", "websocket")
        .with_header("Connection", "Upgrade, close")
        .with_header("Sec-WebSocket-Version", "13"));
    }
    if request.method != "GET" {
        return Err(Rejection::new(405, "a WebSocket upgrade uses GET").with_header("Allow", "GET"));
    }
    if request.minor_version < 1 {
        return Err(Rejection::new(
            400,
            "a WebSocket upgrade needs HTTP/1.1 or later, not HTTP/1.0",
        ));
    }
    match request.headers("Host").count() {
        0 => return Err(Rejection::new(400, "missing Host header")),
        1 => {}
        _ => return Err(Rejection::new(400, "more than one Host header")),
    }
    if !request.header_has_token("Connection", "upgrade") {
        return Err(Rejection::new(400, "missing `Connection: Upgrade`"));
    }
    if request.header("Sec-WebSocket-Version").map(str::trim) != Some("13") {
        return Err(Rejection::new(426, "unsupported WebSocket version: use 13")
            .with_header("Sec-WebSocket-Version", "13"));
    }
    let mut keys = request.headers("Sec-WebSocket-Key");
    let key = match (keys.next().map(str::trim), keys.next()) {
        (None, _) => return Err(Rejection::new(400, "missing Sec-WebSocket-Key")),
        (Some(_), Some(_)) => {
            return Err(Rejection::new(
                400,
                "more than one Sec-WebSocket-Key header",
            ));
        }
        (Some(key), None) => key,
    };
    match STANDARD.decode(key) {
        Ok(nonce) if nonce.len() == 16 => Ok(key.to_owned()),
        _ => Err(Rejection::new(
            400,
            "Sec-WebSocket-Key must be 16 bytes in base64 (24 characters)",
        )),
    }
}

/// Writes a rejection and closes the write side.
pub async fn reject(stream: &mut TcpStream, rejection: &Rejection) -> std::io::Result<()> {
    stream.write_all(rejection.response().as_bytes()).await?;
    stream.shutdown().await
}

/// Refuses a socket without waiting on it: what has arrived of its request
/// is read (up to 4 KiB: closing a socket with unread bytes resets it, and
/// the client may lose the answer), the answer goes out if the socket takes
/// it in one write, and the socket is closed. A request that arrives after
/// the close is answered with a reset by the kernel: such a client sees
/// the connection reset rather than the status. This is for floods, where
/// waiting on each socket is what must not happen.
pub fn refuse_now(stream: TcpStream, rejection: &Rejection) {
    let mut scratch = [0u8; 4096];
    let _ = stream.try_read(&mut scratch);
    let _ = stream.try_write(rejection.response().as_bytes());
}

/// Completes the upgrade with `101 Switching Protocols`, with the
/// extensions agreed on (`Sec-WebSocket-Extensions`), if any.
pub async fn accept(
    stream: &mut TcpStream,
    key: &str,
    extensions: Option<&str>,
) -> std::io::Result<()> {
    let extensions = extensions
        .map(|value| format!("Sec-WebSocket-Extensions: {value}\r\n"))
        .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extensions}\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(minor_version: u8, headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/echo".into(),
            query: String::new(),
            minor_version,
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            leftover: Vec::new(),
        }
    }

    const KEY: (&str, &str) = ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    const UPGRADE: [(&str, &str); 4] = [
        ("Host", "x"),
        ("Upgrade", "websocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Version", "13"),
    ];

    fn refusal(minor_version: u8, headers: &[(&str, &str)]) -> (u16, String) {
        let rejection = check_upgrade(&request(minor_version, headers)).unwrap_err();
        (rejection.status, rejection.body)
    }

    #[test]
    fn a_valid_upgrade_gives_its_key() {
        let mut headers = UPGRADE.to_vec();
        headers.push(KEY);
        assert_eq!(check_upgrade(&request(1, &headers)).unwrap(), KEY.1);
    }

    #[test]
    fn what_rfc_6455_refuses_gets_400() {
        let mut good = UPGRADE.to_vec();
        good.push(KEY);
        let (status, body) = refusal(0, &good);
        assert_eq!(status, 400);
        assert!(body.contains("HTTP/1.1"), "{body}");

        let no_host: Vec<_> = good.iter().copied().filter(|(n, _)| *n != "Host").collect();
        assert_eq!(refusal(1, &no_host), (400, "missing Host header".into()));
        let mut two_hosts = good.clone();
        two_hosts.push(("host", "y"));
        assert_eq!(
            refusal(1, &two_hosts),
            (400, "more than one Host header".into())
        );

        for bad_key in [
            "x",
            "AAAAAAAAAAAAAAAAAAAA",
            "dGhlIHNhbXBsZSBub25jZQ",
            "!!!!!!!!!!!!!!!!!!!!!!==",
        ] {
            let mut headers = UPGRADE.to_vec();
            headers.push(("Sec-WebSocket-Key", bad_key));
            let (status, body) = refusal(1, &headers);
            assert_eq!(status, 400, "{bad_key}");
            assert!(body.contains("16 bytes"), "{bad_key}: {body}");
        }

        let mut twice = good.clone();
        twice.push(KEY);
        assert_eq!(
            refusal(1, &twice),
            (400, "more than one Sec-WebSocket-Key header".into())
        );
        assert_eq!(
            refusal(1, &UPGRADE),
            (400, "missing Sec-WebSocket-Key".into())
        );
    }
}
