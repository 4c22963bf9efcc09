//! A controller that misbehaves on command, for the fault-isolation tests.
//! Text commands (anything else is echoed back):
//! - `panic`: a Rust panic.
//! - `unreachable`: the wasm `unreachable` instruction.
//! - `loop`: spins forever (the CPU budget must stop it).
//! - `alloc`: allocates and touches memory without bound (the memory cap
//!   must stop it).
//! - `recurse`: recurses without bound (stack overflow).
//! - `huge <MiB>`: returns a message of that many MiB (default 100).
//! - `hoard <MiB>`: allocates that many MiB more and keeps them (in the
//!   instance), then answers how many MiB it holds in all.
//! - `bogus`: sends to and closes connection ids that do not exist, and
//!   answers with each host result as JSON.
//! - `close-twice`: closes its own connection twice; answers nothing, but
//!   logs both results (`close-twice: ok, closed`).
//! - `wasi`: tries to reach outside the sandbox (files, environment,
//!   arguments, network) and answers what it got, as JSON.
//! - `fail-next <n>`: the next `n` events of this route, of any kind,
//!   panic. The counter lives in the host key-value store, so it outlives
//!   the instances it kills.

use std::hint::black_box;

use switchyard_sdk::{CloseInfo, Connection, Controller, HostError, LogLevel, Message, socket_route, state};

#[socket_route(route = "/fault", name = "fault")]
#[derive(Default)]
struct Fault {
    /// What `hoard` keeps: gone only with the instance.
    hoard: Vec<Vec<u8>>,
}

/// Panics if a `fail-next` countdown is running, after counting down.
fn maybe_fail(event: &str) {
    let left: u32 = state::get_json("fail-next").unwrap_or(0);
    if left > 0 {
        state::set_json("fail-next", &(left - 1)).expect("state set");
        panic!("fail-next: failing {event}");
    }
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    // The array keeps each frame big and the addition keeps the call out of
    // tail position, so nothing can turn this into a loop.
    let frame = black_box([depth; 64]);
    recurse(black_box(depth + 1)) + frame[(depth % 64) as usize]
}

fn name(result: Result<(), HostError>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(err) => err.name().to_owned(),
    }
}

impl Controller for Fault {
    fn on_open(&mut self, _conn: &Connection) -> Option<Message> {
        maybe_fail("on-open");
        None
    }

    fn on_message(&mut self, conn: &Connection, msg: Message) -> Option<Message> {
        maybe_fail("on-message");
        let text = msg.as_text().unwrap_or("");
        let (command, arg) = text.split_once(' ').unwrap_or((text, ""));
        match command {
            "panic" => panic!("the fault controller was asked to panic"),
            "unreachable" => core::arch::wasm32::unreachable(),
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    black_box(&hoard);
                }
            }
            "recurse" => Some(Message::text(recurse(0).to_string())),
            "hoard" => {
                let mib: usize = arg.parse().unwrap_or(1);
                self.hoard.extend((0..mib).map(|_| vec![1u8; 1 << 20]));
                Some(Message::text(format!("hoarding {} MiB", self.hoard.len())))
            }
            "huge" => {
                let mib: usize = arg.parse().unwrap_or(100);
                Some(Message::binary(vec![7u8; mib << 20]))
            }
            "bogus" => {
                let results: Vec<(String, String)> = vec![
                    ("send".into(), name(switchyard_sdk::try_send(u64::MAX, &Message::text("x")))),
                    ("send-zero".into(), name(switchyard_sdk::try_send(0, &Message::text("x")))),
                    (
                        "broadcast-except-bogus".into(),
                        match switchyard_sdk::try_broadcast(&Message::text("all"), Some(u64::MAX)) {
                            Ok(n) => format!("ok {n}"),
                            Err(err) => err.name().to_owned(),
                        },
                    ),
                    ("close".into(), name(switchyard_sdk::close(u64::MAX, 1000, "bye"))),
                    ("close-bad-code".into(), name(conn.close(1006, "reserved"))),
                ];
                Some(Message::json(&results))
            }
            "close-twice" => {
                let first = name(conn.close(1000, "first"));
                let second = name(conn.close(1000, "second"));
                switchyard_sdk::log(LogLevel::Info, &format!("close-twice: {first}, {second}"));
                Some(Message::text("after close"))
            }
            "wasi" => {
                let file = std::fs::read_to_string("/etc/hostname").map_err(|e| e.to_string());
                let dir = std::fs::read_dir(".").map(|_| ()).map_err(|e| e.to_string());
                let tcp = std::net::TcpStream::connect("127.0.0.1:80")
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                Some(Message::json(&switchyard_sdk::serde_json::json!({
                    "file": file.is_ok(),
                    "dir": dir.is_ok(),
                    "tcp": tcp.is_ok(),
                    "env": std::env::vars().count(),
                    "args": std::env::args().count(),
                })))
            }
            "fail-next" => {
                let n: u32 = arg.parse().unwrap_or(1);
                state::set_json("fail-next", &n).expect("state set");
                Some(Message::text("armed"))
            }
            _ => Some(msg),
        }
    }

    fn on_close(&mut self, _conn: &Connection, _info: CloseInfo) {
        maybe_fail("on-close");
    }
}
