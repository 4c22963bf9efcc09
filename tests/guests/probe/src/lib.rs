//! A controller that records every event it sees and obeys commands, so
//! tests can observe what the host calls and what host functions return.
//!
//! Text commands (anything else is echoed):
//! - `events`: the recorded events, as a JSON array of strings like
//!   `open 3`, `message 3`, `error 3 1009`, `close 3 1000`.
//! - `whoami`: this connection's record as JSON.
//! - `connections`: `host.connections()` as JSON.
//! - `send <id> <text>`: `host.send`, answers `ok` or the error.
//! - `sendn <id> <n>`: `host.send` of `n` bytes.
//! - `broadcast <text>`: `host.broadcast` to everyone, answers the count.
//! - `shout <text>`: `host.broadcast` to everyone, and no answer.
//! - `shout-and-panic <text>`: `host.broadcast` to everyone, then a panic.
//! - `close <id> <code> <reason>`: `host.close`, answers `ok` or the error.
//! - `log <text>`: `host.log` at info level; `print <text>`: println!.
//! - `panic`: panics, trapping the instance.
//! - `join <group>`, `leave <group>`, `publish <group> <text>`,
//!   `members <group>`: the group functions, answering `ok ...` or the error.
//! - `attach <text>`: sets this connection's attachment;
//!   `attachment <id>`: reads one (`none` when there is none).
//!
//! Every `on-close` is also logged as `on-close <id> <code>`.

use switchyard_sdk::serde_json::json;
use switchyard_sdk::{
    CloseInfo, Connection, Controller, ErrorInfo, HostError, LogLevel, Message, socket_route,
};

#[socket_route(route = "/probe/{*rest}", name = "probe")]
#[derive(Default)]
struct Probe {
    events: Vec<String>,
}

fn result<T: std::fmt::Debug>(r: Result<T, HostError>) -> Message {
    match r {
        Ok(value) => Message::text(format!("ok {value:?}")),
        Err(err) => Message::text(format!("err {}", err.name())),
    }
}

impl Controller for Probe {
    fn on_open(&mut self, conn: &Connection) -> Option<Message> {
        self.events.push(format!("open {}", conn.id));
        None
    }

    fn on_message(&mut self, conn: &Connection, msg: Message) -> Option<Message> {
        self.events.push(format!("message {}", conn.id));
        let Some(text) = msg.as_text() else {
            return Some(msg);
        };
        let (command, rest) = text.split_once(' ').unwrap_or((text, ""));
        if command == "shout" || command == "shout-and-panic" {
            switchyard_sdk::broadcast(&Message::text(rest), None);
            if command == "shout-and-panic" {
                panic!("the probe was asked to panic after a broadcast");
            }
            return None;
        }
        Some(match command {
            "events" => Message::json(&self.events),
            "whoami" => Message::json(&json!({
                "id": conn.id,
                "route": conn.route,
                "path": conn.path,
                "params": conn.params,
                "query": conn.query,
                "user": conn.user,
                "roles": conn.roles,
            })),
            "connections" => Message::json(&switchyard_sdk::connections()),
            "send" => {
                let (id, text) = rest.split_once(' ').unwrap_or((rest, ""));
                result(switchyard_sdk::try_send(id.parse().unwrap_or(u64::MAX), &Message::text(text)))
            }
            "sendn" => {
                let (id, n) = rest.split_once(' ').unwrap_or((rest, "0"));
                let body = "x".repeat(n.parse().unwrap_or(0));
                result(switchyard_sdk::try_send(id.parse().unwrap_or(u64::MAX), &Message::text(body)))
            }
            "burst" => {
                // `n` messages to this connection in one event: "0", "1", …
                let n: u32 = rest.parse().unwrap_or(0);
                let sent = (0..n)
                    .take_while(|i| switchyard_sdk::try_send(conn.id, &Message::text(i.to_string())).is_ok())
                    .count();
                Message::text(format!("sent {sent}"))
            }
            "broadcast" => result(switchyard_sdk::try_broadcast(&Message::text(rest), None)),
            "fanout" => {
                // "start" to everyone, then `n` broadcasts to everyone else
                // in the same event: "0", "1", …
                switchyard_sdk::broadcast(&Message::text("start"), None);
                let n: u32 = rest.parse().unwrap_or(0);
                for i in 0..n {
                    switchyard_sdk::broadcast(&Message::text(i.to_string()), Some(conn.id));
                }
                Message::text(format!("broadcast {n}"))
            }
            "close" => {
                let mut parts = rest.splitn(3, ' ');
                let id = parts.next().and_then(|p| p.parse().ok()).unwrap_or(u64::MAX);
                let code = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                let reason = parts.next().unwrap_or("");
                result(switchyard_sdk::close(id, code, reason))
            }
            "join" => result(conn.join(rest)),
            "leave" => result(conn.leave(rest)),
            "publish" => {
                let (group, text) = rest.split_once(' ').unwrap_or((rest, ""));
                result(switchyard_sdk::groups::try_publish(group, &Message::text(text), None))
            }
            "members" => Message::json(&switchyard_sdk::groups::members(rest)),
            "attach" => result(conn.set_attachment(rest.as_bytes())),
            "attachment" => {
                let id = rest.parse().unwrap_or(u64::MAX);
                match switchyard_sdk::attachment(id) {
                    Some(bytes) => Message::text(String::from_utf8_lossy(&bytes).into_owned()),
                    None => Message::text("none"),
                }
            }
            "log" => {
                switchyard_sdk::log(LogLevel::Info, rest);
                Message::text("ok")
            }
            "limits" => {
                let limits = switchyard_sdk::limits();
                Message::json(&json!({
                    "max_message_bytes": limits.max_message_bytes,
                    "attachment_bytes": limits.attachment_bytes,
                    "state_value_bytes": limits.state_value_bytes,
                    "state_total_bytes": limits.state_total_bytes,
                }))
            }
            "json-of" => {
                // A JSON string of `n` characters, built with the size check.
                let n: usize = rest.parse().unwrap_or(0);
                match Message::try_json(&"y".repeat(n)) {
                    Ok(message) => message,
                    Err(err) => Message::text(format!("refused: {err}")),
                }
            }
            "panic" => panic!("the probe was asked to panic"),
            "print" => {
                println!("{rest}");
                Message::text("ok")
            }
            _ => msg,
        })
    }

    fn on_close(&mut self, conn: &Connection, info: CloseInfo) {
        self.events.push(format!("close {} {}", conn.id, info.code));
        // Logged too, so a test can see on-close run after the server stops.
        switchyard_sdk::log(LogLevel::Info, &format!("on-close {} {}", conn.id, info.code));
    }

    fn on_error(&mut self, conn: &Connection, err: ErrorInfo) -> Option<Message> {
        self.events.push(format!("error {} {}", conn.id, err.code));
        Some(Message::text(format!("error {}", err.code)))
    }
}
