//! What a controller sees and what host functions answer, observed through
//! the `probe` test controller, including the host's handling of bad client
//! input (1009, 1007, 1002) with `on-error` before `on-close`.

use futures_util::SinkExt;
use serde_json::{Value, json};
use switchyard_tests::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

#[tokio::test]
async fn connection_record_carries_path_params_and_query() {
    let server = TestServer::start(&["probe"]).await;
    let mut ws = server.connect("/probe/a/b%20c?x=1&name=al+ice&flag").await;
    let me = whoami(&mut ws).await;
    assert_eq!(me["route"], "probe");
    assert_eq!(me["path"], "/probe/a/b%20c");
    assert_eq!(me["params"], json!([["rest", "a/b c"]]));
    assert_eq!(
        me["query"],
        json!([["x", "1"], ["name", "al ice"], ["flag", ""]])
    );
    assert_eq!(me["user"], Value::Null);
    assert_eq!(me["roles"], json!([]));

    let mut other = server.connect("/probe").await;
    let them = whoami(&mut other).await;
    assert_eq!(them["params"], json!([["rest", ""]]));
    assert_ne!(them["id"], me["id"]);
    let ids: Vec<u64> = serde_json::from_str(&ask(&mut ws, "connections").await).unwrap();
    assert_eq!(
        ids,
        vec![me["id"].as_u64().unwrap(), them["id"].as_u64().unwrap()]
    );
    server.stop().await;
}

#[tokio::test]
async fn host_functions_refuse_bad_input_with_error_values() {
    let server = TestServer::start(&["probe"]).await;
    let mut ws = server.connect("/probe/").await;
    let id = id_of(&mut ws).await;

    assert_eq!(
        ask(&mut ws, "send 999999 hello").await,
        "err unknown-connection"
    );
    assert_eq!(
        ask(&mut ws, "close 999999 1000 x").await,
        "err unknown-connection"
    );
    for code in [0, 1005, 1006, 1015, 2000, 5000] {
        let answer = ask(&mut ws, &format!("close {id} {code} x")).await;
        assert_eq!(answer, "err invalid-close-code", "code {code}");
    }
    let too_big = (1 << 20) + 1;
    assert_eq!(
        ask(&mut ws, &format!("sendn {id} {too_big}")).await,
        "err too-large"
    );

    // Sending to oneself works and arrives before the reply.
    send_text(&mut ws, &format!("send {id} to myself")).await;
    assert_eq!(recv_text(&mut ws).await, "to myself");
    assert_eq!(recv_text(&mut ws).await, "ok ()");

    let mut other = server.connect("/probe/").await;
    send_text(&mut ws, "broadcast all").await;
    assert_eq!(recv_text(&mut ws).await, "all");
    assert_eq!(recv_text(&mut ws).await, "ok 2");
    assert_eq!(recv_text(&mut other).await, "all");
    // The instance is still healthy after every refusal.
    assert_eq!(ask(&mut ws, "plain").await, "plain");
    server.stop().await;
}

#[tokio::test]
async fn controller_close_reaches_the_client_and_on_close_runs_once() {
    let server = TestServer::start(&["probe"]).await;
    let mut watcher = server.connect("/probe/").await;
    let mut ws = server.connect("/probe/").await;
    let id = id_of(&mut ws).await;

    // The close frame follows what was queued before it; the reply of the
    // handler that closed the connection comes too late and is dropped.
    send_text(&mut ws, &format!("send {id} before closing")).await;
    assert_eq!(recv_text(&mut ws).await, "before closing");
    assert_eq!(recv_text(&mut ws).await, "ok ()");
    send_text(&mut ws, &format!("close {id} 4000 done here")).await;
    let frame = expect_close(&mut ws).await;
    assert_eq!(u16::from(frame.code), 4000);
    assert_eq!(frame.reason.as_str(), "done here");

    let closed = format!("close {id} 4000");
    let log = events_until(&mut watcher, |log| log.contains(&closed)).await;
    assert_eq!(log.iter().filter(|e| **e == closed).count(), 1, "{log:?}");
    assert_eq!(
        log.iter()
            .filter(|e| e.starts_with(&format!("open {id}")))
            .count(),
        1
    );

    // Closing it again is refused: it is gone.
    let answer = ask(&mut watcher, &format!("close {id} 1000 again")).await;
    assert_eq!(answer, "err unknown-connection");
    let answer = ask(&mut watcher, &format!("send {id} late")).await;
    assert_eq!(answer, "err unknown-connection");
    server.stop().await;
}

