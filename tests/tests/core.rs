//! The core slice end to end: the sample controllers over real sockets,
//! routing, and module loading failures.

use std::sync::Arc;

use futures_util::SinkExt;
use serde_json::json;
use switchyard_tests::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn echo_returns_text_and_binary_unchanged() {
    let server = TestServer::start(&["echo"]).await;
    let mut ws = server.connect("/echo").await;

    send_text(&mut ws, "hello").await;
    assert_eq!(recv_text(&mut ws).await, "hello");

    let multibyte = "héllo wörld · 日本語 · 🚂🚃🚃";
    send_text(&mut ws, multibyte).await;
    assert_eq!(recv_text(&mut ws).await, multibyte);

    let binary: Vec<u8> = (0..=255u8).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::binary(binary));

    send_text(&mut ws, "").await;
    assert_eq!(recv_text(&mut ws).await, "");

    // The largest message the default limit allows, both kinds.
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::binary(big));
    let big_text = "ü".repeat((1 << 20) / 2);
    send_text(&mut ws, &big_text).await;
    assert_eq!(recv_text(&mut ws).await, big_text);

    // A trailing slash reaches the same route.
    let mut other = server.connect("/echo/").await;
    send_text(&mut other, "slash").await;
    assert_eq!(recv_text(&mut other).await, "slash");
    server.stop().await;
}

