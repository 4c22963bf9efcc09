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
use std::sync::atomic::{AtomicUsize, Ordering};
use wasmtime::component::{Component, HasSelf, Linker};

use tracing::warn;
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    StoreLimits, StoreLimitsBuilder, UpdateDeadline,
};

use crate::cluster::{Cluster, Scope};
use crate::config::Config;
use crate::metrics::{Metrics, RouteMetrics};
use crate::runtime::bindings::Controller;
use crate::runtime::cache::{Compiled, ModuleCache};
use crate::runtime::host_api::{GuestSizes, HostOwned, HostState};
use crate::runtime::kv::{KvStore, SharedKv};
use crate::runtime::shared::{LocalRoutes, RouteShared};

/// Time between two epoch ticks: the granularity of the CPU budget.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Turns a wasmtime error into an `anyhow` one with `what` in front.
fn context(what: &'static str) -> impl FnOnce(wasmtime::Error) -> anyhow::Error {
    move |err| anyhow::anyhow!("{what}: {err:#}")
}

/// Compiles, links and instantiates controller components.
pub struct Runtime {
    config: Arc<Config>,
    engine: Engine,
    /// Controller instances alive now (each with one store, two
    /// for a moment during a swap), reserved before they are created.
    live_instances: Arc<AtomicUsize>,
    /// The most instances that may be alive at once, if bounded by a pool.
    max_instances: Option<usize>,
    linker: Linker<HostState>,
    /// Epoch ticks one event may use.
    budget_ticks: u64,
    max_memory_bytes: usize,
    /// Memory past which an instance is recycled after its event.
    recycle_at: usize,
    sizes: GuestSizes,
    /// The server's metric families; each route takes its handles from it.
    metrics: Arc<Metrics>,
    /// Compiled modules on disk (`module_cache`), when on.
    cache: Option<ModuleCache>,
    /// The cluster this node is part of (`[cluster]`), for a server.
    cluster: Option<Arc<Cluster>>,
    /// This node's routes by name, for what other nodes send them.
    local: Arc<LocalRoutes>,
}

impl Runtime {
    /// An engine and linker for `config`, and a thread ticking the epoch
    /// until the engine is dropped. Never joins a cluster: for loading and
    /// checking modules.
    pub fn new(config: Arc<Config>) -> anyhow::Result<Arc<Runtime>> {
        Self::build(config, false)
    }

    /// Like [`Runtime::new`], and joins the cluster when `[cluster]` is
    /// set: for a server. Must run within a tokio runtime.
    pub fn serving(config: Arc<Config>) -> anyhow::Result<Arc<Runtime>> {
        Self::build(config, true)
    }

