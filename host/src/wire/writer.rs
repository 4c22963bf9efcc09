//! The write side of a connection: frames encoded once, written in batches
//! straight to the socket.
//!
//! The [`Writer`] takes queued frames from a
//! connection's [`ConnHandle`] and writes up to [`WRITE_BATCH`] of them with
//! one system call: small frames are copied one after the other into a
//! buffer of the worker thread's (so a batch of chat lines leaves as one
//! `send`, as from a hand-written server's write buffer), large payloads
//! go from where they are (`sendmsg` with the headers), and a connection
//! keeps no write buffer of its own.
//!
//! Control frames go the same way: pongs are queued like data frames (and
//! count against the same limits), our close frame goes after the queued
//! frames (or instead of them, when the connection is killed), and the
//! answer to the peer's close after the frame half-written, if any, so
//! frames never interleave on the wire.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::task::{Context, Poll, ready};

use rustix::net::{self, SendAncillaryBuffer, SendFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tracing::debug;

use crate::wire::deflate::{self, Deflate};
use crate::wire::frame::Frame;
use crate::wire::outbound::ConnHandle;

/// Frames taken off the queue per batch at most; between two batches the
/// connection's task may read. A batch of small frames leaves with one
/// system call (up to [`STAGE_BYTES`]): 512 chat lines of 64 B are 34 KB.
/// With 64, a broadcast left in smaller sends and cost the client more
/// `recv`s per delivery (BENCHMARKS.md, session 8).
pub const WRITE_BATCH: usize = 512;

/// Frames taken from the queue and not yet completely written.
#[derive(Default)]
struct Batch {
    frames: Vec<Frame>,
    /// Frames at the front already completely written.
    done: usize,
    /// Bytes of `frames[done]` already written.
    offset: usize,
}

/// Batch capacity kept once written; a larger one (a burst) is given back,
/// so an idle connection holds none.
const KEEP_BATCH_CAPACITY: usize = 8;

impl Batch {
    fn is_empty(&self) -> bool {
        self.done == self.frames.len()
    }

    /// Forgets every frame not started yet; the one half-written stays, so
    /// the stream is not cut inside a frame.
    fn drop_unstarted(&mut self) {
        let keep = self.done + usize::from(self.offset > 0);
        self.frames.truncate(keep);
        if self.is_empty() {
            self.clear();
        }
    }

    fn clear(&mut self) {
        if self.frames.capacity() > KEEP_BATCH_CAPACITY {
            self.frames = Vec::new();
        } else {
            self.frames.clear();
        }
        self.done = 0;
        self.offset = 0;
    }

    /// Counts `written` bytes as sent.
    fn advance(&mut self, mut written: usize) {
        while written > 0 {
            let left = self.frames[self.done].wire_len() - self.offset;
            if written < left {
                self.offset += written;
                return;
            }
            written -= left;
            self.done += 1;
            self.offset = 0;
        }
    }

    /// Writes the whole batch; ready once it is written (or failed).
    fn poll_write(&mut self, tcp: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let written = ready!(STAGE.with_borrow_mut(|stage| {
                stage.fill(self);
                stage.poll_send(tcp, &self.frames, cx)
            }))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
        }
        self.clear();
        Poll::Ready(Ok(()))
    }
}

/// Payloads up to this size are copied next to their header when sent, so
/// that a batch of small frames (an echo reply, a broadcast's chat lines)
/// leaves as one buffer; a larger payload is sent from where it is.
const COPY_BYTES: usize = 1024;

/// Bytes copied for one system call at most; the rest of the batch goes
/// with the next.
const STAGE_BYTES: usize = 64 << 10;

/// Flags of our sends. On Linux, a send to a peer that is gone fails with
/// an error instead of raising SIGPIPE only with `MSG_NOSIGNAL` (as std's
/// own socket writes pass it); elsewhere Rust programs ignore SIGPIPE, and
/// the sockets of some systems (macOS) carry `SO_NOSIGPIPE` instead.
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: SendFlags = SendFlags::NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: SendFlags = SendFlags::empty();

/// Buffers handed to one system call at most (a large frame takes two: its
/// header and its payload).
const MAX_SLICES: usize = 32;

thread_local! {
    /// One per thread, so a connection keeps no write buffer between writes.
    static STAGE: RefCell<Stage> = const {
        RefCell::new(Stage {
            bytes: Vec::new(),
            pieces: Vec::new(),
        })
    };
}

/// What one system call sends: small frames (and every header) copied one
/// after the other into `bytes`, large payloads from where they are.
struct Stage {
    bytes: Vec<u8>,
    pieces: Vec<Piece>,
}

