//! Admin: a room only `ROLE_ADMIN` may enter. The host checks the token at
//! the upgrade (401 without a valid one, 403 without the role), so this
//! controller only ever sees authenticated admins.
//!
//! - A newcomer is welcomed with
//!   `{"type":"welcome","user":"<sub>","roles":[...],"present":["<sub>",...]}`
//!   and the others are told `{"type":"join","user":"<sub>"}`.
//! - Each text message goes to every admin present, the sender included, as
//!   `{"type":"message","user":"<sub>","data":"<text>"}`.
//! - When an admin leaves, the others get `{"type":"leave","user":"<sub>"}`.
//!
//! Try it: `switchyard up` at the repository root (the sample
//! `switchyard.toml` has a development secret), then
//! `TOKEN=$(cargo run -q -p switchyard -- token --sub alice --role ROLE_ADMIN)`
//! and connect to `ws://127.0.0.1:8080/admin/?access_token=$TOKEN`, or send
//! `Authorization: Bearer $TOKEN`. Without the token you get 401.

use switchyard_sdk::serde_json::json;
use switchyard_sdk::{
    CloseInfo, Connection, Controller, LogLevel, Message, attachment_json, socket_route,
};

/// Who is present lives in the host, not in this struct: each connection's
/// name is its attachment, and the host lists the open connections. Both
/// outlive a hot reload or a trap of the instance, which starts a fresh
/// struct, so a newcomer after a reload still sees everyone.
#[socket_route(route = "/admin/", name = "admin", is_granted = ["ROLE_ADMIN"])]
#[derive(Default)]
struct Admin;

fn user(conn: &Connection) -> String {
    // The route is protected, so every connection carries a subject; a
    // token without `sub` still gets a stable name.
    conn.user.clone().unwrap_or_else(|| format!("admin-{}", conn.id))
}

impl Controller for Admin {
    fn on_open(&mut self, conn: &Connection) -> Option<Message> {
        let me = user(conn);
        conn.broadcast_others(&Message::json(&json!({"type": "join", "user": me})));
        if let Err(err) = conn.set_attachment_json(&me) {
            // A subject longer than the attachment limit: served, not listed.
            switchyard_sdk::log(LogLevel::Warn, &format!("{me}: not listed as present: {err:?}"));
        }
        let present: Vec<String> = switchyard_sdk::connections()
            .into_iter()
            .filter_map(attachment_json::<String>)
            .collect();
        Some(Message::json(&json!({
            "type": "welcome",
            "user": me,
            "roles": conn.roles,
            "present": present,
        })))
    }

    fn on_message(&mut self, conn: &Connection, msg: Message) -> Option<Message> {
        let text = msg.as_text()?;
        let out = Message::json(&json!({"type": "message", "user": user(conn), "data": text}));
        switchyard_sdk::broadcast(&out, None);
        None
    }

    fn on_close(&mut self, conn: &Connection, _info: CloseInfo) {
        conn.broadcast_others(&Message::json(&json!({"type": "leave", "user": user(conn)})));
    }
}
