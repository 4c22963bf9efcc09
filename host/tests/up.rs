//! `switchyard up` as a developer uses it: build, serve, pick up an edit to
//! a controller's source without a restart, and stop cleanly on SIGTERM.

mod support;

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::Process;
use tokio_tungstenite::tungstenite::Message;

fn source(greeting: &str) -> String {
    format!(
        r#"use switchyard_sdk::{{socket_route, Connection, Controller, Message}};

#[socket_route(route = "/greet", name = "greet")]
#[derive(Default)]
struct Greet;

impl Controller for Greet {{
    fn on_message(&mut self, _conn: &Connection, _msg: Message) -> Option<Message> {{
        Some(Message::text("{greeting}"))
    }}
}}
"#
    )
}

fn write_crate(dir: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[workspace]\nresolver = \"2\"\nmembers = [\"greet\"]\n\n\
         [profile.release]\nopt-level = \"s\"\nstrip = \"debuginfo\"\n",
    )
    .unwrap();
    // Share the test guests' target folder: their dependencies are built.
    std::fs::create_dir_all(dir.join(".cargo")).unwrap();
    std::fs::write(
        dir.join(".cargo/config.toml"),
        format!(
            "[build]\ntarget-dir = {:?}\n",
            repo.join("tests/guests/target").display().to_string()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("greet/src")).unwrap();
    std::fs::write(
        dir.join("greet/Cargo.toml"),
        format!(
            "[package]\nname = \"greet\"\nedition = \"2024\"\nversion = \"0.0.0\"\npublish = false\n\n\
             [lib]\ncrate-type = [\"cdylib\"]\n\n\
             [dependencies]\nswitchyard-sdk = {{ path = {:?} }}\n",
            repo.join("guest-sdk").display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("greet/src/lib.rs"), source("hello from v1")).unwrap();
}

async fn ask(url: &str) -> String {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("no reply")
        .unwrap()
        .unwrap();
    reply.into_text().unwrap().to_string()
}

#[tokio::test]
async fn up_rebuilds_an_edited_controller_and_swaps_it_in() {
    let dir = tempfile::tempdir().unwrap();
    write_crate(dir.path());
    let up = Process::start(
        Path::new("."),
        &[
            "up",
            "--listen",
            "127.0.0.1:0",
            "--controllers",
            dir.path().to_str().unwrap(),
        ],
    );
    let addr = up.listening();
    let url = format!("ws://{addr}/greet");
    assert_eq!(ask(&url).await, "hello from v1");

    std::fs::write(dir.path().join("greet/src/lib.rs"), source("hello from v2")).unwrap();
    up.wait_for("new version live");
    assert_eq!(ask(&url).await, "hello from v2");

    // A broken edit: the build fails, the running version keeps serving.
    std::fs::write(dir.path().join("greet/src/lib.rs"), "this is not rust").unwrap();
    up.wait_for("the running modules keep serving");
    assert_eq!(ask(&url).await, "hello from v2");

    // SIGTERM: the open client gets 1001, and the process exits with 0.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    let mut up = up;
    up.terminate();
    let close = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("no close frame after SIGTERM")
        .unwrap()
        .unwrap();
    match close {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    drop(ws);
    up.wait_for("shutting down");
    let exit = up.child.wait().unwrap();
    assert!(exit.success(), "exit status after SIGTERM: {exit}");
}
