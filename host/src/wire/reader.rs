//! The read side of a connection: client frames parsed straight from the
//! socket, checked, unmasked and put together into messages.
//!
//! A connection keeps no read buffer of its own. Each read goes into a
//! buffer of the worker thread's ([`RECV`]), up to `limits.read_buffer_bytes`
//! at a time, so one system call takes a whole 16 KiB message (or several
//! small ones) and an idle connection holds no buffer at all. A frame that
//! arrived whole leaves that buffer at once: a small payload is copied out,
//! a large one is split off without a copy (the thread's buffer is reused
//! once that payload is dropped, or replaced while it is still held). Only
//! bytes past the first frame, or a frame that has not fully arrived, are
//! kept by the connection ([`Reader`]'s `pending`), and its next reads go
//! there until they are used up.
//!
//! The checks are RFC 6455's for a server, as [`ReadError`]s
//! ([`ReadError::close`] gives each its close code): reserved bits and
//! opcodes (1002; RSV1 is allowed on a message's first frame once
//! permessage-deflate is agreed), unmasked client frames (1002), fragmented
//! or oversize control frames (1002), continuations out of place (1002),
//! frames and messages over the limits (1009, seen from the header, before
//! the payload is buffered) and text that is not UTF-8 (1007, at the first
//! bad byte: text is checked as it arrives). A compressed message is
//! inflated once complete, up to the message limit (1009 beyond; 1007 for
//! data that is not deflate). Pings, pongs and close frames are handed to
//! the connection's task, which answers them.

use std::cell::RefCell;
use std::io::ErrorKind;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rustix::net::RecvFlags;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use crate::wire::deflate::{self, Deflate, InflateError};
use crate::wire::opcode;
use crate::wire::utf8::Utf8Check;

thread_local! {
    /// One per thread, so a connection keeps no read buffer between reads.
    static RECV: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Payloads up to this size are copied out of the thread's buffer; a larger
/// one is split off it (no copy) and keeps its part of the buffer until the
/// message is dropped.
const COPY_BYTES: usize = 1024;

/// The longest client frame header: 2 bytes, a 64-bit length, the mask.
const MAX_CLIENT_FRAME_HEADER: usize = 14;

/// A frame's header, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    fin: bool,
    /// RSV1: the message this frame starts is compressed.
    compressed: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Bytes of the header itself.
    head_len: usize,
    payload_len: usize,
}

impl Head {
    fn frame_len(&self) -> usize {
        self.head_len + self.payload_len
    }
}

/// Reads the header at the start of `buf`: `Ok(None)` when it has not fully
/// arrived. Every check that needs no payload is made here, as soon as the
/// bytes it needs are in, so a frame that breaks a rule or a limit is
/// refused before its payload is buffered.
fn parse_head(buf: &[u8], max_frame: usize, deflate: bool) -> Result<Option<Head>, WsError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let op = b0 & 0x0F;
    // RSV1 marks a compressed message (RFC 7692), on its first frame only,
    // when permessage-deflate was agreed; no extension defines RSV2 or RSV3.
    let compressed = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (compressed && !(deflate && matches!(op, opcode::TEXT | opcode::BINARY))) {
        return Err(WsError::Protocol(ProtocolError::NonZeroReservedBits));
    }
    if !matches!(
        op,
        opcode::CONTINUE
            | opcode::TEXT
            | opcode::BINARY
            | opcode::CLOSE
            | opcode::PING
            | opcode::PONG
    ) {
        return Err(WsError::Protocol(ProtocolError::InvalidOpcode(op)));
    }
    let fin = b0 & 0x80 != 0;
    let control = op & 0x8 != 0;
    if control && !fin {
        return Err(WsError::Protocol(ProtocolError::FragmentedControlFrame));
    }
    if b1 & 0x80 == 0 {
        return Err(WsError::Protocol(ProtocolError::UnmaskedFrameFromClient));
    }
    let (len_bytes, short) = match b1 & 0x7F {
        126 => (2, None),
        127 => (8, None),
        len => (0, Some(u64::from(len))),
    };
    let mask_at = 2 + len_bytes;
    let Some(len_field) = buf.get(2..mask_at) else {
        return Ok(None);
    };
    let len = short.unwrap_or_else(|| {
        let mut be = [0; 8];
        be[8 - len_bytes..].copy_from_slice(len_field);
        u64::from_be_bytes(be)
    });
    if len > max_frame as u64 {
        return Err(WsError::Capacity(CapacityError::MessageTooLong {
            size: usize::try_from(len).unwrap_or(usize::MAX),
            max_size: max_frame,
        }));
    }
    if control && len > 125 {
        return Err(WsError::Protocol(ProtocolError::ControlFrameTooBig));
    }
    let head_len = mask_at + 4;
    let Some(mask) = buf.get(mask_at..head_len) else {
        return Ok(None);
    };
    Ok(Some(Head {
        fin,
        compressed,
        opcode: op,
        mask: mask.try_into().expect("four bytes"),
        head_len,
        payload_len: len as usize,
    }))
}

