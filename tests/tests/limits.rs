//! Limits on clients: server pings and the idle timeout, the handshake
//! timeout, connection limits (global, per route, per address) answered
//! before any upgrade, and graceful shutdown.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchyard_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn pings_keep_live_clients_open_and_silent_ones_are_closed_as_idle() {
    let mut config = test_config();
    // Long enough that the watcher, which is not read between commands,
    // is not itself closed as idle during the test.
    config.limits.ping_interval_ms = 200;
    config.limits.idle_timeout_ms = 1_500;
    let server = TestServer::start_with(&["probe"], config).await;
    let mut watcher = server.connect("/probe/").await;

    // A live client: it only reads, so the pongs its library sends back
    // are all that keeps it open.
    let mut live = server.connect("/probe/").await;
    let live_id = id_of(&mut live).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        tokio::pin!(stopped);
        let mut pings = 0;
        loop {
            tokio::select! {
                _ = &mut stopped => return (live, pings),
                msg = live.next() => match msg {
                    Some(Ok(Message::Ping(_))) => pings += 1,
                    other => panic!("live client got {other:?}"),
                },
            }
        }
    });

    // A silent client: it never reads, so it never answers a ping.
    let mut silent = raw_upgrade(server.addr, "/probe/").await;
    let log = events_until(&mut watcher, |log| newest_open(log) > live_id).await;
    let silent_id = newest_open(&log);

    let closed = format!("close {silent_id} 1001");
    let log = events_until(&mut watcher, |log| log.contains(&closed)).await;
    assert!(
        !log.iter()
            .any(|e| e.starts_with(&format!("close {live_id} "))),
        "{log:?}"
    );
    // It was pinged, then closed.
    let mut pings = 0;
    let payload = loop {
        match read_raw_frame(&mut silent).await {
            (0x9, _) => pings += 1,
            (0x8, payload) => break payload,
            other => panic!("unexpected frame {other:?}"),
        }
    };
    assert!(pings >= 1, "the silent client was never pinged");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
    assert_eq!(&payload[2..], b"idle timeout");

    stop.send(()).unwrap();
    let (mut live, pings) = reader.await.unwrap();
    assert!(pings >= 1, "the live client was never pinged");
    assert_eq!(ask(&mut live, "still open").await, "still open");

    // A client's ping is answered by the host; the controller never sees it.
    let before = events(&mut watcher).await;
    live.send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, live.next()).await.unwrap() {
            Some(Ok(Message::Pong(payload))) => {
                assert_eq!(&payload[..], b"are you there");
                break;
            }
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    let after = events(&mut watcher).await;
    // Only the watcher's own `events` command was added.
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    server.stop().await;
}

