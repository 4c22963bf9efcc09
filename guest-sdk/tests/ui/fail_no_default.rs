use switchyard_sdk::{Controller, socket_route};

#[socket_route(route = "/chat")]
struct Chat {
    members: usize,
}

impl Controller for Chat {}

fn main() {}
