//! The generated bindings of `wit/switchyard.wit`, kept private to the crate.
//!
//! Only [`crate::host_api`] and [`crate::instance`] use these types; they
//! convert to and from the host's own types (tungstenite frames,
//! [`crate::connection::ConnectionInfo`]) at the boundary, here.

use tokio_tungstenite::tungstenite::{Bytes, Message as WsMessage, Utf8Bytes};

use crate::writer::Frame;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "controller",
    exports: { default: async },
});

// `bindgen!` already brings the world's types (`Message`, `Connection`, …)
// into this module; importing them again by path would clash.

impl Message {
    /// The frame to put on the wire, encoded. Takes the guest's buffer
    /// without copying it.
    pub fn into_frame(self) -> Frame {
        match self {
            Message::Text(text) => Frame::text(Utf8Bytes::from(text)),
            Message::Binary(bytes) => Frame::binary(Bytes::from(bytes)),
        }
    }

    /// The payload size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Message::Text(text) => text.len(),
            Message::Binary(bytes) => bytes.len(),
        }
    }

    /// A data frame from a client as the guest's message type; `None` for
    /// control frames.
    pub fn from_frame(frame: &WsMessage) -> Option<Message> {
        match frame {
            WsMessage::Text(text) => Some(Message::Text(text.as_str().to_owned())),
            WsMessage::Binary(bytes) => Some(Message::Binary(bytes.to_vec())),
            _ => None,
        }
    }
}

impl From<&crate::connection::ConnectionInfo> for Connection {
    fn from(info: &crate::connection::ConnectionInfo) -> Self {
        Connection {
            id: info.id,
            route: info.route.to_string(),
            path: info.path.clone(),
            params: info.params.clone(),
            query: info.query.clone(),
            user: info.user.clone(),
            roles: info.roles.clone(),
        }
    }
}

impl From<self::switchyard::controller::types::InstanceMode> for crate::config::InstanceMode {
    fn from(mode: self::switchyard::controller::types::InstanceMode) -> Self {
        use self::switchyard::controller::types::InstanceMode;
        match mode {
            InstanceMode::Shared => crate::config::InstanceMode::Shared,
            InstanceMode::Keyed(param) => crate::config::InstanceMode::Keyed(param),
            InstanceMode::PerConnection => crate::config::InstanceMode::PerConnection,
        }
    }
}