#[tokio::test]
async fn echo_keeps_order_under_pipelining() {
    let server = TestServer::start(&["echo"]).await;
    let mut ws = server.connect("/echo").await;
    for i in 0..500 {
        ws.feed(Message::text(format!("m{i}"))).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..500 {
        assert_eq!(recv_text(&mut ws).await, format!("m{i}"));
    }
    server.stop().await;
}

/// Many clients pipelining into one shared instance at once: events run
/// inline, by a task that found the instance free, or by a drainer, and
/// every client still gets each of its replies exactly once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pipelining_clients_share_one_instance_without_loss_or_reordering() {
    let server = TestServer::start(&["echo"]).await;
    let mut clients = Vec::new();
    for c in 0..40 {
        let mut ws = server.connect("/echo").await;
        clients.push(tokio::spawn(async move {
            for i in 0..300 {
                ws.feed(Message::text(format!("c{c}-{i}"))).await.unwrap();
            }
            ws.flush().await.unwrap();
            for i in 0..300 {
                assert_eq!(recv_text(&mut ws).await, format!("c{c}-{i}"));
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    server.stop().await;
}

/// Ten chat clients all sending at once: each hears every other sender's
/// messages exactly once, in the order they were sent, and never its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_broadcasts_reach_everyone_once_in_each_senders_order() {
    const CLIENTS: usize = 10;
    const MESSAGES: usize = 100;
    let server = TestServer::start(&["chat"]).await;
    let mut sockets = Vec::new();
    for c in 0..CLIENTS {
        let mut ws = server.connect(&format!("/chat/?name=u{c}")).await;
        // The greeting comes from on-open: later broadcasts include us.
        assert_eq!(recv_json(&mut ws).await["type"], "system");
        sockets.push(ws);
    }
    let mut clients = Vec::new();
    for (c, mut ws) in sockets.into_iter().enumerate() {
        clients.push(tokio::spawn(async move {
            for i in 0..MESSAGES {
                ws.feed(Message::text(format!("{i}"))).await.unwrap();
            }
            ws.flush().await.unwrap();
            let mut next = [0usize; CLIENTS];
            let mut heard = 0;
            while heard < (CLIENTS - 1) * MESSAGES {
                let msg = recv_json(&mut ws).await;
                if msg["type"] != "message" {
                    continue; // join notices of later clients
                }
                let from: usize = msg["user"].as_str().unwrap()[1..].parse().unwrap();
                assert_ne!(from, c, "u{c} heard its own message");
                let seq: usize = msg["data"].as_str().unwrap().parse().unwrap();
                assert_eq!(seq, next[from], "u{c} heard u{from} out of order");
                next[from] += 1;
                heard += 1;
            }
            ws
        }));
    }
    let mut sockets = Vec::new();
    for client in clients {
        sockets.push(client.await.unwrap());
    }
    // Nothing more was sent to anyone: a probe from u0 is the next message
    // every other client hears.
    send_text(&mut sockets[0], "probe").await;
    for ws in &mut sockets[1..] {
        let msg = recv_json(ws).await;
        assert_eq!(msg["data"], "probe", "{msg}");
    }
    server.stop().await;
}

/// A client that closes while frames are still queued for it gets a proper
/// close answer after what the socket already held, not a dropped socket:
/// nothing may follow the answer, so the frames still queued are dropped.
#[tokio::test]
async fn closing_with_frames_queued_gets_a_clean_close_answer() {
    let mut config = test_config();
    // Room for everything below in the queue: no slow-consumer close.
    config.limits.outbound_queue_messages = 100_000;
    config.limits.outbound_queue_bytes = 256 << 20;
    let server = TestServer::start_with(&["chat"], config).await;
    let mut alice = server.connect("/chat/?name=alice").await;
    recv_json(&mut alice).await; // greeting
    let mut bob = server.connect("/chat/?name=bob").await;
    recv_json(&mut bob).await;
    let mut carol = server.connect("/chat/?name=carol").await;
    recv_json(&mut carol).await;
    recv_json(&mut bob).await; // carol joined

    // Bob sends 32 MiB; Alice reads none of it, so most of it waits in her
    // queue behind full socket buffers. Carol reads it all: then every
    // broadcast has been queued for Alice too.
    let chunk = vec![7u8; 16 << 10];
    for _ in 0..2_000 {
        bob.feed(Message::binary(chunk.clone())).await.unwrap();
    }
    bob.flush().await.unwrap();
    for _ in 0..2_000 {
        assert_eq!(recv(&mut carol).await, Message::binary(chunk.clone()));
    }

    alice
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .unwrap();
    let mut data = 0;
    let answer = loop {
        match recv(&mut alice).await {
            Message::Close(frame) => break frame.expect("a close code"),
            _ => data += 1,
        }
    };
    assert_eq!(answer.code, CloseCode::Normal);
    assert!(data < 2_000, "every queued frame was sent after the close");
    server.stop().await;
}

#[tokio::test]
async fn chat_greets_fans_out_and_announces_leaves() {
    let server = TestServer::start(&["chat", "echo"]).await;
    let greeting = json!({"type": "system", "data": "Hello world!"});

    let mut alice = server.connect("/chat/?name=alice").await;
    assert_eq!(recv_json(&mut alice).await, greeting);

    let mut bob = server.connect("/chat/?name=bob").await;
    assert_eq!(recv_json(&mut bob).await, greeting);
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"type": "join", "user": "bob"})
    );

    // Without the trailing slash, and without a name.
    let mut carol = server.connect("/chat").await;
    assert_eq!(recv_json(&mut carol).await, greeting);
    let carol_join = recv_json(&mut alice).await;
    assert_eq!(carol_join["type"], "join");
    let carol_name = carol_join["user"].as_str().unwrap().to_owned();
    assert!(carol_name.starts_with("guest-"), "{carol_name}");
    assert_eq!(recv_json(&mut bob).await, carol_join);

    send_text(&mut alice, "hi all").await;
    let from_alice = json!({"type": "message", "user": "alice", "data": "hi all"});
    assert_eq!(recv_json(&mut bob).await, from_alice);
    assert_eq!(recv_json(&mut carol).await, from_alice);

    // Bob answers only after he got Alice's message, so if Alice had been
    // sent her own message it would reach her before Bob's.
    send_text(&mut bob, "hi alice").await;
    let from_bob = json!({"type": "message", "user": "bob", "data": "hi alice"});
    assert_eq!(recv_json(&mut alice).await, from_bob);
    assert_eq!(recv_json(&mut carol).await, from_bob);

    // Binary messages are forwarded unchanged.
    carol.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(recv(&mut alice).await, Message::binary(vec![1, 2, 3]));
    assert_eq!(recv(&mut bob).await, Message::binary(vec![1, 2, 3]));

    // Carol's TCP connection drops without a close frame.
    drop(carol);
    let leave = json!({"type": "leave", "user": carol_name});
    assert_eq!(recv_json(&mut alice).await, leave);
    assert_eq!(recv_json(&mut bob).await, leave);

    // Bob closes cleanly; the server answers his close, Alice is told once.
    bob.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    let answer = expect_close(&mut bob).await;
    assert_eq!(answer.code, CloseCode::Normal);
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"type": "leave", "user": "bob"})
    );

    // Each leave was announced exactly once: the next thing Alice hears is a
    // newcomer's join.
    let mut dave = server.connect("/chat/?name=dave").await;
    assert_eq!(recv_json(&mut dave).await, greeting);
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"type": "join", "user": "dave"})
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_paths_get_404_and_plain_http_gets_426() {
    let server = TestServer::start(&["echo", "chat"]).await;
    assert_eq!(server.refused_status("/nope").await, 404);
    assert_eq!(server.refused_status("/echo/extra").await, 404);
    assert_eq!(server.refused_status("/").await, 404);

    let response = raw_http(server.addr, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 404 "), "{response}");
    assert!(response.contains("no route for /nope"), "{response}");

    let response = raw_http(server.addr, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 426 "), "{response}");
    assert!(response.contains("Upgrade: websocket"), "{response}");

    let response = raw_http(server.addr, "this is not http\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");

    let upgrade_without_key = "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                               Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let response = raw_http(server.addr, upgrade_without_key).await;
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");

    // The routes still serve after all that.
    let mut ws = server.connect("/echo").await;
    send_text(&mut ws, "still here").await;
    assert_eq!(recv_text(&mut ws).await, "still here");
    server.stop().await;
}

/// RFC 6455 §4.2.1: a server refuses these upgrades with 400, and says why.
#[tokio::test]
async fn upgrades_the_rfc_refuses_get_400_with_the_reason() {
    let server = TestServer::start(&["echo"]).await;
    let upgrade = |version: &str, headers: &str| {
        format!(
            "GET /echo HTTP/{version}\r\n{headers}Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    let good_key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        (
            upgrade("1.0", &format!("Host: x\r\n{good_key}")),
            "needs HTTP/1.1 or later",
        ),
        (upgrade("1.1", good_key), "missing Host header"),
        (
            upgrade("1.1", "Host: x\r\nSec-WebSocket-Key: x\r\n"),
            "must be 16 bytes in base64",
        ),
        (
            // 15 bytes, well-formed base64.
            upgrade(
                "1.1",
                "Host: x\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\n",
            ),
            "must be 16 bytes in base64",
        ),
        (
            upgrade("1.1", &format!("Host: x\r\n{good_key}{good_key}")),
            "more than one Sec-WebSocket-Key",
        ),
    ];
    for (request, reason) in cases {
        let response = raw_http(server.addr, &request).await;
        assert!(
            response.starts_with("HTTP/1.1 400 "),
            "{request:?}: {response}"
        );
        assert!(response.contains(reason), "{request:?}: {response}");
    }
    // With HTTP/1.1, a Host and one good key, the upgrade goes through.
    raw_upgrade(server.addr, "/echo").await;
    server.stop().await;
}

/// A controller built against WIT 0.3.0, before `host.get-limits` was added,
/// still loads and serves (the host matches 0.3.x imports).
#[tokio::test]
async fn a_controller_built_against_wit_0_3_0_still_serves() {
    let server = TestServer::start(&["compat_030"]).await;
    assert!(server.rejected.is_empty(), "{:?}", server.rejected);
    let mut ws = server.connect("/compat").await;
    assert_eq!(recv_text(&mut ws).await, "built against 0.3.0");
    send_text(&mut ws, "old and new").await;
    assert_eq!(recv_text(&mut ws).await, "old and new");
    server.stop().await;
}

/// `host.get-limits` reports the configured sizes, and the SDK's
/// `Message::try_json` refuses, to the controller, a message the host
/// would not send.
#[tokio::test]
async fn a_controller_learns_the_limits_and_builds_messages_within_them() {
    let mut config = test_config();
    config.limits.max_message_bytes = 5_000;
    config.limits.max_frame_bytes = 5_000;
    config.sandbox.attachment_bytes = 1_000;
    config.sandbox.state_value_bytes = 2_000;
    config.sandbox.state_total_bytes = 30_000;
    let server = TestServer::start_with(&["probe"], config).await;
    let mut ws = server.connect("/probe/").await;
    let limits: serde_json::Value = serde_json::from_str(&ask(&mut ws, "limits").await).unwrap();
    assert_eq!(
        limits,
        json!({
            "max_message_bytes": 5_000,
            "attachment_bytes": 1_000,
            "state_value_bytes": 2_000,
            "state_total_bytes": 30_000,
        })
    );
    // A JSON string of n characters is n + 2 bytes.
    assert_eq!(ask(&mut ws, "json-of 4998").await.len(), 5_000);
    assert_eq!(
        ask(&mut ws, "json-of 4999").await,
        "refused: a message of 5001 bytes exceeds the host's limit of 5000 bytes"
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_modules_are_rejected_and_good_ones_serve() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("garbage.wasm"),
        b"\0asm this is not a module",
    )
    .unwrap();
    std::fs::write(dir.path().join("empty.wasm"), b"").unwrap();
    std::fs::copy(module("wrong_world"), dir.path().join("wrong_world.wasm")).unwrap();
    std::fs::copy(module("echo"), dir.path().join("echo.wasm")).unwrap();
    std::fs::copy(module("chat"), dir.path().join("chat.wasm")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored: not a .wasm file").unwrap();
    let server = TestServer::start_in(dir, test_config()).await;

    assert_eq!(server.rejected.len(), 3, "{:#?}", server.rejected);
    let error_for = |file: &str| {
        server
            .rejected
            .iter()
            .find(|e| e.contains(file))
            .unwrap_or_else(|| panic!("no error names {file}: {:#?}", server.rejected))
            .clone()
    };
    assert!(error_for("garbage.wasm").contains("not a valid WebAssembly component"));
    assert!(error_for("empty.wasm").contains("not a valid WebAssembly component"));
    let wrong = error_for("wrong_world.wasm");
    assert!(wrong.contains("does not implement the world"), "{wrong}");

    let mut ws = server.connect("/echo").await;
    send_text(&mut ws, "fine").await;
    assert_eq!(recv_text(&mut ws).await, "fine");
    let mut chat = server.connect("/chat/").await;
    assert_eq!(recv_json(&mut chat).await["type"], "system");
    server.stop().await;
}

#[tokio::test]
async fn second_module_claiming_a_route_is_rejected_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(module("echo"), dir.path().join("a-echo.wasm")).unwrap();
    std::fs::copy(module("echo"), dir.path().join("b-echo-copy.wasm")).unwrap();
    let server = TestServer::start_in(dir, test_config()).await;

    assert_eq!(server.rejected.len(), 1, "{:#?}", server.rejected);
    let error = &server.rejected[0];
    assert!(error.contains("b-echo-copy.wasm"), "{error}");
    assert!(error.contains("a-echo.wasm"), "{error}");
    assert!(error.contains("/echo"), "{error}");

    let mut ws = server.connect("/echo").await;
    send_text(&mut ws, "first one serves").await;
    assert_eq!(recv_text(&mut ws).await, "first one serves");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_every_connection_with_1001() {
    let server = TestServer::start(&["chat", "echo"]).await;
    let mut alice = server.connect("/chat/?name=alice").await;
    recv_json(&mut alice).await;
    let mut echo = server.connect("/echo").await;
    send_text(&mut echo, "x").await;
    recv_text(&mut echo).await;

    let stopping = tokio::spawn(server.stop());
    assert_eq!(expect_close(&mut alice).await.code, CloseCode::Away);
    assert_eq!(expect_close(&mut echo).await.code, CloseCode::Away);
    stopping.await.unwrap();
}

/// A client may send frames in the same write as its upgrade request: they
/// reach the host with the request, before the socket has anything more to
/// report, and must be served all the same (and in order).
#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(&["echo"]).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut bytes = b"GET /echo HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    for text in ["first", "second"] {
        // A masked text frame, as a client must send it.
        let mask = [0x1f, 0x2e, 0x3d, 0x4c];
        bytes.extend([0x81, 0x80 | text.len() as u8]);
        bytes.extend(mask);
        bytes.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }
    stream.write_all(&bytes).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(
            tokio::time::timeout(WAIT, stream.read_u8())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    for text in ["first", "second"] {
        let (opcode, payload) = tokio::time::timeout(WAIT, read_raw_frame(&mut stream))
            .await
            .expect("no echo of a frame sent with the request");
        assert_eq!((opcode, &payload[..]), (0x1, text.as_bytes()));
    }
    server.stop().await;
}

/// Messages of [`BIG`] bytes each the half-written-frame tests send: 96 MiB,
/// more than the socket buffers hold (36 MiB at most here), so the server
/// writes the echoes in pieces.
const BIG_MESSAGES: usize = 96;
const BIG: usize = 1 << 20;

/// Settings under which a connection's outbound queue takes all
/// [`BIG_MESSAGES`] echoes.
fn big_echo_config() -> switchyard::Config {
    let mut config = test_config();
    config.limits.outbound_queue_bytes = 128 << 20;
    config
}

/// Four distinct payloads of [`BIG`] bytes; message `i` carries `i % 4`.
fn big_payloads() -> Vec<Vec<u8>> {
    (0..4)
        .map(|i| (0..BIG).map(|b| ((b + i) % 253) as u8).collect())
        .collect()
}

/// A client that sends big messages and pings while it reads nothing fills
/// the server's socket, so the echoes go out in pieces, each write resuming
/// inside a frame, while the server keeps reading. The client gets every
/// echo whole and in order and every pong. (A pong written straight to
/// the socket, beside the writer's batches, would land inside a
/// half-written frame whenever the socket freed up at just the wrong
/// moment; pongs go through the outbound queue so they cannot.)
#[tokio::test]
async fn pings_answered_while_a_frame_is_half_written_keep_the_stream_whole() {
    use futures_util::StreamExt;
    let server = TestServer::start_with(&["echo"], big_echo_config()).await;
    let ws = server.connect("/echo").await;
    let (mut sink, mut stream) = ws.split();
    let payloads = Arc::new(big_payloads());
    let (sent_half, half) = tokio::sync::oneshot::channel();
    let sender_payloads = payloads.clone();
    let sender = tokio::spawn(async move {
        let mut sent_half = Some(sent_half);
        for i in 0..BIG_MESSAGES {
            let bytes = sender_payloads[i % sender_payloads.len()].clone();
            sink.send(Message::binary(bytes)).await.unwrap();
            sink.send(Message::Ping(vec![i as u8].into()))
                .await
                .unwrap();
            if i == BIG_MESSAGES / 2 {
                // Half the echoes (48 MiB) are more than the socket
                // buffers hold: the server is writing in pieces by now.
                sent_half.take().unwrap().send(()).unwrap();
            }
        }
        sink
    });
    half.await.unwrap();
    let (mut echoes, mut pongs) = (0, 0);
    while echoes < BIG_MESSAGES || pongs < BIG_MESSAGES {
        match stream
            .next()
            .await
            .expect("stream ended")
            .expect("stream broken")
        {
            Message::Binary(bytes) => {
                let expected = &payloads[echoes % payloads.len()];
                assert!(bytes[..] == expected[..], "echo {echoes} damaged");
                echoes += 1;
            }
            Message::Pong(data) => {
                assert_eq!(data[..], [pongs as u8], "pong {pongs}");
                pongs += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The close answer, too, waits for the frame in flight.
    let mut sink = sender.await.unwrap();
    sink.send(Message::Close(None)).await.unwrap();
    match stream.next().await {
        Some(Ok(Message::Close(_))) | None => {}
        other => panic!("expected the close answer, got {other:?}"),
    }
    server.stop().await;
}

/// A client that closes while the server's echoes are still going out in
/// pieces gets a clean end: the frame half-written when its close arrives
/// is finished, the queued ones are dropped, and the close answer follows.
/// A stream cut inside a frame would reach the client as a protocol error.
#[tokio::test]
async fn a_peer_close_while_a_frame_is_half_written_ends_cleanly() {
    use futures_util::StreamExt;
    let server = TestServer::start_with(&["echo"], big_echo_config()).await;
    // A small receive buffer: the server (running beside this test, on a
    // thread of its own) cannot get 96 MiB of echoes out before the close
    // arrives, whatever the loopback's buffers would grow to.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(server.url("/echo"), stream)
        .await
        .unwrap();
    let payloads = big_payloads();
    for i in 0..BIG_MESSAGES {
        let bytes = payloads[i % payloads.len()].clone();
        ws.send(Message::binary(bytes)).await.unwrap();
    }
    // The server is in the middle of writing the echoes when the close
    // arrives.
    ws.send(Message::Close(None)).await.unwrap();
    let mut echoes = 0;
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => {
                let expected = &payloads[echoes % payloads.len()];
                assert!(bytes[..] == expected[..], "echo {echoes} damaged");
                echoes += 1;
            }
            Some(Ok(Message::Close(_))) | None => break,
            other => panic!("expected whole echoes, then the close answer; got {other:?}"),
        }
    }
    assert!(
        echoes < BIG_MESSAGES,
        "every echo arrived: the close came too late to test anything"
    );
    server.stop().await;
}

/// A client that vanishes (its socket reset, no close) while the server is
/// in the middle of writing its echoes: the failed send (or the read that
/// sees the reset first) ends the connection, its place is given back (the
/// server allows one connection, so the next client is admitted only
/// then), and the server serves on. Fails if a failed send is retried.
#[tokio::test]
async fn a_peer_that_vanishes_while_a_frame_is_half_written_frees_its_place() {
    let mut config = big_echo_config();
    config.limits.max_connections = 1;
    let server = TestServer::start_with(&["echo"], config).await;
    let mut ws = server.connect("/echo").await;
    let payloads = big_payloads();
    for i in 0..BIG_MESSAGES {
        let bytes = payloads[i % payloads.len()].clone();
        ws.send(Message::binary(bytes)).await.unwrap();
    }
    assert_eq!(server.refused_status("/echo").await, 503);
    // Unread echoes in its receive buffer: closing the socket resets it.
    drop(ws);
    let mut next = server.connect_when_admitted("/echo", 503).await;
    send_text(&mut next, "still serving").await;
    assert_eq!(recv_text(&mut next).await, "still serving");
    server.stop().await;
}