    fn build(config: Arc<Config>, join: bool) -> anyhow::Result<Arc<Runtime>> {
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true).epoch_interruption(true);
        let mut max_instances = None;
        let engine = if config.sandbox.pooling {
            let slots = config.sandbox.pool_instances;
            let mut pooled = wasm.clone();
            pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(&config)));
            match Engine::new(&pooled) {
                Ok(engine) => {
                    max_instances = Some(slots as usize);
                    engine
                }
                Err(err) => {
                    warn!(error = %format!("{err:#}"), "the pooling allocator is unavailable; instances are allocated on demand");
                    Engine::new(&wasm).map_err(context("creating the wasmtime engine"))?
                }
            }
        } else {
            Engine::new(&wasm).map_err(context("creating the wasmtime engine"))?
        };

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
        let mut metrics = Metrics::new();
        let local = Arc::new(LocalRoutes::default());
        let cluster = match (&config.cluster, join) {
            (Some(cluster), true) => Some(
                Cluster::start(cluster, local.clone(), metrics.register_cluster())
                    .context("`cluster.redis_url`")?,
            ),
            _ => None,
        };
        Ok(Arc::new(Runtime {
            config: config.clone(),
            live_instances: Arc::new(AtomicUsize::new(0)),
            max_instances,
            linker,
            budget_ticks: config.sandbox.event_budget_ms.div_ceil(tick_ms).max(1),
            max_memory_bytes: config.sandbox.max_memory_bytes,
            recycle_at: match config.sandbox.recycle_memory_percent {
                0 => usize::MAX,
                percent => config.sandbox.max_memory_bytes / 100 * usize::from(percent),
            },
            sizes: GuestSizes::of(&config),
            metrics: Arc::new(metrics),
            cache: config
                .module_cache()
                .map(|root| ModuleCache::new(root, &engine)),
            engine,
            cluster,
            local,
        }))
    }

    /// The configuration the server started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Reserves room for one more instance, or `None` when the pool is
    /// full ([`crate::config::RESERVED_INSTANCES`] slots stay free for
    /// loading modules and swapping versions). Taken before the instance is created, so a burst of new
    /// keys cannot overfill the pool.
    pub fn reserve_instance(&self) -> Option<InstanceSlot> {
        let reserved = crate::config::RESERVED_INSTANCES as usize;
        let live = &self.live_instances;
        match self.max_instances {
            None => {
                live.fetch_add(1, Ordering::AcqRel);
            }
            Some(max) => {
                live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n + reserved < max).then_some(n + 1)
                })
                .ok()?;
            }
        }
        Some(InstanceSlot(live.clone()))
    }

    /// Compiles the component `bytes` make, or reads it from the
    /// compiled-module cache. Blocking.
    pub fn compile(&self, bytes: &[u8]) -> wasmtime::Result<(Component, Compiled)> {
        match &self.cache {
            Some(cache) => cache.component(&self.engine, bytes),
            None => Ok((Component::new(&self.engine, bytes)?, Compiled::Fresh)),
        }
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Instances alive now, and the most the pool holds (`None`: unbounded).
    pub fn instances_in_use(&self) -> (usize, Option<usize>) {
        (
            self.live_instances.load(Ordering::Acquire),
            self.max_instances,
        )
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker holding every import a controller may use.
    pub fn linker(&self) -> &Linker<HostState> {
        &self.linker
    }

    /// An empty key-value store with the configured caps.
    pub fn new_kv(&self) -> SharedKv {
        Arc::new(std::sync::Mutex::new(KvStore::new(
            self.sizes.state_value_bytes,
            self.sizes.state_total_bytes,
        )))
    }

    /// Host-owned state for a store that serves no route (loading a module).
    pub fn detached_owned(&self) -> HostOwned {
        let shared = RouteShared::new("", RouteMetrics::detached(), None, &self.local);
        HostOwned::new(self.new_kv(), shared, Scope::Own)
    }

    /// State shared by the instances of route `name`, reachable from the
    /// other nodes of the cluster, if any.
    pub fn route_shared(&self, name: &str, metrics: Arc<RouteMetrics>) -> Arc<RouteShared> {
        RouteShared::new(name, metrics, self.cluster.clone(), &self.local)
    }

    /// The cluster this server is part of, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// A store for one instance of the controller `route`, owning `owned`,
    /// with the memory cap and CPU budget applied.
    pub fn new_store(&self, route: Arc<str>, owned: HostOwned) -> Store<HostState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.max_memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        let memory = MemoryCap {
            limits,
            recycle_at: self.recycle_at,
            past_mark: false,
            high_water: 0,
        };
        let state = HostState::new(route, owned, self.sizes, memory);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
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

/// An instance's memory cap (`sandbox.max_memory_bytes`, wasmtime's
/// `StoreLimits`), which also notes when the memory grew past the
/// recycling mark (`sandbox.recycle_memory_percent`).
pub struct MemoryCap {
    limits: StoreLimits,
    recycle_at: usize,
    /// A memory grew past the mark; the instance is replaced after the
    /// event that grew it.
    pub past_mark: bool,
    /// The largest size a memory of the instance grew to.
    high_water: usize,
}

impl MemoryCap {
    /// The largest size, in bytes, a memory of the instance grew to.
    pub fn high_water(&self) -> usize {
        self.high_water
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.past_mark |= desired > self.recycle_at;
            self.high_water = self.high_water.max(desired);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Pool sizes for `sandbox.pool_instances` controller instances. A
/// controller component holds a handful of core instances (the program,
/// adapters and shims), one or two memories and a few tables.
fn pool(config: &Config) -> PoolingAllocationConfig {
    let slots = config.sandbox.pool_instances;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(8))
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(4))
        .total_stacks(slots)
        .max_core_instances_per_component(32)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .max_memory_size(config.sandbox.max_memory_bytes)
        // Keep freed slots warm so the next instance reuses their pages.
        .linear_memory_keep_resident(64 << 10)
        .table_keep_resident(16 << 10);
    pool
}

/// One reserved instance place, given back when dropped.
pub struct InstanceSlot(Arc<AtomicUsize>);

impl Drop for InstanceSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
