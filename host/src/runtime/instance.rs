//! Controller instances and how events reach them.
//!
//! A [`ControllerInstance`] is one controller instance: its wasmtime `Store`
//! behind an async lock, and a queue of events waiting for it. A
//! connection's task [`submit`](ControllerInstance::submit)s each event: when
//! no one runs events on the instance, the task runs the event in the guest
//! itself, so an event costs no hop between tasks (the task that read the
//! message runs `on-message` and then writes the reply). When the instance
//! is busy, the event joins the queue, and a drainer task runs queued
//! events back to back until none is left, as an actor would under load.
//! Either way the events of one connection run in the order they arrived.
//! A trap, panic or exhausted budget in an event replaces the instance with
//! a fresh one from the same module; the connection table moves across, the
//! connection whose event failed is closed with 1011, and every other
//! connection stays open.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{debug, error, info, warn};
use wasmtime::Store;

use crate::config::InstanceMode;
use crate::metrics::{EventKind, TrapKind};
use crate::runtime::bindings::{CloseInfo, Connection, Controller, ErrorInfo, Message, OnMessage};
use crate::runtime::host_api::{HostOwned, HostState};
use crate::runtime::module::Module;
use crate::runtime::{InstanceSlot, Runtime};
use crate::wire::outbound::ConnHandle;
use crate::wire::{Event, EventSink};

impl EventSink for Arc<ControllerInstance> {
    fn submit<'a>(
        &'a self,
        event: Event,
        conn: &'a Arc<ConnHandle>,
    ) -> Option<impl Future<Output = ()> + Send + 'a> {
        ControllerInstance::submit(self, event, conn)
    }
}

/// One controller instance. Its store is created on first use (or at once,
/// with [`ControllerInstance::start`]) and lives until every handle of it is
/// gone.
pub struct ControllerInstance {
    actor: tokio::sync::Mutex<InstanceState>,
    /// Events waiting while the instance is busy. A std mutex: held only
    /// to push or pop, never across an await.
    waiting: Mutex<Waiting>,
    /// The version now serving; replaced by a successful swap.
    module: ArcSwap<Module>,
    /// Counts this instance among the route's live instances while it exists.
    _counted: Counted,
}

/// One in a gauge for as long as it lives.
struct Counted(prometheus_client::metrics::gauge::Gauge);

impl Counted {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Counted {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Default)]
struct Waiting {
    events: VecDeque<(Event, Ticket)>,
    /// Someone runs events on the instance: a connection's task running
    /// its own event (which hands what was queued meanwhile to a drainer
    /// when it ends) or a drainer task (which runs until `events` is
    /// empty). Events are queued only while this is set.
    busy: bool,
}

/// Counts a queued event on its connection's
/// [`ConnHandle::events_waiting`] until it is dropped: after the event ran,
/// or when it never will (a drainer that panics or is cancelled), so a
/// connection never waits for an event that is gone.
struct Ticket(Arc<ConnHandle>);

impl Ticket {
    fn new(conn: &Arc<ConnHandle>) -> Ticket {
        conn.event_queued();
        Ticket(conn.clone())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.event_done();
    }
}

/// A task running events on the instance while it is `busy`. Dropped
/// while armed (at the end of a connection's own event, or when a task is
/// cancelled or panics mid-event), it hands the instance on: free again,
/// or its queue to a new drainer.
struct Turn<'a> {
    handle: &'a Arc<ControllerInstance>,
    armed: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.handle.end_turn();
        }
    }
}

/// Queue capacity an instance keeps once its queue is empty.
const KEEP_WAITING_CAPACITY: usize = 64;

/// Queued events a drainer runs before it lets a swap or a retirement
/// (waiting for the lock) have the instance.
const DRAIN_BATCH: usize = 64;

impl ControllerInstance {
    /// An instance of `module`, created when the first event needs it.
    pub fn new(
        runtime: Arc<Runtime>,
        module: Arc<Module>,
        owned: HostOwned,
        slot: Option<InstanceSlot>,
    ) -> Arc<Self> {
        let counted = Counted::new(owned.route.metrics.instances.clone());
        let actor = InstanceState {
            runtime,
            module: module.clone(),
            live: None,
            owned: Some(owned),
            consecutive_failures: 0,
            retired: false,
            _slot: slot,
        };
        Arc::new(ControllerInstance {
            actor: tokio::sync::Mutex::new(actor),
            waiting: Mutex::new(Waiting::default()),
            module: ArcSwap::new(module),
            _counted: counted,
        })
    }