#[tokio::test]
async fn silent_and_dribbling_handshakes_get_408() {
    let mut config = test_config();
    config.limits.handshake_timeout_ms = 300;
    let server = TestServer::start_with(&["echo"], config).await;

    // Opens TCP and sends nothing.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, silent.read_to_string(&mut answer))
        .await
        .expect("silent client was never dropped")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");

    // Sends a header byte every 50 ms: never completes, however patient.
    let mut dribbler = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut read, mut write) = dribbler.split();
    let request = b"GET /echo HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nX-Slow: ";
    let dribble = async {
        for byte in request.iter().chain(std::iter::repeat(&b'z')) {
            if write.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut answer = Vec::new();
    tokio::select! {
        () = dribble => {}
        read = tokio::time::timeout(WAIT, read.read_to_end(&mut answer)) => {
            read.expect("dribbling client was never dropped").unwrap();
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");

    // The server still upgrades a client that is on time.
    let mut ws = server.connect("/echo").await;
    assert_eq!(ask(&mut ws, "on time").await, "on time");
    server.stop().await;
}

/// The `open` events the probe has seen.
async fn opens(watcher: &mut Ws) -> usize {
    events(watcher)
        .await
        .iter()
        .filter(|e| e.starts_with("open "))
        .count()
}

#[tokio::test]
async fn the_global_connection_limit_answers_503_before_upgrade() {
    let mut config = test_config();
    config.limits.max_connections = 2;
    let server = TestServer::start_with(&["probe", "echo"], config).await;
    let mut first = server.connect("/probe/").await;
    let second = server.connect("/echo").await;
    assert_eq!(server.refused_status("/probe/").await, 503);
    assert_eq!(server.refused_status("/echo").await, 503);
    // Refused clients never reached the controller.
    assert_eq!(opens(&mut first).await, 1);

    drop(second);
    let mut third = server.connect_when_admitted("/probe/", 503).await;
    assert_eq!(ask(&mut third, "admitted").await, "admitted");
    assert_eq!(opens(&mut first).await, 2);
    server.stop().await;
}

#[tokio::test]
async fn a_route_limit_answers_503_and_leaves_other_routes_alone() {
    let mut config = test_config();
    config.routes.insert(
        "probe".into(),
        switchyard::config::RouteConfig {
            max_connections: Some(1),
            ..Default::default()
        },
    );
    let server = TestServer::start_with(&["probe", "echo"], config).await;
    let mut first = server.connect("/probe/").await;
    assert_eq!(server.refused_status("/probe/x").await, 503);
    let mut echo_a = server.connect("/echo").await;
    let mut echo_b = server.connect("/echo").await;
    assert_eq!(ask(&mut echo_a, "a").await, "a");
    assert_eq!(ask(&mut echo_b, "b").await, "b");
    assert_eq!(opens(&mut first).await, 1);

    first.close(None).await.unwrap();
    let mut next = server.connect_when_admitted("/probe/", 503).await;
    assert_eq!(opens(&mut next).await, 2);
    server.stop().await;
}

#[tokio::test]
async fn a_per_address_limit_answers_429() {
    let mut config = test_config();
    config.limits.max_connections_per_ip = 2;
    let server = TestServer::start_with(&["probe"], config).await;
    let mut first = server.connect("/probe/").await;
    let second = server.connect("/probe/").await;
    assert_eq!(server.refused_status("/probe/").await, 429);
    assert_eq!(opens(&mut first).await, 2);
    drop(second);
    let mut third = server.connect_when_admitted("/probe/", 429).await;
    assert_eq!(ask(&mut third, "admitted").await, "admitted");
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_runs_every_on_close_and_sends_1001() {
    let server = TestServer::start(&["probe", "chat"]).await;
    let logs = server.logs();
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut ws = server.connect("/probe/").await;
        ids.push(id_of(&mut ws).await);
        clients.push(ws);
    }
    let mut chat = server.connect("/chat/").await;
    recv_json(&mut chat).await;

    let stopping = tokio::spawn(server.stop());
    for ws in clients.iter_mut().chain([&mut chat]) {
        let frame = expect_close(ws).await;
        assert_eq!(frame.code, CloseCode::Away);
        assert_eq!(frame.reason.as_str(), "server shutting down");
    }
    stopping.await.unwrap();
    for id in ids {
        logs.wait_for(&["route=\"probe\"", &format!("on-close {id} 1001")])
            .await;
    }
}

#[tokio::test]
async fn a_close_to_a_client_that_stopped_reading_ends_within_the_close_timeout() {
    let mut config = test_config();
    config.limits.outbound_queue_bytes = 256 << 20;
    config.limits.outbound_queue_messages = 100_000;
    // No pings and no idle timeout: only the close, queued behind frames
    // the stalled writer cannot send, may start the close timeout.
    config.limits.ping_interval_ms = 0;
    config.limits.idle_timeout_ms = 0;
    let server = TestServer::start_with(&["probe"], config).await;
    let mut watcher = server.connect("/probe/").await;
    // A client that never reads (nor answers a close frame).
    let _stalled = raw_upgrade(server.addr, "/probe/").await;
    let watcher_id = id_of(&mut watcher).await;
    let log = events_until(&mut watcher, |log| newest_open(log) > watcher_id).await;
    let stalled = newest_open(&log);
    // Fill its socket buffers and then some, so the writer is stuck.
    for _ in 0..40 {
        let answer = ask(&mut watcher, &format!("sendn {stalled} 1000000")).await;
        assert_eq!(answer, "ok ()");
    }
    let answer = ask(&mut watcher, &format!("close {stalled} 1000 bye")).await;
    assert_eq!(answer, "ok ()");
    // The close frame cannot get through; the close timeout ends it.
    let closed = format!("close {stalled} ");
    events_until(&mut watcher, |log| {
        log.iter().any(|e| e.starts_with(&closed))
    })
    .await;
    server.stop().await;
}
