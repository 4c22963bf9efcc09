use switchyard_sdk::{Controller, socket_route};

#[socket_route(route = "chat")]
#[derive(Default)]
struct Chat;

impl Controller for Chat {}

fn main() {}