/// Removes a client's mask from the part of a payload that starts `offset`
/// bytes into it.
fn unmask_from(part: &mut [u8], mask: [u8; 4], offset: usize) {
    let turn = offset % 4;
    unmask(
        part,
        [
            mask[turn],
            mask[(turn + 1) % 4],
            mask[(turn + 2) % 4],
            mask[(turn + 3) % 4],
        ],
    );
}

/// Removes a client's mask from a whole payload, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("eight bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (byte, m) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}

/// `size` against a message limit, as tungstenite reports it.
fn check_message(size: usize, max_size: usize) -> Result<(), WsError> {
    if size > max_size {
        return Err(WsError::Capacity(CapacityError::MessageTooLong {
            size,
            max_size,
        }));
    }
    Ok(())
}

/// The most bytes a message may take on the wire: the message limit `max`,
/// and a little more for a compressed one (deflate grows data that does not
/// compress by about 5 bytes in 16 KiB); what it inflates to is held to the
/// limit itself.
fn message_limit(max: usize, compressed: bool) -> usize {
    if compressed {
        max + max / 256 + 64
    } else {
        max
    }
}

/// A data message whose frames have not all arrived.
struct Fragments {
    text: bool,
    /// Compressed (permessage-deflate): `data` is inflated once complete.
    compressed: bool,
    data: BytesMut,
}

/// Invalid UTF-8 in a text message, as tungstenite reports it.
fn invalid_utf8() -> WsError {
    WsError::Utf8(String::from("invalid UTF-8 sequence"))
}

