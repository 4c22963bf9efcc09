//! Controller instances as actors.
//!
//! A [`ControllerHandle`] is the address of one running instance: connection
//! tasks send it [`Event`]s over a bounded queue, and a task owning the
//! instance's wasmtime `Store` handles them one at a time, in arrival order,
//! calling the guest's exports. A trap, panic or exhausted budget in an event
//! replaces the instance with a fresh one from the same module; the
//! connection table moves across, the connection whose event failed is
//! closed with 1011, and every other connection stays open.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{debug, error, info, warn};
use wasmtime::Store;

use crate::bindings::{CloseInfo, Connection, Controller, ErrorInfo, Message};
use crate::connection::{ConnHandle, ConnectionInfo};
use crate::host_api::{ConnTable, HostState};
use crate::module::Module;
use crate::runtime::Runtime;

/// Something that happened on a connection, for its controller.
pub enum Event {
    /// A client connected; its handle joins the connection table.
    Open {
        /// What the upgrade request said.
        info: Arc<ConnectionInfo>,
        /// Where to queue frames for it.
        handle: Arc<ConnHandle>,
    },
    /// A complete text or binary message arrived.
    Message {
        /// The connection.
        id: u64,
        /// The frame, text or binary.
        msg: WsMessage,
    },
    /// The host detected a client error and will close with `code`.
    Error {
        /// The connection.
        id: u64,
        /// The close code that will be sent.
        code: u16,
        /// What went wrong.
        message: String,
    },
    /// The connection ended. Always the last event of a connection.
    Close {
        /// The connection.
        id: u64,
        /// The close code (1006 when the socket dropped).
        code: u16,
        /// The close reason.
        reason: String,
    },
}

/// The address of a running controller instance.
pub struct ControllerHandle {
    tx: mpsc::Sender<Event>,
    module: Arc<Module>,
}

impl ControllerHandle {
    /// Starts an instance of `module` and returns its address. The instance
    /// lives until every handle and every connection of it is gone.
    pub fn spawn(runtime: Arc<Runtime>, module: Arc<Module>, event_queue: usize) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(event_queue);
        tokio::spawn(run(runtime, module.clone(), rx));
        Arc::new(ControllerHandle { tx, module })
    }

    /// The module this instance runs.
    pub fn module(&self) -> &Arc<Module> {
        &self.module
    }

    /// Queues an event, waiting while the queue is full (back-pressure on
    /// the reader). Fails only when the instance has stopped.
    pub async fn send(&self, event: Event) -> Result<(), ()> {
        self.tx.send(event).await.map_err(|_| ())
    }
}

/// One live instance and the host-owned state that outlives it.
struct Actor {
    runtime: Arc<Runtime>,
    module: Arc<Module>,
    store: Store<HostState>,
    controller: Controller,
    /// The WIT record of each open connection, built once at open.
    records: HashMap<u64, Connection>,
    /// Traps since the last event that succeeded, for backoff.
    consecutive_failures: u32,
}

async fn instantiate(
    runtime: &Runtime,
    module: &Module,
) -> wasmtime::Result<(Store<HostState>, Controller)> {
    let mut store = runtime.new_store(module.name.clone(), ConnTable::new());
    runtime.arm_budget(&mut store);
    let controller = module.pre.instantiate_async(&mut store).await?;
    Ok((store, controller))
}

/// Instantiates until it works, backing off between attempts, and hands the
/// new store the connection table. Only loops for good if the module can
/// never be instantiated again, which the load checks make unlikely; the
/// log says so every time.
async fn instantiate_with_backoff(
    runtime: &Runtime,
    module: &Module,
    conns: ConnTable,
    failures: u32,
) -> (Store<HostState>, Controller) {
    let mut attempt = failures;
    loop {
        if attempt > 1 {
            let delay = Duration::from_millis(25u64 << attempt.min(8)).min(Duration::from_secs(5));
            warn!(route = %module.name, failures = attempt, delay_ms = delay.as_millis() as u64,
                "route degraded: instance keeps failing, backing off");
            tokio::time::sleep(delay).await;
        }
        match instantiate(runtime, module).await {
            Ok((mut store, controller)) => {
                store.data_mut().conns = conns;
                return (store, controller);
            }
            Err(err) => {
                error!(route = %module.name, file = %module.file.display(), error = %format!("{err:#}"),
                    "cannot instantiate controller");
                attempt += 1;
            }
        }
    }
}

