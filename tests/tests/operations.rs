//! Operating the server: the admin listener's metrics, health and
//! readiness, as a Prometheus scraper or a load balancer's probe sees them.

use futures_util::SinkExt;
use switchyard::Config;
use switchyard_tests::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The test config with the admin listener on a free port.
fn admin_config() -> Config {
    let mut config = test_config();
    config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    config
}

#[tokio::test]
async fn metrics_count_connections_messages_and_events_by_route() {
    let server = TestServer::start_with(&["echo"], admin_config()).await;
    let mut ws = server.connect("/echo").await;
    for text in ["one", "two", "three"] {
        send_text(&mut ws, text).await;
        assert_eq!(recv_text(&mut ws).await, text);
    }
    let text = metrics(&server).await;
    assert_metric(&text, "switchyard_connections{route=\"echo\"}", 1.0);
    assert_eq!(server.refused_status("/nowhere").await, 404);
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();

    let text = wait_for_metric(
        &server,
        "switchyard_connections_closed_total{route=\"echo\",code=\"1000\"}",
        1.0,
    )
    .await;
    for (series, value) in [
        ("switchyard_connections{route=\"echo\"}", 0.0),
        (
            "switchyard_upgrades_total{route=\"echo\",status=\"101\"}",
            1.0,
        ),
        ("switchyard_upgrades_total{route=\"\",status=\"404\"}", 1.0),
        ("switchyard_messages_received_total{route=\"echo\"}", 3.0),
        ("switchyard_received_bytes_total{route=\"echo\"}", 11.0),
        ("switchyard_messages_sent_total{route=\"echo\"}", 3.0),
        ("switchyard_sent_bytes_total{route=\"echo\"}", 11.0),
        (
            "switchyard_event_duration_seconds_count{route=\"echo\",event=\"open\"}",
            1.0,
        ),
        (
            "switchyard_event_duration_seconds_count{route=\"echo\",event=\"message\"}",
            3.0,
        ),
        (
            "switchyard_event_duration_seconds_count{route=\"echo\",event=\"close\"}",
            1.0,
        ),
        ("switchyard_instances{route=\"echo\"}", 1.0),
        ("switchyard_pool_instances", 1_000.0),
    ] {
        assert_metric(&text, series, value);
    }
    assert!(
        metric_value(&text, "switchyard_pool_instances_used").is_some_and(|used| used >= 1.0),
        "{text}"
    );
    // Every series of the text format names only route, status, code,
    // event, kind or result: nothing a client chooses.
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let labels = line.split_once('{').map_or("", |(_, rest)| rest);
        for pair in labels.split(',').filter(|pair| pair.contains('=')) {
            let key = pair.split('=').next().unwrap();
            assert!(
                ["route", "status", "code", "event", "kind", "result", "le"].contains(&key),
                "unexpected label {key} in {line}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn broadcasts_count_one_delivery_per_recipient_and_closes_their_code() {
    let server = TestServer::start_with(&["chat"], admin_config()).await;
    let mut clients = Vec::new();
    for name in ["a", "b", "c"] {
        let mut ws = server.connect(&format!("/chat/?name={name}")).await;
        recv_text(&mut ws).await; // the welcome
        clients.push(ws);
    }
    let before = metrics(&server).await;
    let delivered = metric_value(&before, "switchyard_deliveries_total{route=\"chat\"}")
        .expect("chat has broadcast its joins");
    send_text(&mut clients[0], "hello").await;
    // The two others get the line (chat does not echo to the sender).
    for ws in &mut clients[1..] {
        let line = loop {
            let line = recv_text(ws).await;
            if line.contains("hello") {
                break line;
            }
        };
        assert!(line.contains("hello"), "{line}");
    }
    wait_for_metric(
        &server,
        "switchyard_deliveries_total{route=\"chat\"}",
        delivered + 2.0,
    )
    .await;
    let mut ws = clients.pop().unwrap();
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "app".into(),
    }))
    .await
    .unwrap();
    // Application codes are counted by their thousand, so clients cannot
    // make series of their own.
    wait_for_metric(
        &server,
        "switchyard_connections_closed_total{route=\"chat\",code=\"4xxx\"}",
        1.0,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn guest_traps_are_counted_by_kind() {
    let mut config = admin_config();
    // Long enough that the memory cap, not the budget, stops `alloc`.
    config.sandbox.event_budget_ms = 3_000;
    let server = TestServer::start_with(&["fault"], config).await;
    for command in ["panic", "loop", "alloc", "recurse"] {
        let mut ws = server.connect("/fault").await;
        send_text(&mut ws, command).await;
        assert_eq!(
            expect_close(&mut ws).await.code,
            CloseCode::Error,
            "{command}"
        );
    }
    let text = wait_for_metric(
        &server,
        "switchyard_connections_closed_total{route=\"fault\",code=\"1011\"}",
        4.0,
    )
    .await;
    for kind in ["panic", "budget", "memory", "other"] {
        let series = format!("switchyard_guest_traps_total{{route=\"fault\",kind=\"{kind}\"}}");
        assert_metric(&text, &series, 1.0);
    }
    server.stop().await;
}

#[tokio::test]
async fn reloads_are_counted_by_result() {
    let mut server = TestServer::start_with(&["echo"], admin_config()).await;
    std::fs::write(server.file("echo.wasm"), module_variant("echo", 1)).unwrap();
    server.until_live("echo.wasm").await;
    std::fs::write(server.file("echo.wasm"), b"not a module").unwrap();
    server.next_reload("echo.wasm").await;
    std::fs::copy(module("chat"), server.file("chat.wasm")).unwrap();
    server.until_live("chat.wasm").await;
    std::fs::remove_file(server.file("chat.wasm")).unwrap();
    server.next_reload("chat.wasm").await;
    let text = metrics(&server).await;
    for result in ["swapped", "rejected", "added", "removed"] {
        let series = format!("switchyard_reloads_total{{result=\"{result}\"}}");
        assert_metric(&text, &series, 1.0);
    }
    server.stop().await;
}

#[tokio::test]
async fn health_and_readiness_say_what_is_wrong() {
    let server = TestServer::start_with(&["echo"], admin_config()).await;
    let admin = server.admin.unwrap();
    let (status, body) = http_get(admin, "/healthz").await;
    assert_eq!((status, body.trim()), (200, r#"{"status":"ok"}"#));
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready, serde_json::json!({"ready": true, "routes": 1}));
    let (status, body) = http_get(admin, "/admin").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("/metrics"), "{body}");
    let answer = raw_http(admin, "POST /metrics HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
    // The public port knows nothing of these paths.
    assert_eq!(server.refused_status("/metrics").await, 404);
    server.stop().await;

    // No controller loaded: alive, but not ready, and the body says why.
    let server = TestServer::start_with(&[], admin_config()).await;
    let admin = server.admin.unwrap();
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], false);
    assert!(
        ready["problems"][0]
            .as_str()
            .unwrap()
            .contains("no controller"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn without_an_admin_address_nothing_more_listens() {
    let server = TestServer::start(&["echo"]).await;
    assert_eq!(server.admin, None);
    let mut ws = server.connect("/echo").await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(recv_text(&mut ws).await, "hi");
    server.stop().await;
}

/// Every compiled-module cache entry under `dir`.
fn cache_entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut entries = Vec::new();
    for sub in std::fs::read_dir(dir).unwrap() {
        let sub = sub.unwrap().path();
        for entry in std::fs::read_dir(&sub).unwrap() {
            let entry = entry.unwrap().path();
            if entry.extension().is_some_and(|ext| ext == "cwasm") {
                entries.push(entry);
            }
        }
    }
    entries
}

/// Starts a server on `echo` with the cache in `cache`, waits for the
/// module's load line to say how it was compiled, checks it echoes, and
/// stops it.
async fn start_and_stop(cache: &std::path::Path, compiled: &str, also: &[&str]) {
    let mut config = test_config();
    config.module_cache = cache.to_owned();
    let server = TestServer::start_with(&["echo"], config).await;
    let logs = server.logs();
    logs.wait_for(&["controller loaded", "route=echo", compiled])
        .await;
    for line in also {
        logs.wait_for(&[line]).await;
    }
    let mut ws = server.connect("/echo").await;
    assert_eq!(ask(&mut ws, "still echoes").await, "still echoes");
    server.stop().await;
}

#[tokio::test]
async fn a_restart_with_unchanged_modules_compiles_nothing() {
    let cache = tempfile::tempdir().unwrap();
    start_and_stop(cache.path(), "compiled=Fresh", &[]).await;
    let entries = cache_entries(cache.path());
    assert_eq!(entries.len(), 1, "{entries:?}");
    start_and_stop(cache.path(), "compiled=Cached", &[]).await;

    // A flipped bit: detected, removed, compiled again, never loaded.
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&entries[0], &bytes).unwrap();
    start_and_stop(
        cache.path(),
        "compiled=Fresh",
        &["corrupt compiled-module cache entry"],
    )
    .await;
    // Stored again, sound: the next start compiles nothing.
    start_and_stop(cache.path(), "compiled=Cached", &[]).await;

    // A torn write (the end missing) is corrupt too.
    let bytes = std::fs::read(&entries[0]).unwrap();
    std::fs::write(&entries[0], &bytes[..bytes.len() - 100]).unwrap();
    start_and_stop(
        cache.path(),
        "compiled=Fresh",
        &["corrupt compiled-module cache entry"],
    )
    .await;
    assert_eq!(cache_entries(cache.path()).len(), 1);
}
