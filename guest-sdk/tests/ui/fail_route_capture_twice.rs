use switchyard_sdk::{Controller, socket_route};

#[socket_route(route = "/rooms/{room}/{room}")]
#[derive(Default)]
struct Rooms;

impl Controller for Rooms {}

fn main() {}