/// Sends a frame as-is, bypassing the client's own checks.
async fn send_raw(ws: &mut Ws, frame: Frame) {
    ws.send(Message::Frame(frame)).await.unwrap();
}

async fn assert_error_then_close(watcher: &mut Ws, ws: &mut Ws, id: u64, code: u16) {
    let frame = expect_close(ws).await;
    assert_eq!(u16::from(frame.code), code, "{frame:?}");
    let error = format!("error {id} {code}");
    let close = format!("close {id} {code}");
    let log = events_until(watcher, |log| log.contains(&close)).await;
    let error_at = log
        .iter()
        .position(|e| *e == error)
        .unwrap_or_else(|| panic!("{log:?}"));
    let close_at = log.iter().position(|e| *e == close).unwrap();
    assert!(error_at < close_at, "{log:?}");
    assert_eq!(
        log.iter()
            .filter(|e| e.starts_with(&format!("close {id} ")))
            .count(),
        1
    );
}

#[tokio::test]
async fn oversize_message_closes_with_1009_after_on_error() {
    let mut config = test_config();
    config.limits.max_message_bytes = 4096;
    config.limits.max_frame_bytes = 4096;
    let server = TestServer::start_with(&["probe"], config).await;
    let mut watcher = server.connect("/probe/").await;
    let mut ws = server.connect("/probe/").await;
    let id = id_of(&mut ws).await;

    // Exactly at the limit is fine.
    let at_limit = "y".repeat(4096);
    assert_eq!(ask(&mut ws, &at_limit).await, at_limit);

    ws.send(Message::text("z".repeat(4097))).await.unwrap();
    assert_error_then_close(&mut watcher, &mut ws, id, 1009).await;
    assert_eq!(ask(&mut watcher, "still fine").await, "still fine");
    server.stop().await;
}

