//! The `switchyard` binary as a user runs it: the ready line, load errors
//! naming the file, config errors naming the key.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn switchyard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.env("NO_COLOR", "1").env("SWITCHYARD_LOG", "info");
    cmd
}

#[test]
fn serve_prints_the_address_and_reports_bad_modules() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"not wasm at all").unwrap();
    let mut child = switchyard()
        .args(["serve", "--listen", "127.0.0.1:0", "--controllers"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ws://")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();

    // A path with no route gets 404 from the real binary.
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 404 "), "{response}");

    child.kill().unwrap();
    child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("broken.wasm"), "{stderr}");
    assert!(
        stderr.contains("not a valid WebAssembly component"),
        "{stderr}"
    );
}

/// Runs `serve` with a config file holding `text`; it must fail with one
/// message and no backtrace, even with `RUST_BACKTRACE` set. Returns its
/// stderr.
fn serve_fails_with_config(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, text).unwrap();
    let output = switchyard()
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(stderr.starts_with("switchyard: "), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    assert_eq!(stderr.matches("switchyard: ").count(), 1, "{stderr}");
    stderr
}

#[test]
fn config_errors_name_the_key() {
    let stderr = serve_fails_with_config("[limits]\nmax_mesage_bytes = 10\n");
    assert!(stderr.contains("max_mesage_bytes"), "{stderr}");
    assert!(stderr.contains("switchyard.toml"), "{stderr}");
    let stderr = serve_fails_with_config("[sandbox]\nevent_budget_ms = 0\n");
    assert!(stderr.contains("sandbox.event_budget_ms"), "{stderr}");
    let stderr = serve_fails_with_config("[cluster]\nnode_timeout_ms = 10\n");
    assert!(stderr.contains("cluster.node_timeout_ms"), "{stderr}");
}

#[test]
fn cluster_flags_are_checked_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |args: &[&str]| {
        let output = switchyard()
            .args(["serve", "--listen", "127.0.0.1:0", "--controllers"])
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = serve(&["--node-id", "a"]);
    assert!(stderr.contains("--redis"), "{stderr}");
    let stderr = serve(&["--redis", "http://127.0.0.1:6379"]);
    assert!(stderr.contains("cluster.redis_url"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn missing_controllers_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = switchyard()
        .args(["serve", "--listen", "127.0.0.1:0", "--controllers"])
        .arg(dir.path().join("nowhere"))
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nowhere"), "{stderr}");
    assert!(stderr.contains("controllers folder"), "{stderr}");
    // One line: the system's reason once, no backtrace.
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
}

#[test]
fn token_mints_a_token_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    let secret = "cli-test-secret-0123456789abcdefgh";
    std::fs::write(
        &config,
        format!("[auth]\nhs256_secret = \"{secret}\"\nissuer = \"cli\"\n"),
    )
    .unwrap();
    let out = switchyard()
        .args([
            "token",
            "--sub",
            "alice",
            "--role",
            "ROLE_ADMIN",
            "--role",
            "ROLE_USER",
        ])
        .args(["--ttl", "2h", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let parsed = switchyard::Config::load(&config).unwrap();
    let guard = switchyard::auth::Guard::new(&parsed).unwrap();
    let principal = guard.verify(token.trim()).unwrap();
    assert_eq!(principal.user.as_deref(), Some("alice"));
    assert_eq!(principal.roles, ["ROLE_ADMIN", "ROLE_USER"]);
    let left = principal
        .expires_at
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(7000) && left <= Duration::from_secs(7200 + 30));

    // Without a secret the error says what to configure.
    std::fs::write(&config, "").unwrap();
    let out = switchyard()
        .args(["token", "--sub", "alice", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("auth.hs256_secret"), "{stderr}");
    let out = switchyard()
        .args(["token", "--sub", "a", "--ttl", "1y"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));
}
