use switchyard_sdk::{Controller, socket_route};

#[socket_route(name = "chat")]
#[derive(Default)]
struct Chat;

impl Controller for Chat {}

fn main() {}
