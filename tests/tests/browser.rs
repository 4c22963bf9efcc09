//! The demo page and the dashboard in a real browser: Debian's headless
//! Chromium, driven over WebDriver (chromedriver, through `fantoccini`),
//! against a real server serving the repository's `public/` folder and the
//! sample controllers.
//!
//! Two tabs chat with each other and share a room (presence, join, leave);
//! `chat.wasm` is replaced under them by another version, and both stay
//! connected while a new tab is greeted by the new version; the dashboard
//! shows the reload; a retired route makes the page say why it closed and
//! reconnect by itself when the route comes back. A screenshot of each
//! step is written under `target/browser-screenshots/` (the test prints
//! where).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use switchyard_tests::*;

/// A program the browser tests need, found on the `PATH`. Missing, the
/// test fails and says how to install it.
fn installed(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the browser tests need `{program}`: install Chromium and its WebDriver \
                 (Debian: apt-get install chromium chromium-driver), or run scripts/test.sh, \
                 which installs them"
            )
        })
}

/// Headless Chromium under a chromedriver of its own, on a free port.
struct Browser {
    client: Client,
    driver: Child,
    shots: PathBuf,
    taken: usize,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(shots: &str) -> Browser {
        let chromium = installed("chromium");
        let port = free_port();
        let driver = Command::new(installed("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let capabilities = serde_json::json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    // Tabs in the background keep their timers and sockets
                    // as a user's would while they look at another tab.
                    "--disable-background-timer-throttling",
                    "--disable-renderer-backgrounding",
                    "--disable-backgrounding-occluded-windows",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + WAIT;
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(err) if tokio::time::Instant::now() > deadline => {
                    panic!("no browser session from chromedriver on {url}: {err}")
                }
                // chromedriver is still starting.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let shots = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/browser-screenshots")
            .join(shots);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).unwrap();
        println!("screenshots of each step: {}", shots.display());
        Browser {
            client,
            driver,
            shots,
            taken: 0,
            _profile: profile,
        }
    }

    /// Opens `url` in a new tab and returns the tab.
    async fn open_tab(&self, url: &str) -> fantoccini::wd::WindowHandle {
        let tab = self.client.new_window(true).await.unwrap().handle;
        self.client.switch_to_window(tab.clone()).await.unwrap();
        self.client.goto(url).await.unwrap();
        tab
    }

    async fn to(&self, tab: &fantoccini::wd::WindowHandle) {
        self.client.switch_to_window(tab.clone()).await.unwrap();
    }

    /// The text of the element `css` in the current tab ("" while absent).
    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.attr(name).await.ok().flatten()
    }

