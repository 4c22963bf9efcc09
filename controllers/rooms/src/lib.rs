//! Rooms: chat per room with presence, one instance per room.
//!
//! `/rooms/{room}` is keyed by `room`: each room gets its own instance (its
//! own state, its own `connections` and `broadcast`), rooms run in parallel,
//! and a room's instance is dropped when its last member leaves. Its
//! key-value store (the recent history) is kept a while, so a room that
//! empties briefly comes back with its history.
//!
//! - A newcomer gets `{"type":"welcome","room":..,"you":..,"present":[..],
//!   "others":N,"history":[..]}` (the names of others present, how many
//!   they are, the last messages); the others get
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
//! What it keeps and sends is bounded, as a server's sample should be:
//! nicknames are cut to 32 characters, a message longer than 2,000 bytes
//! is refused (`{"type":"error",..}` to its sender), the welcome names at
//! most 50 of the others present (`"others"` counts them all), and when
//! the welcome would still exceed the host's message limit it is sent
//! without the history, then without the names.
//!
//! Try it: `switchyard up`, then connect to
//! `ws://127.0.0.1:8080/rooms/lounge?name=alice` and `.../rooms/lounge?name=bob`.

use switchyard_sdk::serde_json::{Value, json};
use switchyard_sdk::{
    CloseInfo, Connection, Controller, LogLevel, Message, MessageError, attachment_json, groups,
    socket_route, state,
};

#[socket_route(route = "/rooms/{room}", name = "rooms", instance = "keyed:room")]
#[derive(Default)]
struct Rooms;

/// Messages kept per room for newcomers.
const HISTORY: usize = 20;
/// Longest nickname, in characters.
const NAME_CHARS: usize = 32;
/// Longest chat message, in bytes.
const MESSAGE_BYTES: usize = 2_000;
/// Most names a welcome lists.
const WELCOME_NAMES: usize = 50;

fn nickname(conn: &Connection) -> String {
    conn.attachment_json()
        .or_else(|| conn.query_param("name").map(str::to_owned))
        .or_else(|| conn.user.clone())
        .map(|name| name.chars().take(NAME_CHARS).collect())
        .unwrap_or_else(|| format!("guest-{}", conn.id))
}

/// The welcome for a newcomer, as large as the host's message limit
/// allows: without the history, then without the names, if need be.
fn welcome(
    room: Option<&str>,
    me: &str,
    named: &[String],
    others: usize,
    history: &[Value],
) -> Message {
    let mut attempts = [(named, history), (named, &[][..]), (&[][..], &[][..])].into_iter();
    loop {
        let (names, history) = attempts.next().expect("the smallest welcome is tried last");
        let welcome = json!({
            "type": "welcome",
            "room": room,
            "you": me,
            "present": names,
            "others": others,
            "history": history,
        });
        match Message::try_json(&welcome) {
            Ok(message) => return message,
            Err(err @ MessageError::TooLarge { .. }) if attempts.len() > 0 => {
                switchyard_sdk::log(LogLevel::Debug, &format!("welcome cut short: {err}"));
            }
            Err(err) => {
                switchyard_sdk::log(LogLevel::Error, &format!("no welcome: {err}"));
                return Message::json(&json!({"type": "welcome", "you": me, "others": others}));
            }
        }
    }
}

impl Controller for Rooms {
    fn on_open(&mut self, conn: &Connection) -> Option<Message> {
        let me = nickname(conn);
        // Host-owned, so a reload or a trap forgets neither; a 32-character
        // name is far below the attachment limit, a short group name below
        // the group-name limit, so these fail only if the host changes.
        if let Err(err) = conn.set_attachment_json(&me).and_then(|()| conn.join("lobby")) {
            switchyard_sdk::log(LogLevel::Warn, &format!("{me}: not listed or not in the lobby: {err:?}"));
        }
        let others: Vec<_> = switchyard_sdk::connections()
            .into_iter()
            .filter(|id| *id != conn.id)
            .collect();
        let names: Vec<String> = others
            .iter()
            .take(WELCOME_NAMES)
            .filter_map(|id| attachment_json::<String>(*id))
            .collect();
        conn.broadcast_others(&Message::json(&json!({"type": "join", "user": me})));
        let history: Vec<Value> = state::get_json("history").unwrap_or_default();
        Some(welcome(conn.param("room"), &me, &names, others.len(), &history))
    }

    fn on_message(&mut self, conn: &Connection, msg: Message) -> Option<Message> {
        let text = msg.as_text()?;
        if text.len() > MESSAGE_BYTES {
            return Some(Message::json(&json!({
                "type": "error",
                "data": format!("message too long: at most {MESSAGE_BYTES} bytes"),
            })));
        }
        let me = nickname(conn);
        if let Some(announcement) = text.strip_prefix("/all ") {
            let out = json!({"type": "announcement", "user": me, "room": conn.param("room"), "data": announcement});
            groups::publish("lobby", &Message::json(&out), None);
            return None;
        }
        let out = json!({"type": "message", "user": me, "data": text});
        let mut history: Vec<Value> = state::get_json("history").unwrap_or_default();
        history.push(out.clone());
        if history.len() > HISTORY {
            history.remove(0);
        }
        // Messages escaped in JSON can outgrow the store's value limit
        // (sandbox.state_value_bytes): keep what fits, newest first.
        while state::set_json("history", &history).is_err() && !history.is_empty() {
            history.remove(0);
        }
        switchyard_sdk::broadcast(&Message::json(&out), None);
        None
    }

    fn on_close(&mut self, conn: &Connection, _info: CloseInfo) {
        conn.broadcast_others(&Message::json(&json!({"type": "leave", "user": nickname(conn)})));
    }
}
