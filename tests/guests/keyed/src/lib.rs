//! A keyed controller for the instance tests: one instance per `{key}`.
//! Text commands (anything else is echoed):
//! - `seen`: events this instance has handled (guest memory: a fresh
//!   instance starts from zero).
//! - `count`: increments and returns a counter in the instance's key-value
//!   store (host-owned: kept a while after the instance is dropped).
//! - `spin <ms>`: logs `spin <ms> started`, busy-waits that long, logs
//!   `spin <ms> done`, then answers `spun`.
//! - `mark <text>`: logs `mark <text>` and answers `marked`.
//! - `work <n>`: `n` rounds of a hash computation (CPU work whose cost does
//!   not depend on the clock), answering the result.
//! - `connections`: `host.connections()`, scoped to this instance.
//! - `broadcast <text>`: to this instance's connections; answers the count.

use std::time::{Duration, Instant};

use switchyard_sdk::{Connection, Controller, LogLevel, Message, socket_route, state};

#[socket_route(route = "/keyed/{key}", name = "keyed", instance = "keyed:key")]
#[derive(Default)]
struct Keyed {
    seen: u64,
}

impl Controller for Keyed {
    fn on_open(&mut self, _conn: &Connection) -> Option<Message> {
        self.seen += 1;
        None
    }

    fn on_message(&mut self, _conn: &Connection, msg: Message) -> Option<Message> {
        self.seen += 1;
        let text = msg.as_text().unwrap_or("");
        let (command, arg) = text.split_once(' ').unwrap_or((text, ""));
        Some(match command {
            "seen" => Message::text(self.seen.to_string()),
            "count" => {
                let count: u64 = state::get_json("count").unwrap_or(0) + 1;
                state::set_json("count", &count).expect("state set");
                Message::text(count.to_string())
            }
            "spin" => {
                // Logged first, so a test knows the instance is busy.
                switchyard_sdk::log(LogLevel::Info, &format!("spin {arg} started"));
                let until = Instant::now() + Duration::from_millis(arg.parse().unwrap_or(0));
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                switchyard_sdk::log(LogLevel::Info, &format!("spin {arg} done"));
                Message::text("spun")
            }
            "mark" => {
                switchyard_sdk::log(LogLevel::Info, &format!("mark {arg}"));
                Message::text("marked")
            }
            "work" => {
                let rounds: u64 = arg.parse().unwrap_or(0);
                let mut hash = 0xcbf2_9ce4_8422_2325_u64;
                for i in 0..rounds {
                    hash = (hash ^ i).wrapping_mul(0x0100_0000_01b3);
                }
                Message::text(std::hint::black_box(hash).to_string())
            }
            "connections" => Message::json(&switchyard_sdk::connections()),
            "broadcast" => {
                let n = switchyard_sdk::broadcast(&Message::text(arg), None);
                Message::text(n.to_string())
            }
            _ => msg,
        })
    }
}
