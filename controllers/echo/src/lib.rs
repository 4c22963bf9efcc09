//! Echo: sends every message back to its sender, text as text and binary as
//! binary, unchanged.
//!
//! Try it: `switchyard up` at the repository root, then
//! `websocat ws://127.0.0.1:8080/echo` (or any WebSocket client) and type.

use switchyard_sdk::{Connection, Controller, Message, socket_route};

#[socket_route(route = "/echo", name = "echo")]
#[derive(Default)]
struct Echo;

impl Controller for Echo {
    fn on_message(&mut self, _conn: &Connection, msg: Message) -> Option<Message> {
        Some(msg)
    }
}
