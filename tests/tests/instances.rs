//! Keyed and per-connection instances, groups and attachments: rooms are
//! isolated and run in parallel, instances come and go with their
//! connections while their state is kept a while, groups span a route's
//! instances, and attachments outlive traps and reloads.

use std::time::Duration;

use serde_json::json;
use switchyard::config::InstanceMode;
use switchyard_tests::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn route_config(
    config: &mut Config,
    name: &str,
    f: impl FnOnce(&mut switchyard::config::RouteConfig),
) {
    f(config.routes.entry(name.to_owned()).or_default());
}

#[tokio::test]
async fn rooms_are_isolated_with_presence_history_and_a_lobby_across_rooms() {
    let server = TestServer::start(&["rooms"]).await;
    let mut alice = server.connect("/rooms/lounge?name=alice").await;
    let welcome = recv_json(&mut alice).await;
    assert_eq!(welcome["room"], "lounge");
    assert_eq!(welcome["present"], json!([]));
    let mut bob = server.connect("/rooms/lounge?name=bob").await;
    assert_eq!(recv_json(&mut bob).await["present"], json!(["alice"]));
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"type": "join", "user": "bob"})
    );
    let mut carol = server.connect("/rooms/kitchen?name=carol").await;
    assert_eq!(recv_json(&mut carol).await["present"], json!([]));

    send_text(&mut alice, "hi lounge").await;
    let said = json!({"type": "message", "user": "alice", "data": "hi lounge"});
    assert_eq!(recv_json(&mut alice).await, said);
    assert_eq!(recv_json(&mut bob).await, said);
    // Carol's next message is her own: nothing from the lounge came first.
    send_text(&mut carol, "hi kitchen").await;
    assert_eq!(recv_json(&mut carol).await["data"], "hi kitchen");

    bob.close(None).await.unwrap();
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"type": "leave", "user": "bob"})
    );
    let mut dave = server.connect("/rooms/lounge?name=dave").await;
    let welcome = recv_json(&mut dave).await;
    assert_eq!(welcome["present"], json!(["alice"]));
    assert_eq!(welcome["history"], json!([said]));
    assert_eq!(recv_json(&mut alice).await["user"], "dave");

    // The lobby group reaches every room's members, across instances.
    send_text(&mut carol, "/all dinner is ready").await;
    for ws in [&mut carol, &mut alice, &mut dave] {
        let heard = recv_json(ws).await;
        assert_eq!(heard["type"], "announcement");
        assert_eq!(heard["room"], "kitchen");
        assert_eq!(heard["data"], "dinner is ready");
    }
    server.stop().await;
}

/// The rooms sample bounds what it keeps and sends: 70 members with
/// 16,000-character names all get a welcome (the 66th and later got
/// nothing when the welcome listed every full name and outgrew the 1 MiB
/// message limit), naming at most 50 others by their first 32 characters
/// and counting them all; a message over 2,000 bytes is refused to its
/// sender and kept out of the history.
#[tokio::test]
async fn the_rooms_sample_bounds_names_welcomes_and_messages() {
    let server = TestServer::start(&["rooms"]).await;
    let mut members = Vec::new();
    for i in 0..70 {
        let name = format!("{i:02}{}", "n".repeat(15_998));
        let mut ws = server.connect(&format!("/rooms/big?name={name}")).await;
        let welcome = recv_json(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "member {i}");
        assert_eq!(welcome["others"], i, "member {i}");
        let present = welcome["present"].as_array().unwrap();
        assert_eq!(present.len(), i.min(50), "member {i}");
        for (j, name) in present.iter().enumerate() {
            let name = name.as_str().unwrap();
            assert_eq!(name.len(), 32);
            assert!(name.starts_with(&format!("{j:02}nnn")), "{name}");
        }
        assert_eq!(welcome["you"].as_str().unwrap().len(), 32);
        members.push(ws);
    }

    // The first member heard 69 joins before anything else.
    let first = &mut members[0];
    for _ in 1..70 {
        assert_eq!(recv_json(first).await["type"], "join");
    }
    send_text(first, &"x".repeat(2_001)).await;
    let refused = recv_json(first).await;
    assert_eq!(refused["type"], "error");
    assert!(
        refused["data"]
            .as_str()
            .unwrap()
            .contains("at most 2000 bytes")
    );
    send_text(first, &"x".repeat(2_000)).await;
    let said = recv_json(first).await;
    assert_eq!(said["type"], "message");
    assert_eq!(said["data"].as_str().unwrap().len(), 2_000);
    let newcomer = &mut server.connect("/rooms/big?name=late").await;
    let welcome = recv_json(newcomer).await;
    assert_eq!(welcome["history"].as_array().unwrap().len(), 1);
    server.stop().await;
}

