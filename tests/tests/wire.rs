//! The read side on the wire: however a client's bytes are cut into
//! segments (many frames in one write, one frame over many writes), every
//! message arrives whole and in order; and a client that sends pings without
//! reading the pongs is bounded by the outbound limits like any other.

use std::time::Duration;

use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

fn payload(i: usize) -> Vec<u8> {
    // Sizes around every header form and past one read (64 KiB).
    let len = [0, 1, 125, 126, 1000, 4096, 65_535, 65_536, 100_000][i % 9];
    (0..len).map(|b| ((b + i) % 251) as u8).collect()
}

#[tokio::test]
async fn frames_in_one_write_and_one_frame_in_many_arrive_whole() {
    let server = TestServer::start(&["echo"]).await;
    let mut stream = raw_upgrade(server.addr, "/echo").await;
    stream.set_nodelay(true).unwrap();

    // Forty frames, pings among them, in one write.
    let mut wire = Vec::new();
    for i in 0..40 {
        wire.extend(masked_frame(OP_BINARY, &payload(i)));
        if i % 10 == 0 {
            wire.extend(masked_frame(OP_PING, &[i as u8]));
        }
    }
    stream.write_all(&wire).await.unwrap();
    let (mut echoes, mut pongs) = (0, 0);
    while echoes < 40 || pongs < 4 {
        let (opcode, data) = tokio::time::timeout(WAIT, read_raw_frame(&mut stream))
            .await
            .expect("an echo or a pong");
        match opcode {
            OP_BINARY => {
                assert!(data == payload(echoes), "echo {echoes} differs");
                echoes += 1;
            }
            OP_PONG => {
                assert_eq!(data, [pongs as u8 * 10], "pong {pongs}");
                pongs += 1;
            }
            other => panic!("unexpected opcode {other}"),
        }
    }

    // One frame a byte at a time, each byte its own segment.
    let message = payload(4);
    for byte in masked_frame(OP_BINARY, &message) {
        stream.write_all(&[byte]).await.unwrap();
        tokio::time::sleep(Duration::from_micros(50)).await;
    }
    let (opcode, data) = tokio::time::timeout(WAIT, read_raw_frame(&mut stream))
        .await
        .expect("the echo of the trickled frame");
    assert_eq!((opcode, data == message), (OP_BINARY, true));
    server.stop().await;
}

#[tokio::test]
async fn pings_from_a_client_that_reads_nothing_end_as_a_slow_consumer() {
    let mut config = test_config();
    config.limits.outbound_queue_messages = 64;
    let server = TestServer::start_with(&["echo"], config).await;
    let logs = server.logs();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let mut stream = raw_upgrade_on(stream, "/echo").await;

    // Far more pongs than the socket buffers and the queue hold. The server
    // reads on while it can queue them, then closes the connection: the
    // writes end early (reset, as the server drops a socket with pings
    // still unread) or complete.
    const PINGS: usize = 50_000;
    let ping = masked_frame(OP_PING, &[0x5a; 125]);
    let flood: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * PINGS)
        .collect();
    let _ = tokio::time::timeout(WAIT, stream.write_all(&flood))
        .await
        .expect("the server neither read on nor closed");
    logs.wait_for(&["closing connection", "code=1008", "slow consumer"])
        .await;

    // What reaches the client: some pongs, then (unless the reset came
    // first) the 1008 close, then the end.
    let mut pongs = 0;
    let mut header = [0u8; 2];
    loop {
        let read = tokio::time::timeout(WAIT, stream.read_exact(&mut header))
            .await
            .expect("the stream neither went on nor ended");
        if read.is_err() {
            break;
        }
        let len = usize::from(header[1] & 0x7f);
        let mut data = vec![0; len];
        if stream.read_exact(&mut data).await.is_err() {
            break;
        }
        match header[0] & 0x0f {
            OP_PONG => pongs += 1,
            OP_CLOSE => {
                assert_eq!(u16::from_be_bytes([data[0], data[1]]), 1008);
                assert_eq!(&data[2..], b"slow consumer");
            }
            other => panic!("unexpected opcode {other}"),
        }
    }
    assert!(
        pongs < PINGS,
        "every ping was answered: nothing bounded them"
    );

    // The server serves on.
    let mut other = server.connect("/echo").await;
    assert_eq!(ask(&mut other, "still here").await, "still here");
    drop(stream);
    server.stop().await;
}

/// The peer's close is answered with the same frame, and then the
/// connection ends: 4321, and 1014 (bad gateway, registered after RFC 6455).
/// A code that may not be sent on the wire (1005 means "no code", never
/// sent) is a protocol error, answered as 1002 naming the code.
#[tokio::test]
async fn a_close_is_answered_in_kind_and_a_forbidden_code_as_1002() {
    let server = TestServer::start(&["echo"]).await;
    for (sent, answer) in [
        (
            &[0x10, 0xE1, b'b', b'y', b'e'][..],
            &[0x10, 0xE1, b'b', b'y', b'e'][..],
        ),
        (&[0x03, 0xF6, b'g', b'w'][..], &[0x03, 0xF6, b'g', b'w'][..]),
        (
            &[0x03, 0xED][..],
            &b"\x03\xeaclose code 1005 may not be sent"[..],
        ),
    ] {
        let mut stream = raw_upgrade(server.addr, "/echo").await;
        stream
            .write_all(&masked_frame(OP_CLOSE, sent))
            .await
            .unwrap();
        let (opcode, data) = tokio::time::timeout(WAIT, read_raw_frame(&mut stream))
            .await
            .expect("the close answer");
        assert_eq!((opcode, &data[..]), (OP_CLOSE, answer), "close {sent:?}");
        let mut rest = Vec::new();
        let end = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
            .await
            .expect("the connection did not end after the answer");
        assert!(end.is_ok() && rest.is_empty(), "after the answer: {rest:?}");
    }
    server.stop().await;
}

/// One event queues more frames for its own connection than the writer
/// takes per batch (512): every one arrives, in order, then the reply. Only
/// the first frame into an empty queue wakes the connection's task, so this
/// fails when the writer does not come back for what it left queued. No
/// pings and no idle timeout: no timer may wake the task instead.
#[tokio::test]
async fn more_frames_than_one_batch_all_arrive_in_order() {
    let mut config = test_config();
    config.limits.ping_interval_ms = 0;
    config.limits.idle_timeout_ms = 0;
    let server = TestServer::start_with(&["probe"], config).await;
    let mut ws = server.connect("/probe/").await;
    const FRAMES: usize = 1000;
    send_text(&mut ws, &format!("burst {FRAMES}")).await;
    for i in 0..FRAMES {
        assert_eq!(recv_text(&mut ws).await, i.to_string(), "frame {i}");
    }
    assert_eq!(recv_text(&mut ws).await, format!("sent {FRAMES}"));
    server.stop().await;
}