#[tokio::test]
async fn oversize_fragmented_message_closes_with_1009() {
    let mut config = test_config();
    config.limits.max_message_bytes = 4096;
    config.limits.max_frame_bytes = 1024;
    let server = TestServer::start_with(&["probe"], config).await;
    let mut watcher = server.connect("/probe/").await;
    let mut ws = server.connect("/probe/").await;
    let id = id_of(&mut ws).await;

    // Five 1000-byte fragments: each frame fits, the message does not.
    let chunk = vec![b'f'; 1000];
    send_raw(
        &mut ws,
        Frame::message(chunk.clone(), OpCode::Data(Data::Text), false),
    )
    .await;
    for _ in 0..3 {
        send_raw(
            &mut ws,
            Frame::message(chunk.clone(), OpCode::Data(Data::Continue), false),
        )
        .await;
    }
    send_raw(
        &mut ws,
        Frame::message(chunk, OpCode::Data(Data::Continue), true),
    )
    .await;
    assert_error_then_close(&mut watcher, &mut ws, id, 1009).await;
    server.stop().await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_after_on_error() {
    let server = TestServer::start(&["probe"]).await;
    let mut watcher = server.connect("/probe/").await;
    let mut ws = server.connect("/probe/").await;
    let id = id_of(&mut ws).await;

    let invalid = vec![b'o', b'k', 0xff, 0xfe];
    send_raw(
        &mut ws,
        Frame::message(invalid, OpCode::Data(Data::Text), true),
    )
    .await;
    assert_error_then_close(&mut watcher, &mut ws, id, 1007).await;
    server.stop().await;
}

#[tokio::test]
async fn protocol_violations_close_with_1002_after_on_error() {
    let server = TestServer::start(&["probe"]).await;
    let mut watcher = server.connect("/probe/").await;

    // Reserved bit set.
    let mut ws = server.connect("/probe/").await;
    let id = id_of(&mut ws).await;
    let mut frame = Frame::message(b"rsv".to_vec(), OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    send_raw(&mut ws, frame).await;
    assert_error_then_close(&mut watcher, &mut ws, id, 1002).await;

    // Reserved opcode.
    let mut ws = server.connect("/probe/").await;
    let id = id_of(&mut ws).await;
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Reserved(3)),
        ..FrameHeader::default()
    };
    send_raw(&mut ws, Frame::from_payload(header, b"x".to_vec().into())).await;
    assert_error_then_close(&mut watcher, &mut ws, id, 1002).await;

    // A continuation with nothing to continue.
    let mut ws = server.connect("/probe/").await;
    let id = id_of(&mut ws).await;
    send_raw(
        &mut ws,
        Frame::message(b"c".to_vec(), OpCode::Data(Data::Continue), true),
    )
    .await;
    assert_error_then_close(&mut watcher, &mut ws, id, 1002).await;

    assert_eq!(ask(&mut watcher, "healthy").await, "healthy");
    server.stop().await;
}

#[tokio::test]
async fn peer_close_code_reaches_on_close() {
    let server = TestServer::start(&["probe"]).await;
    let mut watcher = server.connect("/probe/").await;
    let mut ws = server.connect("/probe/").await;
    let id = id_of(&mut ws).await;
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Library(4321),
        reason: "custom".into(),
    }))
    .await
    .unwrap();
    let closed = format!("close {id} 4321");
    events_until(&mut watcher, |log| log.contains(&closed)).await;

    let mut dropped = server.connect("/probe/").await;
    let id = id_of(&mut dropped).await;
    drop(dropped);
    let closed = format!("close {id} 1006");
    events_until(&mut watcher, |log| log.contains(&closed)).await;
    server.stop().await;
}

#[tokio::test]
async fn a_trapping_controller_closes_only_the_failing_connection() {
    let server = TestServer::start(&["probe"]).await;
    let mut bystander = server.connect("/probe/a/b?x=1&flag").await;
    let bystander_id = id_of(&mut bystander).await;
    let record = whoami(&mut bystander).await;
    let mut ws = server.connect("/probe/").await;

    send_text(&mut ws, "panic").await;
    assert_eq!(expect_close(&mut ws).await.code, CloseCode::Error);

    // A fresh instance serves the other connection, which stayed open and
    // is still in the host-owned connection table.
    assert_eq!(
        ask(&mut bystander, "after the trap").await,
        "after the trap"
    );
    // Events after `on-open` carry only the id, and the fresh instance never
    // saw the bystander's open: the SDK asks the host for its record.
    assert!(
        !events(&mut bystander)
            .await
            .iter()
            .any(|e| e.starts_with("open")),
        "the fresh instance saw an on-open"
    );
    assert_eq!(whoami(&mut bystander).await, record);
    assert_eq!(record["path"], "/probe/a/b");
    assert_eq!(record["params"], json!([["rest", "a/b"]]));
    assert_eq!(record["query"], json!([["x", "1"], ["flag", ""]]));
    let ids: Vec<u64> = serde_json::from_str(&ask(&mut bystander, "connections").await).unwrap();
    assert_eq!(ids, vec![bystander_id]);
    // New connections are served too.
    let mut late = server.connect("/probe/").await;
    assert_eq!(ask(&mut late, "hello").await, "hello");
    server.stop().await;
}

