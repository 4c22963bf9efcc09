//! Several nodes, one application: real `serve_alone` processes joined
//! through a real `redis-server` each test starts on a free port. Chat, a
//! room and groups across nodes; presence; a killed node; the broker
//! stopping and coming back; a broker missing at start; a stalled node.

use std::time::{Duration, Instant};

use switchyard_tests::*;

const SERVE_ALONE: &str = env!("CARGO_BIN_EXE_serve_alone");

/// Short timings, so that the faults play out in about a second.
const TIMINGS: &str =
    "heartbeat_ms = 200\nnode_timeout_ms = 1000\nretry_ms = 300\nresync_ms = 5000\n";

/// A node `id` serving the probe, keyed, chat and rooms controllers.
async fn node(redis: &RedisServer, id: &str) -> AloneServer {
    node_with(redis, id, TIMINGS).await
}

/// [`node`] with other `[cluster]` timings.
async fn node_with(redis: &RedisServer, id: &str, timings: &str) -> AloneServer {
    AloneServer::start(
        SERVE_ALONE,
        &["probe", "keyed", "chat", "rooms"],
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[cluster]\nredis_url = \"{}\"\nnode_id = \"{id}\"\n{timings}",
            redis.url()
        ),
        4096,
    )
    .await
}

/// Asks `ws` for `connections` until it lists `n`; returns them.
async fn wait_for_connections(ws: &mut Ws, n: usize) -> Vec<u64> {
    wait_for_list(ws, "connections", n).await
}

/// Asks `ws` for the list `command` answers until it has `n` entries.
async fn wait_for_list(ws: &mut Ws, command: &str, n: usize) -> Vec<u64> {
    let mut last = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        loop {
            last = serde_json::from_str(&ask(ws, command).await).unwrap();
            if last.len() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "`{command}` never listed {n}: {last:?}");
    last
}

/// Sends `command text` (a broadcast or publish that reaches `ws` too):
/// checks that `ws` gets `text` first, and returns the answer after it.
async fn shout(ws: &mut Ws, command: &str, text: &str) -> String {
    send_text(ws, &format!("{command} {text}")).await;
    assert_eq!(recv_text(ws).await, text);
    recv_text(ws).await
}

