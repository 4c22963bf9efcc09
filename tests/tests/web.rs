//! The browser's side without a browser: static files from the `public`
//! folder (types, validators and 304s, folders, 404s, and every way out
//! of the folder refused) and the dashboard (its page, its live feed on
//! the admin listener and, behind a role, on the public one, showing
//! routes, reloads and traps). Raw HTTP over real sockets.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use switchyard_tests::*;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "web-tests-secret-0123456789abcdef0";

/// An HTTP answer: status, head (lowercase header names) and body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

async fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    let response = raw_http(addr, &text).await;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer to {target}: {response:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, target: &str) -> Answer {
    request(addr, "GET", target, &[]).await
}

/// A public folder with a page, a script, a subfolder with its own index,
/// a hidden file, and, beside the folder, a secret that links point to.
fn site() -> (tempfile::TempDir, std::path::PathBuf) {
    let outer = tempfile::tempdir().unwrap();
    let public = outer.path().join("public");
    std::fs::create_dir_all(public.join("docs")).unwrap();
    std::fs::create_dir_all(public.join("empty")).unwrap();
    std::fs::write(public.join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(public.join("app.js"), "console.log(1)").unwrap();
    std::fs::write(public.join("logo.png"), [0x89, b'P', b'N', b'G']).unwrap();
    std::fs::write(public.join("docs/index.html"), "<h1>docs</h1>").unwrap();
    std::fs::write(public.join("a b.txt"), "spaced").unwrap();
    std::fs::write(public.join(".env"), "SECRET=hidden").unwrap();
    std::fs::write(outer.path().join("secret.txt"), "outside").unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret.txt"), public.join("out.txt")).unwrap();
    std::os::unix::fs::symlink(outer.path(), public.join("up")).unwrap();
    std::os::unix::fs::symlink(public.join("app.js"), public.join("inside.js")).unwrap();
    (outer, public)
}

#[tokio::test]
async fn static_files_are_served_with_types_validators_and_folders() {
    let (_outer, public) = site();
    let mut config = test_config();
    config.public = public.clone();
    let server = TestServer::start_with(&["echo"], config).await;

    let home = get(server.addr, "/").await;
    assert_eq!(home.status, 200, "{}", home.head);
    assert_eq!(home.body, "<h1>home</h1>");
    assert_eq!(
        home.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(home.header("content-length"), Some("13"));
    let script = get(server.addr, "/app.js").await;
    assert_eq!(script.body, "console.log(1)");
    assert!(
        script
            .header("content-type")
            .unwrap()
            .contains("javascript"),
        "{}",
        script.head
    );
    let logo = get(server.addr, "/logo.png").await;
    assert_eq!(logo.header("content-type"), Some("image/png"));
    assert_eq!(get(server.addr, "/a%20b.txt").await.body, "spaced");
    // A link that stays inside the folder is followed.
    assert_eq!(get(server.addr, "/inside.js").await.body, "console.log(1)");
    // The query is not part of the file's name.
    assert_eq!(get(server.addr, "/app.js?v=2").await.status, 200);

    // A folder: its index.html, after a redirect that adds the slash.
    let docs = get(server.addr, "/docs").await;
    assert_eq!(docs.status, 301);
    assert_eq!(docs.header("location"), Some("/docs/"));
    assert_eq!(get(server.addr, "/docs/").await.body, "<h1>docs</h1>");
    assert_eq!(get(server.addr, "/empty/").await.status, 404);
    assert_eq!(get(server.addr, "/missing.html").await.status, 404);

    // HEAD: the same head, no body.
    let head = request(server.addr, "HEAD", "/app.js", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("14"));
    assert_eq!(head.body, "");
    let post = request(server.addr, "POST", "/app.js", &[]).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));

    // Validators: the same ETag and date give 304 without a body; a
    // changed file gives its new bytes.
    let etag = script.header("etag").unwrap().to_owned();
    let modified = script.header("last-modified").unwrap().to_owned();
    let again = request(server.addr, "GET", "/app.js", &[("If-None-Match", &etag)]).await;
    assert_eq!(again.status, 304, "{}", again.head);
    assert_eq!(again.body, "");
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let weak = format!("\"other\", W/{etag}");
    assert_eq!(
        request(server.addr, "GET", "/app.js", &[("If-None-Match", &weak)])
            .await
            .status,
        304
    );
    let since = request(
        server.addr,
        "GET",
        "/app.js",
        &[("If-Modified-Since", &modified)],
    )
    .await;
    assert_eq!(since.status, 304);
    let old = request(
        server.addr,
        "GET",
        "/app.js",
        &[("If-Modified-Since", "Thu, 01 Jan 2015 00:00:00 GMT")],
    )
    .await;
    assert_eq!(old.status, 200);
    // If-None-Match decides when both are sent.
    let both = [
        ("If-None-Match", "\"stale\""),
        ("If-Modified-Since", modified.as_str()),
    ];
    assert_eq!(
        request(server.addr, "GET", "/app.js", &both).await.status,
        200
    );
    std::fs::write(public.join("app.js"), "console.log(2); // longer").unwrap();
    let changed = request(server.addr, "GET", "/app.js", &[("If-None-Match", &etag)]).await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.body, "console.log(2); // longer");
    assert_ne!(changed.header("etag"), Some(etag.as_str()));

    // A route's path is still the route's: a plain GET gets 426, an
    // upgrade is served; an upgrade to a path without a route gets 404.
    let route = get(server.addr, "/echo").await;
    assert_eq!(route.status, 426, "{}", route.head);
    let mut ws = server.connect("/echo").await;
    send_text(&mut ws, "still echoing").await;
    assert_eq!(recv_text(&mut ws).await, "still echoing");
    assert_eq!(server.refused_status("/index.html").await, 404);
    server.stop().await;
}

