//! The README's commands as a new user runs them: at the root of a copy of
//! the repository, with the shipped `switchyard.toml` and its relative
//! `controllers` folder, and no flags but a free port. Hot reload must work
//! on that default path: an edited source is rebuilt and swapped in under
//! an open socket (`up`), and a module replaced, deleted and put back is
//! swapped, retired and served again (`serve`).

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{Process, edit, repository_copy};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(20);

async fn connect(addr: &str, path: &str) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .unwrap_or_else(|err| panic!("connecting to {path}: {err}"))
        .0
}

async fn recv_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("nothing received")
            .expect("connection ended")
            .expect("read failed");
        match msg {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
}

async fn ask(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    recv_text(ws).await
}

/// The HTTP status an upgrade to `path` gets, when it is refused.
async fn refused(addr: &str, path: &str) -> u16 {
    match tokio_tungstenite::connect_async(format!("ws://{addr}{path}")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(err) => panic!("{path}: {err}"),
        Ok(_) => panic!("{path} was upgraded"),
    }
}

#[tokio::test]
async fn up_at_the_repository_root_swaps_in_an_edited_controller() {
    let root = repository_copy("up");
    let up = Process::start(root.path(), &["up", "--listen", "127.0.0.1:0"]);
    let addr = up.listening();

    let mut old = connect(&addr, "/chat/?name=old").await;
    assert_eq!(
        recv_text(&mut old).await,
        r#"{"data":"Hello world!","type":"system"}"#
    );

    edit(
        &root.path().join("controllers/chat/src/lib.rs"),
        "\"Hello world!\"",
        "\"Hello from the edit!\"",
    );
    up.wait_for_all(&["new version live", "chat.wasm"]);

    // A new client meets the new version; the old socket stayed open and is
    // served by it too.
    let mut new = connect(&addr, "/chat/?name=new").await;
    assert_eq!(
        recv_text(&mut new).await,
        r#"{"data":"Hello from the edit!","type":"system"}"#
    );
    assert_eq!(recv_text(&mut old).await, r#"{"type":"join","user":"new"}"#);
    old.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        recv_text(&mut new).await,
        r#"{"data":"still here","type":"message","user":"old"}"#
    );

    // The demo page is served from the copy's public/.
    let page = support::http_get(&addr, "/");
    assert!(page.contains("<title>Switchyard demo</title>"), "{page}");

    // The Python sample was built by `up` too; an edit to it is rebuilt and
    // swapped in under its open connection.
    let mut ann = connect(&addr, "/py/rooms/lounge?name=ann").await;
    let welcome = recv_text(&mut ann).await;
    assert!(welcome.contains(r#""you":"ann""#), "{welcome}");
    edit(
        &root.path().join("controllers/pyrooms/app.py"),
        "\"welcome\"",
        "\"welcome-edited\"",
    );
    up.wait_for_all(&["new version live", "pyrooms.wasm"]);
    let mut ben = connect(&addr, "/py/rooms/lounge?name=ben").await;
    let welcome = recv_text(&mut ben).await;
    assert!(welcome.contains(r#""type":"welcome-edited""#), "{welcome}");
    assert!(welcome.contains(r#""present":["ann"]"#), "{welcome}");
    assert_eq!(recv_text(&mut ann).await, r#"{"type":"join","user":"ben"}"#);
}

#[tokio::test]
async fn serve_at_the_repository_root_swaps_retires_and_restores_modules() {
    let root = repository_copy("serve");
    assert!(support::run(root.path(), &["build"]).success());
    let echo = root.path().join("controllers/echo.wasm");
    let v1 = std::fs::read(&echo).unwrap();
    let serve = Process::start(
        root.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let addr = serve.listening();

    let mut ws = connect(&addr, "/echo").await;
    assert_eq!(ask(&mut ws, "one").await, "one");

    // The log is one JSON object per line, with the connection's fields.
    let opened: serde_json::Value =
        serde_json::from_str(&serve.wait_for_all(&["connection opened"])).unwrap();
    assert_eq!(opened["level"], "INFO", "{opened}");
    assert_eq!(opened["route"], "echo", "{opened}");
    assert!(opened["conn"].is_u64(), "{opened}");
    assert!(
        opened["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{opened}"
    );
    // The admin listener counts what the client did.
    let admin: serde_json::Value = serde_json::from_str(&serve.seen(&["admin: http://"])).unwrap();
    let admin = admin["message"].as_str().unwrap();
    let admin = &admin["admin: http://".len()..admin.find("/metrics").unwrap()];
    let metrics = support::http_get(admin, "/metrics");
    assert!(
        metrics.contains("switchyard_messages_received_total{route=\"echo\"} 1\n"),
        "{metrics}"
    );

    // Replaced (by `switchyard build`, which renames the new file into
    // place): swapped under the open socket.
    edit(
        &root.path().join("controllers/echo/src/lib.rs"),
        "Some(msg)",
        "Some(Message::text(\"v2\"))",
    );
    assert!(support::run(root.path(), &["build"]).success());
    serve.wait_for_all(&["new version live", "echo.wasm"]);
    assert_eq!(ask(&mut ws, "two").await, "v2");

    // Copied over in place (written, not renamed): swapped back.
    std::fs::write(&echo, &v1).unwrap();
    serve.wait_for_all(&["new version live", "echo.wasm"]);
    assert_eq!(ask(&mut ws, "three").await, "three");

    // Deleted: the open socket gets 1001, a new client 404.
    std::fs::remove_file(&echo).unwrap();
    let close = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("no close after the module was deleted")
        .expect("connection ended without a close frame")
        .unwrap();
    match close {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    serve.wait_for_all(&["route retired", "echo.wasm"]);
    assert_eq!(refused(&addr, "/echo").await, 404);

    // Put back: served again (not refused as a conflict with itself).
    std::fs::write(&echo, &v1).unwrap();
    serve.wait_for_all(&["new version live", "echo.wasm"]);
    let mut ws = connect(&addr, "/echo").await;
    assert_eq!(ask(&mut ws, "four").await, "four");
}

#[tokio::test]
async fn new_check_and_routes_at_the_repository_root() {
    let root = repository_copy("new");
    let (ok, out, err) =
        support::output(root.path(), &["new", "greeter", "--route", "/greet/{who}"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("controllers/greeter"), "{out}");
    // Made twice: refused, nothing overwritten.
    let (ok, _, err) = support::output(root.path(), &["new", "greeter"]);
    assert!(!ok);
    assert!(err.contains("already lists `greeter`"), "{err}");
    assert!(support::run(root.path(), &["build"]).success());

    // The routing table the server would serve, most specific first.
    let (ok, out, err) = support::output(root.path(), &["routes"]);
    assert!(ok, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("PATTERN"), "{out}");
    let row = |name: &str| {
        lines
            .iter()
            .find(|line| line.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no route {name} in\n{out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let greeter = row("greeter");
    assert_eq!(
        greeter[..4],
        ["/greet/{who}", "greeter", "anyone", "shared"],
        "{out}"
    );
    assert!(greeter[4].ends_with("controllers/greeter.wasm"), "{out}");
    assert_eq!(
        row("admin")[..3],
        ["/admin/", "admin", "ROLE_ADMIN"],
        "{out}"
    );
    assert_eq!(row("rooms")[3], "keyed:room", "{out}");
    assert_eq!(
        row("pyrooms")[..4],
        ["/py/rooms/{room}", "pyrooms", "anyone", "keyed:room"],
        "{out}"
    );
    assert_eq!(
        row("jsrooms")[..4],
        ["/js/rooms/{room}", "jsrooms", "anyone", "keyed:room"],
        "{out}"
    );
    assert_eq!(lines.len(), 8, "a header and seven routes:\n{out}");

    // A module that would be served, one that conflicts with another in
    // the folder, and one that is not a component: each says so.
    let controllers = root.path().join("controllers");
    std::fs::copy(
        controllers.join("echo.wasm"),
        controllers.join("echo-copy.wasm"),
    )
    .unwrap();
    std::fs::write(controllers.join("broken.wasm"), b"not a component").unwrap();
    let (ok, out, _) = support::output(
        root.path(),
        &[
            "check",
            "controllers/greeter.wasm",
            "controllers/echo-copy.wasm",
            "controllers/broken.wasm",
        ],
    );
    assert!(!ok, "{out}");
    let line = |file: &str| {
        out.lines()
            .find(|line| line.starts_with(file))
            .unwrap_or_else(|| panic!("nothing about {file} in\n{out}"))
    };
    assert_eq!(
        line("controllers/greeter.wasm"),
        "controllers/greeter.wasm: ok: route greeter at /greet/{who} (roles: anyone; instances: shared)"
    );
    let copy = line("controllers/echo-copy.wasm");
    assert!(
        copy.contains("refused") && copy.contains("echo.wasm"),
        "{copy}"
    );
    let broken = line("controllers/broken.wasm");
    assert!(
        broken.contains("refused") && broken.contains("not a valid WebAssembly component"),
        "{broken}"
    );
    // `routes` still prints the table, and fails, naming what it refused.
    let (ok, out, err) = support::output(root.path(), &["routes"]);
    assert!(!ok);
    assert!(out.contains("greeter"), "{out}");
    assert!(
        err.contains("broken.wasm") && err.contains("echo-copy.wasm"),
        "{err}"
    );
    std::fs::remove_file(controllers.join("echo-copy.wasm")).unwrap();
    std::fs::remove_file(controllers.join("broken.wasm")).unwrap();

    // And the new controller serves at once.
    let serve = Process::start(root.path(), &["serve", "--listen", "127.0.0.1:0"]);
    let addr = serve.listening();
    let mut ws = connect(&addr, "/greet/bob").await;
    assert_eq!(recv_text(&mut ws).await, "Hello from greeter!");
    assert_eq!(ask(&mut ws, "hi").await, "hi");
}
