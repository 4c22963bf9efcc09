//! Closes the host starts while the client is still sending: the client
//! must receive the close frame with its code and reason, not a reset. The
//! host sends its close frame, then reads and discards what the client
//! still sends until the client closes (a lingering close); dropping the
//! socket with unread input would make the kernel send a reset, and the
//! client would throw away the close frame it had not read yet.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 20;

/// An 8 MiB message to `/echo` (1 MiB limit; more than loopback's socket
/// buffers take, so the client is still writing when the server closes),
/// from a client library that writes the whole message before it reads
/// anything: each of 20 clients gets 1009 and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_a_message_too_large_receives_1009() {
    let server = TestServer::start_with(&["echo"], patient_config()).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut ws = server.connect("/echo").await;
        clients.push(tokio::spawn(async move {
            // The send may fail only after the close frame has arrived.
            let sent = ws.send(Message::binary(vec![7u8; 8 << 20])).await;
            let frame = tokio::time::timeout(WAIT, async {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Close(frame))) => return Ok(frame),
                        Some(Ok(_)) => {}
                        Some(Err(err)) => return Err(format!("{err} (send: {sent:?})")),
                        None => return Err(format!("no close frame (send: {sent:?})")),
                    }
                }
            })
            .await
            .expect("nothing received");
            frame.map(|frame| {
                let frame = frame.expect("close frame without a code");
                (u16::from(frame.code), frame.reason.to_string())
            })
        }));
    }
    for client in clients {
        let (code, reason) = client.await.unwrap().expect("the close frame was lost");
        assert_eq!(code, 1009);
        assert_eq!(
            reason,
            "message of 8388608 bytes exceeds the limit of 1048576 bytes"
        );
    }
    server.stop().await;
}

/// Writes `first` and then `mib` MiB of binary frames to `/echo` before
/// reading anything, then reads until the close frame (skipping echoes);
/// returns its code and reason, after checking that the stream ends there.
async fn flood_then_read_close(server: &TestServer, first: Vec<u8>, mib: usize) -> (u16, String) {
    let mut stream = raw_upgrade(server.addr, "/echo").await;
    let mut flood = first;
    let chunk = masked_frame(0x2, &[1u8; 64 << 10]);
    for _ in 0..mib * 16 {
        flood.extend_from_slice(&chunk);
    }
    stream
        .write_all(&flood)
        .await
        .expect("the flood was cut off");
    let payload = tokio::time::timeout(WAIT, async {
        loop {
            match read_raw_frame(&mut stream).await {
                (0x8, payload) => return payload,
                _ => continue,
            }
        }
    })
    .await
    .expect("no close frame");
    // The server is done writing: the stream ends after the frame.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("the stream did not end")
        .expect("the stream ended with an error");
    assert!(rest.is_empty());
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    (code, String::from_utf8_lossy(&payload[2..]).into_owned())
}

/// Each close the host starts while the client is still writing, 20
/// clients at a time, from a raw client that writes everything before it
/// reads: each gets the close frame, then the end of the stream (without
/// the lingering close, the writes fail with a reset and the frame is lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_after_an_error_receives_the_close_frame() {
    let mut config = patient_config();
    // The slow-consumer case (1008): 24 MiB of echoes nobody reads fill the
    // socket buffers and then this queue; what the client still writes
    // after the close is under the linger limit.
    config.limits.outbound_queue_bytes = 1 << 20;
    config.limits.close_linger_bytes = 64 << 20;
    let server = TestServer::start_with(&["echo"], config).await;
    let reserved_bit = {
        let mut frame = masked_frame(0x2, b"bad");
        frame[0] |= 0x40;
        frame
    };
    // The header of a 2 MiB frame (1 MiB limit), then the flood as its payload.
    let too_large = masked_frame(0x2, &[0u8; 2 << 20])[..14].to_vec();
    let not_utf8 = masked_frame(0x1, b"ok \xed\xa0\x80");
    let cases: [(&str, Vec<u8>, usize, u16, &str); 4] = [
        ("protocol error", reserved_bit, 4, 1002, "Reserved bits"),
        ("too large", too_large, 4, 1009, "exceeds the limit"),
        ("invalid UTF-8", not_utf8, 4, 1007, "invalid UTF-8"),
        ("slow consumer", Vec::new(), 24, 1008, "slow consumer"),
    ];
    for (name, first, mib, code, reason) in cases {
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let first = first.clone();
            let server = &server;
            clients.push(async move { flood_then_read_close(server, first, mib).await });
        }
        for (got_code, got_reason) in futures_util::future::join_all(clients).await {
            assert_eq!(got_code, code, "{name}: {got_reason}");
            assert!(got_reason.contains(reason), "{name}: {got_reason}");
        }
    }
    server.stop().await;
}

/// What a client sends after our close counts against
/// `limits.close_linger_bytes`: past it, the socket is dropped.
#[tokio::test]
async fn lingering_stops_at_its_byte_limit() {
    let mut config = test_config();
    config.limits.close_linger_bytes = 1 << 20;
    config.limits.close_timeout_ms = 20_000;
    let server = TestServer::start_with(&["echo"], config).await;
    let mut stream = raw_upgrade(server.addr, "/echo").await;
    let mut bad = masked_frame(0x2, b"bad");
    bad[0] |= 0x40;
    stream.write_all(&bad).await.unwrap();
    let (opcode, _) = read_raw_frame(&mut stream).await;
    assert_eq!(opcode, 0x8);
    // Keep writing without ever closing: the server stops reading after
    // 1 MiB and drops the socket long before its 20 s close timeout.
    let chunk = vec![0u8; 64 << 10];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server kept reading past its limit");
    server.stop().await;
}