#[tokio::test]
async fn no_request_gets_a_file_from_outside_the_folder() {
    let (_outer, public) = site();
    let mut config = test_config();
    config.public = public;
    let server = TestServer::start_with(&["echo"], config).await;
    for target in [
        "/../secret.txt",
        "/docs/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/docs/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/..%5csecret.txt",
        "/%2fetc%2fpasswd",
        "//etc/passwd",
        "/etc/passwd",
        "http://test/../secret.txt",
        "/out.txt",
        "/up/secret.txt",
        "/.env",
        "/%2eenv",
        "/app.js%00.html",
    ] {
        let answer = get(server.addr, target).await;
        assert_eq!(answer.status, 404, "{target}: {}", answer.head);
        assert!(!answer.body.contains("outside"), "{target}");
        assert!(!answer.body.contains("SECRET"), "{target}");
        assert!(!answer.body.contains("root:"), "{target}");
    }
    server.stop().await;
}

#[tokio::test]
async fn without_a_public_folder_plain_gets_are_404() {
    let server = TestServer::start(&["echo"]).await;
    let answer = get(server.addr, "/").await;
    assert_eq!(answer.status, 404);
    assert_eq!(get(server.addr, "/echo").await.status, 426);
    server.stop().await;

    // A configured folder that is missing is said in the log, once, and
    // the server serves its routes.
    let mut config = test_config();
    config.public = "/nonexistent/switchyard-public".into();
    let server = TestServer::start_with(&["echo"], config).await;
    server
        .logs()
        .wait_for(&["no static files", "/nonexistent/switchyard-public"])
        .await;
    assert_eq!(get(server.addr, "/").await.status, 404);
    let mut ws = server.connect("/echo").await;
    send_text(&mut ws, "served").await;
    assert_eq!(recv_text(&mut ws).await, "served");
    server.stop().await;
}

fn admin_token(roles: &[&str]) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "ops", "roles": roles, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The next snapshot from a dashboard feed that satisfies `done`.
async fn snapshot_until(ws: &mut Ws, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no such snapshot in time")
            .expect("the feed ended")
            .unwrap();
        if let Message::Text(text) = next {
            let snapshot: Value = serde_json::from_str(&text).unwrap();
            if done(&snapshot) {
                return snapshot;
            }
        }
    }
}

fn route<'a>(snapshot: &'a Value, name: &str) -> &'a Value {
    snapshot["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|route| route["name"] == name)
        .unwrap_or_else(|| panic!("no route {name} in {snapshot}"))
}