    /// Creates the instance now, in the background, instead of at the first
    /// event.
    pub fn start(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            this.actor.lock().await.live().await;
        });
    }

    /// The module version this instance runs.
    pub fn module(&self) -> Arc<Module> {
        self.module.load_full()
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().expect("controller queue lock")
    }

    /// Hands `event` of connection `conn` to the instance. When no one else
    /// runs events on it, the event runs in the caller's task: the returned
    /// turn runs it when awaited (boxed, being large, so that the task of an
    /// idle connection does not carry its size). Otherwise the event is
    /// queued, and `conn`'s [`ConnHandle::events_waiting`] counts it until
    /// it has run. Never waits for another connection's event.
    pub fn submit<'a>(
        self: &'a Arc<Self>,
        event: Event,
        conn: &'a Arc<ConnHandle>,
    ) -> Option<Pin<Box<impl Future<Output = ()> + Send + 'a>>> {
        {
            let mut waiting = self.waiting();
            if waiting.busy {
                waiting.events.push_back((event, Ticket::new(conn)));
                return None;
            }
            waiting.busy = true;
        }
        // Whatever happens to the turn from here (run, dropped, cancelled,
        // a panic), the instance is handed on when it ends.
        let turn = Turn {
            handle: self,
            armed: true,
        };
        Some(Box::pin(async move {
            let _turn = turn;
            // Only a swap, a retirement, the start of the instance or a
            // drainer that is just returning can hold the lock now.
            let mut actor = match self.actor.try_lock() {
                Ok(actor) => actor,
                Err(_) => self.actor.lock().await,
            };
            actor.handle(event, conn).await;
            actor.hand_over();
        }))
    }

    /// Ends a turn of running events here: the instance is free again if
    /// nothing was queued meanwhile; otherwise a drainer task runs the
    /// queue (running it here instead measured no faster, and would delay
    /// this task's own writes).
    fn end_turn(self: &Arc<Self>) {
        {
            let mut waiting = self.waiting();
            if waiting.events.is_empty() {
                waiting.busy = false;
                return;
            }
        }
        // No runtime only while the process is tearing down: nothing is
        // left to run then.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.clone().drain());
        }
    }

    /// The next queued event; `None` (and the instance no longer busy)
    /// when none is left.
    fn next_waiting(&self) -> Option<(Event, Ticket)> {
        let mut waiting = self.waiting();
        let next = waiting.events.pop_front();
        waiting.busy = next.is_some();
        if next.is_none() && waiting.events.capacity() > KEEP_WAITING_CAPACITY {
            // Give back what a burst took.
            waiting.events = VecDeque::new();
        }
        next
    }

    /// Runs queued events until none is left.
    async fn drain(self: Arc<Self>) {
        let mut turn = Turn {
            handle: &self,
            armed: true,
        };
        loop {
            let mut actor = turn.handle.actor.lock().await;
            for _ in 0..DRAIN_BATCH {
                let Some((event, ticket)) = turn.handle.next_waiting() else {
                    // The run is over (the instance is free: `next_waiting`
                    // said so, and the lock is still held).
                    actor.hand_over();
                    turn.armed = false;
                    return;
                };
                actor.handle(event, &ticket.0).await;
            }
            actor.hand_over();
            drop(actor);
            tokio::task::yield_now().await;
        }
    }

    /// Replaces the running version with `module` between two events.
    pub async fn swap(&self, module: Arc<Module>) -> Result<(), String> {
        self.actor.lock().await.swap(module.clone()).await?;
        self.module.store(module);
        Ok(())
    }

    /// The module was removed: every connection gets `on-close`, then a
    /// 1001 close frame. Later events are ignored.
    pub async fn retire(&self) {
        self.actor.lock().await.retire().await;
    }
}

