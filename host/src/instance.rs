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

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{debug, error, info, warn};
use wasmtime::Store;

use crate::bindings::{CloseInfo, Connection, Controller, ErrorInfo, Message};
use crate::config::InstanceMode;
use crate::connection::{ConnHandle, ConnectionInfo};
use crate::host_api::{HostOwned, HostState};
use crate::module::Module;
use crate::runtime::{InstanceSlot, Runtime};

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
        /// Signalled once `on-close` has run (or was skipped).
        done: Option<oneshot::Sender<()>>,
    },
    /// Hot reload: continue with an instance of `module`, keeping the
    /// connections and key-value store. Answers whether it went live.
    Swap {
        /// The new version.
        module: Arc<Module>,
        /// Receives `Err` with the reason when the new version could not be
        /// instantiated; the old one keeps serving then.
        done: oneshot::Sender<Result<(), String>>,
    },
    /// The module was removed: every connection gets `on-close`, then a
    /// 1001 close frame. Later events are ignored.
    Retire,
}

/// The address of a running controller instance.
pub struct ControllerHandle {
    tx: mpsc::Sender<Event>,
    /// The version now serving; replaced by a successful swap.
    module: ArcSwap<Module>,
}

impl ControllerHandle {
    /// Starts an instance of `module` and returns its address. The instance
    /// lives until every handle and every connection of it is gone.
    pub fn spawn(
        runtime: Arc<Runtime>,
        module: Arc<Module>,
        event_queue: usize,
        owned: HostOwned,
        slot: Option<InstanceSlot>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(event_queue);
        tokio::spawn(run(runtime, module.clone(), owned, slot, rx));
        Arc::new(ControllerHandle {
            tx,
            module: ArcSwap::new(module),
        })
    }

    /// The module version this instance runs.
    pub fn module(&self) -> Arc<Module> {
        self.module.load_full()
    }

    /// Replaces the running version with `module` between two events.
    /// Events already queued are handled by the new version, in order.
    pub async fn swap(&self, module: Arc<Module>) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        let event = Event::Swap {
            module: module.clone(),
            done,
        };
        self.send(event)
            .await
            .map_err(|()| "the instance has stopped".to_owned())?;
        let result = answer
            .await
            .unwrap_or_else(|_| Err("the instance has stopped".to_owned()));
        if result.is_ok() {
            self.module.store(module);
        }
        result
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
    /// Set once the module is removed; events are ignored from then on.
    retired: bool,
}

