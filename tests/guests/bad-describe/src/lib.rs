//! A controller of the right world whose `describe()` traps: the host must
//! refuse the module with an error naming the file and the failing call.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "controller",
});


struct BadDescribe;

impl Guest for BadDescribe {
    fn describe() -> RouteInfo {
        panic!("describe fails on purpose")
    }

    fn on_open(_conn: Connection) -> Option<Message> {
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

export!(BadDescribe);
