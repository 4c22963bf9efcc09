//! Rooms: chat per room with presence, one instance per room.
//!
//! `/rooms/{room}` is keyed by `room`: each room gets its own instance (its
//! own state, its own `connections` and `broadcast`), rooms run in parallel,
//! and a room's instance is dropped when its last member leaves. Its
//! key-value store (the recent history) is kept a while, so a room that
//! empties briefly comes back with its history.
//!
//! - A newcomer gets `{"type":"welcome","room":..,"you":..,"present":[..],
//!   "history":[..]}` (the others present, the last messages); the others get
//!   `{"type":"join","user":..}`.
//! - A text message goes to everyone in the room, the sender included, as
//!   `{"type":"message","user":..,"data":..}`. A message starting with
//!   `/all ` goes to every room, through the `lobby` group every member joins.
//! - `{"type":"leave","user":..}` when someone leaves.
//!
//! The nickname is the `name` query parameter (else the token's subject,
//! else `guest-<id>`), kept in the connection's attachment: host-owned, so
//! it survives a reload or a trap of the room's instance.
//!
//! Try it: `switchyard up`, then connect to
//! `ws://127.0.0.1:8080/rooms/lounge?name=alice` and `.../rooms/lounge?name=bob`.

use switchyard_sdk::serde_json::{Value, json};
use switchyard_sdk::{
    CloseInfo, Connection, Controller, Message, attachment_json, groups, socket_route, state,
};

#[socket_route(route = "/rooms/{room}", name = "rooms", instance = "keyed:room")]
#[derive(Default)]
struct Rooms;

/// Messages kept per room for newcomers.
const HISTORY: usize = 20;

fn nickname(conn: &Connection) -> String {
    conn.attachment_json()
        .or_else(|| conn.query_param("name").map(str::to_owned))
        .or_else(|| conn.user.clone())
        .unwrap_or_else(|| format!("guest-{}", conn.id))
}

impl Controller for Rooms {
    fn on_open(&mut self, conn: &Connection) -> Option<Message> {
        let me = nickname(conn);
        let _ = conn.set_attachment_json(&me);
        let _ = conn.join("lobby");
        let present: Vec<String> = switchyard_sdk::connections()
            .into_iter()
            .filter(|id| *id != conn.id)
            .filter_map(attachment_json::<String>)
            .collect();
        let _ = conn.broadcast_others(&Message::json(&json!({"type": "join", "user": me})));
        let history: Vec<Value> = state::get_json("history").unwrap_or_default();
        Some(Message::json(&json!({
            "type": "welcome",
            "room": conn.param("room"),
            "you": me,
            "present": present,
            "history": history,
        })))
    }

    fn on_message(&mut self, conn: &Connection, msg: Message) -> Option<Message> {
        let text = msg.as_text()?;
        let me = nickname(conn);
        if let Some(announcement) = text.strip_prefix("/all ") {
            let out = json!({"type": "announcement", "user": me, "room": conn.param("room"), "data": announcement});
            let _ = groups::publish("lobby", &Message::json(&out), None);
            return None;
        }
        let out = json!({"type": "message", "user": me, "data": text});
        let mut history: Vec<Value> = state::get_json("history").unwrap_or_default();
        history.push(out.clone());
        if history.len() > HISTORY {
            history.remove(0);
        }
        let _ = state::set_json("history", &history);
        let _ = switchyard_sdk::broadcast(&Message::json(&out), None);
        None
    }

    fn on_close(&mut self, conn: &Connection, _info: CloseInfo) {
        let _ = conn.broadcast_others(&Message::json(&json!({"type": "leave", "user": nickname(conn)})));
    }
}