/// A trap while other clients' events wait in the instance's queue: the
/// queue survives the replacement instance, every other client gets each
/// of its replies once and in order, and only the failing one gets 1011.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_amid_queued_traffic_loses_no_other_event() {
    let server = TestServer::start(&["probe"]).await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(server.connect("/probe/").await);
    }
    let mut failing = server.connect("/probe/").await;
    for (c, ws) in clients.iter_mut().enumerate() {
        for i in 0..200 {
            ws.feed(Message::text(format!("c{c}-{i}"))).await.unwrap();
        }
        ws.flush().await.unwrap();
    }
    send_text(&mut failing, "panic").await;
    let readers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut ws)| {
            tokio::spawn(async move {
                for i in 0..200 {
                    assert_eq!(recv_text(&mut ws).await, format!("c{c}-{i}"));
                }
                assert_eq!(ask(&mut ws, "still here").await, "still here");
            })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
    assert_eq!(expect_close(&mut failing).await.code, CloseCode::Error);
    server.stop().await;
}

/// Writes raw bytes on an upgraded socket and expects the server's close
/// frame with `code`, after `on-error` reported the same code.
async fn raw_violation(server: &TestServer, watcher: &mut Ws, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let before = events(watcher).await.len();
    let mut stream = raw_upgrade(server.addr, "/probe/").await;
    stream.write_all(bytes).await.unwrap();
    // The probe's on-error reply comes first, then the close frame.
    let (opcode, payload) = tokio::time::timeout(WAIT, read_raw_frame(&mut stream))
        .await
        .expect("no reply");
    assert_eq!((opcode, &payload[..]), (0x1, &b"error 1002"[..]));
    let (opcode, payload) = tokio::time::timeout(WAIT, read_raw_frame(&mut stream))
        .await
        .expect("no close frame");
    assert_eq!(opcode, 0x8, "expected a close frame, got {payload:?}");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
    let log = events_until(watcher, |log| {
        log[before..].iter().any(|e| e.starts_with("close "))
    })
    .await;
    let new: Vec<&String> = log[before..]
        .iter()
        .filter(|e| !e.starts_with("message "))
        .collect();
    assert_eq!(new.len(), 3, "{new:?}");
    assert!(new[0].starts_with("open "), "{new:?}");
    assert!(
        new[1].starts_with("error ") && new[1].ends_with(" 1002"),
        "{new:?}"
    );
    assert!(
        new[2].starts_with("close ") && new[2].ends_with(" 1002"),
        "{new:?}"
    );
}

#[tokio::test]
async fn unmasked_frames_and_fragmented_control_frames_close_with_1002() {
    let server = TestServer::start(&["probe"]).await;
    let mut watcher = server.connect("/probe/").await;
    // A client frame without a mask.
    raw_violation(&server, &mut watcher, &[0x81, 0x02, b'h', b'i']).await;
    // A ping without FIN: control frames must not be fragmented.
    raw_violation(&server, &mut watcher, &[0x09, 0x81, 1, 2, 3, 4, b'p' ^ 1]).await;
    // A control frame with a payload over 125 bytes.
    let mut long_ping = vec![0x89, 0x80 | 126, 0, 126, 0, 0, 0, 0];
    long_ping.extend(std::iter::repeat_n(b'p', 126));
    raw_violation(&server, &mut watcher, &long_ping).await;
    assert_eq!(ask(&mut watcher, "healthy").await, "healthy");
    server.stop().await;
}

/// Sends `commands` without waiting, then reads the answers to them:
/// `reads` messages (broadcasts included). Returns the socket and what it
/// read.
fn pipeline(
    mut ws: Ws,
    commands: Vec<String>,
    reads: usize,
) -> tokio::task::JoinHandle<(Ws, Vec<String>)> {
    tokio::spawn(async move {
        for command in commands {
            ws.feed(Message::text(command)).await.unwrap();
        }
        ws.flush().await.unwrap();
        let mut read = Vec::with_capacity(reads);
        for _ in 0..reads {
            read.push(recv_text(&mut ws).await);
        }
        (ws, read)
    })
}