/// With a message limit too small for a full welcome, the rooms sample
/// learns it from `Message::try_json` and sends a smaller one: without the
/// history, then without the names.
#[tokio::test]
async fn the_rooms_welcome_shrinks_to_the_hosts_message_limit() {
    let mut config = test_config();
    config.limits.max_message_bytes = 4_096;
    config.limits.max_frame_bytes = 4_096;
    let server = TestServer::start_with(&["rooms"], config).await;
    let mut alice = server.connect("/rooms/small?name=alice").await;
    recv_json(&mut alice).await;
    for _ in 0..5 {
        send_text(&mut alice, &"h".repeat(1_500)).await;
        assert_eq!(recv_json(&mut alice).await["type"], "message");
    }
    // 5 x 1.5 KB of history do not fit in 4 KiB: the names do.
    let mut bob = server.connect("/rooms/small?name=bob").await;
    let welcome = recv_json(&mut bob).await;
    assert_eq!(welcome["present"], json!(["alice"]));
    assert_eq!(welcome["history"], json!([]));
    assert_eq!(welcome["others"], 1);

    // 50 names of 32 four-byte characters (6.4 KB) do not fit either.
    let mut crowd = Vec::new();
    for i in 0..50 {
        // 🚂, percent-encoded in the URL.
        let name = format!("{i:02}{}", "%F0%9F%9A%82".repeat(40));
        let mut ws = server.connect(&format!("/rooms/small?name={name}")).await;
        recv_json(&mut ws).await;
        crowd.push(ws);
    }
    let mut carol = server.connect("/rooms/small?name=carol").await;
    let welcome = recv_json(&mut carol).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["present"], json!([]));
    assert_eq!(welcome["history"], json!([]));
    assert_eq!(welcome["others"], 52);
    server.stop().await;
}

#[tokio::test]
async fn broadcast_and_connections_are_scoped_to_the_instance() {
    let server = TestServer::start(&["keyed"]).await;
    let mut a1 = server.connect("/keyed/a").await;
    let mut a2 = server.connect("/keyed/a").await;
    let mut b1 = server.connect("/keyed/b").await;
    let ids: Vec<u64> = serde_json::from_str(&ask(&mut a1, "connections").await).unwrap();
    assert_eq!(ids.len(), 2);
    let ids: Vec<u64> = serde_json::from_str(&ask(&mut b1, "connections").await).unwrap();
    assert_eq!(ids.len(), 1);
    send_text(&mut a1, "broadcast to a").await;
    assert_eq!(recv_text(&mut a1).await, "to a");
    assert_eq!(recv_text(&mut a1).await, "2");
    assert_eq!(recv_text(&mut a2).await, "to a");
    assert_eq!(ask(&mut b1, "only mine").await, "only mine");
    server.stop().await;
}

