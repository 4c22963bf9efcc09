//! The browser's side of the server: plain HTTP answers that are not
//! WebSocket upgrades.
//!
//! - [`files`]: the `public` folder, for a plain `GET` or `HEAD` that
//!   matches no route (the demo page at `/`, its scripts and styles);
//! - [`dashboard`]: the page at `/_switchyard/` and its live feed, a
//!   WebSocket that sends a snapshot of the server every second and at
//!   every reload.
//!
//! Requests enter from the accept loop (`server.rs`) or the admin listener
//! (`admin.rs`) as parsed [`Request`](crate::wire::handshake::Request)s;
//! answers leave as a [`Response`] written to the socket, always with
//! `Connection: close` (a page's few files each take one connection).

pub mod dashboard;
pub mod files;

use std::borrow::Cow;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers besides `Content-Length` and `Connection`.
    pub headers: Vec<(&'static str, String)>,
    body: Body,
}

#[derive(Debug)]
enum Body {
    Bytes(Cow<'static, [u8]>),
    /// A file and its length, streamed.
    File(tokio::fs::File, u64),
}

impl Response {
    /// A plain-text answer of one line.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        let body = format!("{}\n", body.into());
        Response::bytes(status, "text/plain; charset=utf-8", body.into_bytes())
    }

    /// An answer with `body` of type `content_type`.
    pub fn bytes(status: u16, content_type: &str, body: impl Into<Cow<'static, [u8]>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_owned())],
            body: Body::Bytes(body.into()),
        }
    }

    /// A file of `len` bytes, read as it is sent.
    pub fn file(content_type: String, file: tokio::fs::File, len: u64) -> Response {
        Response {
            status: 200,
            headers: vec![("Content-Type", content_type)],
            body: Body::File(file, len),
        }
    }

    /// An answer without a body (304, 301).
    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Bytes(Cow::Borrowed(b"")),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Writes the answer (only its head for a `HEAD` request) and closes
    /// the write side.
    pub async fn write(self, stream: &mut TcpStream, head_only: bool) -> std::io::Result<()> {
        let len = match &self.body {
            Body::Bytes(bytes) => bytes.len() as u64,
            Body::File(_, len) => *len,
        };
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {len}\r\nConnection: close\r\n\r\n"
        ));
        stream.write_all(head.as_bytes()).await?;
        if !head_only {
            match self.body {
                Body::Bytes(bytes) => stream.write_all(&bytes).await?,
                Body::File(file, len) => {
                    let mut file = tokio::io::AsyncReadExt::take(file, len);
                    tokio::io::copy(&mut file, stream).await?;
                }
            }
        }
        stream.shutdown().await
    }
}

/// The reason phrase of the statuses this module answers with.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "Error",
    }
}
