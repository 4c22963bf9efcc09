use switchyard_sdk::socket_route;

#[socket_route(route = "/chat")]
#[derive(Default)]
enum Chat {
    #[default]
    Open,
}

fn main() {}