/// A probe server whose queues hold everything the broadcast tests below
/// send before they read it.
async fn roomy_probe() -> TestServer {
    let mut config = test_config();
    config.limits.outbound_queue_messages = 100_000;
    TestServer::start_with(&["probe"], config).await
}

/// Several clients send at once, so their events queue up behind each
/// other and run in a row, their broadcasts (made by events that answer
/// nothing) handed over together: each broadcast still reaches a recipient
/// before what the same controller sends, replies and closes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_keep_their_place_among_sends_replies_and_closes() {
    const ROUNDS: usize = 300;
    const OTHERS: usize = 3;
    let server = roomy_probe().await;
    let mut a = server.connect("/probe/").await;
    let mut b = server.connect("/probe/").await;
    let b_id = id_of(&mut b).await;
    id_of(&mut a).await;
    let mut others = Vec::new();
    for _ in 0..OTHERS {
        let mut other = server.connect("/probe/").await;
        id_of(&mut other).await;
        others.push(other);
    }
    let mut from_a = Vec::new();
    for i in 0..ROUNDS {
        from_a.push(format!("shout b{i}"));
        from_a.push(format!("send {b_id} s{i}"));
    }
    from_a.push(format!("close {b_id} 4000 done"));
    // a reads its broadcasts, its answers and the others' broadcasts; each
    // other reads everyone's broadcasts.
    let a = pipeline(a, from_a, (2 + OTHERS) * ROUNDS + 1);
    let others: Vec<_> = others
        .into_iter()
        .map(|other| {
            let shouts = (0..ROUNDS).map(|i| format!("shout d{i}")).collect();
            pipeline(other, shouts, (1 + OTHERS) * ROUNDS)
        })
        .collect();
    // b hears a's broadcasts and sends in a's order, the others' in between.
    let mut heard = Vec::new();
    loop {
        match recv(&mut b).await {
            Message::Text(text) if !text.starts_with('d') => heard.push(text.to_string()),
            Message::Text(_) => {}
            Message::Close(frame) => {
                assert_eq!(u16::from(frame.expect("a close code").code), 4000);
                break;
            }
            other => panic!("b got {other:?}"),
        }
    }
    let expected: Vec<String> = (0..ROUNDS)
        .flat_map(|i| [format!("b{i}"), format!("s{i}")])
        .collect();
    assert_eq!(heard, expected);
    let (_, read) = a.await.unwrap();
    let mine: Vec<&String> = read.iter().filter(|t| !t.starts_with('d')).collect();
    for i in 0..ROUNDS {
        assert_eq!(*mine[2 * i], format!("b{i}"));
        assert_eq!(*mine[2 * i + 1], "ok ()", "the answer to send s{i}");
    }
    assert_eq!(*mine[2 * ROUNDS], "ok ()", "the answer to close");
    for other in others {
        other.await.unwrap();
    }
    server.stop().await;
}