/// A store with its instance.
struct Instantiated {
    store: Store<HostState>,
    controller: Controller,
    /// `on-message`, called with the frame as read (no copy of it first).
    on_message: OnMessage,
}

/// One instance and the host-owned state that outlives it.
struct InstanceState {
    runtime: Arc<Runtime>,
    module: Arc<Module>,
    /// `None` until the first event (or [`ControllerInstance::start`]).
    live: Option<Instantiated>,
    /// The host-owned state until the first store takes it.
    owned: Option<HostOwned>,
    /// Traps since the last event that succeeded, for backoff.
    consecutive_failures: u32,
    /// Set once the module is removed; events are ignored from then on.
    retired: bool,
    /// Held for the instance's life: its place in the pool.
    _slot: Option<InstanceSlot>,
}

async fn instantiate(runtime: &Runtime, module: &Module) -> wasmtime::Result<Instantiated> {
    let mut store = runtime.new_store(module.name.clone(), runtime.detached_owned());
    runtime.arm_budget(&mut store);
    let controller = module.pre.instantiate_async(&mut store).await?;
    // What instantiating grew does not count: only an event's growth
    // recycles the instance.
    store.data_mut().memory.past_mark = false;
    let on_message = OnMessage::new(&controller, &store)?;
    Ok(Instantiated {
        store,
        controller,
        on_message,
    })
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
) -> Instantiated {
    let mut attempt = failures;
    loop {
        if attempt > 1 {
            let delay = Duration::from_millis(25u64 << attempt.min(8)).min(Duration::from_secs(5));
            warn!(route = %module.name, failures = attempt, delay_ms = delay.as_millis() as u64,
                "route degraded: instance keeps failing, backing off");
            tokio::time::sleep(delay).await;
        }
        match instantiate(runtime, module).await {
            Ok(mut live) => {
                live.store.data_mut().owned = owned;
                return live;
            }
            Err(err) => {
                error!(route = %module.name, file = %module.file.display(), error = %format!("{err:#}"),
                    "cannot instantiate controller");
                attempt += 1;
            }
        }
    }
}

impl InstanceState {
    /// The instance, created first if needed.
    async fn live(&mut self) -> &mut Instantiated {
        if self.live.is_none() {
            let owned = self
                .owned
                .take()
                .unwrap_or_else(|| self.runtime.detached_owned());
            // Boxed (as `recover` is in `handle`): instantiating is rare,
            // and its future is large; inline, every event's future would
            // carry its size.
            let live = Box::pin(instantiate_with_backoff(
                &self.runtime,
                &self.module,
                owned,
                0,
            ))
            .await;
            if self.module.instance == InstanceMode::Shared {
                info!(route = %self.module.name, file = %self.module.file.display(), "controller instance started");
            } else {
                // Keyed and per-connection instances come and go by the thousand.
                debug!(route = %self.module.name, "controller instance started");
            }
            self.live = Some(live);
        }
        self.live.as_mut().expect("instance created above")
    }

