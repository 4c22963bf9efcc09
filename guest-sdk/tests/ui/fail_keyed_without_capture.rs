use switchyard_sdk::{Controller, socket_route};

#[socket_route(route = "/rooms/{room}", instance = "keyed:name")]
#[derive(Default)]
struct Rooms;

impl Controller for Rooms {}

fn main() {}
