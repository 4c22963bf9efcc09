//! A controller named like the SDK's types, next to a user type named
//! `Message`: the macro's expansion must not shadow either.

use switchyard_sdk::{Controller, socket_route};

#[derive(Default)]
struct Message {
    count: usize,
}

#[socket_route(route = "/shadow", instance = "per-connection")]
#[derive(Default)]
struct Connection {
    last: Message,
}

impl Controller for Connection {
    fn on_message(
        &mut self,
        _conn: &switchyard_sdk::Connection,
        msg: switchyard_sdk::Message,
    ) -> Option<switchyard_sdk::Message> {
        self.last.count += 1;
        Some(msg)
    }
}

fn main() {
    let mut controller = Connection::default();
    controller.last.count += 1;
    assert_eq!(controller.last.count, 1);
}
