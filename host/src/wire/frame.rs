//! A frame as the server sends it: encoded once, shared by every recipient.
//!
//! A server's frames are never masked, so a frame's bytes are the same for
//! every connection: a broadcast encodes its header once and shares its
//! payload (`Bytes`) with every recipient's queue.

use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

use crate::wire::opcode;

/// The longest frame header: 2 bytes and a 64-bit length, no mask.
const MAX_SERVER_FRAME_HEADER: usize = 10;

/// One unfragmented frame, encoded: its header and its payload. Cloning it
/// copies the header and shares the payload.
#[derive(Clone)]
pub struct Frame {
    head: [u8; MAX_SERVER_FRAME_HEADER],
    head_len: u8,
    payload: Bytes,
}

/// RSV1: the message is compressed (permessage-deflate).
const RSV1: u8 = 0x40;

impl Frame {
    fn new(op: u8, payload: Bytes) -> Frame {
        Frame::with_first_byte(0x80 | op, payload)
    }

    /// A frame whose first byte is `first` (FIN: every message is one
    /// frame; the opcode; RSV1 when compressed).
    fn with_first_byte(first: u8, payload: Bytes) -> Frame {
        let mut head = [0; MAX_SERVER_FRAME_HEADER];
        head[0] = first;
        let len = payload.len();
        let head_len = if len < 126 {
            head[1] = len as u8;
            2
        } else if let Ok(len) = u16::try_from(len) {
            head[1] = 126;
            head[2..4].copy_from_slice(&len.to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Frame {
            head,
            head_len,
            payload,
        }
    }

    /// A text frame.
    pub fn text(text: Utf8Bytes) -> Frame {
        Frame::new(opcode::TEXT, Bytes::from(text))
    }

    /// A binary frame.
    pub fn binary(bytes: Bytes) -> Frame {
        Frame::new(opcode::BINARY, bytes)
    }

    /// An empty ping.
    pub fn ping() -> Frame {
        Frame::new(opcode::PING, Bytes::new())
    }

    /// The answer to a ping with `payload`.
    pub fn pong(payload: Bytes) -> Frame {
        Frame::new(opcode::PONG, payload)
    }

    /// A close frame: its code and reason, or nothing (no status).
    pub(super) fn close(close: Option<&CloseFrame>) -> Frame {
        let payload = close.map_or_else(Bytes::new, |close| {
            let mut payload = Vec::with_capacity(2 + close.reason.len());
            payload.extend_from_slice(&u16::from(close.code).to_be_bytes());
            payload.extend_from_slice(close.reason.as_bytes());
            Bytes::from(payload)
        });
        Frame::new(opcode::CLOSE, payload)
    }

    /// The message a data frame carries; `None` for a control frame.
    pub fn into_message(self) -> Option<Message> {
        match self.head[0] & 0x0f {
            opcode::TEXT => Utf8Bytes::try_from(self.payload).ok().map(Message::Text),
            opcode::BINARY => Some(Message::Binary(self.payload)),
            _ => None,
        }
    }

    /// Whether it is a text frame.
    pub fn is_text(&self) -> bool {
        self.head[0] & 0x0f == opcode::TEXT
    }

    /// The payload's size in bytes (what the outbound limits count).
    pub fn len(&self) -> usize {
        self.payload.len()
    }

    /// The payload as it goes on the wire.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The same data message with `deflated`, its payload compressed, in
    /// its place (RSV1 set).
    pub fn compressed(&self, deflated: Bytes) -> Frame {
        Frame::with_first_byte(self.head[0] | RSV1, deflated)
    }

    /// A text or binary frame not compressed yet.
    pub(super) fn is_plain_data(&self) -> bool {
        self.head[0] & RSV1 == 0 && matches!(self.head[0] & 0x0f, opcode::TEXT | opcode::BINARY)
    }

    pub(super) fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    pub(super) fn wire_len(&self) -> usize {
        usize::from(self.head_len) + self.payload.len()
    }
}
