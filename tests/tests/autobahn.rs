//! The Autobahn TestSuite's cases, the reference conformance suite for
//! RFC 6455 and RFC 7692 (permessage-deflate), run against a real server
//! serving the `echo` sample, through `kosoku` (PyPI), which runs the
//! suite's case files. Every case must end OK or INFORMATIONAL: NON-STRICT,
//! FAILED and UNIMPLEMENTED all fail the test. docs/CONFORMANCE.md has the
//! results table and the command to run it by hand.

use std::collections::BTreeMap;
use std::path::Path;

use switchyard_tests::*;

/// Settings for the suite:
/// - section 9 sends messages of up to 16 MiB (the defaults refuse anything
///   over 1 MiB with 1009, as they should);
/// - every message is compressed once compression is agreed. RFC 7692 lets
///   a server send a short message plain (the default `min_bytes` is 256),
///   but kosoku 0.1.0 reads a plain echo in sections 12 and 13 as a string
///   and fails hashing it ("Strings must be encoded before hashing"): with
///   the default, 13.2.1–3, 13.5.1–3, 13.6.1–3 and 13.7.1–3 end in ERROR
///   against any server that does so (Node's `ws` included).
fn suite_config() -> Config {
    let mut config = Config::default();
    config.limits.max_message_bytes = 20 << 20;
    config.limits.max_frame_bytes = 20 << 20;
    config.limits.outbound_queue_bytes = 64 << 20;
    config.compression.min_bytes = 0;
    config
}

/// Runs `kosoku` on the cases `select` (globs) against `url`; returns each
/// case's (behavior, close behavior) by case id.
async fn run_suite(
    url: &str,
    select: &[&str],
    report: &Path,
) -> BTreeMap<String, (String, String)> {
    let kosoku = outside_tool("SWITCHYARD_TEST_KOSOKU");
    let mut command = tokio::process::Command::new(&kosoku);
    // Two cases at a time: the runner, not the server, is the slower side.
    command
        .args(["-m", "fuzzingclient", "-p", "2", "-o"])
        .arg(report);
    for case in select {
        command.args(["-i", case]);
    }
    // kosoku has no timeout of its own (its handshake waits forever); it
    // exits non-zero when a case fails, and the report says which.
    let _status = tokio::time::timeout(
        std::time::Duration::from_secs(30 * 60),
        command
            .arg(url)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .status(),
    )
    .await
    .expect("the suite did not finish in 30 minutes")
    .expect("cannot run kosoku");
    let index = std::fs::read_to_string(report.join("index.json"))
        .unwrap_or_else(|err| panic!("no report in {}: {err}", report.display()));
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    let agent = index
        .as_object()
        .unwrap()
        .values()
        .next()
        .expect("one agent");
    agent
        .as_object()
        .unwrap()
        .iter()
        .map(|(case, result)| {
            let field = |name: &str| result[name].as_str().unwrap_or("?").to_owned();
            (case.clone(), (field("behavior"), field("behaviorClose")))
        })
        .collect()
}

/// The cases that did not pass, with what they got.
fn failures(results: &BTreeMap<String, (String, String)>) -> Vec<String> {
    let passed = |behavior: &str| matches!(behavior, "OK" | "INFORMATIONAL");
    results
        .iter()
        .filter(|(_, (behavior, close))| !passed(behavior) || !passed(close))
        .map(|(case, (behavior, close))| format!("{case}: {behavior} (close: {close})"))
        .collect()
}

async fn suite_passes(config: Config, select: &[&str], expected_cases: usize) {
    let server = TestServer::start_with(&["echo"], config).await;
    let report = tempfile::tempdir().unwrap();
    let results = run_suite(&server.url("/echo"), select, report.path()).await;
    let failed = failures(&results);
    assert!(
        failed.is_empty(),
        "{} of {} cases failed (reports in {}):\n{}",
        failed.len(),
        results.len(),
        report.keep().display(),
        failed.join("\n")
    );
    assert_eq!(results.len(), expected_cases, "cases run");
    server.stop().await;
}

/// Every case of the suite, with the default compression settings (no
/// context takeover either way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_autobahn_case_passes() {
    suite_passes(suite_config(), &[], 517).await;
}

/// The negotiation cases (section 13: every offer the suite makes) again
/// with context takeover allowed on both sides: where the offer lets it,
/// each connection's own compressor and decompressor keep their window from
/// message to message. (Section 12 repeats 13.1's offer with other data;
/// it runs once, above, to keep CI short.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_cases_pass_with_context_takeover() {
    let mut config = suite_config();
    config.compression.server_context_takeover = true;
    config.compression.client_context_takeover = true;
    suite_passes(config, &["13.*"], 126).await;
}
