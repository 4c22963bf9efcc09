//! Chat: the PHP framework's ChatController, done right.
//!
//! - A new client is greeted with `{"type":"system","data":"Hello world!"}`
//!   and every other client is told `{"type":"join","user":"<who>"}`.
//! - Each message is forwarded to every other client (never back to the
//!   sender) as `{"type":"message","user":"<who>","data":"<text>"}`; binary
//!   messages are forwarded unchanged.
//! - When a client leaves, for any reason, the others get
//!   `{"type":"leave","user":"<who>"}`.
//!
//! `<who>` is the authenticated user when there is one, else the `name`
//! query parameter, else `guest-<connection id>`.
//!
//! Try it: `switchyard up` at the repository root, then open two clients on
//! `ws://127.0.0.1:8080/chat/?name=alice` and `...?name=bob`.

use switchyard_sdk::serde_json::json;
use switchyard_sdk::{CloseInfo, Connection, Controller, Message, socket_route};

#[socket_route(route = "/chat/", name = "chat")]
#[derive(Default)]
struct Chat;

fn who(conn: &Connection) -> String {
    conn.user
        .clone()
        .or_else(|| conn.query_param("name").map(str::to_owned))
        .unwrap_or_else(|| format!("guest-{}", conn.id))
}

impl Controller for Chat {
    fn on_open(&mut self, conn: &Connection) -> Option<Message> {
        // A full queue closes that peer; the others still get the notice.
        conn.broadcast_others(&Message::json(&json!({"type": "join", "user": who(conn)})));
        Some(Message::json(&json!({"type": "system", "data": "Hello world!"})))
    }

    fn on_message(&mut self, conn: &Connection, msg: Message) -> Option<Message> {
        let forwarded = match &msg {
            Message::Text(text) => {
                Message::json(&json!({"type": "message", "user": who(conn), "data": text}))
            }
            Message::Binary(_) => msg,
        };
        conn.broadcast_others(&forwarded);
        None
    }

    fn on_close(&mut self, conn: &Connection, _info: CloseInfo) {
        conn.broadcast_others(&Message::json(&json!({"type": "leave", "user": who(conn)})));
    }
}
