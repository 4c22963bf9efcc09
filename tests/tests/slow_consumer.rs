//! A client that stops reading while a broadcast goes on is closed as a
//! slow consumer (1008) once its outbound queue is full, the clients that
//! keep reading lose nothing, and the server's memory stays bounded.
//!
//! Alone in its test binary: it samples this process's resident memory
//! (`VmRSS`), which other tests running alongside would disturb.

use futures_util::SinkExt;
use switchyard_tests::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const MESSAGE: usize = 64 << 10;
const MESSAGES: usize = 3_000;
/// What the server's resident memory may grow by while ~190 MiB are broadcast
/// past a client that reads none of it. Without the queue bound, the
/// stalled client's queue alone would hold almost all of it.
const PEAK_GROWTH_BOUND: u64 = 48 << 20;

/// Resident memory of this process (server and clients), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib << 10
}

/// The next binary message; chat's join and leave notices are skipped.
async fn next_binary(ws: &mut Ws) -> Vec<u8> {
    loop {
        match recv(ws).await {
            Message::Binary(bytes) => return bytes.to_vec(),
            Message::Text(_) => continue,
            other => panic!("expected binary, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_stalled_reader_is_closed_with_1008_and_memory_stays_bounded() {
    let mut config = test_config();
    config.limits.max_message_bytes = MESSAGE;
    config.limits.max_frame_bytes = MESSAGE;
    config.limits.outbound_queue_bytes = 256 << 10;
    // The 1008 close frame waits behind what the stalled client's socket
    // buffers already hold; give it time to start reading again.
    config.limits.close_timeout_ms = 60_000;
    config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    let server = TestServer::start_with(&["chat"], config).await;
    let mut sender = server.connect("/chat/?name=sender").await;
    let mut reader = server.connect("/chat/?name=reader").await;
    let mut stalled = server.connect("/chat/?name=stalled").await;

    // Warm up every path, then take the baseline.
    let payload = |i: usize| {
        let mut bytes = vec![(i % 251) as u8; MESSAGE];
        bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
        bytes
    };
    for i in 0..20 {
        sender.send(Message::binary(payload(i))).await.unwrap();
        assert_eq!(next_binary(&mut reader).await, payload(i));
    }
    let baseline = rss();
    let mut peak = baseline;

    // Each message is sent once the reader has the previous one, so a client
    // that reads keeps its queue short, while the stalled one fills up.
    for i in 20..MESSAGES {
        sender.send(Message::binary(payload(i))).await.unwrap();
        assert_eq!(next_binary(&mut reader).await, payload(i), "message {i}");
        if i % 50 == 0 {
            peak = peak.max(rss());
        }
    }
    let growth = peak.saturating_sub(baseline);
    println!(
        "RSS grew at most by {:.1} MiB while {:.0} MiB were broadcast",
        growth as f64 / (1 << 20) as f64,
        (MESSAGES * MESSAGE) as f64 / (1 << 20) as f64
    );
    assert!(
        growth < PEAK_GROWTH_BOUND,
        "peak RSS grew by {growth} bytes (bound {PEAK_GROWTH_BOUND})"
    );

    // The stalled client now reads: what was queued before it fell behind,
    // in order, then the 1008 close.
    let mut received = 0;
    let frame = loop {
        match recv(&mut stalled).await {
            Message::Binary(bytes) => {
                assert_eq!(bytes.to_vec(), payload(received), "message {received}");
                received += 1;
            }
            Message::Text(_) => {}
            Message::Close(Some(frame)) => break frame,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(frame.code, CloseCode::Policy);
    assert_eq!(frame.reason.as_str(), "slow consumer");
    assert!(received < MESSAGES, "the stalled client got everything");

    // The others never noticed.
    sender.send(Message::binary(payload(0))).await.unwrap();
    assert_eq!(next_binary(&mut reader).await, payload(0));
    // An operator sees it: one slow-consumer close, one 1008.
    wait_for_metric(
        &server,
        "switchyard_slow_consumer_closes_total{route=\"chat\"}",
        1.0,
    )
    .await;
    wait_for_metric(
        &server,
        "switchyard_connections_closed_total{route=\"chat\",code=\"1008\"}",
        1.0,
    )
    .await;
    // Gone before the stop, which would otherwise wait out the long close
    // timeout for clients that are no longer read.
    drop((sender, reader, stalled));
    server.stop().await;
}