    /// Waits until the element `css` of the current tab has a text that
    /// contains `wanted`.
    async fn wait_text(&self, css: &str, wanted: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.text(css).await;
            if text.contains(wanted) {
                return text;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{css} never showed {wanted:?}; it shows {text:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the text of `css` no longer contains `gone`.
    async fn wait_text_without(&self, css: &str, gone: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.text(css).await;
            if !text.contains(gone) {
                return text;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{css} still shows {gone:?}: {text:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `text` into the input `css` and submits its form.
    async fn say(&self, css: &str, text: &str) {
        let input = self.client.find(Locator::Css(css)).await.unwrap();
        input.send_keys(&format!("{text}\n")).await.unwrap();
    }

    async fn click(&self, css: &str) {
        let button = self.client.find(Locator::Css(css)).await.unwrap();
        button.click().await.unwrap();
    }

    /// Writes a screenshot of the current tab, numbered in order.
    async fn shot(&mut self, name: &str) {
        self.taken += 1;
        let png = self.client.screenshot().await.unwrap();
        let file = self.shots.join(format!("{:02}-{name}.png", self.taken));
        std::fs::write(&file, png).unwrap();
    }

    async fn stop(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

const SECRET: &str = "browser-tests-secret-0123456789abcdef";

/// A token for `ops` with `ROLE_ADMIN`, as `switchyard token` makes them.
fn admin_token() -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "ops", "roles": ["ROLE_ADMIN"], "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn repository_public() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../public")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_chat_share_a_room_and_survive_a_hot_reload() {
    let mut config = patient_config();
    config.public = repository_public();
    config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    config.auth.hs256_secret = Some(SECRET.into());
    let mut server = TestServer::start_with(&["chat", "rooms", "echo", "admin"], config).await;
    let admin = server.admin.unwrap();
    let addr = server.addr;
    let page = |name: &str| format!("http://{addr}/?name={name}&room=lounge");
    let mut browser = Browser::start("two_tabs").await;

    // Two tabs, both connected to the chat and to one room.
    let ann = browser.open_tab(&page("ann")).await;
    browser.wait_text("#chat-status", "connected").await;
    browser.wait_text("#room-status", "connected").await;
    browser.wait_text("#chat-log", "Hello world!").await;
    let bob = browser.open_tab(&page("bob")).await;
    browser.wait_text("#chat-status", "connected").await;
    browser.wait_text("#room-present", "ann").await;
    browser.to(&ann).await;
    browser.wait_text("#chat-log", "bob joined").await;
    browser.wait_text("#room-present", "bob").await;
    browser.shot("ann-sees-bob-join").await;

    // They chat, both ways, and talk in the room.
    browser.to(&bob).await;
    browser.say("#chat-input", "hello from bob").await;
    browser
        .wait_text("#chat-log", "bob (you): hello from bob")
        .await;
    browser.to(&ann).await;
    browser.wait_text("#chat-log", "bob: hello from bob").await;
    browser.say("#chat-input", "hi bob").await;
    browser.say("#room-input", "anyone in the lounge?").await;
    browser.to(&bob).await;
    browser.wait_text("#chat-log", "ann: hi bob").await;
    browser
        .wait_text("#room-log", "ann: anyone in the lounge?")
        .await;
    browser.shot("bob-sees-ann").await;

    // The admin route: refused without a token (a browser sees 1006), let
    // in with one that has ROLE_ADMIN, pasted into the page.
    browser.click("#admin-connect").await;
    browser
        .wait_text("#admin-log", "1006 connection lost or refused")
        .await;
    browser.say("#admin-token", &admin_token()).await;
    browser
        .wait_text("#admin-log", "welcome ops (ROLE_ADMIN)")
        .await;
    browser.wait_text("#admin-status", "connected").await;
    browser.say("#admin-input", "admins only").await;
    browser.wait_text("#admin-log", "ops: admins only").await;
    browser.shot("bob-is-admin").await;

    // The dashboard counts them.
    let dashboard = browser
        .open_tab(&format!("http://{admin}/_switchyard/"))
        .await;
    browser.wait_text("#status", "live").await;
    browser
        .wait_text("#routes tr[data-route=chat] [data-field=connections]", "2")
        .await;
    browser.shot("dashboard-two-connections").await;

    // chat.wasm is replaced under both tabs.
    std::fs::write(
        server.file("chat.wasm"),
        std::fs::read(module("chat_v2")).unwrap(),
    )
    .unwrap();
    server.until_live("chat.wasm").await;
    browser
        .wait_text(
            "#reloads li[data-file='chat.wasm'][data-result=swapped]",
            "chat.wasm: swapped",
        )
        .await;
    browser.shot("dashboard-shows-the-reload").await;

    // Neither tab noticed: still on their first connection, and they
    // still talk, now through the new version.
    for tab in [&ann, &bob] {
        browser.to(tab).await;
        assert_eq!(browser.text("#chat-status").await, "connected");
        assert_eq!(
            browser.attr("#chat-status", "data-opens").await.as_deref(),
            Some("1")
        );
    }
    browser.say("#chat-input", "after the reload").await;
    browser.to(&ann).await;
    browser
        .wait_text("#chat-log", "bob: after the reload")
        .await;

    // A new tab is greeted by the new version.
    let cat = browser.open_tab(&page("cat")).await;
    browser.wait_text("#chat-log", "Hello from chat v2!").await;
    assert!(!browser.text("#chat-log").await.contains("Hello world!"));
    browser.shot("cat-greeted-by-v2").await;
    browser.to(&ann).await;
    browser.wait_text("#chat-log", "cat joined").await;
    browser.wait_text("#room-present", "cat").await;

    // Bob closes his tab: the room and the chat see him leave.
    browser.to(&bob).await;
    browser.client.close_window().await.unwrap();
    browser.to(&ann).await;
    browser.wait_text("#room-log", "bob left").await;
    browser.wait_text("#chat-log", "bob left").await;
    let present = browser.wait_text_without("#room-present", "bob").await;
    assert!(present.contains("cat"), "{present}");
    browser.shot("ann-sees-bob-leave").await;

    // The chat route is retired: the page says why it closed, in words,
    // and retries; it reconnects by itself when the route is back.
    let chat = std::fs::read(server.file("chat.wasm")).unwrap();
    std::fs::remove_file(server.file("chat.wasm")).unwrap();
    browser
        .wait_text("#chat-log", "1001 server going away")
        .await;
    browser.wait_text("#chat-status", "reconnecting in").await;
    browser.shot("chat-route-retired").await;
    std::fs::write(server.file("chat.wasm"), chat).unwrap();
    browser.wait_text("#chat-status", "connected").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while browser.attr("#chat-status", "data-opens").await.as_deref() != Some("2") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no second connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.wait_text("#chat-log", "Hello from chat v2!").await;
    browser.shot("chat-reconnected").await;
    browser.to(&cat).await;
    browser.wait_text("#chat-status", "connected").await;
    browser.to(&dashboard).await;
    browser.wait_text("#reloads", "chat.wasm: removed").await;

    browser.stop().await;
    server.stop().await;
}
