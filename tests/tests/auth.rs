//! Route protection with real handshakes: tokens from the header, the query
//! or a cookie; 401 for missing or bad tokens, 403 for missing roles or a
//! disallowed origin; roles through the hierarchy and config overrides;
//! rejected clients never reach `on-open`; tokens never reach the log.
//! Driven by the sample `admin` controller (`ROLE_ADMIN`) and the `probe`.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use switchyard_tests::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SECRET: &str = "auth-tests-secret-0123456789abcdef";

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// HS256, RS256 and ES256 enabled; `ROLE_SUPER` includes `ROLE_ADMIN`.
fn auth_config() -> Config {
    let mut config = test_config();
    config.auth.hs256_secret = Some(SECRET.into());
    config.auth.rs256_public_key = Some(fixture("rs256-public.pem"));
    config.auth.es256_public_key = Some(fixture("es256-public.pem"));
    config
        .auth
        .role_hierarchy
        .insert("ROLE_SUPER".into(), vec!["ROLE_ADMIN".into()]);
    config
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims for `sub` with `roles`, valid for an hour.
fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({"sub": sub, "roles": roles, "exp": now() + 3600})
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn rs256(claims: &Value) -> String {
    let pem = std::fs::read(fixture("rs256-private.pem")).unwrap();
    sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
        claims,
    )
}

fn es256(claims: &Value) -> String {
    let pem = std::fs::read(fixture("es256-private.pem")).unwrap();
    sign(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(&pem).unwrap(),
        claims,
    )
}

/// Unpadded base64url, for hand-made tokens.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A token with `"alg": "none"` and no signature.
fn unsigned(claims: &Value) -> String {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{}.", b64url(claims.to_string().as_bytes()))
}

/// How a client presents its token.
#[derive(Clone, Copy)]
enum Via {
    Header,
    Query,
    Cookie,
}

/// What an upgrade attempt got: a socket, or the refusal.
enum Outcome {
    Upgraded(Box<Ws>),
    Refused {
        status: u16,
        body: String,
        challenge: Option<String>,
    },
}

