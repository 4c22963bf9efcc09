//! The generated bindings of `wit/switchyard.wit`, kept private to the crate.
//!
//! Only [`crate::runtime::host_api`] and [`crate::runtime::instance`] use these types; they
//! convert to and from the host's own types (tungstenite frames,
//! [`crate::wire::ConnectionInfo`]) at the boundary, here.

use tokio_tungstenite::tungstenite::{Bytes, Message as WsMessage, Utf8Bytes};

use wasmtime::component::{ComponentType, Func, Lower, TypedFunc};
use wasmtime::{AsContext, AsContextMut};

use crate::wire::frame::Frame;

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
}

/// A client's data frame as the guest's `message`, borrowed from the frame:
/// lowering it copies the payload straight into guest memory.
#[derive(ComponentType, Lower)]
#[component(variant)]
enum Incoming<'a> {
    #[component(name = "text")]
    Text(&'a str),
    #[component(name = "binary")]
    Binary(&'a [u8]),
}

/// The `on-message` export, called with the frame as it was read (the
/// generated `call_on_message` takes an owned copy of it).
#[derive(Clone, Copy)]
pub struct OnMessage(Func);

impl OnMessage {
    /// `controller`'s `on-message`, checked against the borrowed message
    /// type once, here.
    pub fn new(controller: &Controller, store: impl AsContext) -> wasmtime::Result<OnMessage> {
        let func = *controller.func_on_message().func();
        func.typed::<(u64, Incoming<'static>), (Option<Message>,)>(store)?;
        Ok(OnMessage(func))
    }

    /// Calls `on-message` of connection `id` with `frame`; `None` when the
    /// frame is not a data frame.
    pub async fn call<S>(
        &self,
        store: S,
        id: u64,
        frame: &WsMessage,
    ) -> Option<wasmtime::Result<Option<Message>>>
    where
        S: AsContextMut<Data: Send>,
    {
        let msg = Incoming::of(frame)?;
        Some(
            self.typed()
                .call_async(store, (id, msg))
                .await
                .map(|(reply,)| reply),
        )
    }

    /// The function, typed for a borrowed message.
    fn typed<'a>(&self) -> TypedFunc<(u64, Incoming<'a>), (Option<Message>,)> {
        // SAFETY: `new` checked the function against this signature; the
        // lifetime of the borrow does not change the component type.
        unsafe { TypedFunc::new_unchecked(self.0) }
    }
}

impl<'a> Incoming<'a> {
    /// A data frame as the guest's `message`; `None` for any other frame.
    fn of(frame: &'a WsMessage) -> Option<Incoming<'a>> {
        match frame {
            WsMessage::Text(text) => Some(Incoming::Text(text.as_str())),
            WsMessage::Binary(bytes) => Some(Incoming::Binary(bytes)),
            _ => None,
        }
    }
}

#[cfg(feature = "bench")]
impl OnMessage {
    /// [`OnMessage::call`] with wasmtime's synchronous `call`: no fiber,
    /// so a store that needs async (epoch yields, async WASI) refuses it.
    /// For the benchmark that prices the fiber.
    pub fn call_sync<S: AsContextMut>(
        &self,
        store: S,
        id: u64,
        frame: &WsMessage,
    ) -> Option<wasmtime::Result<Option<Message>>> {
        let msg = Incoming::of(frame)?;
        Some(self.typed().call(store, (id, msg)).map(|(reply,)| reply))
    }
}

impl From<&crate::wire::ConnectionInfo> for Connection {
    fn from(info: &crate::wire::ConnectionInfo) -> Self {
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