async fn instantiate(
    runtime: &Runtime,
    module: &Module,
) -> wasmtime::Result<(Store<HostState>, Controller)> {
    let mut store = runtime.new_store(module.name.clone(), runtime.detached_owned());
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
    owned: HostOwned,
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
                store.data_mut().owned = owned;
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

async fn run(
    runtime: Arc<Runtime>,
    module: Arc<Module>,
    owned: HostOwned,
    // Held for the instance's life: its place in the pool.
    _slot: Option<InstanceSlot>,
    mut rx: mpsc::Receiver<Event>,
) {
    let (store, controller) = instantiate_with_backoff(&runtime, &module, owned, 0).await;
    let mut actor = Actor {
        runtime,
        module,
        store,
        controller,
        records: HashMap::new(),
        consecutive_failures: 0,
        retired: false,
    };
    if actor.module.instance == InstanceMode::Shared {
        info!(route = %actor.module.name, file = %actor.module.file.display(), "controller instance started");
    } else {
        // Keyed and per-connection instances come and go by the thousand.
        debug!(route = %actor.module.name, "controller instance started");
    }
    while let Some(event) = rx.recv().await {
        actor.handle(event).await;
    }
    debug!(route = %actor.module.name, "controller instance stopped");
}

impl Actor {
    async fn handle(&mut self, event: Event) {
        if self.retired {
            if let Event::Open { handle, .. } = event {
                handle.force_close(CloseCode::Away, "controller removed");
            }
            return;
        }
        let (id, result) = match event {
            Event::Swap { module, done } => {
                let _ = done.send(self.swap(module).await);
                return;
            }
            Event::Retire => {
                self.retire().await;
                return;
            }
            Event::Open { info, handle } => {
                let id = info.id;
                let owned = &mut self.store.data_mut().owned;
                owned.route.register(id, handle.clone());
                owned.conns.insert(id, handle);
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
                if let Some(handle) = self.store.data().owned.conns.get(&id) {
                    let _ = handle.close(code, &message);
                }
                (id, result)
            }
            Event::Close {
                id,
                code,
                reason,
                done,
            } => {
                // Dropping `done` at the end of this arm signals the waiter.
                let _done = done;
                self.store.data_mut().owned.conns.remove(&id);
                let Some(record) = self.records.remove(&id) else {
                    self.store.data().owned.route.forget(id);
                    return;
                };
                let info = CloseInfo { code, reason };
                self.runtime.arm_budget(&mut self.store);
                let result = self
                    .controller
                    .call_on_close(&mut self.store, &record, &info)
                    .await;
                // After on-close, which may still read the attachment.
                self.store.data().owned.route.forget(id);
                (id, result)
            }
        };
        match result {
            Ok(()) => {
                if self.consecutive_failures > 1 {
                    info!(route = %self.module.name, failures = self.consecutive_failures,
                        "route recovered: an event succeeded after repeated failures");
                }
                self.consecutive_failures = 0;
            }
            Err(err) => self.recover(id, err).await,
        }
    }

    /// Queues a message returned by an event handler for its connection.
    fn reply(&mut self, id: u64, reply: Option<Message>) {
        let Some(msg) = reply else { return };
        let state = self.store.data();
        let Some(handle) = state.owned.conns.get(&id) else {
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
            .unwrap_or_else(|| err.root_cause().to_string());
        error!(route = %self.module.name, conn = id, trap = %trap, error = %format!("{err:?}"),
            "controller failed; replacing its instance");
        if let Some(handle) = self.store.data().owned.conns.get(&id) {
            handle.force_close(CloseCode::Error, "controller error");
        }
        let owned = self.take_owned();
        let (store, controller) = instantiate_with_backoff(
            &self.runtime,
            &self.module,
            owned,
            self.consecutive_failures,
        )
        .await;
        self.store = store;
        self.controller = controller;
    }

    /// Moves the host-owned state out of the current store.
    fn take_owned(&mut self) -> HostOwned {
        self.store.data_mut().owned.take()
    }

    /// Continues with an instance of `module`; on failure the current one
    /// keeps serving.
    async fn swap(&mut self, module: Arc<Module>) -> Result<(), String> {
        let (mut store, controller) = instantiate(&self.runtime, &module)
            .await
            .map_err(|err| format!("instantiation failed: {err:#}"))?;
        store.data_mut().owned = self.take_owned();
        self.store = store;
        self.controller = controller;
        self.module = module;
        self.consecutive_failures = 0;
        Ok(())
    }

    /// Calls `on-close` for every connection, then closes each with 1001.
    async fn retire(&mut self) {
        self.retired = true;
        let ids: Vec<u64> = self.store.data().owned.conns.keys().copied().collect();
        for id in ids {
            let Some(handle) = self.store.data_mut().owned.conns.remove(&id) else {
                continue;
            };
            if let Some(record) = self.records.remove(&id) {
                let info = CloseInfo {
                    code: 1001,
                    reason: "controller removed".to_owned(),
                };
                self.runtime.arm_budget(&mut self.store);
                let result = self
                    .controller
                    .call_on_close(&mut self.store, &record, &info)
                    .await;
                if let Err(err) = result {
                    // Keep going: every other connection still gets its on-close.
                    self.recover(id, err).await;
                }
            }
            self.store.data().owned.route.forget(id);
            let _ = handle.close(1001, "controller removed");
        }
        info!(route = %self.module.name, "controller retired");
    }
}