#[tokio::test]
async fn the_dashboard_on_the_admin_listener_shows_routes_reloads_and_traps() {
    let mut config = test_config();
    config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    let mut server = TestServer::start_with(&["echo", "fault"], config).await;
    let admin = server.admin.unwrap();

    let page = get(admin, "/_switchyard/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("dashboard.js"), "{}", page.body);
    assert!(
        get(admin, "/_switchyard/dashboard.js")
            .await
            .body
            .contains("/_switchyard/live")
    );
    assert_eq!(get(admin, "/_switchyard").await.status, 301);
    // On the public listener there is no dashboard when the admin one has it.
    assert_eq!(get(server.addr, "/_switchyard/").await.status, 404);

    let (mut feed, _) = tokio_tungstenite::connect_async(format!("ws://{admin}/_switchyard/live"))
        .await
        .unwrap();
    let mut client = server.connect("/echo").await;
    let first = snapshot_until(&mut feed, |s| s["totals"]["connections"] == 1).await;
    let echo = route(&first, "echo");
    assert_eq!(echo["pattern"], "/echo");
    assert_eq!(echo["instance"], "shared");
    assert_eq!(echo["is_granted"], json!([]));
    assert_eq!(echo["file"], "echo.wasm");
    assert_eq!(echo["hash"].as_str().unwrap().len(), 16);
    assert_eq!(echo["instances"], 1);
    for _ in 0..50 {
        send_text(&mut client, "x").await;
        recv_text(&mut client).await;
    }
    let counted = snapshot_until(&mut feed, |s| route(s, "echo")["messages_in"] == 50).await;
    assert_eq!(route(&counted, "echo")["messages_out"], 50);

    // A trap: counted by kind on its route, and listed with its message.
    let mut victim = server.connect("/fault").await;
    send_text(&mut victim, "panic").await;
    assert_eq!(expect_close(&mut victim).await.code, 1011.into());
    let trapped = snapshot_until(&mut feed, |s| !s["traps"].as_array().unwrap().is_empty()).await;
    assert_eq!(route(&trapped, "fault")["traps"]["panic"], 1);
    let trap = &trapped["traps"][0];
    assert_eq!(
        (trap["route"].as_str(), trap["kind"].as_str()),
        (Some("fault"), Some("panic"))
    );
    assert!(trap["at_ms"].as_u64().unwrap() > 0);

    // A reload: the feed sends it at once, with the new hash.
    let old_hash = route(&trapped, "echo")["hash"].clone();
    std::fs::write(server.file("echo.wasm"), module_variant("echo", 1)).unwrap();
    server.until_live("echo.wasm").await;
    let reloaded = snapshot_until(&mut feed, |s| {
        s["reloads"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["result"] == "swapped")
    })
    .await;
    let reload = reloaded["reloads"].as_array().unwrap().last().unwrap();
    assert_eq!(reload["file"], "echo.wasm");
    assert_eq!(reload["route"], "echo");
    assert_eq!(reload["hash"], route(&reloaded, "echo")["hash"]);
    assert_ne!(route(&reloaded, "echo")["hash"], old_hash);
    // The client never noticed.
    send_text(&mut client, "after").await;
    assert_eq!(recv_text(&mut client).await, "after");
    server.stop().await;
}

#[tokio::test]
async fn without_an_admin_listener_the_dashboard_feed_needs_a_role() {
    let mut config = test_config();
    config.auth.hs256_secret = Some(SECRET.into());
    let server = TestServer::start_with(&["echo"], config).await;
    assert_eq!(get(server.addr, "/_switchyard/").await.status, 200);
    assert_eq!(server.refused_status("/_switchyard/live").await, 401);
    let user = admin_token(&["ROLE_USER"]);
    assert_eq!(
        server
            .refused_status(&format!("/_switchyard/live?access_token={user}"))
            .await,
        403
    );
    let token = admin_token(&["ROLE_ADMIN"]);
    let (mut feed, _) = tokio_tungstenite::connect_async(
        server.url(&format!("/_switchyard/live?access_token={token}")),
    )
    .await
    .unwrap();
    let snapshot = snapshot_until(&mut feed, |_| true).await;
    assert_eq!(route(&snapshot, "echo")["pattern"], "/echo");
    // The feed ends with the server, with 1001.
    let stopping = tokio::spawn(server.stop());
    let closed = loop {
        match tokio::time::timeout(WAIT, feed.next())
            .await
            .expect("the feed stayed open")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("the feed ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(closed.unwrap().code, 1001.into());
    stopping.await.unwrap();

    // Turned off, it is not served at all.
    let mut config = test_config();
    config.admin.dashboard = false;
    let server = TestServer::start_with(&["echo"], config).await;
    assert_eq!(get(server.addr, "/_switchyard/").await.status, 404);
    assert_eq!(server.refused_status("/_switchyard/live").await, 404);
    server.stop().await;
}
