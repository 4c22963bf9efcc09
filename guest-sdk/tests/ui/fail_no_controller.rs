use switchyard_sdk::socket_route;

#[socket_route(route = "/chat")]
#[derive(Default)]
struct Chat;

fn main() {}