/// Connects to `path` until a fresh instance serves it (its `seen` is 2:
/// the open and the `seen` itself); the previous instance may still be
/// ending when the first attempts arrive.
async fn fresh_instance(server: &TestServer, path: &str) -> Ws {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut ws = server.connect(path).await;
        if ask(&mut ws, "seen").await == "2" {
            return ws;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} kept its instance"
        );
        ws.close(None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_emptied_instance_is_dropped_and_its_state_kept_for_the_keep_time() {
    let server = TestServer::start(&["keyed"]).await;
    let mut ws = server.connect("/keyed/room").await;
    assert_eq!(ask(&mut ws, "count").await, "1");
    assert_eq!(ask(&mut ws, "seen").await, "3");
    ws.close(None).await.unwrap();
    drop(ws);
    // A new instance (guest memory starts over), the same store.
    let mut ws = fresh_instance(&server, "/keyed/room").await;
    assert_eq!(ask(&mut ws, "count").await, "2");
    server.stop().await;

    // With no keep time, the store goes with the instance.
    let mut config = test_config();
    config.limits.keyed_state_keep_ms = 0;
    let server = TestServer::start_with(&["keyed"], config).await;
    let mut ws = server.connect("/keyed/room").await;
    assert_eq!(ask(&mut ws, "count").await, "1");
    ws.close(None).await.unwrap();
    drop(ws);
    let mut ws = fresh_instance(&server, "/keyed/room").await;
    assert_eq!(ask(&mut ws, "count").await, "1");
    server.stop().await;
}

/// Sends `spin 1000` in room `a` and, once the spin has started (the guest
/// logs it), `mark b` in room `b`; returns which of the guest's log lines
/// `spin 1000 done` and `mark b` came first. (The server's log is written
/// in the order the events ran; the order in which two sockets' replies
/// are read is not, as they may arrive microseconds apart.)
async fn run_order(server: &TestServer) -> Vec<&'static str> {
    let mut a = server.connect("/keyed/a").await;
    let mut b = server.connect("/keyed/b").await;
    assert_eq!(ask(&mut a, "warm").await, "warm");
    assert_eq!(ask(&mut b, "warm").await, "warm");
    send_text(&mut a, "spin 1000").await;
    server.logs().wait_for(&["spin 1000 started"]).await;
    assert_eq!(ask(&mut b, "mark b").await, "marked");
    assert_eq!(recv_text(&mut a).await, "spun");
    let log = server.logs().text();
    let at = |line: &str| {
        log.find(line)
            .unwrap_or_else(|| panic!("no {line:?} in the log:\n{log}"))
    };
    if at("mark b") < at("spin 1000 done") {
        vec!["mark", "spin done"]
    } else {
        vec!["spin done", "mark"]
    }
}

/// Rooms run in parallel on the server's workers (the test is
/// multi-threaded, so its server has two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_room_does_not_delay_another_room() {
    let mut config = test_config();
    config.sandbox.event_budget_ms = 10_000;
    let server = TestServer::start_with(&["keyed"], config.clone()).await;
    assert_eq!(run_order(&server).await, ["mark", "spin done"]);
    server.stop().await;

    // The same route made shared by the config: one instance, one event at
    // a time, so room b waits for room a.
    route_config(&mut config, "keyed", |route| {
        route.instance = Some(InstanceMode::Shared)
    });
    let server = TestServer::start_with(&["keyed"], config).await;
    assert_eq!(run_order(&server).await, ["spin done", "mark"]);
    server.stop().await;
}

#[tokio::test]
async fn the_instance_cap_answers_503() {
    let mut config = test_config();
    route_config(&mut config, "keyed", |route| route.max_instances = Some(2));
    let server = TestServer::start_with(&["keyed"], config).await;
    let mut a = server.connect("/keyed/a").await;
    let b = server.connect("/keyed/b").await;
    assert_eq!(server.refused_status("/keyed/c").await, 503);
    // An existing instance still takes connections.
    let mut a2 = server.connect("/keyed/a").await;
    assert_eq!(ask(&mut a2, "same room").await, "same room");
    drop(b);
    let mut c = server.connect_when_admitted("/keyed/c", 503).await;
    assert_eq!(ask(&mut c, "in c").await, "in c");
    assert_eq!(ask(&mut a, "in a").await, "in a");
    server.stop().await;
}