/// Reads what the socket has into the spare room of `buf`, `limit` bytes at
/// most, with rustix's `recv` (on Linux a raw system call; libc's is a
/// cancellation point, with bookkeeping on every call). As tokio's own reads do on epoll, a short
/// read shows the socket drained and its readiness is forgotten, so that
/// the next read waits for data instead of failing with `EAGAIN` first:
/// tokio clears readiness when the operation says `WouldBlock`, and the
/// read is kept aside for that moment.
fn poll_recv(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    limit: usize,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() == buf.len() {
        buf.reserve(MAX_CLIENT_FRAME_HEADER);
    }
    loop {
        ready!(tcp.poll_read_ready(cx))?;
        let spare = buf.spare_capacity_mut();
        let room = spare.len().min(limit);
        let mut read = None;
        let result = tcp.try_io(Interest::READABLE, || {
            let ((filled, _), _) = rustix::net::recv(tcp, &mut spare[..room], RecvFlags::empty())?;
            let n = filled.len();
            read = Some(n);
            if 0 < n && n < room {
                Err(ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match (result, read) {
            // Read, whatever tokio made of the `WouldBlock` that follows a
            // short read (cleared readiness, or on a poll(2) backend a
            // failed re-arm): the bytes are ours.
            (Ok(()), Some(n)) | (Err(_), Some(n)) => {
                // SAFETY: `recv` initialized the first `n` spare bytes.
                unsafe { buf.advance_mut(n) };
                return Poll::Ready(Ok(n));
            }
            (Err(err), None)
                if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            (Err(err), None) => return Poll::Ready(Err(err)),
            (Ok(()), None) => unreachable!("a read that succeeded says how much it read"),
        }
    }
}

/// The read side of one connection.
pub struct Reader {
    /// Bytes read and not used yet; they start at a frame boundary. Empty
    /// (and unallocated) most of the time.
    pending: BytesMut,
    /// A fragmented message being put together.
    fragments: Option<Fragments>,
    /// The UTF-8 check of the text message being read: each fragment, and
    /// each part of a frame that has not fully arrived, is checked as its
    /// bytes come in, so invalid text fails at once (RFC 6455 §8.1).
    utf8: Utf8Check,
    /// Payload bytes at the start of the frame in `pending` (not complete
    /// yet) that are already unmasked in place and checked as UTF-8.
    checked: usize,
    read_bytes: usize,
    max_frame: usize,
    max_message: usize,
    /// permessage-deflate, when the client and the route agreed on it.
    deflate: Option<Deflate>,
    /// The decompressor of a client that keeps its compression context.
    inflater: deflate::Own<flate2::Decompress>,
}

impl Reader {
    /// A reader starting with `leftover`, what the handshake read past the
    /// upgrade request.
    pub fn new(
        leftover: Vec<u8>,
        limits: &crate::config::Limits,
        deflate: Option<Deflate>,
    ) -> Reader {
        Reader {
            pending: BytesMut::from(&leftover[..]),
            fragments: None,
            utf8: Utf8Check::default(),
            checked: 0,
            read_bytes: limits.read_buffer_bytes,
            max_frame: limits.max_frame_bytes,
            max_message: limits.max_message_bytes,
            deflate,
            inflater: deflate::Own::default(),
        }
    }

    /// Whether bytes already read wait to be parsed: the next read may
    /// return a message without the socket having any data.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The next message, ping, pong or close frame from the client; `None`
    /// when the stream ends (a clean end or not: the caller knows from
    /// whether a close frame came first).
    pub fn poll_next(
        &mut self,
        tcp: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<WsMessage, ReadError>>> {
        loop {
            let step = if self.pending.is_empty() {
                self.poll_fresh(tcp, cx)
            } else {
                self.poll_pending(tcp, cx)
            };
            match ready!(step) {
                ReadStep::Frame(head, payload, checked) => {
                    if let Some(item) = self.frame(head, payload, checked) {
                        return Poll::Ready(Some(item));
                    }
                }
                ReadStep::Again => {}
                ReadStep::End => return Poll::Ready(None),
                ReadStep::Failed(err) => return Poll::Ready(Some(Err(err))),
            }
        }
    }

    /// Reads and throws away what the peer sends, for a lingering close:
    /// once our close frame is out after a read error, nothing the peer
    /// sends can be used, but leaving it unread would make the kernel answer
    /// with a reset, and the peer would lose our close frame. Ready with the
    /// bytes discarded by one read, 0 at the end of the stream.
    pub fn poll_discard(
        &mut self,
        tcp: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        self.pending = BytesMut::new();
        self.fragments = None;
        RECV.with_borrow_mut(|buf| {
            buf.clear();
            buf.reserve(self.read_bytes);
            let read = ready!(poll_recv(tcp, cx, buf, self.read_bytes));
            buf.clear();
            Poll::Ready(read)
        })
    }

    /// Nothing is pending: reads into the thread's buffer and takes the
    /// first frame from it; the rest, if any, becomes pending.
    fn poll_fresh(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<ReadStep> {
        RECV.with_borrow_mut(|buf| {
            buf.clear();
            buf.reserve(self.read_bytes);
            match ready!(poll_recv(tcp, cx, buf, self.read_bytes)) {
                Ok(0) => return Poll::Ready(ReadStep::End),
                Ok(_) => {}
                Err(err) => return Poll::Ready(ReadStep::Failed(WsError::Io(err).into())),
            }
            let head = match parse_head(buf, self.max_frame, self.deflate.is_some()) {
                Ok(Some(head)) if head.frame_len() <= buf.len() => head,
                Ok(_) => {
                    self.pending.extend_from_slice(buf);
                    return Poll::Ready(ReadStep::Again);
                }
                Err(err) => return Poll::Ready(ReadStep::Failed(err.into())),
            };
            let payload = if head.payload_len <= COPY_BYTES {
                let mut payload = BytesMut::from(&buf[head.head_len..head.frame_len()]);
                buf.advance(head.frame_len());
                unmask(&mut payload, head.mask);
                payload.freeze()
            } else {
                buf.advance(head.head_len);
                let mut payload = buf.split_to(head.payload_len);
                unmask(&mut payload, head.mask);
                payload.freeze()
            };
            if !buf.is_empty() {
                self.pending.extend_from_slice(buf);
            }
            Poll::Ready(ReadStep::Frame(head, payload, 0))
        })
    }

    /// Whether the frame `head` starts carries text to check as it arrives.
    fn carries_text(&self, head: &Head) -> bool {
        match head.opcode {
            opcode::TEXT => !head.compressed,
            opcode::CONTINUE => self
                .fragments
                .as_ref()
                .is_some_and(|f| f.text && !f.compressed),
            _ => false,
        }
    }

    /// Unmasks and checks the part of the text frame in `pending` that has
    /// arrived since the last look.
    fn check_partial(&mut self, head: &Head) -> Result<(), WsError> {
        let arrived = (self.pending.len() - head.head_len).min(head.payload_len);
        if arrived <= self.checked {
            return Ok(());
        }
        let part = &mut self.pending[head.head_len + self.checked..head.head_len + arrived];
        unmask_from(part, head.mask, self.checked);
        self.checked = arrived;
        self.utf8.feed(part).map_err(|_| invalid_utf8())
    }

    /// Bytes are pending: takes the frame they start with, reading into
    /// them (not the thread's buffer) until it is complete.
    fn poll_pending(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<ReadStep> {
        let head = match parse_head(&self.pending, self.max_frame, self.deflate.is_some()) {
            Ok(Some(head)) if head.frame_len() <= self.pending.len() => head,
            Ok(head) => {
                if let Some(head) = &head
                    && self.carries_text(head)
                    && let Err(err) = self.check_partial(head)
                {
                    return Poll::Ready(ReadStep::Failed(err.into()));
                }
                // Room for the rest of the frame (or of its header) and for
                // what may follow it, in one read.
                let needed = head.map_or(MAX_CLIENT_FRAME_HEADER, |head| head.frame_len());
                self.pending
                    .reserve((needed - self.pending.len()).max(self.read_bytes));
                return match ready!(poll_recv(tcp, cx, &mut self.pending, usize::MAX)) {
                    Ok(0) => Poll::Ready(ReadStep::End),
                    Ok(_) => Poll::Ready(ReadStep::Again),
                    Err(err) => Poll::Ready(ReadStep::Failed(WsError::Io(err).into())),
                };
            }
            Err(err) => return Poll::Ready(ReadStep::Failed(err.into())),
        };
        let mut frame = self.pending.split_to(head.frame_len());
        if self.pending.is_empty() {
            // Give the memory back: an idle connection holds none.
            self.pending = BytesMut::new();
        }
        frame.advance(head.head_len);
        let checked = std::mem::take(&mut self.checked);
        unmask_from(&mut frame[checked..], head.mask, checked);
        Poll::Ready(ReadStep::Frame(head, frame.freeze(), checked))
    }

    /// What a complete frame means: a message, a control frame, or (`None`)
    /// a fragment kept for later. The first `checked` bytes of a text
    /// payload were checked as UTF-8 while the frame arrived.
    fn frame(
        &mut self,
        head: Head,
        payload: Bytes,
        checked: usize,
    ) -> Option<Result<WsMessage, ReadError>> {
        match head.opcode {
            opcode::PING => Some(Ok(WsMessage::Ping(payload))),
            opcode::PONG => Some(Ok(WsMessage::Pong(payload))),
            opcode::CLOSE => Some(close(payload).map(WsMessage::Close)),
            opcode::CONTINUE => {
                let Some(fragments) = &mut self.fragments else {
                    return Some(Err(WsError::Protocol(
                        ProtocolError::UnexpectedContinueFrame,
                    )
                    .into()));
                };
                let limit = message_limit(self.max_message, fragments.compressed);
                if let Err(err) = check_message(fragments.data.len() + payload.len(), limit) {
                    return Some(Err(err.into()));
                }
                if fragments.text
                    && !fragments.compressed
                    && self.utf8.feed(&payload[checked..]).is_err()
                {
                    return Some(Err(invalid_utf8().into()));
                }
                fragments.data.extend_from_slice(&payload);
                if !head.fin {
                    return None;
                }
                let Fragments {
                    text,
                    compressed,
                    data,
                } = self.fragments.take().expect("fragments");
                Some(self.message(text, compressed, data.freeze()))
            }
            op => {
                let text = op == opcode::TEXT;
                if self.fragments.is_some() {
                    let data = if text { Data::Text } else { Data::Binary };
                    return Some(Err(WsError::Protocol(ProtocolError::ExpectedFragment(
                        data,
                    ))
                    .into()));
                }
                if let Err(err) = check_message(
                    payload.len(),
                    message_limit(self.max_message, head.compressed),
                ) {
                    return Some(Err(err.into()));
                }
                if text && !head.compressed && self.utf8.feed(&payload[checked..]).is_err() {
                    return Some(Err(invalid_utf8().into()));
                }
                if head.fin {
                    return Some(self.message(text, head.compressed, payload));
                }
                self.fragments = Some(Fragments {
                    text,
                    compressed: head.compressed,
                    data: BytesMut::from(&payload[..]),
                });
                None
            }
        }
    }

    /// A complete data message. A compressed one is inflated (up to the
    /// message limit) and its text checked whole; every byte of a plain
    /// text message has already been fed to the UTF-8 check, which must end
    /// on a whole character.
    fn message(
        &mut self,
        text: bool,
        compressed: bool,
        payload: Bytes,
    ) -> Result<WsMessage, ReadError> {
        let payload = if compressed {
            let max = self.max_message;
            let deflate = self.deflate.as_ref().expect("compressed only when agreed");
            let inflated = if deflate.client_takeover {
                self.inflater.inflate(&payload, max)
            } else {
                deflate::inflate_alone(&payload, max)
            };
            let inflated = Bytes::from(inflated.map_err(|err| match err {
                InflateError::TooLarge => ReadError::InflatedTooLarge { max },
                InflateError::Corrupt(reason) => ReadError::Corrupt(reason),
            })?);
            if text {
                self.utf8.feed(&inflated).map_err(|_| invalid_utf8())?;
            }
            inflated
        } else {
            payload
        };
        if !text {
            return Ok(WsMessage::Binary(payload));
        }
        self.utf8.finish().map_err(|_| invalid_utf8())?;
        // SAFETY: every byte of `payload` went through `self.utf8`, in
        // order, and the check ended on a character boundary.
        Ok(WsMessage::Text(unsafe {
            Utf8Bytes::from_bytes_unchecked(payload)
        }))
    }
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A frame or message broke a rule or a limit, or the socket failed.
    #[error(transparent)]
    Ws(#[from] WsError),
    /// A compressed message inflates to more than the message limit.
    #[error("a compressed message inflates to more than the limit of {max} bytes")]
    InflatedTooLarge {
        /// The message limit.
        max: usize,
    },
    /// A compressed message is not valid deflate data.
    #[error("invalid compressed data: {0}")]
    Corrupt(String),
    /// The reason in a close frame is not valid UTF-8.
    #[error("invalid UTF-8 in the close frame's reason")]
    CloseReasonUtf8,
}

impl ReadError {
    /// The close code and reason this calls for; `None` when the
    /// connection simply dropped (no close frame can reach the peer).
    pub fn close(&self) -> Option<(u16, String)> {
        match self {
            ReadError::Ws(err) => match err {
                WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => Some((
                    1009,
                    format!("message of {size} bytes exceeds the limit of {max_size} bytes"),
                )),
                WsError::Capacity(other) => Some((1009, other.to_string())),
                WsError::Utf8(detail) => {
                    Some((1007, format!("invalid UTF-8 in a text message: {detail}")))
                }
                WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
                WsError::Protocol(protocol) => Some((1002, protocol.to_string())),
                _ => None,
            },
            ReadError::InflatedTooLarge { .. } => Some((1009, self.to_string())),
            ReadError::Corrupt(_) | ReadError::CloseReasonUtf8 => Some((1007, self.to_string())),
        }
    }
}

/// What one read step produced.
enum ReadStep {
    /// A complete frame, its payload unmasked, and how many of its first
    /// bytes were checked as UTF-8 while it arrived.
    Frame(Head, Bytes, usize),
    /// Bytes were read (or kept) but no frame is complete yet.
    Again,
    /// The stream ended.
    End,
    Failed(ReadError),
}

/// A close frame's payload: nothing, or a code and a UTF-8 reason. A code
/// that may not be sent on the wire (see [`opcode::close_code_valid`]) is
/// reported, and answered, as 1002.
fn close(payload: Bytes) -> Result<Option<CloseFrame>, ReadError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(WsError::Protocol(ProtocolError::InvalidCloseSequence).into()),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let reason =
                Utf8Bytes::try_from(payload.slice(2..)).map_err(|_| ReadError::CloseReasonUtf8)?;
            if !opcode::close_code_valid(code) {
                return Ok(Some(CloseFrame {
                    code: CloseCode::Protocol,
                    reason: Utf8Bytes::from(format!("close code {code} may not be sent")),
                }));
            }
            Ok(Some(CloseFrame {
                code: CloseCode::from(code),
                reason,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame as it goes on the wire: masked with `MASK`.
    fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::from(fin) << 7 | op];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            out.push(0x80 | 126);
            out.extend_from_slice(&len.to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    fn limits() -> crate::config::Limits {
        crate::config::Limits {
            read_buffer_bytes: 4096,
            max_frame_bytes: 100_000,
            max_message_bytes: 150_000,
            ..crate::config::Limits::default()
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// Everything the reader returns until it would wait (or the stream
    /// ends).
    async fn drain(reader: &mut Reader, tcp: &mut TcpStream) -> Vec<Result<WsMessage, String>> {
        let mut got = Vec::new();
        std::future::poll_fn(|cx| {
            loop {
                match reader.poll_next(tcp, cx) {
                    Poll::Ready(Some(item)) => got.push(item.map_err(|e| e.to_string())),
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Ready(()),
                }
            }
        })
        .await;
        got
    }

    #[test]
    fn unmasking_matches_byte_by_byte() {
        for len in [0, 1, 3, 7, 8, 9, 15, 16, 17, 100] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut masked: Vec<u8> = plain
                .iter()
                .zip(MASK.iter().cycle())
                .map(|(b, m)| b ^ m)
                .collect();
            unmask(&mut masked, MASK);
            assert_eq!(masked, plain, "{len} bytes");
        }
    }

    #[test]
    fn headers_are_checked_before_their_payload_arrives() {
        let max = 1000;
        let cases: [(&[u8], &str); 7] = [
            (&[0xC1, 0x80], "reserved"),
            (&[0x83, 0x80], "opcode"),
            (&[0x81, 0x05], "unmasked"),
            (&[0x09, 0x80], "fragmented"),
            (&[0x89, 0xFE, 0x00, 0x7E], "control frame too big"),
            (&[0x82, 0xFE, 0x03, 0xE9], "1001 > 1000"),
            (&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0], "message too long"),
        ];
        for (bytes, expected) in cases {
            let err = parse_head(bytes, max, false).unwrap_err().to_string();
            assert!(err.to_lowercase().contains(expected), "{bytes:?}: {err}");
        }
        // Incomplete headers wait for more.
        for bytes in [&[0x81][..], &[0x81, 0xFE, 0x01], &[0x81, 0x85, 1, 2, 3]] {
            assert_eq!(parse_head(bytes, max, false).unwrap(), None, "{bytes:?}");
        }
    }

    /// The same stream of frames, cut at every byte in turn: whatever the
    /// reads return, the reader yields the same messages.
    #[tokio::test]
    async fn frames_cut_anywhere_read_the_same() {
        let big: Vec<u8> = (0..70_000).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        wire.extend(client_frame(true, opcode::TEXT, b"hello"));
        wire.extend(client_frame(true, opcode::BINARY, &big[..3000]));
        wire.extend(client_frame(false, opcode::TEXT, "hé".as_bytes()));
        wire.extend(client_frame(true, opcode::PING, b"p"));
        wire.extend(client_frame(true, opcode::CONTINUE, "llo wörld".as_bytes()));
        wire.extend(client_frame(true, opcode::BINARY, &big));
        wire.extend(client_frame(true, opcode::CLOSE, &[0x03, 0xE8, b'o', b'k']));
        let expected = vec![
            WsMessage::Text("hello".into()),
            WsMessage::Binary(Bytes::copy_from_slice(&big[..3000])),
            WsMessage::Ping(Bytes::from_static(b"p")),
            WsMessage::Text("héllo wörld".into()),
            WsMessage::Binary(Bytes::from(big.clone())),
            WsMessage::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "ok".into(),
            })),
        ];
        let cuts: Vec<usize> = (0..40)
            .chain((2990..3030).chain(wire.len() - 80..wire.len()))
            .collect();
        for cut in cuts {
            let (mut client, mut server) = pair().await;
            let mut reader = Reader::new(Vec::new(), &limits(), None);
            client.write_all(&wire[..cut]).await.unwrap();
            client.flush().await.unwrap();
            tokio::task::yield_now().await;
            let mut got = drain(&mut reader, &mut server).await;
            client.write_all(&wire[cut..]).await.unwrap();
            while got.len() < expected.len() {
                got.extend(drain(&mut reader, &mut server).await);
                tokio::task::yield_now().await;
            }
            let got: Vec<WsMessage> = got.into_iter().map(Result::unwrap).collect();
            assert!(got == expected, "cut at byte {cut}");
            assert!(!reader.has_pending(), "cut at byte {cut}: bytes left over");
        }
    }

    /// Bytes the handshake read past the request are the first frames.
    #[tokio::test]
    async fn leftover_from_the_handshake_is_read_first() {
        let (mut client, mut server) = pair().await;
        let mut leftover = client_frame(true, opcode::TEXT, b"early");
        let second = client_frame(true, opcode::TEXT, b"later");
        leftover.extend_from_slice(&second[..3]);
        let mut reader = Reader::new(leftover, &limits(), None);
        client.write_all(&second[3..]).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            got.extend(drain(&mut reader, &mut server).await);
            tokio::task::yield_now().await;
        }
        assert_eq!(
            got,
            vec![
                Ok(WsMessage::Text("early".into())),
                Ok(WsMessage::Text("later".into()))
            ]
        );
    }

    #[tokio::test]
    async fn messages_break_no_rule_unnoticed() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (client_frame(true, opcode::CONTINUE, b"x"), "continue frame"),
            (
                [
                    client_frame(false, opcode::TEXT, b"a"),
                    client_frame(true, opcode::BINARY, b"b"),
                ]
                .concat(),
                "fragment",
            ),
            (client_frame(true, opcode::TEXT, &[0xff, 0xfe]), "utf-8"),
            (
                [
                    client_frame(false, opcode::TEXT, &[0xc3]),
                    client_frame(true, opcode::CONTINUE, b"("),
                ]
                .concat(),
                "utf-8",
            ),
            (client_frame(true, opcode::CLOSE, &[3]), "close"),
            (
                client_frame(true, opcode::CLOSE, &[0x03, 0xE8, 0xff]),
                "utf-8",
            ),
            (
                [
                    client_frame(false, opcode::BINARY, &vec![0; 90_000]),
                    client_frame(true, opcode::CONTINUE, &vec![0; 90_000]),
                ]
                .concat(),
                "180000",
            ),
        ];
        for (wire, expected) in cases {
            let (mut client, mut server) = pair().await;
            let mut reader = Reader::new(Vec::new(), &limits(), None);
            client.write_all(&wire).await.unwrap();
            let mut got = Vec::new();
            while !got.iter().any(Result::is_err) {
                got.extend(drain(&mut reader, &mut server).await);
                tokio::task::yield_now().await;
            }
            let err = got.into_iter().find_map(Result::err).unwrap();
            assert!(err.to_lowercase().contains(expected), "{expected}: {err}");
        }
    }

    /// A message compressed as a client does it (raw deflate, sync flush,
    /// the tail stripped).
    fn deflated(data: &[u8]) -> Vec<u8> {
        let mut compressor =
            flate2::Compress::new_with_window_bits(flate2::Compression::new(6), false, 15);
        let mut out = Vec::with_capacity(data.len() + 64);
        compressor
            .compress_vec(data, &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        out.truncate(out.len() - 4);
        out
    }

    /// With permessage-deflate agreed: a compressed message split over
    /// fragments is inflated whole; RSV1 on a continuation, data that is
    /// not deflate, and a message that inflates past the limit each end
    /// reading with their close code.
    #[tokio::test]
    async fn compressed_messages_are_inflated_and_their_faults_closed() {
        let agreed = Some(Deflate {
            min_bytes: 0,
            level: 1,
            server_takeover: false,
            client_takeover: false,
            server_window_bits: 15,
        });
        let text = "κόσμε chat line ".repeat(200);
        let packed = deflated(text.as_bytes());
        let (first, rest) = packed.split_at(packed.len() / 2);
        let mut wire = client_frame(false, opcode::TEXT, first);
        wire[0] |= 0x40;
        wire.extend(client_frame(true, opcode::CONTINUE, rest));
        let (mut client, mut server) = pair().await;
        let mut reader = Reader::new(Vec::new(), &limits(), agreed);
        client.write_all(&wire).await.unwrap();
        let mut got = Vec::new();
        while got.is_empty() {
            got.extend(drain(&mut reader, &mut server).await);
            tokio::task::yield_now().await;
        }
        assert_eq!(got, [Ok(WsMessage::text(text))]);

        let mut rsv1_on_continuation = client_frame(false, opcode::BINARY, &deflated(b"a"));
        rsv1_on_continuation.extend(client_frame(true, opcode::CONTINUE, b""));
        let last = rsv1_on_continuation.len() - 6;
        rsv1_on_continuation[last] |= 0x40;
        let mut corrupt = client_frame(true, opcode::BINARY, b"\xff\xff\xff");
        corrupt[0] |= 0x40;
        let mut bomb = client_frame(true, opcode::BINARY, &deflated(&[0u8; 200_000]));
        bomb[0] |= 0x40;
        let cases = [(rsv1_on_continuation, 1002), (corrupt, 1007), (bomb, 1009)];
        for (wire, code) in cases {
            let (mut client, mut server) = pair().await;
            let mut reader = Reader::new(Vec::new(), &limits(), agreed);
            client.write_all(&wire).await.unwrap();
            let err = loop {
                let read = std::future::poll_fn(|cx| reader.poll_next(&mut server, cx)).await;
                match read {
                    Some(Err(err)) => break err,
                    Some(Ok(_)) => {}
                    None => panic!("stream ended without an error ({code})"),
                }
            };
            assert_eq!(err.close().map(|(c, _)| c), Some(code), "{err}");
        }
    }

    /// The close frame the reader makes of a client's close payload.
    async fn read_close(payload: &[u8]) -> Result<Option<CloseFrame>, ReadError> {
        let (mut client, mut server) = pair().await;
        let mut reader = Reader::new(Vec::new(), &limits(), None);
        client
            .write_all(&client_frame(true, opcode::CLOSE, payload))
            .await
            .unwrap();
        let read = std::future::poll_fn(|cx| reader.poll_next(&mut server, cx)).await;
        match read {
            Some(Ok(WsMessage::Close(frame))) => Ok(frame),
            Some(Ok(other)) => panic!("{other:?}"),
            Some(Err(err)) => Err(err),
            None => panic!("stream ended"),
        }
    }

    #[tokio::test]
    async fn a_close_code_not_for_the_wire_reads_as_a_protocol_error() {
        // Reserved (1005 no status, 1015 TLS) or unassigned (1016, 2999).
        for code in [1005u16, 1015, 1016, 2999] {
            let frame = read_close(&code.to_be_bytes()).await.unwrap().unwrap();
            assert_eq!(frame.code, CloseCode::Protocol, "{code}");
            assert!(frame.reason.contains(&code.to_string()), "{}", frame.reason);
        }
        // Registered codes, 1012-1014 included, are taken as sent.
        for code in [1000u16, 1003, 1012, 1013, 1014, 3000, 4999] {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(b"bye");
            let frame = read_close(&payload).await.unwrap().unwrap();
            assert_eq!(u16::from(frame.code), code);
            assert_eq!(frame.reason.as_str(), "bye");
        }
    }

    #[tokio::test]
    async fn a_close_reason_that_is_not_utf8_is_1007_naming_the_close_frame() {
        let err = read_close(&[0x03, 0xE8, 0xC0, 0x80]).await.unwrap_err();
        let (code, reason) = err.close().unwrap();
        assert_eq!(code, 1007);
        assert_eq!(reason, "invalid UTF-8 in the close frame's reason");
    }

    #[tokio::test]
    async fn the_end_of_the_stream_ends_the_reader() {
        let (mut client, mut server) = pair().await;
        let mut reader = Reader::new(Vec::new(), &limits(), None);
        // Half a frame, then the end.
        client
            .write_all(&client_frame(true, opcode::TEXT, b"cut short")[..6])
            .await
            .unwrap();
        drop(client);
        let end = std::future::poll_fn(|cx| reader.poll_next(&mut server, cx));
        assert!(
            end.await.is_none(),
            "a half frame then the end is no message"
        );
    }
}