/// One buffer of a send: a run of the stage's bytes, or a payload (its
/// frame in the batch, from an offset).
#[derive(Clone, Copy)]
enum Piece {
    Staged(usize, usize),
    Payload(usize, usize),
}

impl Stage {
    /// Lays out what is left of `batch`, or as much of it as one system
    /// call takes.
    fn fill(&mut self, batch: &Batch) {
        self.bytes.clear();
        self.pieces.clear();
        let mut run_start = 0;
        for (i, frame) in batch.frames[batch.done..].iter().enumerate() {
            if self.pieces.len() + 2 > MAX_SLICES || self.bytes.len() >= STAGE_BYTES {
                break;
            }
            let skip = if i == 0 { batch.offset } else { 0 };
            let head = frame.head();
            if let Some(head_left) = head.get(skip..) {
                self.bytes.extend_from_slice(head_left);
            }
            let payload_skip = skip.saturating_sub(head.len());
            if frame.len() <= COPY_BYTES {
                self.bytes
                    .extend_from_slice(&frame.payload()[payload_skip..]);
                continue;
            }
            if self.bytes.len() > run_start {
                self.pieces.push(Piece::Staged(run_start, self.bytes.len()));
                run_start = self.bytes.len();
            }
            self.pieces
                .push(Piece::Payload(batch.done + i, payload_skip));
        }
        if self.bytes.len() > run_start {
            self.pieces.push(Piece::Staged(run_start, self.bytes.len()));
        }
    }

    fn slice<'a>(&'a self, piece: Piece, frames: &'a [Frame]) -> &'a [u8] {
        match piece {
            Piece::Staged(start, end) => &self.bytes[start..end],
            Piece::Payload(frame, skip) => &frames[frame].payload()[skip..],
        }
    }

    /// Sends what [`Stage::fill`] laid out: one buffer with `send`, several
    /// with `sendmsg` (neither pays for the file layer `writev` goes
    /// through), with rustix (on Linux raw system calls; libc's wrappers
    /// are cancellation points, with bookkeeping on every call).
    fn poll_send(
        &self,
        tcp: &TcpStream,
        frames: &[Frame],
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let used = self.pieces.len();
        for (slice, piece) in slices.iter_mut().zip(&self.pieces) {
            *slice = IoSlice::new(self.slice(*piece, frames));
        }
        let slices = &slices[..used];
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            let sent = tcp.try_io(Interest::WRITABLE, || {
                Ok(match slices {
                    [one] => net::send(tcp, one, SEND_FLAGS)?,
                    _ => {
                        net::sendmsg(tcp, slices, &mut SendAncillaryBuffer::default(), SEND_FLAGS)?
                    }
                })
            });
            match sent {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                sent => return Poll::Ready(sent),
            }
        }
    }
}

/// How the write side ended.
#[derive(Debug)]
pub enum WriterExit {
    /// We sent this close frame after the queued frames; now wait for the
    /// peer's answer.
    Closed(CloseFrame),
    /// Killed: queued frames dropped, this close frame sent.
    Killed(CloseFrame),
    /// The peer's close is answered: the connection is over.
    Answered,
    /// The socket failed.
    Failed,
}

/// Where the write side is.
enum WriteState {
    /// Writing queued frames as they come.
    Open,
    /// A close frame goes out once the batch is written: after the queued
    /// frames (`killed` false) or instead of them (`killed`).
    Close { frame: CloseFrame, killed: bool },
    /// The close frame (ours, or our answer to the peer's) is in the batch;
    /// once it is written, the write side ends with this.
    Last(Option<WriterExit>),
    /// Ended: nothing more is taken from the queue.
    Done,
}

/// The write side of a connection, driven from the connection's task by
/// polling. A frame leaves the queue only when there is room for it in the
/// batch, and the batch is written before anything else is.
pub struct Writer {
    state: WriteState,
    batch: Batch,
    /// permessage-deflate, when agreed: data frames are compressed as they
    /// are taken from the queue (a broadcast's arrive compressed already).
    deflate: Option<Deflate>,
    /// The connection's own compressor, when the server keeps its context.
    compressor: deflate::Own<flate2::Compress>,
}

impl Writer {
    pub fn new(deflate: Option<Deflate>) -> Writer {
        Writer {
            state: WriteState::Open,
            batch: Batch::default(),
            deflate,
            compressor: deflate::Own::default(),
        }
    }

    /// Compresses the data frames from `start` on in the batch, in order
    /// (a compressor that keeps its context must see them in the order the
    /// peer will).
    fn compress_from(&mut self, start: usize) {
        let Some(agreed) = &self.deflate else {
            return;
        };
        for frame in &mut self.batch.frames[start..] {
            if frame.is_plain_data() && frame.len() >= agreed.min_bytes {
                let deflated = deflate::compress(agreed, &mut self.compressor, frame.payload());
                *frame = frame.compressed(deflated);
            }
        }
    }