async fn attempt(
    server: &TestServer,
    path: &str,
    token: Option<(&str, Via)>,
    origin: Option<&str>,
) -> Outcome {
    let mut url = server.url(path);
    if let Some((token, Via::Query)) = token {
        let sep = if url.contains('?') { '&' } else { '?' };
        url = format!("{url}{sep}access_token={token}");
    }
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    match token {
        Some((token, Via::Header)) => {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
            headers.insert("Authorization", value);
        }
        Some((token, Via::Cookie)) => {
            let value = HeaderValue::from_str(&format!("theme=dark; sy_token={token}")).unwrap();
            headers.insert("Cookie", value);
        }
        _ => {}
    }
    if let Some(origin) = origin {
        headers.insert("Origin", HeaderValue::from_str(origin).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Outcome::Upgraded(Box::new(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Outcome::Refused {
            status: response.status().as_u16(),
            body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned(),
            challenge: response
                .headers()
                .get("WWW-Authenticate")
                .map(|value| value.to_str().unwrap().to_owned()),
        },
        Err(err) => panic!("connect to {path}: {err}"),
    }
}

/// Expects an upgrade and returns the socket.
async fn admitted(server: &TestServer, path: &str, token: Option<(&str, Via)>) -> Ws {
    match attempt(server, path, token, None).await {
        Outcome::Upgraded(ws) => *ws,
        Outcome::Refused { status, body, .. } => panic!("refused with {status}: {body}"),
    }
}

/// Expects a refusal with `status` and returns its body.
async fn refused(
    server: &TestServer,
    path: &str,
    token: Option<(&str, Via)>,
    status: u16,
) -> String {
    match attempt(server, path, token, None).await {
        Outcome::Upgraded(_) => panic!("upgraded, expected {status}"),
        Outcome::Refused {
            status: got,
            body,
            challenge,
        } => {
            assert_eq!(got, status, "{body}");
            if status == 401 {
                let challenge = challenge.expect("401 without WWW-Authenticate");
                assert!(challenge.starts_with("Bearer"), "{challenge}");
            }
            if let Some((token, _)) = token {
                assert!(!body.contains(token), "the body echoes the token: {body}");
            }
            body
        }
    }
}

/// An admin's welcome message.
async fn welcome(ws: &mut Ws) -> Value {
    let welcome = recv_json(ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    welcome
}

#[tokio::test]
async fn missing_and_bad_tokens_get_401_and_never_reach_on_open() {
    let mut config = auth_config();
    config.auth.issuer = Some("https://issuer.test".into());
    config.auth.audience = Some("switchyard-tests".into());
    config.auth.leeway_s = 5;
    let server = TestServer::start_with(&["admin"], config).await;
    let logs = server.logs();

    let good = |sub: &str| {
        let mut claims = claims(sub, &["ROLE_ADMIN"]);
        claims["iss"] = "https://issuer.test".into();
        claims["aud"] = "switchyard-tests".into();
        claims
    };
    // An admin already present hears about every join.
    let watcher_token = hs256(&good("watcher"));
    let mut watcher = admitted(&server, "/admin/", Some((&watcher_token, Via::Header))).await;
    welcome(&mut watcher).await;

    let body = refused(&server, "/admin/", None, 401).await;
    assert!(body.contains("requires a token"), "{body}");

    let with = |key: &str, value: Value| {
        let mut claims = good("intruder");
        claims[key] = value;
        claims
    };
    let other_secret = EncodingKey::from_secret(b"some-other-secret-0123456789abcdef");
    let rsa_public = std::fs::read(fixture("rs256-public.pem")).unwrap();
    let bad: Vec<(&str, String, &str)> = vec![
        ("malformed", "not.a.token".into(), "malformed"),
        ("garbage", "garbage".into(), "malformed"),
        (
            "wrong signature",
            sign(Algorithm::HS256, &other_secret, &good("intruder")),
            "signature",
        ),
        ("alg none", unsigned(&good("intruder")), "malformed"),
        (
            // Algorithm confusion: HMAC keyed with the RSA public key.
            "HS256 keyed with the RS256 public key",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(&rsa_public),
                &good("intruder"),
            ),
            "signature",
        ),
        (
            "unconfigured algorithm",
            sign(
                Algorithm::HS384,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                &good("intruder"),
            ),
            "algorithm",
        ),
        (
            "expired",
            hs256(&with("exp", (now() - 60).into())),
            "expired",
        ),
        (
            "not yet valid",
            hs256(&with("nbf", (now() + 600).into())),
            "not valid yet",
        ),
        (
            "wrong issuer",
            hs256(&with("iss", "https://evil.test".into())),
            "issuer",
        ),
        (
            "wrong audience",
            hs256(&with("aud", "someone-else".into())),
            "audience",
        ),
        (
            "no expiry",
            hs256(&{
                let mut claims = good("intruder");
                claims.as_object_mut().unwrap().remove("exp");
                claims
            }),
            "exp",
        ),
    ];
    for (case, token, reason) in &bad {
        let body = refused(&server, "/admin/", Some((token, Via::Header)), 401).await;
        assert!(body.contains(reason), "{case}: {body}");
        refused(&server, "/admin/", Some((token, Via::Query)), 401).await;
    }

    // The next join the watcher hears is the one valid newcomer's.
    let newcomer = hs256(&good("newcomer"));
    let mut ws = admitted(&server, "/admin/", Some((&newcomer, Via::Header))).await;
    assert_eq!(welcome(&mut ws).await["user"], "newcomer");
    assert_eq!(
        recv_json(&mut watcher).await,
        json!({"type": "join", "user": "newcomer"})
    );

    // No log line carries a token.
    let log = logs.text();
    for (case, token, _) in &bad {
        assert!(!log.contains(token.as_str()), "{case}: token in the log");
    }
    assert!(!log.contains(&newcomer) && !log.contains(&watcher_token));
    assert!(log.contains("upgrade refused"), "refusals are logged");
    server.stop().await;
}

#[tokio::test]
async fn a_valid_token_without_the_role_gets_403_and_the_hierarchy_grants() {
    let server = TestServer::start_with(&["admin"], auth_config()).await;
    let user = hs256(&claims("bob", &["ROLE_USER"]));
    let body = refused(&server, "/admin/", Some((&user, Via::Header)), 403).await;
    assert!(body.contains("ROLE_ADMIN"), "{body}");
    let nothing = hs256(&json!({"sub": "carol", "exp": now() + 60}));
    refused(&server, "/admin/", Some((&nothing, Via::Header)), 403).await;

    // ROLE_SUPER includes ROLE_ADMIN; the controller sees both.
    let super_user = hs256(&claims("root", &["ROLE_SUPER"]));
    let mut ws = admitted(&server, "/admin/", Some((&super_user, Via::Header))).await;
    let welcome = welcome(&mut ws).await;
    assert_eq!(welcome["user"], "root");
    assert_eq!(welcome["roles"], json!(["ROLE_ADMIN", "ROLE_SUPER"]));
    assert_eq!(welcome["present"], json!(["root"]));
    server.stop().await;
}

#[tokio::test]
async fn header_query_and_cookie_tokens_are_each_accepted() {
    let mut config = auth_config();
    config.auth.cookie = Some("sy_token".into());
    // The probe requires ROLE_ADMIN too, to show the query it is given.
    config.routes.insert(
        "probe".into(),
        switchyard::config::RouteConfig {
            is_granted: Some(vec!["ROLE_ADMIN".into()]),
            ..Default::default()
        },
    );
    let server = TestServer::start_with(&["admin", "probe"], config).await;
    for (via, name) in [(Via::Header, "h"), (Via::Query, "q"), (Via::Cookie, "c")] {
        let token = hs256(&claims(name, &["ROLE_ADMIN"]));
        let mut ws = admitted(&server, "/admin/", Some((&token, via))).await;
        assert_eq!(welcome(&mut ws).await["user"], name);

        let mut probe = admitted(&server, "/probe/x?keep=1", Some((&token, via))).await;
        let me = whoami(&mut probe).await;
        assert_eq!(me["user"], name);
        assert_eq!(me["roles"], json!(["ROLE_ADMIN"]));
        // The token never reaches the controller through the query.
        assert_eq!(me["query"], json!([["keep", "1"]]));
    }
    // The header wins over the query when both are present.
    let header = hs256(&claims("from-header", &["ROLE_ADMIN"]));
    let query = hs256(&claims("from-query", &["ROLE_ADMIN"]));
    let path = format!("/admin/?access_token={query}");
    let mut ws = admitted(&server, &path, Some((&header, Via::Header))).await;
    assert_eq!(welcome(&mut ws).await["user"], "from-header");
    server.stop().await;
}

#[tokio::test]
async fn rs256_and_es256_tokens_are_accepted_and_not_swapped() {
    let server = TestServer::start_with(&["admin"], auth_config()).await;
    let rsa = rs256(&claims("rsa-user", &["ROLE_ADMIN"]));
    let mut ws = admitted(&server, "/admin/", Some((&rsa, Via::Header))).await;
    assert_eq!(welcome(&mut ws).await["user"], "rsa-user");
    let ec = es256(&claims("ec-user", &["ROLE_ADMIN"]));
    let mut ws = admitted(&server, "/admin/", Some((&ec, Via::Header))).await;
    assert_eq!(welcome(&mut ws).await["user"], "ec-user");

    // With only RS256 configured, an HS256 token is refused whatever it is
    // signed with: no key for that algorithm.
    let mut config = test_config();
    config.auth.rs256_public_key = Some(fixture("rs256-public.pem"));
    let rs_only = TestServer::start_with(&["admin"], config).await;
    let rsa_public = std::fs::read(fixture("rs256-public.pem")).unwrap();
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&rsa_public),
        &claims("mallory", &["ROLE_ADMIN"]),
    );
    let body = refused(&rs_only, "/admin/", Some((&confused, Via::Header)), 401).await;
    assert!(body.contains("algorithm"), "{body}");
    let mut ws = admitted(&rs_only, "/admin/", Some((&rsa, Via::Header))).await;
    welcome(&mut ws).await;
    rs_only.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn public_routes_take_anonymous_clients_and_carry_a_valid_token() {
    let server = TestServer::start_with(&["probe", "chat"], auth_config()).await;
    let mut anonymous = server.connect("/probe/").await;
    let me = whoami(&mut anonymous).await;
    assert_eq!(
        (me["user"].clone(), me["roles"].clone()),
        (Value::Null, json!([]))
    );

    let token = hs256(&claims("dana", &["ROLE_USER"]));
    let mut known = admitted(&server, "/probe/", Some((&token, Via::Query))).await;
    let me = whoami(&mut known).await;
    assert_eq!(me["user"], "dana");
    assert_eq!(me["roles"], json!(["ROLE_USER"]));

    // A bad token on a public route is ignored: the client is anonymous.
    let expired = hs256(&json!({"sub": "old", "exp": now() - 3600}));
    let mut stale = admitted(&server, "/probe/", Some((&expired, Via::Header))).await;
    assert_eq!(whoami(&mut stale).await["user"], Value::Null);

    // Chat names people by their token's subject.
    let mut chat = admitted(&server, "/chat/?name=ignored", Some((&token, Via::Header))).await;
    recv_json(&mut chat).await;
    let mut other = server.connect("/chat/").await;
    recv_json(&mut other).await;
    assert_eq!(recv_json(&mut chat).await["type"], "join");
    send_text(&mut chat, "hi").await;
    assert_eq!(recv_json(&mut other).await["user"], "dana");
    server.stop().await;
}

#[tokio::test]
async fn a_disallowed_origin_gets_403() {
    let mut config = auth_config();
    config.allowed_origins = vec!["https://good.example".into()];
    let server = TestServer::start_with(&["echo"], config).await;
    let cases = [
        (Some("https://good.example"), true),
        (Some("https://GOOD.example/"), true),
        (None, true),
        (Some("https://evil.example"), false),
        (Some("http://good.example"), false),
        (Some("null"), false),
    ];
    for (origin, allowed) in cases {
        match attempt(&server, "/echo", None, origin).await {
            Outcome::Upgraded(mut ws) => {
                assert!(allowed, "{origin:?} was let in");
                assert_eq!(ask(&mut ws, "hi").await, "hi");
            }
            Outcome::Refused { status, body, .. } => {
                assert!(!allowed, "{origin:?} was refused: {status} {body}");
                assert_eq!(status, 403);
                assert!(body.contains("origin"), "{body}");
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn the_config_overrides_a_routes_roles() {
    let mut config = auth_config();
    let route = |roles: Vec<String>| switchyard::config::RouteConfig {
        is_granted: Some(roles),
        ..Default::default()
    };
    config
        .routes
        .insert("probe".into(), route(vec!["ROLE_AUDITOR".into()]));
    config.routes.insert("admin".into(), route(Vec::new()));
    let server = TestServer::start_with(&["probe", "admin"], config).await;

    refused(&server, "/probe/", None, 401).await;
    let admin = hs256(&claims("eve", &["ROLE_ADMIN"]));
    refused(&server, "/probe/", Some((&admin, Via::Header)), 403).await;
    let auditor = hs256(&claims("ann", &["ROLE_AUDITOR"]));
    let mut ws = admitted(&server, "/probe/", Some((&auditor, Via::Header))).await;
    assert_eq!(whoami(&mut ws).await["user"], "ann");

    // `admin` declares ROLE_ADMIN, but the config made it public.
    let mut ws = server.connect("/admin/").await;
    let user = welcome(&mut ws).await["user"].clone();
    assert!(user.as_str().unwrap().starts_with("admin-"), "{user}");
    server.stop().await;
}

#[tokio::test]
async fn an_expiring_token_closes_its_connection_with_1008_when_enabled() {
    let mut config = auth_config();
    config.auth.close_on_expiry = true;
    config.auth.leeway_s = 0;
    let server = TestServer::start_with(&["admin"], config).await;
    let lasting = hs256(&claims("stays", &["ROLE_ADMIN"]));
    let mut stays = admitted(&server, "/admin/", Some((&lasting, Via::Header))).await;
    welcome(&mut stays).await;
    let brief = hs256(&json!({"sub": "leaves", "roles": ["ROLE_ADMIN"], "exp": now() + 2}));
    let mut leaves = admitted(&server, "/admin/", Some((&brief, Via::Header))).await;
    welcome(&mut leaves).await;
    assert_eq!(recv_json(&mut stays).await["type"], "join");

    let frame = expect_close(&mut leaves).await;
    assert_eq!(frame.code, CloseCode::Policy);
    assert_eq!(frame.reason.as_str(), "token expired");
    // Its on-close ran; the other admin stays.
    assert_eq!(
        recv_json(&mut stays).await,
        json!({"type": "leave", "user": "leaves"})
    );
    send_text(&mut stays, "still here").await;
    assert_eq!(recv_json(&mut stays).await["data"], "still here");
    server.stop().await;
}

/// Who is present is kept in the host (each admin's name is its
/// connection's attachment), so a hot reload of the admin sample, which
/// starts a fresh controller struct, forgets no one.
#[tokio::test]
async fn the_admin_presence_list_survives_a_hot_reload() {
    let mut server = TestServer::start_with(&["admin"], auth_config()).await;
    let token = |sub: &str| hs256(&claims(sub, &["ROLE_ADMIN"]));
    let alice_token = token("alice");
    let mut alice = admitted(&server, "/admin/", Some((&alice_token, Via::Header))).await;
    assert_eq!(welcome(&mut alice).await["present"], json!(["alice"]));

    std::fs::write(server.file("admin.wasm"), module_variant("admin", 1)).unwrap();
    server.until_live("admin.wasm").await;

    let bob_token = token("bob");
    let mut bob = admitted(&server, "/admin/", Some((&bob_token, Via::Header))).await;
    assert_eq!(welcome(&mut bob).await["present"], json!(["alice", "bob"]));
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"type": "join", "user": "bob"})
    );
    server.stop().await;
}