    /// Runs `event` of connection `conn`.
    async fn handle(&mut self, event: Event, conn: &ConnHandle) {
        if self.retired {
            if let Event::Open { handle, .. } = event {
                handle.force_close(CloseCode::Away, "controller removed");
            }
            return;
        }
        self.live().await;
        let runtime = &self.runtime;
        let Instantiated {
            store,
            controller,
            on_message,
        } = self.live.as_mut().expect("instance created above");
        // Its task may be the one running this event, and passes what the
        // event broadcasts to the others only afterwards: that does not
        // count in its lag meanwhile.
        let running = match &event {
            Event::Open { info, .. } => info.id,
            Event::Message { id, .. } | Event::Error { id, .. } | Event::Close { id, .. } => *id,
        };
        store.data_mut().owned.fanout.event_starts(running);
        let (id, result) = match event {
            Event::Open { info, handle } => {
                let id = info.id;
                let record = Connection::from(&*info);
                // Broadcasts made before this connection was there are
                // not for it: it reads the feed from here on.
                let owned = &mut store.data_mut().owned;
                owned.route.register(id, handle.clone(), &owned.scope);
                owned.fanout.join(&handle);
                owned.conns.insert(id, handle);
                owned.infos.insert(id, info);
                runtime.arm_budget(store);
                let started = Instant::now();
                let result = controller.call_on_open(&mut *store, &record).await;
                timed(store, EventKind::open, started);
                store.data().owned.route.announce(id);
                (id, result.map(|reply| self.reply(conn, reply)))
            }
            Event::Message { id, msg } => {
                if !store.data().owned.infos.contains_key(&id) {
                    return;
                }
                runtime.arm_budget(store);
                let started = Instant::now();
                let Some(result) = on_message.call(&mut *store, id, &msg).await else {
                    return;
                };
                timed(store, EventKind::message, started);
                (id, result.map(|reply| self.reply(conn, reply)))
            }
            Event::Error { id, code, message } => {
                let owned = &store.data().owned;
                if !owned.infos.contains_key(&id) {
                    // No on-open here: still close with the code.
                    if let Some(handle) = owned.conns.get(&id) {
                        let _ = handle.close(code, &message);
                    }
                    return;
                }
                let err = ErrorInfo {
                    code,
                    message: message.clone(),
                };
                runtime.arm_budget(store);
                let started = Instant::now();
                let result = controller.call_on_error(&mut *store, id, &err).await;
                timed(store, EventKind::error, started);
                let result = result.map(|reply| self.reply(conn, reply));
                // After what was broadcast before: the close notes the feed's
                // end when it is queued.
                if let Some(handle) = self.store().data().owned.conns.get(&id) {
                    let _ = handle.close(code, &message);
                }
                (id, result)
            }
            Event::Close { id, code, reason } => {
                // The connection still gets what was broadcast before it
                // left: woken now if it waits for a broadcast, as it will
                // not be at the end of the run.
                store.data_mut().hand_over();
                let owned = &mut store.data_mut().owned;
                if let Some(handle) = owned.conns.remove(&id) {
                    handle.part();
                }
                if !owned.infos.contains_key(&id) {
                    owned.forget(id);
                    return;
                }
                let info = CloseInfo { code, reason };
                runtime.arm_budget(store);
                let started = Instant::now();
                let result = controller.call_on_close(&mut *store, id, &info).await;
                timed(store, EventKind::close, started);
                // After on-close, which may still read the record and the
                // attachment; a failed on-close replaces the instance below,
                // and the connection is gone for the new one as well.
                store.data_mut().owned.forget(id);
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
                if self.store().data().memory.past_mark {
                    Box::pin(self.recycle(id)).await;
                }
            }
            Err(err) => Box::pin(self.recover(id, err)).await,
        }
    }

    /// Replaces an instance whose memory grew past the recycling mark in
    /// the event of connection `id` (which succeeded) with a fresh one,
    /// keeping the connection table: no connection is closed. If the new
    /// instance cannot be had, the old one goes on.
    async fn recycle(&mut self, id: u64) {
        self.store().data_mut().memory.past_mark = false;
        let memory = self.store().data().memory.high_water();
        match instantiate(&self.runtime, &self.module).await {
            Ok(mut live) => {
                live.store.data_mut().owned = self.take_owned();
                live.store.data().owned.route.metrics.recycled.inc();
                self.live = Some(live);
                info!(route = %self.module.name, conn = id, memory_bytes = memory,
                    "instance recycled: an event grew its memory past \
                     sandbox.recycle_memory_percent of the cap; a fresh instance serves on");
            }
            Err(err) => {
                warn!(route = %self.module.name, error = %format!("{err:#}"),
                    "cannot recycle the instance (its memory passed the recycling mark); it serves on");
            }
        }
    }

    /// Wakes the recipients of the run's broadcasts that wait for one (see
    /// [`crate::runtime::fanout`]).
    fn hand_over(&mut self) {
        if let Some(live) = self.live.as_mut() {
            live.store.data_mut().hand_over();
        }
    }

    /// The live store; only called once the instance exists.
    fn store(&mut self) -> &mut Store<HostState> {
        &mut self.live.as_mut().expect("instance is live").store
    }

