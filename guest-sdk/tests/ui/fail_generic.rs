use switchyard_sdk::{Controller, socket_route};

#[socket_route(route = "/chat")]
#[derive(Default)]
struct Chat<T> {
    value: T,
}

impl<T: Default + 'static> Controller for Chat<T> {}

fn main() {}
