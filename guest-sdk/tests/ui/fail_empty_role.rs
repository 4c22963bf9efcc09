use switchyard_sdk::{Controller, socket_route};

#[socket_route(route = "/admin", is_granted = ["ROLE_ADMIN", ""])]
#[derive(Default)]
struct Admin;

impl Controller for Admin {}

fn main() {}