#[tokio::test]
async fn per_connection_instances_and_a_bad_key_override() {
    let mut config = test_config();
    route_config(&mut config, "keyed", |route| {
        route.instance = Some(InstanceMode::PerConnection)
    });
    route_config(&mut config, "probe", |route| {
        route.instance = Some(InstanceMode::Keyed("nothing".into()))
    });
    let server = TestServer::start_with(&["keyed", "probe"], config).await;
    let mut one = server.connect("/keyed/same").await;
    let mut two = server.connect("/keyed/same").await;
    assert_eq!(ask(&mut one, "connections").await.matches(',').count(), 0);
    assert_eq!(ask(&mut two, "seen").await, "2");
    assert_eq!(ask(&mut one, "seen").await, "3");
    // The probe's override names a parameter its route does not capture.
    assert_eq!(server.rejected.len(), 1, "{:?}", server.rejected);
    assert!(
        server.rejected[0].contains("probe.wasm"),
        "{}",
        server.rejected[0]
    );
    assert!(
        server.rejected[0].contains("`nothing`"),
        "{}",
        server.rejected[0]
    );
    server.stop().await;
}

#[tokio::test]
async fn groups_join_leave_publish_members_and_are_cleared_on_close() {
    let server = TestServer::start(&["probe"]).await;
    let mut p1 = server.connect("/probe/").await;
    let mut p2 = server.connect("/probe/").await;
    let mut p3 = server.connect("/probe/").await;
    let (id1, id2) = (id_of(&mut p1).await, id_of(&mut p2).await);
    assert_eq!(ask(&mut p1, "join g").await, "ok ()");
    assert_eq!(ask(&mut p1, "join g").await, "ok ()");
    assert_eq!(ask(&mut p2, "join g").await, "ok ()");
    let members: Vec<u64> = serde_json::from_str(&ask(&mut p3, "members g").await).unwrap();
    assert_eq!(members, [id1, id2]);

    assert_eq!(ask(&mut p3, "publish g to the group").await, "ok 2");
    assert_eq!(recv_text(&mut p1).await, "to the group");
    assert_eq!(recv_text(&mut p2).await, "to the group");
    assert_eq!(ask(&mut p3, "publish nobody hello?").await, "ok 0");

    assert_eq!(ask(&mut p2, "leave g").await, "ok true");
    assert_eq!(ask(&mut p2, "leave g").await, "ok false");
    assert_eq!(ask(&mut p3, "members g").await, format!("[{id1}]"));
    let long = format!("join {}", "g".repeat(300));
    assert_eq!(ask(&mut p1, &long).await, "err too-large");

    p1.close(None).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while ask(&mut p3, "members g").await != "[]" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "membership outlived the connection"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn attachments_survive_a_trap_and_a_reload_and_end_with_the_connection() {
    let mut server = TestServer::start(&["probe"]).await;
    let mut owner = server.connect("/probe/").await;
    let owner_id = id_of(&mut owner).await;
    assert_eq!(ask(&mut owner, "attach nick-1").await, "ok ()");
    let too_big = format!("attach {}", "x".repeat(17 << 10));
    assert_eq!(ask(&mut owner, &too_big).await, "err too-large");
    let read = format!("attachment {owner_id}");

    let mut crasher = server.connect("/probe/").await;
    assert_eq!(ask(&mut crasher, &read).await, "nick-1");
    send_text(&mut crasher, "panic").await;
    assert_eq!(expect_close(&mut crasher).await.code, CloseCode::Error);
    let mut reader = server.connect("/probe/").await;
    assert_eq!(ask(&mut reader, &read).await, "nick-1");

    std::fs::write(server.file("probe.wasm"), module_variant("probe", 1)).unwrap();
    server.until_live("probe.wasm").await;
    assert_eq!(ask(&mut reader, &read).await, "nick-1");
    assert_eq!(ask(&mut owner, "still here").await, "still here");

    owner.close(None).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while ask(&mut reader, &read).await != "none" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the attachment outlived its connection"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_reload_reaches_every_instance() {
    let mut server = TestServer::start(&["keyed"]).await;
    let mut a = server.connect("/keyed/a").await;
    let mut b = server.connect("/keyed/b").await;
    assert_eq!(ask(&mut a, "count").await, "1");
    assert_eq!(ask(&mut b, "seen").await, "2");
    std::fs::write(server.file("keyed.wasm"), module_variant("keyed", 1)).unwrap();
    server.until_live("keyed.wasm").await;
    // Both instances now run the new version: guest memory started over,
    // the key-value store carried on.
    assert_eq!(ask(&mut a, "seen").await, "1");
    assert_eq!(ask(&mut b, "seen").await, "1");
    assert_eq!(ask(&mut a, "count").await, "2");
    server.stop().await;
}

#[tokio::test]
async fn a_full_instance_pool_answers_503_before_upgrade() {
    let mut config = test_config();
    // 8 slots stay free for loading and swapping: room for 2 instances.
    config.sandbox.pool_instances = 10;
    let server = TestServer::start_with(&["keyed"], config).await;
    let mut a = server.connect("/keyed/a").await;
    let b = server.connect("/keyed/b").await;
    let burst = futures_util::future::join_all(
        (0..5).map(|i| tokio_tungstenite::connect_async(server.url(&format!("/keyed/c{i}")))),
    )
    .await;
    for attempt in burst {
        match attempt {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 503)
            }
            other => panic!("expected 503, got {:?}", other.map(|_| "an upgrade")),
        }
    }
    assert_eq!(ask(&mut a, "still served").await, "still served");
    drop(b);
    let mut c = server.connect_when_admitted("/keyed/c", 503).await;
    assert_eq!(ask(&mut c, "in c").await, "in c");
    server.stop().await;
}

