//! Clients we did not write, against a real server: Python's `websockets`
//! (the library most Python users reach for). A close code counts only if
//! that client actually received it.

use switchyard_tests::*;

/// Runs 20 `too_large.py` clients sending `bytes` to `/echo` (compression
/// `on` or `off`) and checks that every one received 1009 and `reason`.
async fn all_receive_1009(bytes: &str, compression: &str, reason: &str) {
    let server = TestServer::start_with(&["echo"], patient_config()).await;
    let url = server.url("/echo");
    let results = python_clients("too_large.py", &[&url, "20", bytes, compression]).await;
    assert_eq!(results.len(), 20);
    for result in results {
        assert_eq!(result["code"], 1009, "{result}");
        assert_eq!(result["reason"], reason, "{result}");
    }
    server.stop().await;
}

/// 20 `websockets` clients, compression off, each sending 8 MiB to `/echo`
/// (1 MiB limit): all 20 receive 1009 and its reason (the host reads and
/// drops the rest of each message instead of resetting the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_sending_too_much_receive_1009() {
    all_receive_1009(
        "8388608",
        "off",
        "message of 8388608 bytes exceeds the limit of 1048576 bytes",
    )
    .await;
}

/// The same with the client's default compression: 2 MiB of one byte
/// compress to a few KB, and the host stops inflating at the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_sending_a_compressed_bomb_receive_1009() {
    all_receive_1009(
        "2097152",
        "on",
        "a compressed message inflates to more than the limit of 1048576 bytes",
    )
    .await;
}

/// The default settings (no context kept), and context takeover on both
/// sides.
fn compression_settings() -> [Config; 2] {
    let mut keep = test_config();
    keep.compression.server_context_takeover = true;
    keep.compression.client_context_takeover = true;
    [test_config(), keep]
}

/// Six Python clients on the chat, half offering compression, send 200
/// messages each at once (sizes on both sides of `compression.min_bytes`);
/// each receives every other one's messages intact and in order. With the
/// default settings a broadcast's compressed frame is made once, by the
/// first recipient's writer that reads it from the feed, and shared by the
/// others; with context takeover each writer compresses its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_chat_with_and_without_compression() {
    for config in compression_settings() {
        let server = TestServer::start_with(&["chat"], config).await;
        let url = server.url("/chat/");
        let results = python_clients("chat_compressed.py", &[&url, "6", "200"]).await;
        assert_eq!(
            results,
            [serde_json::json!({"clients": 6, "compressed": 3, "received": 6 * 5 * 200})]
        );
        server.stop().await;
    }
}

/// Python's default compression offer is accepted, and 300 messages of
/// varied size and content (text and binary) come back intact, with the
/// default settings (no context kept) and with context takeover on both
/// sides (the client's offer allows it: the connection keeps its own
/// compressor and decompressor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_echo_through_compression() {
    for config in compression_settings() {
        let server = TestServer::start_with(&["echo"], config).await;
        let url = server.url("/echo");
        let results = python_clients("echo_compressed.py", &[&url, "300"]).await;
        assert_eq!(
            results,
            [serde_json::json!({"extensions": ["PerMessageDeflate"], "echoed": 300})]
        );
        server.stop().await;
    }
}
