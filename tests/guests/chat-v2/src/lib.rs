//! A second version of the sample chat controller (`controllers/chat`):
//! the same route and messages, another greeting. The browser test swaps
//! it in under open tabs to show that they stay connected and that a new
//! tab is greeted by the new version.

use switchyard_sdk::serde_json::json;
use switchyard_sdk::{CloseInfo, Connection, Controller, Message, socket_route};

#[socket_route(route = "/chat/", name = "chat")]
#[derive(Default)]
struct Chat;

fn who(conn: &Connection) -> String {
    conn.query_param("name")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("guest-{}", conn.id))
}

impl Controller for Chat {
    fn on_open(&mut self, conn: &Connection) -> Option<Message> {
        conn.broadcast_others(&Message::json(&json!({"type": "join", "user": who(conn)})));
        Some(Message::json(&json!({"type": "system", "data": "Hello from chat v2!"})))
    }

    fn on_message(&mut self, conn: &Connection, msg: Message) -> Option<Message> {
        let text = msg.as_text()?;
        let out = json!({"type": "message", "user": who(conn), "data": text});
        conn.broadcast_others(&Message::json(&out));
        None
    }

    fn on_close(&mut self, conn: &Connection, _info: CloseInfo) {
        conn.broadcast_others(&Message::json(&json!({"type": "leave", "user": who(conn)})));
    }
}