/// The benchmarks' in-process event timing runs every event through the
/// guest and counts the replies: a controller that does not answer each
/// message cannot be timed as an echo.
#[tokio::test]
async fn timed_events_each_reach_the_guest_and_are_answered() {
    let took = switchyard::module::time_events(test_config(), &module("echo"), 500, 16 << 10)
        .await
        .expect("echo answers every event");
    assert!(took > Duration::ZERO);
    let err = switchyard::module::time_events(test_config(), &module("chat"), 10, 32)
        .await
        .expect_err("chat forwards to the others and answers no one");
    assert!(
        err.to_string().contains("answered 0 of 10 messages"),
        "unexpected error: {err:#}"
    );
}

/// The benchmarks' probe runs the events of many connections on one shared
/// instance from tasks on two threads: an event that finds the instance
/// busy waits for the drainer to run it, and every connection gets its own
/// reply, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_connections_get_their_own_replies_when_events_wait() {
    use tokio_tungstenite::tungstenite::Message;

    let probe = std::sync::Arc::new(
        switchyard::probe::Probe::load(test_config(), &module("echo"))
            .await
            .expect("echo loads"),
    );
    let tasks: Vec<_> = (0..8u8)
        .map(|n| {
            let probe = probe.clone();
            tokio::spawn(async move {
                let mut conn = probe.open().await;
                for i in 0..300 {
                    let text = format!("{n}:{i}");
                    let reply = conn.message(Message::text(text.clone())).await;
                    assert_eq!(reply, Some(Message::text(text)), "connection {n}");
                }
                let reply = conn.message(Message::binary(vec![n; 3])).await;
                assert_eq!(reply, Some(Message::binary(vec![n; 3])), "connection {n}");
                conn.close().await;
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("every connection got its replies");
    }
}