async fn run(runtime: Arc<Runtime>, module: Arc<Module>, mut rx: mpsc::Receiver<Event>) {
    let (store, controller) =
        instantiate_with_backoff(&runtime, &module, ConnTable::new(), 0).await;
    let mut actor = Actor {
        runtime,
        module,
        store,
        controller,
        records: HashMap::new(),
        consecutive_failures: 0,
    };
    info!(route = %actor.module.name, file = %actor.module.file.display(), "controller instance started");
    while let Some(event) = rx.recv().await {
        actor.handle(event).await;
    }
    debug!(route = %actor.module.name, "controller instance stopped");
}

impl Actor {
    async fn handle(&mut self, event: Event) {
        let (id, result) = match event {
            Event::Open { info, handle } => {
                let id = info.id;
                self.store.data_mut().conns.insert(id, handle);
                let record = self
                    .records
                    .entry(id)
                    .or_insert_with(|| Connection::from(&*info));
                self.runtime.arm_budget(&mut self.store);
                let result = self.controller.call_on_open(&mut self.store, record).await;
                (id, result.map(|reply| self.reply(id, reply)))
            }
            Event::Message { id, msg } => {
                let (Some(record), Some(msg)) = (self.records.get(&id), Message::from_frame(&msg))
                else {
                    return;
                };
                self.runtime.arm_budget(&mut self.store);
                let result = self
                    .controller
                    .call_on_message(&mut self.store, record, &msg)
                    .await;
                (id, result.map(|reply| self.reply(id, reply)))
            }
            Event::Error { id, code, message } => {
                let Some(record) = self.records.get(&id) else {
                    return;
                };
                let err = ErrorInfo {
                    code,
                    message: message.clone(),
                };
                self.runtime.arm_budget(&mut self.store);
                let result = self
                    .controller
                    .call_on_error(&mut self.store, record, &err)
                    .await;
                let result = result.map(|reply| self.reply(id, reply));
                if let Some(handle) = self.store.data().conns.get(&id) {
                    let _ = handle.close(code, &message);
                }
                (id, result)
            }
            Event::Close { id, code, reason } => {
                self.store.data_mut().conns.remove(&id);
                let Some(record) = self.records.remove(&id) else {
                    return;
                };
                let info = CloseInfo { code, reason };
                self.runtime.arm_budget(&mut self.store);
                let result = self
                    .controller
                    .call_on_close(&mut self.store, &record, &info)
                    .await;
                (id, result)
            }
        };
        match result {
            Ok(()) => self.consecutive_failures = 0,
            Err(err) => self.recover(id, err).await,
        }
    }

    /// Queues a message returned by an event handler for its connection.
    fn reply(&mut self, id: u64, reply: Option<Message>) {
        let Some(msg) = reply else { return };
        let state = self.store.data();
        let Some(handle) = state.conns.get(&id) else {
            return;
        };
        if msg.len() > state.max_message_bytes {
            warn!(route = %self.module.name, conn = id, bytes = msg.len(),
                "reply dropped: larger than limits.max_message_bytes");
            return;
        }
        if let Err(err) = handle.push(msg.into_frame()) {
            debug!(route = %self.module.name, conn = id, ?err, "reply not queued");
        }
    }

    /// Replaces a failed instance, keeping the connection table, and closes
    /// the connection whose event failed with 1011.
    async fn recover(&mut self, id: u64, err: wasmtime::Error) {
        self.consecutive_failures += 1;
        let trap = err
            .downcast_ref::<wasmtime::Trap>()
            .map(|trap| trap.to_string())
            .unwrap_or_else(|| "error".to_owned());
        error!(route = %self.module.name, conn = id, trap = %trap, error = %format!("{err:?}"),
            "controller failed; replacing its instance");
        let conns = std::mem::take(&mut self.store.data_mut().conns);
        if let Some(handle) = conns.get(&id) {
            handle.force_close(CloseCode::Error, "controller error");
        }
        let (store, controller) = instantiate_with_backoff(
            &self.runtime,
            &self.module,
            conns,
            self.consecutive_failures,
        )
        .await;
        self.store = store;
        self.controller = controller;
    }
}
