//! A controller built against the WIT of 0.3.0, kept in `wit/` as it was
//! released: the host must keep loading modules built before 0.3.1 added
//! `host.get-limits`. It echoes, and greets with a host call, so that it
//! imports the 0.3.0 `host` interface.

wit_bindgen::generate!({
    path: "wit",
    world: "controller",
});

// The world brings its types (`Connection`, `Message`…) in already.
use switchyard::controller::host;
use switchyard::controller::types::InstanceMode;

struct Compat;

impl Guest for Compat {
    fn describe() -> RouteInfo {
        RouteInfo {
            route: "/compat".into(),
            name: "compat".into(),
            is_granted: Vec::new(),
            instance: InstanceMode::Shared,
        }
    }

    fn on_open(conn: Connection) -> Option<Message> {
        let _ = host::send(conn.id, &Message::Text("built against 0.3.0".into()));
        None
    }

    fn on_message(_conn: ConnectionId, msg: Message) -> Option<Message> {
        Some(msg)
    }

    fn on_close(_conn: ConnectionId, _info: CloseInfo) {}

    fn on_error(_conn: ConnectionId, _err: ErrorInfo) -> Option<Message> {
        None
    }
}

export!(Compat);