/// Connections that open while clients broadcast get exactly the
/// broadcasts made after their `on-open`, in the order the controller ran
/// them (its event log), whether or not those waited to be handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_get_the_broadcasts_made_after_they_opened() {
    const COUNT: usize = 1_000;
    const SENDERS: usize = 3;
    const LATE: usize = 5;
    let server = roomy_probe().await;
    let mut senders = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..SENDERS {
        let mut ws = server.connect("/probe/").await;
        ids.push(id_of(&mut ws).await);
        senders.push(ws);
    }
    // Each sender reads everyone's broadcasts.
    let senders: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(k, ws)| {
            let shouts = (0..COUNT).map(|i| format!("shout {k}-{i}")).collect();
            pipeline(ws, shouts, SENDERS * COUNT)
        })
        .collect();
    let mut late = Vec::new();
    // Each opens while the senders' broadcasts are being run.
    for _ in 0..LATE {
        late.push(server.connect("/probe/").await);
    }
    let mut done = Vec::new();
    for sender in senders {
        done.push(sender.await.unwrap().0);
    }

    let log = events(&mut done[0]).await;
    // Ids grow with time, and the late ones connected one after another.
    let mut late_ids: Vec<u64> = log
        .iter()
        .filter_map(|e| e.strip_prefix("open ")?.parse().ok())
        .filter(|id| !ids.contains(id))
        .collect();
    late_ids.sort_unstable();
    assert_eq!(late_ids.len(), LATE, "{log:?}");
    for (ws, id) in late.iter_mut().zip(late_ids) {
        let opened = log
            .iter()
            .position(|e| *e == format!("open {id}"))
            .expect("opened");
        // Which broadcast each sender's message event made (its first
        // message was its whoami; the one after its broadcasts, `events`).
        let mut next = [0usize; SENDERS];
        let mut expected = Vec::new();
        for (at, event) in log.iter().enumerate() {
            for (k, sender) in ids.iter().enumerate() {
                if *event == format!("message {sender}") {
                    if (1..=COUNT).contains(&next[k]) && at > opened {
                        expected.push(format!("{k}-{}", next[k] - 1));
                    }
                    next[k] += 1;
                }
            }
        }
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(
                &recv_text(ws).await,
                want,
                "broadcast {i} after connection {id} opened (of {})",
                expected.len()
            );
        }
        // Nothing else was queued for it: its own answer comes next.
        assert_eq!(id_of(ws).await, id);
    }
    server.stop().await;
}

/// An event that broadcasts and then traps: its broadcast waited to be
/// handed over when the instance failed, and still reaches the others (as
/// it did when broadcasts were queued at once); the trapping connection,
/// killed first, gets its 1011 with nothing before it; the fresh instance
/// serves on.
#[tokio::test]
async fn a_broadcast_made_before_a_trap_still_goes_out() {
    let server = TestServer::start(&["probe"]).await;
    let mut listener = server.connect("/probe/").await;
    id_of(&mut listener).await;
    let mut a = server.connect("/probe/").await;
    id_of(&mut a).await;
    send_text(&mut a, "shout-and-panic last words").await;
    assert_eq!(recv_text(&mut listener).await, "last words");
    assert_eq!(u16::from(expect_close(&mut a).await.code), 1011);
    assert_eq!(ask(&mut listener, "plain").await, "plain");
    server.stop().await;
}

/// A client whose own message makes its controller broadcast more than the
/// outbound limit to the others is no slow consumer: it gets none of those
/// broadcasts, and its task reads the feed only after the event. It gets
/// the one broadcast to everyone before them, then its answer, not a 1008,
/// and keeps its place in the room; a client that joins later gets what it
/// broadcasts next.
#[tokio::test]
async fn broadcasting_past_the_outbound_limit_in_ones_own_event_is_not_being_slow() {
    const LIMIT: usize = 64;
    let mut config = test_config();
    config.limits.outbound_queue_messages = LIMIT;
    let server = TestServer::start_with(&["probe"], config).await;
    let mut a = server.connect("/probe/").await;
    id_of(&mut a).await;
    let burst = 4 * LIMIT;
    for _ in 0..2 {
        assert_eq!(ask(&mut a, &format!("fanout {burst}")).await, "start");
        assert_eq!(recv_text(&mut a).await, format!("broadcast {burst}"));
    }
    let mut b = server.connect("/probe/").await;
    id_of(&mut b).await;
    assert_eq!(ask(&mut a, "fanout 3").await, "start");
    assert_eq!(recv_text(&mut a).await, "broadcast 3");
    for expected in ["start", "0", "1", "2"] {
        assert_eq!(recv_text(&mut b).await, expected);
    }
    server.stop().await;
}
