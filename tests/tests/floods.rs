//! What one client can make a server hold, against a server in a process
//! of its own (so that its file limit and its memory are its own):
//!
//! - sockets that never finish their upgrade are bounded per address and
//!   in all, so they cannot take every file descriptor (the file limit is
//!   lowered to 256); when descriptors do run out, the accept loop pauses
//!   instead of spinning, and serves again once they are back;
//! - cycling through room names keeps only a bounded amount of room state.

use std::net::Ipv4Addr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchyard_tests::{AloneServer, WAIT, Ws};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

/// File descriptors the server process may hold in the flood tests.
const FILE_LIMIT: usize = 256;

/// The two tests that flood a server hold hundreds of sockets on this side
/// too: one at a time, so that this process stays far from its own limit.
static FLOODING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(modules: &[&str], config: &str, file_limit: usize) -> AloneServer {
    AloneServer::start(
        env!("CARGO_BIN_EXE_serve_alone"),
        modules,
        config,
        file_limit,
    )
    .await
}

async fn next_text(ws: &mut Ws) -> String {
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => text.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// A client from `from` upgrades on /echo and gets its message back.
async fn echo_from(server: &AloneServer, from: Ipv4Addr) {
    let mut ws = server.connect_from(from, "/echo").await;
    ws.send(Message::text("through")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "through");
}

/// 400 silent sockets from one address, far beyond the file limit, with
/// connection limits of 10: beyond its 64 upgrades in progress, the
/// address's sockets are answered 429 and closed at once, so the server
/// never runs out of descriptors and a client from another address is
/// served while they are all still open.
#[tokio::test]
async fn silent_sockets_from_one_address_cannot_starve_other_clients() {
    let _one_at_a_time = FLOODING.lock().await;
    let server = start(
        &["echo"],
        "max_connections = 10\nmax_connections_per_ip = 10\n",
        FILE_LIMIT,
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..400 {
        silent.push(server.socket_from(Ipv4Addr::LOCALHOST).await);
    }
    echo_from(&server, Ipv4Addr::new(127, 0, 0, 2)).await;

    // The last sockets were refused with the reason, then closed.
    let mut answer = String::new();
    let last = silent.last_mut().unwrap();
    tokio::time::timeout(WAIT, last.read_to_string(&mut answer))
        .await
        .expect("the refused socket was not closed")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    assert!(answer.contains("Retry-After: 1\r\n"), "{answer}");
    assert!(
        answer.contains("too many upgrades in progress from your address or network (limit 64)"),
        "{answer}"
    );
    let log = server.log();
    assert!(!log.contains("accept failed"), "{log}");
    drop(silent);
    server.stop().await;
}

/// Silent sockets from six addresses, each within its own limit, take the
/// server past its file limit for real: accepting fails, and the loop says
/// so once and pauses (it used to log and retry every 50 ms for as long as
/// it lasted). Once the sockets close, a new client is served and the log
/// says accepting works again.
#[tokio::test]
async fn out_of_descriptors_the_server_pauses_then_serves_again() {
    let _one_at_a_time = FLOODING.lock().await;
    let server = start(&["echo"], "", FILE_LIMIT).await;
    let mut silent = Vec::new();
    for host in 1..=6 {
        for _ in 0..64 {
            silent.push(server.socket_from(Ipv4Addr::new(127, 0, 0, host)).await);
        }
    }
    assert!(silent.len() > FILE_LIMIT);
    server.wait_for_log("accept failed; pausing").await;
    // Stay at the limit for a while: what is checked is that nothing more
    // is logged meanwhile (the old loop logged 20 lines a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(silent);
    echo_from(&server, Ipv4Addr::new(127, 0, 0, 7)).await;
    server.wait_for_log("accepting connections again").await;
    let log = server.log();
    // One line per run of failures, and at most one per 10 s.
    assert_eq!(log.matches("accept failed").count(), 1, "{log}");
    server.stop().await;
}

/// Rooms visited once each: a client joins `/rooms/k{i}`, fills its history
/// (20 messages of 1,900 bytes, about 40 KB of state) and leaves, 1,500
/// times, 50 at a time. Each emptied room's state is kept for a minute, but
/// at most 8 MiB of it: the server grows by far less than the 57 MB the
/// rooms wrote (it grew by all of it before the cap).
#[tokio::test]
async fn cycling_room_names_keeps_only_the_capped_room_state() {
    const CAP: u64 = 8 << 20;
    let server = start(
        &["rooms"],
        &format!("keyed_state_keep_ms = 60000\nkeyed_state_keep_bytes = {CAP}\n"),
        1024,
    )
    .await;
    let line = "m".repeat(1_900);
    let visit = |room: usize| {
        let (server, line) = (&server, &line);
        async move {
            let mut ws = server
                .connect(&format!("/rooms/k{room}?name=v{room}"))
                .await;
            assert!(next_text(&mut ws).await.contains("welcome"));
            for _ in 0..20 {
                ws.send(Message::text(line.as_str())).await.unwrap();
                // The room sends each message back: it is in the history.
                assert!(next_text(&mut ws).await.contains("\"message\""));
            }
            ws.close(None).await.unwrap();
            while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
        }
    };
    let visits = |rooms: std::ops::Range<usize>| {
        futures_util::stream::iter(rooms)
            .map(visit)
            .buffer_unordered(50)
            .collect::<Vec<()>>()
    };
    // Warm up (instance slots, buffers, the allocator's arenas), then measure.
    visits(0..100).await;
    let before = server.rss();
    visits(100..1_600).await;
    let grown = server.rss().saturating_sub(before);
    let wrote = 1_500 * 20 * 1_900;
    eprintln!(
        "grew by {} KiB for {} KiB written",
        grown >> 10,
        wrote >> 10
    );
    assert!(
        grown < CAP + (24 << 20),
        "the server grew by {} MiB for {} MiB of room state written, with a cap of {} MiB",
        grown >> 20,
        wrote >> 20,
        CAP >> 20
    );
    server.stop().await;
}