    /// Queues a message returned by an event handler for its connection,
    /// the one whose event it was (the connection's own handle: no lookup
    /// in the table, where it is for every event but its close).
    fn reply(&mut self, conn: &ConnHandle, reply: Option<Message>) {
        let Some(msg) = reply else { return };
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let route = &self.module.name;
        let id = conn.id();
        let bytes = msg.len();
        let Ok(frame) = live.store.data().sizes.frame(msg) else {
            warn!(route = %route, conn = id, bytes,
                "reply dropped: larger than limits.max_message_bytes");
            return;
        };
        if let Err(err) = conn.push(frame) {
            debug!(route = %route, conn = id, ?err, "reply not queued");
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
        self.store()
            .data()
            .owned
            .route
            .metrics
            .trapped(trap_kind(&err), &trap);
        error!(route = %self.module.name, conn = id, trap = %trap, error = %format!("{err:?}"),
            "controller failed; replacing its instance");
        if let Some(handle) = self.store().data().owned.conns.get(&id) {
            handle.force_close(CloseCode::Error, "controller error");
        }
        let owned = self.take_owned();
        let live = instantiate_with_backoff(
            &self.runtime,
            &self.module,
            owned,
            self.consecutive_failures,
        )
        .await;
        self.live = Some(live);
    }

    /// Moves the host-owned state out of the current store, waking the
    /// recipients of the broadcasts made in it first.
    fn take_owned(&mut self) -> HostOwned {
        match self.live.as_mut() {
            Some(live) => {
                let state = live.store.data_mut();
                state.hand_over();
                state.owned.take()
            }
            None => self
                .owned
                .take()
                .unwrap_or_else(|| self.runtime.detached_owned()),
        }
    }

    /// Continues with an instance of `module`; on failure the current one
    /// keeps serving.
    async fn swap(&mut self, module: Arc<Module>) -> Result<(), String> {
        let mut live = instantiate(&self.runtime, &module)
            .await
            .map_err(|err| format!("instantiation failed: {err:#}"))?;
        live.store.data_mut().owned = self.take_owned();
        self.live = Some(live);
        self.module = module;
        self.consecutive_failures = 0;
        Ok(())
    }

    /// Calls `on-close` for every connection, then closes each with 1001.
    async fn retire(&mut self) {
        self.retired = true;
        let Some(live) = self.live.as_ref() else {
            // Never started: no connection has seen `on-open`.
            info!(route = %self.module.name, "controller retired");
            return;
        };
        let ids: Vec<u64> = live.store.data().owned.conns.keys().copied().collect();
        for id in ids {
            // The last on-close's broadcasts reach the connections still here.
            self.store().data_mut().hand_over();
            let Some(handle) = self.store().data_mut().owned.conns.remove(&id) else {
                continue;
            };
            handle.part();
            if self.store().data().owned.infos.contains_key(&id) {
                let info = CloseInfo {
                    code: 1001,
                    reason: "controller removed".to_owned(),
                };
                let Instantiated {
                    store, controller, ..
                } = self.live.as_mut().expect("instance is live");
                self.runtime.arm_budget(store);
                let result = controller.call_on_close(&mut *store, id, &info).await;
                if let Err(err) = result {
                    // Keep going: every other connection still gets its on-close.
                    self.recover(id, err).await;
                }
            }
            self.store().data_mut().owned.forget(id);
            let _ = handle.close(1001, "controller removed");
        }
        info!(route = %self.module.name, "controller retired");
    }
}

/// Counts an event of `kind` that started at `started` in the route's
/// durations (a few relaxed atomic adds; no lookup).
fn timed(store: &Store<HostState>, kind: EventKind, started: Instant) {
    store
        .data()
        .owned
        .route
        .metrics
        .event(kind)
        .observe(started.elapsed());
}

/// What made a guest call fail, for the metrics.
fn trap_kind(err: &wasmtime::Error) -> TrapKind {
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => TrapKind::budget,
        // A Rust guest's panic aborts, which is `unreachable`.
        Some(wasmtime::Trap::UnreachableCodeReached) => TrapKind::panic,
        // With `trap_on_grow_failure`, a growth past the memory cap fails
        // with wasmtime's "forcing trap when growing memory" error.
        _ if format!("{err:#}").contains("growing memory") => TrapKind::memory,
        _ => TrapKind::other,
    }
}
