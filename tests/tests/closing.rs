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

/// The default close timeout: a loaded test machine may need more than the
/// test config's 500 ms to read what 20 clients are still sending.
fn lingering_config() -> Config {
    let mut config = test_config();
    config.limits.close_timeout_ms = 5_000;
    config
}

/// A 2 MiB message to `/echo` (1 MiB limit), from a client library that
/// writes the whole message before it reads anything: each of 20 clients
/// gets 1009 and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_a_message_too_large_receives_1009() {
    let server = TestServer::start_with(&["echo"], lingering_config()).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut ws = server.connect("/echo").await;
        clients.push(tokio::spawn(async move {
            // The send may fail only after the close frame has arrived.
            let sent = ws.send(Message::binary(vec![7u8; 2 << 20])).await;
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
            "message of 2097152 bytes exceeds the limit of 1048576 bytes"
        );
    }
    server.stop().await;
}

/// A frame that breaks the protocol, followed by 4 MiB more, written before
/// the client reads: each of 20 clients reads the 1002 close frame, then the
/// end of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_after_a_protocol_error_receives_1002() {
    let server = TestServer::start_with(&["echo"], lingering_config()).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut stream = raw_upgrade(server.addr, "/echo").await;
        clients.push(tokio::spawn(async move {
            // Reserved bit 1 set without an extension that defines it.
            let mut flood = masked_frame(0x2, b"bad");
            flood[0] |= 0x40;
            let chunk = masked_frame(0x2, &[1u8; 64 << 10]);
            for _ in 0..64 {
                flood.extend_from_slice(&chunk);
            }
            stream
                .write_all(&flood)
                .await
                .expect("the flood was cut off");
            let (opcode, payload) = tokio::time::timeout(WAIT, read_raw_frame(&mut stream))
                .await
                .expect("no close frame");
            assert_eq!(opcode, 0x8);
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            // The server is done writing: the stream ends after the frame.
            let mut rest = Vec::new();
            tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
                .await
                .expect("the stream did not end")
                .expect("the stream ended with an error");
            assert!(rest.is_empty());
            (code, String::from_utf8_lossy(&payload[2..]).into_owned())
        }));
    }
    for client in clients {
        let (code, reason) = client.await.unwrap();
        assert_eq!(code, 1002, "{reason}");
        assert!(reason.contains("Reserved bits"), "{reason}");
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