/// Waits until `node` knows `n` connections on other nodes.
async fn wait_for_remote(node: &AloneServer, n: usize) {
    node.wait_for_metric("switchyard_cluster_remote_connections", n as f64)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_a_room_groups_send_close_and_attachments_across_two_nodes() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;

    // Chat: alice on a hears bob join on b, then what he says.
    let mut alice = a.connect("/chat/?name=alice").await;
    assert_eq!(recv_json(&mut alice).await["data"], "Hello world!");
    wait_for_remote(&b, 1).await;
    let mut bob = b.connect("/chat/?name=bob").await;
    assert_eq!(recv_json(&mut bob).await["data"], "Hello world!");
    assert_eq!(
        recv_json(&mut alice).await,
        serde_json::json!({"type": "join", "user": "bob"})
    );
    send_text(&mut bob, "hi from b").await;
    assert_eq!(recv_json(&mut alice).await["data"], "hi from b");
    wait_for_remote(&b, 1).await;
    wait_for_remote(&a, 1).await;
    send_text(&mut alice, "hi from a").await;
    assert_eq!(recv_json(&mut bob).await["data"], "hi from a");
    drop(alice);
    assert_eq!(
        recv_json(&mut bob).await,
        serde_json::json!({"type": "leave", "user": "alice"})
    );
    drop(bob);
    wait_for_remote(&a, 0).await;
    wait_for_remote(&b, 0).await;

    // A room whose clients sit on two nodes: presence in the welcome, the
    // join, messages both ways.
    let mut ann = a.connect("/rooms/lounge?name=ann").await;
    assert_eq!(recv_json(&mut ann).await["type"], "welcome");
    wait_for_remote(&b, 1).await;
    let mut ben = b.connect("/rooms/lounge?name=ben").await;
    let welcome = recv_json(&mut ben).await;
    assert_eq!(welcome["present"], serde_json::json!(["ann"]), "{welcome}");
    assert_eq!(recv_json(&mut ann).await["user"], "ben");
    send_text(&mut ann, "hello lounge").await;
    assert_eq!(recv_json(&mut ann).await["data"], "hello lounge");
    assert_eq!(recv_json(&mut ben).await["data"], "hello lounge");
    // Another room on b hears nothing of the lounge.
    let mut cid = b.connect("/rooms/attic?name=cid").await;
    assert_eq!(recv_json(&mut cid).await["present"], serde_json::json!([]));
    send_text(&mut ben, "only the lounge").await;
    assert_eq!(recv_json(&mut ann).await["data"], "only the lounge");
    send_text(&mut cid, "attic").await;
    assert_eq!(recv_json(&mut cid).await["data"], "attic");
    drop((ann, ben, cid));

    // The probe: connections, send, broadcast, groups, attachments, close.
    let mut p1 = a.connect("/probe/1").await;
    let mut p2 = b.connect("/probe/2").await;
    let id1 = id_of(&mut p1).await;
    let id2 = id_of(&mut p2).await;
    assert_ne!(id1 >> 40, id2 >> 40, "each node has its own id tag");
    assert_ne!(id1 >> 40, 0);
    let mut both = vec![id1, id2];
    both.sort_unstable();
    let mut seen = wait_for_connections(&mut p1, 2).await;
    seen.sort_unstable();
    assert_eq!(seen, both);
    wait_for_connections(&mut p2, 2).await;

    assert_eq!(ask(&mut p1, &format!("send {id2} direct")).await, "ok ()");
    assert_eq!(recv_text(&mut p2).await, "direct");
    assert_eq!(shout(&mut p2, "broadcast", "to all").await, "ok 2");
    assert_eq!(recv_text(&mut p1).await, "to all");

    assert_eq!(ask(&mut p1, "join g").await, "ok ()");
    assert_eq!(ask(&mut p2, "join g").await, "ok ()");
    let mut members = wait_for_list(&mut p1, "members g", 2).await;
    members.sort_unstable();
    assert_eq!(members, both);
    assert_eq!(shout(&mut p1, "publish g", "to the group").await, "ok 2");
    assert_eq!(recv_text(&mut p2).await, "to the group");
    assert_eq!(ask(&mut p2, "leave g").await, "ok true");
    wait_for_list(&mut p1, "members g", 1).await;

    assert_eq!(ask(&mut p2, "attach from b").await, "ok ()");
    let attachment = tokio::time::timeout(WAIT, async {
        loop {
            let seen = ask(&mut p1, &format!("attachment {id2}")).await;
            if seen != "none" {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the attachment never reached node a");
    assert_eq!(attachment, "from b");

    // Order and no duplicates: 300 broadcasts from a arrive at b in order.
    for n in 0..300 {
        send_text(&mut p1, &format!("broadcast n{n}")).await;
    }
    for n in 0..300 {
        assert_eq!(recv_text(&mut p2).await, format!("n{n}"));
    }
    for n in 0..300 {
        assert_eq!(recv_text(&mut p1).await, format!("n{n}"));
        assert_eq!(recv_text(&mut p1).await, "ok 2");
    }

    assert_eq!(
        ask(&mut p1, &format!("close {id2} 4001 from a")).await,
        "ok ()"
    );
    let close = expect_close(&mut p2).await;
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (4001, "from a")
    );
    wait_for_connections(&mut p1, 1).await;
    assert_eq!(
        ask(&mut p1, &format!("send {id2} late")).await,
        "err unknown-connection"
    );

    let metrics = b.metrics().await;
    assert_metric(&metrics, "switchyard_cluster_broker_up", 1.0);
    assert_metric(&metrics, "switchyard_cluster_nodes", 2.0);
    assert!(metric_value(&metrics, "switchyard_cluster_messages_received_total").unwrap() > 300.0);
    let (status, ready) = http_get(b.admin.unwrap(), "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["cluster"]["broker"], "up");
    assert_eq!(ready["cluster"]["node"], "b");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_instances_reach_their_key_on_every_node() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    let mut k1 = a.connect("/keyed/lounge").await;
    let mut k2 = b.connect("/keyed/lounge").await;
    let mut k3 = b.connect("/keyed/attic").await;
    wait_for_connections(&mut k1, 2).await;
    wait_for_connections(&mut k3, 1).await;
    assert_eq!(shout(&mut k1, "broadcast", "lounge only").await, "2");
    assert_eq!(recv_text(&mut k2).await, "lounge only");
    assert_eq!(ask(&mut k3, "count").await, "1", "the attic heard nothing");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_no_ghosts() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    let c = node(&redis, "c").await;
    let mut pa = a.connect("/probe/a").await;
    let mut pb = b.connect("/probe/b").await;
    let mut pc = c.connect("/probe/c").await;
    for probe in [&mut pa, &mut pb, &mut pc] {
        assert_eq!(ask(probe, "join everyone").await, "ok ()");
    }
    wait_for_connections(&mut pa, 3).await;
    wait_for_list(&mut pc, "members everyone", 3).await;

    let killed = Instant::now();
    b.kill().await;
    drop(pb);
    wait_for_connections(&mut pa, 2).await;
    wait_for_list(&mut pa, "members everyone", 2).await;
    wait_for_connections(&mut pc, 2).await;
    // The documented bound is node_timeout_ms + heartbeat_ms (1.2 s here);
    // the time is printed, not asserted.
    eprintln!(
        "node b left the others' views {:?} after SIGKILL",
        killed.elapsed()
    );
    c.wait_for_log("a node stopped beating").await;
    a.wait_for_metric("switchyard_cluster_nodes", 2.0).await;

    // The survivors still reach each other.
    assert_eq!(
        shout(&mut pa, "publish everyone", "still here").await,
        "ok 2"
    );
    assert_eq!(recv_text(&mut pc).await, "still here");
    a.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_stopping_and_returning() {
    let mut redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    let mut pa1 = a.connect("/probe/a1").await;
    let mut pa2 = a.connect("/probe/a2").await;
    let mut pb = b.connect("/probe/b").await;
    wait_for_connections(&mut pa1, 3).await;
    wait_for_connections(&mut pb, 3).await;

    redis.stop();
    a.wait_for_log("lost the cluster's broker").await;
    a.wait_for_metric("switchyard_cluster_broker_up", 0.0).await;
    // Local delivery goes on; what was meant for b is dropped and counted.
    assert_eq!(shout(&mut pa1, "broadcast", "while down").await, "ok 2");
    assert_eq!(recv_text(&mut pa2).await, "while down");
    a.wait_for_metric(
        "switchyard_cluster_dropped_total{reason=\"broker_down\"}",
        1.0,
    )
    .await;
    a.wait_for_log("messages for other nodes were dropped")
        .await;
    let (status, ready) = http_get(a.admin.unwrap(), "/readyz").await;
    assert_eq!(
        status, 200,
        "a node without its broker still serves: {ready}"
    );
    assert!(ready.contains("\"broker\":\"down\""), "{ready}");

    redis.restart();
    a.wait_for_metric("switchyard_cluster_broker_up", 1.0).await;
    b.wait_for_metric("switchyard_cluster_broker_up", 1.0).await;
    // Presence is written again: each side lists the other's connections.
    wait_for_remote(&a, 1).await;
    wait_for_remote(&b, 2).await;
    assert_eq!(shout(&mut pa1, "broadcast", "back").await, "ok 3");
    // The first thing b gets is the new message: the dropped one never
    // comes.
    assert_eq!(recv_text(&mut pb).await, "back");
    assert_eq!(shout(&mut pb, "broadcast", "from b").await, "ok 3");
    assert_eq!(recv_text(&mut pa2).await, "back");
    assert_eq!(recv_text(&mut pa2).await, "from b");
    let connected = a.log().matches("connected to the cluster's broker").count();
    assert!(connected >= 2, "{}", a.log());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_missing_at_start_is_retried_quietly() {
    let mut redis = RedisServer::unstarted();
    let started = Instant::now();
    let a = node(&redis, "a").await;
    let mut p1 = a.connect("/probe/1").await;
    let mut p2 = a.connect("/probe/2").await;
    wait_for_connections(&mut p1, 2).await;
    for n in 0..100 {
        assert_eq!(shout(&mut p1, "broadcast", &format!("m{n}")).await, "ok 2");
        assert_eq!(recv_text(&mut p2).await, format!("m{n}"));
    }
    a.wait_for_log("cannot reach the cluster's broker").await;
    a.wait_for_metric("switchyard_cluster_broker_up", 0.0).await;
    // One line per try (every 300 ms), however many messages flow.
    let tries = a.log().matches("cannot reach the cluster's broker").count();
    let periods = started.elapsed().as_millis() / 300 + 2;
    assert!(
        tries as u128 <= periods,
        "{tries} lines in {periods} periods:\n{}",
        a.log()
    );

    redis.restart();
    a.wait_for_metric("switchyard_cluster_broker_up", 1.0).await;
    let b = node(&redis, "b").await;
    let mut p3 = b.connect("/probe/3").await;
    wait_for_connections(&mut p3, 3).await;
    assert_eq!(shout(&mut p3, "broadcast", "hello a").await, "ok 3");
    assert_eq!(recv_text(&mut p1).await, "hello a");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_does_not_slow_the_others_and_comes_back() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    let c = node(&redis, "c").await;
    let mut pa = a.connect("/probe/a").await;
    let mut pb = b.connect("/probe/b").await;
    let mut pc = c.connect("/probe/c").await;
    wait_for_connections(&mut pa, 3).await;
    wait_for_connections(&mut pc, 3).await;

    // c stops running (SIGSTOP) while a keeps broadcasting to everyone:
    // b gets every message, in order, whatever c does not read.
    c.signal("STOP");
    for n in 0..500 {
        send_text(&mut pa, &format!("broadcast s{n}")).await;
    }
    for n in 0..500 {
        assert_eq!(recv_text(&mut pb).await, format!("s{n}"));
    }
    // Stalled past node_timeout_ms, c is taken for dead...
    wait_for_connections(&mut pb, 2).await;
    c.signal("CONT");
    // ...and when it runs again it announces itself again (its heartbeat
    // finds it lapsed, or its broker connection timed out and the new one
    // announces it).
    wait_for_connections(&mut pb, 3).await;
    assert_eq!(shout(&mut pb, "broadcast", "c is back").await, "ok 3");
    // c may first get what a broadcast while it was stalled (what Redis
    // held for it and its own queue kept); then the new message.
    let found = tokio::time::timeout(WAIT, async {
        loop {
            if recv_text(&mut pc).await == "c is back" {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "c never got the message after it came back");
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_nodes_with_one_id_are_reported() {
    let redis = RedisServer::start();
    let a = node(&redis, "twin").await;
    let b = node(&redis, "twin").await;
    let clash = "another live process uses this node id";
    tokio::time::timeout(WAIT, async {
        while !a.log().contains(clash) && !b.log().contains(clash) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no clash reported:\n{}\n{}", a.log(), b.log()));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_leaves_at_once() {
    // A node timeout far beyond the test's waits: only leaving on
    // shutdown can make the others stop counting the node in time.
    let slow = "heartbeat_ms = 200\nnode_timeout_ms = 60000\nretry_ms = 300\n";
    let redis = RedisServer::start();
    let a = node_with(&redis, "a", slow).await;
    let b = node_with(&redis, "b", slow).await;
    let mut pa = a.connect("/probe/a").await;
    let _pb = b.connect("/probe/b").await;
    wait_for_connections(&mut pa, 2).await;
    a.wait_for_metric("switchyard_cluster_nodes", 2.0).await;
    b.stop().await;
    // Its connections' closes were published before it left...
    wait_for_connections(&mut pa, 1).await;
    // ...and it left the broker's list of nodes.
    a.wait_for_metric("switchyard_cluster_nodes", 1.0).await;
    a.stop().await;
}
