//! Hot reload under live connections: swaps lose nothing, bad modules never
//! go live, deletes retire routes, and host-owned state survives.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;
use switchyard_tests::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn ask(ws: &mut Ws, text: &str) -> String {
    send_text(ws, text).await;
    recv_text(ws).await
}

/// A server whose only module is version 1 of `tag.wasm`, live; and the
/// module's path, to swap it.
async fn serving_tag_v1() -> (TestServer, PathBuf) {
    let mut server = TestServer::start(&[]).await;
    let live = server.file("tag.wasm");
    std::fs::copy(module("tag_v1"), &live).unwrap();
    server.until_live("tag.wasm").await;
    (server, live)
}

/// Replaces `dest` with `src` by writing a hidden temporary file and
/// renaming it over `dest`.
fn replace_by_rename(src: &Path, dest: &Path) {
    let tmp = dest.with_file_name(".incoming.tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// Events after `on-open` carry only the connection's id: the new version
/// never saw the open of a connection it took over in a swap, and learns its
/// record from the host.
#[tokio::test]
async fn a_swap_hands_the_new_version_each_connections_record() {
    let (mut server, live) = serving_tag_v1().await;
    let mut ws = server.connect("/tag?who=ann").await;
    assert_eq!(ask(&mut ws, "record").await, r#"v1:/tag:[("who", "ann")]"#);

    replace_by_rename(&module("tag_v2"), &live);
    server.until_live("tag.wasm").await;
    assert_eq!(ask(&mut ws, "record").await, r#"v2:/tag:[("who", "ann")]"#);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_traffic_lose_nothing_and_keep_order() {
    let (mut server, live) = serving_tag_v1().await;

    const CLIENTS: usize = 4;
    const SWAPS: usize = 12;
    let swapping = Arc::new(AtomicBool::new(true));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let mut ws = server.connect("/tag").await;
        let swapping = swapping.clone();
        clients.push(tokio::spawn(async move {
            let mut versions = std::collections::BTreeSet::new();
            let mut sent = 0u64;
            // Keep going while swaps happen, then a little more.
            let mut after = 0;
            while after < 20 {
                if !swapping.load(Ordering::Acquire) {
                    after += 1;
                }
                let text = format!("c{c}-{sent}");
                let reply = ask(&mut ws, &text).await;
                let mut parts = reply.splitn(3, ':');
                let (version, _count, echoed) = (
                    parts.next().unwrap(),
                    parts.next().unwrap(),
                    parts.next().unwrap(),
                );
                // Exactly one reply per message, in order.
                assert_eq!(echoed, text, "reply out of order: {reply}");
                versions.insert(version.to_owned());
                sent += 1;
            }
            (sent, versions, ws)
        }));
    }

    for swap in 0..SWAPS {
        let src = module(if swap % 2 == 0 { "tag_v2" } else { "tag_v1" });
        if swap % 4 < 2 {
            std::fs::copy(&src, &live).unwrap(); // overwrite in place
        } else {
            replace_by_rename(&src, &live);
        }
        match server.until_live("tag.wasm").await {
            ReloadEvent::Live {
                old_hash, new_hash, ..
            } => {
                assert!(old_hash.is_some());
                assert_ne!(old_hash.unwrap(), new_hash);
            }
            other => unreachable!("{other:?}"),
        }
    }
    swapping.store(false, Ordering::Release);

    let mut total = 0;
    let mut versions = std::collections::BTreeSet::new();
    let mut sockets = Vec::new();
    for client in clients {
        let (sent, seen, ws) = client.await.expect("a client failed");
        total += sent;
        versions.extend(seen);
        sockets.push(ws);
    }
    assert_eq!(versions.into_iter().collect::<Vec<_>>(), vec!["v1", "v2"]);
    // Every message was counted exactly once, across every version, by the
    // host-owned key-value store.
    assert_eq!(ask(&mut sockets[0], "count").await, total.to_string());
    // And no client was disconnected: each still gets answers.
    for ws in &mut sockets {
        assert!(ask(ws, "still").await.ends_with(":still"));
    }
    server.stop().await;
}

#[tokio::test]
async fn state_survives_a_swap() {
    let (mut server, live) = serving_tag_v1().await;
    let mut ws = server.connect("/tag").await;
    for i in 1..=3 {
        assert_eq!(ask(&mut ws, "x").await, format!("v1:{i}:x"));
    }
    replace_by_rename(&module("tag_v2"), &live);
    server.until_live("tag.wasm").await;
    assert_eq!(ask(&mut ws, "count").await, "3");
    assert_eq!(ask(&mut ws, "y").await, "v2:4:y");
    server.stop().await;
}

#[tokio::test]
async fn bad_or_half_written_module_never_goes_live() {
    let (mut server, live) = serving_tag_v1().await;
    let mut ws = server.connect("/tag").await;
    assert!(ask(&mut ws, "a").await.starts_with("v1:"));

    std::fs::write(&live, b"garbage, not a component").unwrap();
    match server.next_reload("tag.wasm").await {
        ReloadEvent::Rejected { error, .. } => {
            assert!(error.contains("tag.wasm"), "{error}");
            assert!(
                error.contains("not a valid WebAssembly component"),
                "{error}"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(ask(&mut ws, "b").await.starts_with("v1:"));

    // The first half of a good module, as a slow writer leaves it.
    let v2 = std::fs::read(module("tag_v2")).unwrap();
    std::fs::write(&live, &v2[..v2.len() / 2]).unwrap();
    assert!(matches!(
        server.next_reload("tag.wasm").await,
        ReloadEvent::Rejected { .. }
    ));
    assert!(ask(&mut ws, "c").await.starts_with("v1:"));

    // The writer finishes: the new version goes live on the same socket.
    std::fs::write(&live, &v2).unwrap();
    server.until_live("tag.wasm").await;
    assert_eq!(ask(&mut ws, "d").await, "v2:4:d");

    // A module that claims another module's route is refused too.
    std::fs::copy(module("echo"), server.file("echo.wasm")).unwrap();
    server.until_live("echo.wasm").await;
    std::fs::copy(module("echo"), server.file("echo-again.wasm")).unwrap();
    match server.next_reload("echo-again.wasm").await {
        ReloadEvent::Rejected { error, .. } => {
            assert!(
                error.contains("echo-again.wasm") && error.contains("echo.wasm"),
                "{error}"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(ask(&mut ws, "e").await.starts_with("v2:"));
    server.stop().await;
}

#[tokio::test]
async fn deleting_a_module_retires_its_route_after_on_close() {
    let mut server = TestServer::start(&["chat", "echo"]).await;
    let mut alice = server.connect("/chat/?name=alice").await;
    recv_json(&mut alice).await;
    let mut bob = server.connect("/chat/?name=bob").await;
    recv_json(&mut bob).await;
    assert_eq!(recv_json(&mut alice).await["type"], "join");
    let mut echo = server.connect("/echo").await;

    std::fs::remove_file(server.file("chat.wasm")).unwrap();
    let event = server.next_reload("chat.wasm").await;
    assert!(matches!(event, ReloadEvent::Retired { .. }), "{event:?}");

    // Alice's on-close ran (Bob hears she left) before Bob's close frame.
    assert_eq!(expect_close(&mut alice).await.code, CloseCode::Away);
    assert_eq!(
        recv_json(&mut bob).await,
        json!({"type": "leave", "user": "alice"})
    );
    assert_eq!(expect_close(&mut bob).await.code, CloseCode::Away);

    assert_eq!(server.refused_status("/chat/").await, 404);
    assert_eq!(ask(&mut echo, "unaffected").await, "unaffected");
    server.stop().await;
}

#[tokio::test]
async fn a_new_module_adds_its_route() {
    let mut server = TestServer::start(&["chat"]).await;
    assert_eq!(server.refused_status("/echo").await, 404);
    replace_by_rename(&module("echo"), &server.file("echo.wasm"));
    match server.until_live("echo.wasm").await {
        ReloadEvent::Live {
            route, old_hash, ..
        } => {
            assert_eq!(route, "echo");
            assert!(old_hash.is_none());
        }
        other => unreachable!("{other:?}"),
    }
    let mut ws = server.connect("/echo").await;
    assert_eq!(ask(&mut ws, "new").await, "new");
    server.stop().await;
}