    /// Nothing is left to write, and nothing will be taken from the queue.
    pub fn is_done(&self) -> bool {
        matches!(self.state, WriteState::Done) && self.batch.is_empty()
    }

    /// Whether a close frame (ours, or our answer to the peer's) has left
    /// the queue for the socket, or the write side has ended: no other
    /// close frame can follow.
    pub fn close_taken(&self) -> bool {
        matches!(self.state, WriteState::Last(_) | WriteState::Done)
    }

    /// The peer closed: drop what has not started, answer with the same
    /// close frame (after a frame half-written, if any), and end.
    pub fn answer_close(&mut self, close: Option<&CloseFrame>) {
        self.batch.drop_unstarted();
        self.batch.frames.push(Frame::close(close));
        self.state = WriteState::Last(Some(WriterExit::Answered));
    }

    /// Writes what is queued, up to [`WRITE_BATCH`] frames per system
    /// call. Ready when the write side has ended.
    pub fn poll(
        &mut self,
        tcp: &TcpStream,
        handle: &ConnHandle,
        cx: &mut Context<'_>,
    ) -> Poll<WriterExit> {
        match self.poll_inner(tcp, handle, cx) {
            Poll::Ready(Ok(exit)) => {
                self.state = WriteState::Done;
                Poll::Ready(exit)
            }
            Poll::Ready(Err(err)) => {
                debug!(conn = handle.id(), error = %err, "write failed");
                self.state = WriteState::Done;
                self.batch.clear();
                Poll::Ready(WriterExit::Failed)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_inner(
        &mut self,
        tcp: &TcpStream,
        handle: &ConnHandle,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<WriterExit>> {
        loop {
            match &mut self.state {
                WriteState::Open => {
                    if let Some(frame) = handle.take_kill() {
                        handle.clear();
                        self.batch.drop_unstarted();
                        self.state = WriteState::Close {
                            frame,
                            killed: true,
                        };
                        continue;
                    }
                    ready!(self.batch.poll_write(tcp, cx))?;
                    let start = self.batch.frames.len();
                    if let Some(frame) = handle.dequeue_into(&mut self.batch.frames, WRITE_BATCH) {
                        self.state = WriteState::Close {
                            frame,
                            killed: false,
                        };
                    }
                    self.compress_from(start);
                    let taken = &self.batch.frames[start..];
                    if !taken.is_empty() {
                        let metrics = handle.metrics();
                        metrics.messages_out.inc_by(taken.len() as u64);
                        let bytes: usize = taken.iter().map(Frame::len).sum();
                        metrics.bytes_out.inc_by(bytes as u64);
                    }
                    let full = self.batch.frames.len() >= WRITE_BATCH;
                    ready!(self.batch.poll_write(tcp, cx))?;
                    if !matches!(self.state, WriteState::Open) {
                        continue;
                    }
                    if full {
                        // More may wait: let the reader have a go first.
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
                WriteState::Close { frame, killed } => {
                    self.batch.frames.push(Frame::close(Some(frame)));
                    let exit = if *killed {
                        WriterExit::Killed(frame.clone())
                    } else {
                        WriterExit::Closed(frame.clone())
                    };
                    self.state = WriteState::Last(Some(exit));
                }
                WriteState::Last(exit) => {
                    ready!(self.batch.poll_write(tcp, cx))?;
                    return Poll::Ready(Ok(exit.take().expect("the last frame is written once")));
                }
                WriteState::Done => {
                    ready!(self.batch.poll_write(tcp, cx))?;
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::SockRef;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};

    fn wire(frame: &Frame) -> Vec<u8> {
        [frame.head(), frame.payload()].concat()
    }

    fn tungstenite_wire(payload: &[u8], opcode: OpCode) -> Vec<u8> {
        let mut out = Vec::new();
        WsFrame::message(Bytes::copy_from_slice(payload), opcode, true)
            .format(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn frames_encode_as_tungstenite_does() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = vec![0xA5; len];
            assert_eq!(
                wire(&Frame::binary(Bytes::from(payload.clone()))),
                tungstenite_wire(&payload, OpCode::Data(Data::Binary)),
                "binary of {len} bytes"
            );
            let text = "é".repeat(len / 2);
            assert_eq!(
                wire(&Frame::text(Utf8Bytes::from(text.clone()))),
                tungstenite_wire(text.as_bytes(), OpCode::Data(Data::Text)),
                "text of {} bytes",
                text.len()
            );
        }
        let mut ping = Vec::new();
        WsFrame::ping(Bytes::new()).format(&mut ping).unwrap();
        assert_eq!(wire(&Frame::ping()), ping);
        let mut pong = Vec::new();
        WsFrame::pong(Bytes::from_static(b"abc"))
            .format(&mut pong)
            .unwrap();
        assert_eq!(wire(&Frame::pong(Bytes::from_static(b"abc"))), pong);
        for close in [
            None,
            Some(CloseFrame {
                code: CloseCode::Away,
                reason: Utf8Bytes::from_static("server shutting down"),
            }),
        ] {
            let mut expected = Vec::new();
            WsFrame::close(close.clone()).format(&mut expected).unwrap();
            assert_eq!(wire(&Frame::close(close.as_ref())), expected, "{close:?}");
        }
    }

    #[test]
    fn a_partial_write_resumes_inside_the_frame() {
        let mut batch = Batch::default();
        batch.frames.push(Frame::binary(Bytes::from_static(b"abc")));
        batch.frames.push(Frame::binary(Bytes::from(vec![7; 300])));
        // Header (2) and 2 of the 3 payload bytes.
        batch.advance(4);
        assert_eq!((batch.done, batch.offset), (0, 4));
        batch.advance(1);
        assert_eq!((batch.done, batch.offset), (1, 0));
        // Into the second frame's 4-byte header, then its payload.
        batch.advance(2);
        assert_eq!((batch.done, batch.offset), (1, 2));
        batch.drop_unstarted();
        assert_eq!(
            batch.frames.len() - batch.done,
            1,
            "the half-written frame stays"
        );
        batch.advance(302);
        assert!(batch.is_empty());
    }

    /// Frames of every size class, sent through socket buffers far smaller
    /// than the batch, so that sends stop inside headers, inside copied
    /// frames and inside payloads sent in place, and each resumes there.
    #[tokio::test]
    async fn a_batch_sent_in_pieces_arrives_whole() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        server.set_nodelay(true).unwrap();
        SockRef::from(&server)
            .set_send_buffer_size(16 << 10)
            .unwrap();
        SockRef::from(&client)
            .set_recv_buffer_size(32 << 10)
            .unwrap();

        let sizes = [0, 1, 125, 126, COPY_BYTES, COPY_BYTES + 1, 3000, 70_000];
        let mut batch = Batch::default();
        let mut expected = Vec::new();
        for i in 0..WRITE_BATCH {
            let payload: Vec<u8> = (0..sizes[i % sizes.len()]).map(|b| (b ^ i) as u8).collect();
            let frame = Frame::binary(Bytes::from(payload));
            expected.extend(wire(&frame));
            batch.frames.push(frame);
        }
        let total = expected.len();
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut got = Vec::new();
            let mut chunk = [0; 1500];
            while got.len() < total {
                let n = client.read(&mut chunk).await.unwrap();
                assert!(n > 0, "stream ended after {} of {total} bytes", got.len());
                got.extend_from_slice(&chunk[..n]);
                tokio::task::yield_now().await;
            }
            got
        });
        let mut waits = 0;
        std::future::poll_fn(|cx| {
            let poll = batch.poll_write(&server, cx);
            waits += usize::from(poll.is_pending());
            poll
        })
        .await
        .unwrap();
        let got = reader.await.unwrap();
        assert!(waits > 0, "the socket took the whole batch at once");
        assert!(
            got == expected,
            "the bytes on the wire differ from the frames"
        );
        assert!(batch.is_empty());
    }

    /// A send resumed at every byte of a batch (inside a header, a copied
    /// frame, a payload sent in place) sends exactly the rest.
    #[tokio::test]
    async fn a_send_resumes_at_any_byte() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let frames = [
            Frame::binary(Bytes::from_static(b"abc")),
            Frame::binary(Bytes::from(vec![7; COPY_BYTES + 200])),
            Frame::text(Utf8Bytes::from("x".repeat(130))),
            Frame::ping(),
        ];
        let expected: Vec<u8> = frames.iter().flat_map(wire).collect();
        let mut got = vec![0; expected.len()];
        for start in 0..expected.len() {
            let mut batch = Batch::default();
            batch.frames.extend(frames.iter().cloned());
            batch.advance(start);
            std::future::poll_fn(|cx| batch.poll_write(&server, cx))
                .await
                .unwrap();
            let rest = &mut got[start..];
            client.read_exact(rest).await.unwrap();
            assert!(*rest == expected[start..], "resumed at byte {start}");
        }
    }

    #[test]
    fn unstarted_frames_are_dropped_whole() {
        let mut batch = Batch::default();
        for _ in 0..3 {
            batch.frames.push(Frame::binary(Bytes::from_static(b"xy")));
        }
        batch.advance(4);
        batch.drop_unstarted();
        assert!(batch.is_empty(), "no frame was half-written");
    }
}
