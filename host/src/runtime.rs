//! The wasmtime side shared by every controller: the engine, the linker with
//! WASI and the `host` interface, the epoch clock behind the CPU budget, and
//! stores set up with the sandbox limits.
//!
//! Guest code runs on the async runtime's threads. Each event gets a budget
//! of epoch ticks; at every tick a running guest yields to other tasks, and
//! when the budget is spent the call traps. So a guest stuck in a loop costs
//! its own route one event, not a worker thread.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store, StoreLimitsBuilder, UpdateDeadline};

use crate::bindings::Controller;
use crate::config::Config;
use crate::host_api::{HostOwned, HostState};
use crate::state::KvStore;

/// Time between two epoch ticks: the granularity of the CPU budget.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Turns a wasmtime error into an `anyhow` one with `what` in front.
fn context(what: &'static str) -> impl FnOnce(wasmtime::Error) -> anyhow::Error {
    move |err| anyhow::anyhow!("{what}: {err:#}")
}

/// Compiles, links and instantiates controller components.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    /// Epoch ticks one event may use.
    budget_ticks: u64,
    max_memory_bytes: usize,
    max_message_bytes: usize,
    state_value_bytes: usize,
    state_total_bytes: usize,
}

impl Runtime {
    /// An engine and linker for `config`, and a thread ticking the epoch
    /// until the engine is dropped.
    pub fn new(config: &Config) -> anyhow::Result<Arc<Runtime>> {
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true).epoch_interruption(true);
        let engine = Engine::new(&wasm).map_err(context("creating the wasmtime engine"))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(context("linking WASI"))?;
        Controller::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(context("linking the switchyard host interface"))?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("switchyard-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .context("starting the epoch thread")?;

        let tick_ms = EPOCH_TICK.as_millis() as u64;
        Ok(Arc::new(Runtime {
            engine,
            linker,
            budget_ticks: config.sandbox.event_budget_ms.div_ceil(tick_ms).max(1),
            max_memory_bytes: config.sandbox.max_memory_bytes,
            max_message_bytes: config.limits.max_message_bytes,
            state_value_bytes: config.sandbox.state_value_bytes,
            state_total_bytes: config.sandbox.state_total_bytes,
        }))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker holding every import a controller may use.
    pub fn linker(&self) -> &Linker<HostState> {
        &self.linker
    }

    /// Empty host-owned state for a new controller.
    pub fn new_owned(&self) -> HostOwned {
        HostOwned {
            conns: Default::default(),
            kv: KvStore::new(self.state_value_bytes, self.state_total_bytes),
        }
    }

    /// A store for one instance of the controller `route`, owning `owned`,
    /// with the memory cap and CPU budget applied.
    pub fn new_store(&self, route: Arc<str>, owned: HostOwned) -> Store<HostState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.max_memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState::new(route, owned, self.max_message_bytes, limits);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            state.ticks_left = state.ticks_left.saturating_sub(1);
            if state.ticks_left == 0 {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    /// Gives the next guest call a full CPU budget.
    pub fn arm_budget(&self, store: &mut Store<HostState>) {
        store.data_mut().ticks_left = self.budget_ticks;
        store.set_epoch_deadline(1);
    }
}
