//! What the server counts, for Prometheus.
//!
//! One [`Metrics`] per server holds the metric families, registered once
//! in a `prometheus-client` registry that the admin listener encodes at
//! `/metrics`. The message path never looks a metric up: each route gets a
//! [`RouteMetrics`] when it is first served (kept across hot reloads), whose
//! per-message counters ([`Count`], [`Durations`]) a connection or an
//! instance bumps directly, each thread in a slot of its own. What happens
//! once per connection or less (upgrades, closes, traps, reloads) goes
//! through the families' own counters.
//! Labels are route names, HTTP statuses, close codes and fixed kinds, never
//! room keys, connection ids or user ids, so the number of series stays
//! bounded by the number of routes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::journal::{Journal, Trap, now_ms};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

/// The route label alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

/// An upgrade's answer: 101 when accepted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpgradeLabels {
    /// Empty when the request matched no route.
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    route: String,
    /// A registered code as a number; an application's code (3000–4999)
    /// as `3xxx` or `4xxx`, so clients cannot make new series.
    code: String,
}

/// The controller's event handlers.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values as Prometheus shows them")]
pub enum EventKind {
    /// `on-open`.
    open,
    /// `on-message`.
    message,
    /// `on-error`.
    error,
    /// `on-close`.
    close,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    route: String,
    event: EventKind,
}

/// Why a guest call failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values as Prometheus shows them")]
pub enum TrapKind {
    /// The guest panicked (a Rust panic aborts: `unreachable`).
    panic,
    /// The event ran out of its CPU budget (`sandbox.event_budget_ms`).
    budget,
    /// The guest asked for more memory than `sandbox.max_memory_bytes`.
    memory,
    /// Any other trap or host error.
    other,
}

impl TrapKind {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            TrapKind::panic => "panic",
            TrapKind::budget => "budget",
            TrapKind::memory => "memory",
            TrapKind::other => "other",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrapLabels {
    route: String,
    kind: TrapKind,
}

/// How a hot-reload change ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values as Prometheus shows them")]
pub enum ReloadResult {
    /// A new module went live on a new route.
    added,
    /// A route's module was replaced under its open connections.
    swapped,
    /// A deleted module's route was retired.
    removed,
    /// The new file was refused; what was serving goes on.
    rejected,
}

impl ReloadResult {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ReloadResult::added => "added",
            ReloadResult::swapped => "swapped",
            ReloadResult::removed => "removed",
            ReloadResult::rejected => "rejected",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

/// Upper bounds of the event duration buckets, in seconds: 10 µs to 2.5 s.
const EVENT_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1, 0.5, 2.5,
];

/// The same bounds in nanoseconds, for the comparison an observation makes.
const EVENT_BUCKETS_NANOS: [u64; 12] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    5_000_000,
    25_000_000,
    100_000_000,
    500_000_000,
    2_500_000_000,
];

/// Per-thread slots a counter or histogram keeps: each thread that counts
/// gets a slot of its own (given back when it ends), so the message path
/// writes a cache line no other thread writes, with a plain load and store
/// instead of a locked add. Threads beyond these share one atomic.
const SLOTS: usize = 32;

/// The slots not held by a live thread.
static FREE_SLOTS: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
static NEXT_SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// This thread's slot, for as long as the thread lives.
struct Slot(Option<usize>);

impl Slot {
    fn take() -> Slot {
        let free = FREE_SLOTS.lock().expect("metric slots").pop();
        let slot = free.or_else(|| {
            let next = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
            (next < SLOTS).then_some(next)
        });
        Slot(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            FREE_SLOTS.lock().expect("metric slots").push(slot);
        }
    }
}

thread_local! {
    static SLOT: Slot = Slot::take();
}

/// This thread's own slot, if it has one.
fn slot() -> Option<usize> {
    SLOT.try_with(|slot| slot.0).ok().flatten()
}

/// Adds `n` to `value`, which only this thread writes: a load and a store,
/// no locked instruction.
fn add_own(value: &AtomicU64, n: u64) {
    value.store(
        value.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// A value on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded<T>(T);

/// A counter for the message path: each thread adds into its own slot,
/// and a scrape sums them. Clones count into the same counter.
#[derive(Debug, Default, Clone)]
pub struct Count(Arc<CountSlots>);

#[derive(Debug, Default)]
struct CountSlots {
    slots: [Padded<AtomicU64>; SLOTS],
    shared: AtomicU64,
}

impl Count {
    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        match slot() {
            Some(slot) => add_own(&self.0.slots[slot].0, n),
            None => {
                self.0.shared.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// The total so far.
    pub fn get(&self) -> u64 {
        self.0
            .slots
            .iter()
            .map(|slot| slot.0.load(Ordering::Relaxed))
            .fold(self.0.shared.load(Ordering::Relaxed), u64::wrapping_add)
    }
}

impl TypedMetric for Count {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Count {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder
            .encode_counter::<prometheus_client::encoding::NoLabelSet, u64, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A histogram of event durations, counted per thread as [`Count`] is:
/// `prometheus-client`'s own histogram takes a lock per observation, which
/// every event would pay. Clones count into the same histogram.
#[derive(Debug, Default, Clone)]
pub struct Durations(Arc<DurationSlots>);

#[derive(Debug, Default)]
struct DurationSlots {
    slots: [Padded<Buckets>; SLOTS],
    shared: Buckets,
}

#[derive(Debug, Default)]
struct Buckets {
    /// One count per bucket of [`EVENT_BUCKETS`], then the `+Inf` bucket
    /// (the total count is their sum, read when encoded).
    counts: [AtomicU64; EVENT_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Durations {
    /// Counts one event that took `took`.
    pub fn observe(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = EVENT_BUCKETS_NANOS
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(EVENT_BUCKETS.len());
        match slot() {
            Some(slot) => {
                let own = &self.0.slots[slot].0;
                add_own(&own.counts[bucket], 1);
                add_own(&own.sum_nanos, nanos);
            }
            None => {
                self.0.shared.counts[bucket].fetch_add(1, Ordering::Relaxed);
                self.0.shared.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
            }
        }
    }

    /// Every bucket's count and the sum in nanoseconds, over the slots.
    fn totals(&self) -> ([u64; EVENT_BUCKETS.len() + 1], u64) {
        let mut counts = [0; EVENT_BUCKETS.len() + 1];
        let mut sum = 0u64;
        for buckets in self
            .0
            .slots
            .iter()
            .map(|slot| &slot.0)
            .chain([&self.0.shared])
        {
            for (total, count) in counts.iter_mut().zip(&buckets.counts) {
                *total += count.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(buckets.sum_nanos.load(Ordering::Relaxed));
        }
        (counts, sum)
    }
}

impl TypedMetric for Durations {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Durations {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (counts, sum_nanos) = self.totals();
        let buckets: Vec<(f64, u64)> = EVENT_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts)
            .collect();
        let count = counts.iter().sum();
        let sum = sum_nanos as f64 / 1e9;
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Why a message between nodes was dropped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabel {
    /// `broker_down`, `queue_full` (to the broker) or `inbound_full`
    /// (from it).
    reason: &'static str,
}

/// The cluster's series (`switchyard_cluster_*`), registered when the
/// server is part of one.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// 1 while the broker is connected.
    pub broker_up: Gauge,
    /// Live nodes, this one included, as the last heartbeat found them.
    pub nodes: Gauge,
    /// Connections on other nodes in this node's view.
    pub remote_connections: Gauge,
    /// Messages published to other nodes.
    pub sent: Counter,
    /// Messages received from other nodes.
    pub received: Counter,
    /// Full reads of another node's presence.
    pub resyncs: Counter,
    dropped: Family<DropLabel, Counter>,
}

impl ClusterMetrics {
    /// A message to or from another node was dropped, for `reason`.
    pub fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&DropLabel { reason }).inc();
    }

    /// Unregistered handles, for code that runs outside a server.
    pub fn detached() -> ClusterMetrics {
        ClusterMetrics {
            broker_up: Gauge::default(),
            nodes: Gauge::default(),
            remote_connections: Gauge::default(),
            sent: Counter::default(),
            received: Counter::default(),
            resyncs: Counter::default(),
            dropped: Family::default(),
        }
    }
}

/// Every metric family of one server.
pub struct Metrics {
    registry: Registry,
    connections: Family<RouteLabel, Gauge>,
    upgrades: Family<UpgradeLabels, Counter>,
    closed: Family<CloseLabels, Counter>,
    messages_in: Family<RouteLabel, Count>,
    bytes_in: Family<RouteLabel, Count>,
    messages_out: Family<RouteLabel, Count>,
    bytes_out: Family<RouteLabel, Count>,
    deliveries: Family<RouteLabel, Count>,
    slow_consumers: Family<RouteLabel, Counter>,
    instances: Family<RouteLabel, Gauge>,
    recycled: Family<RouteLabel, Counter>,
    events: Family<EventLabels, Durations>,
    traps: Family<TrapLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    pool_used: Gauge,
    pool_slots: Gauge,
    /// The last reloads and traps, for the dashboard.
    journal: Journal,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Empty families, registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("switchyard");
        let connections = Family::<RouteLabel, Gauge>::default();
        let upgrades = Family::<UpgradeLabels, Counter>::default();
        let closed = Family::<CloseLabels, Counter>::default();
        let messages_in = Family::<RouteLabel, Count>::default();
        let bytes_in = Family::<RouteLabel, Count>::default();
        let messages_out = Family::<RouteLabel, Count>::default();
        let bytes_out = Family::<RouteLabel, Count>::default();
        let deliveries = Family::<RouteLabel, Count>::default();
        let slow_consumers = Family::<RouteLabel, Counter>::default();
        let instances = Family::<RouteLabel, Gauge>::default();
        let recycled = Family::<RouteLabel, Counter>::default();
        let events = Family::<EventLabels, Durations>::default();
        let traps = Family::<TrapLabels, Counter>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let pool_used = Gauge::default();
        let pool_slots = Gauge::default();
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        registry.register(
            "upgrades",
            "Upgrade requests answered, by HTTP status (101: accepted)",
            upgrades.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections ended, by the close code on-close reported (1006: no close frame)",
            closed.clone(),
        );
        registry.register(
            "messages_received",
            "Text and binary messages received from clients",
            messages_in.clone(),
        );
        registry.register_with_unit(
            "received",
            "Payload bytes of the messages received",
            Unit::Bytes,
            bytes_in.clone(),
        );
        registry.register(
            "messages_sent",
            "Frames taken from the outbound queue to be written to clients (data, pings, pongs)",
            messages_out.clone(),
        );
        registry.register_with_unit(
            "sent",
            "Payload bytes of those frames (compressed, when compressed)",
            Unit::Bytes,
            bytes_out.clone(),
        );
        registry.register(
            "deliveries",
            "Frames queued by broadcast and publish, one per recipient",
            deliveries.clone(),
        );
        registry.register(
            "slow_consumer_closes",
            "Connections closed with 1008 because their outbound queue was full",
            slow_consumers.clone(),
        );
        registry.register("instances", "Live controller instances", instances.clone());
        registry.register(
            "instances_recycled",
            "Instances replaced after an event because their memory passed \
             sandbox.recycle_memory_percent of the cap (no connection is closed)",
            recycled.clone(),
        );
        registry.register_with_unit(
            "event_duration",
            "Time a controller took for one event, in the guest",
            Unit::Seconds,
            events.clone(),
        );
        registry.register(
            "guest_traps",
            "Events that trapped (the instance is replaced, the connection closed with 1011)",
            traps.clone(),
        );
        registry.register(
            "reloads",
            "Module changes applied by hot reload, by result",
            reloads.clone(),
        );
        registry.register(
            "pool_instances_used",
            "Instance slots of the pooling allocator in use",
            pool_used.clone(),
        );
        registry.register(
            "pool_instances",
            "Instance slots of the pooling allocator (sandbox.pool_instances)",
            pool_slots.clone(),
        );
        Metrics {
            registry,
            connections,
            upgrades,
            closed,
            messages_in,
            bytes_in,
            messages_out,
            bytes_out,
            deliveries,
            slow_consumers,
            instances,
            recycled,
            events,
            traps,
            reloads,
            pool_used,
            pool_slots,
            journal: Journal::default(),
        }
    }

    /// The last reloads and traps.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The traps of route `name` so far, by kind.
    pub fn traps_of(&self, name: &str) -> [(&'static str, u64); 4] {
        [
            TrapKind::panic,
            TrapKind::budget,
            TrapKind::memory,
            TrapKind::other,
        ]
        .map(|kind| {
            let labels = TrapLabels {
                route: name.to_owned(),
                kind,
            };
            let count = self.traps.get(&labels).map_or(0, |count| count.get());
            (kind.label(), count)
        })
    }

    /// Registers the cluster's series and returns their handles.
    pub fn register_cluster(&mut self) -> ClusterMetrics {
        let cluster = ClusterMetrics::detached();
        let registry = self.registry.sub_registry_with_prefix("cluster");
        registry.register(
            "broker_up",
            "1 while the cluster's broker (Redis) is connected",
            cluster.broker_up.clone(),
        );
        registry.register(
            "nodes",
            "Live nodes of the cluster, this one included",
            cluster.nodes.clone(),
        );
        registry.register(
            "remote_connections",
            "Connections served by other nodes, as this node knows them",
            cluster.remote_connections.clone(),
        );
        registry.register(
            "messages_sent",
            "Messages published to other nodes' inboxes",
            cluster.sent.clone(),
        );
        registry.register(
            "messages_received",
            "Messages received from other nodes",
            cluster.received.clone(),
        );
        registry.register(
            "presence_reads",
            "Full reads of another node's connections",
            cluster.resyncs.clone(),
        );
        registry.register(
            "dropped",
            "Messages between nodes dropped (broker down, queue full), never retried",
            cluster.dropped.clone(),
        );
        cluster
    }

    /// The handles of route `name`, resolved once.
    pub fn route(self: &Arc<Self>, name: &str) -> Arc<RouteMetrics> {
        let route = RouteLabel {
            route: name.to_owned(),
        };
        let event = |event| {
            self.events
                .get_or_create(&EventLabels {
                    route: name.to_owned(),
                    event,
                })
                .clone()
        };
        Arc::new(RouteMetrics {
            name: name.to_owned(),
            connections: self.connections.get_or_create(&route).clone(),
            messages_in: self.messages_in.get_or_create(&route).clone(),
            bytes_in: self.bytes_in.get_or_create(&route).clone(),
            messages_out: self.messages_out.get_or_create(&route).clone(),
            bytes_out: self.bytes_out.get_or_create(&route).clone(),
            deliveries: self.deliveries.get_or_create(&route).clone(),
            slow_consumers: self.slow_consumers.get_or_create(&route).clone(),
            instances: self.instances.get_or_create(&route).clone(),
            recycled: self.recycled.get_or_create(&route).clone(),
            events: [
                event(EventKind::open),
                event(EventKind::message),
                event(EventKind::error),
                event(EventKind::close),
            ],
            all: Some(self.clone()),
        })
    }

    /// An upgrade request answered with `status` (101 when accepted);
    /// `route` is empty when none matched.
    pub fn upgrade(&self, route: &str, status: u16) {
        self.upgrades
            .get_or_create(&UpgradeLabels {
                route: route.to_owned(),
                status,
            })
            .inc();
    }

    /// A module change applied by hot reload.
    pub fn reload(&self, result: ReloadResult) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// The pooling allocator's slots: `used` of `slots`.
    pub fn pool(&self, used: usize, slots: usize) {
        self.pool_used.set(used as i64);
        self.pool_slots.set(slots as i64);
    }

    /// Everything, in the Prometheus text format (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// The counters of one route, shared by its connections and instances.
pub struct RouteMetrics {
    name: String,
    /// Open connections.
    pub connections: Gauge,
    /// Messages received.
    pub messages_in: Count,
    /// Payload bytes received.
    pub bytes_in: Count,
    /// Frames taken from the outbound queue.
    pub messages_out: Count,
    /// Their payload bytes.
    pub bytes_out: Count,
    /// Frames queued by broadcast and publish.
    pub deliveries: Count,
    /// Slow-consumer closes.
    pub slow_consumers: Counter,
    /// Live instances.
    pub instances: Gauge,
    /// Instances replaced because their memory grew past the recycling
    /// mark.
    pub recycled: Counter,
    events: [Durations; 4],
    /// The server's families, for what is counted by a label other than
    /// the route (close codes, traps); `None` for a route that serves no
    /// one (loading a module, the benchmarks' probe).
    all: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.name)
            .finish()
    }
}

impl RouteMetrics {
    /// Counters no server reads (one set for the whole process).
    pub fn detached() -> Arc<RouteMetrics> {
        static DETACHED: std::sync::OnceLock<Arc<RouteMetrics>> = std::sync::OnceLock::new();
        DETACHED
            .get_or_init(|| {
                let mut route = Arc::new(Metrics::new()).route("");
                Arc::get_mut(&mut route).expect("just made").all = None;
                route
            })
            .clone()
    }

    /// The durations of `event`.
    pub fn event(&self, event: EventKind) -> &Durations {
        &self.events[event as usize]
    }

    /// A connection ended with `code`.
    pub fn closed(&self, code: u16) {
        let Some(all) = &self.all else { return };
        let code = match code {
            3000..=3999 => "3xxx".to_owned(),
            4000..=4999 => "4xxx".to_owned(),
            code => code.to_string(),
        };
        all.closed
            .get_or_create(&CloseLabels {
                route: self.name.clone(),
                code,
            })
            .inc();
    }

    /// An event trapped with `message`.
    pub fn trapped(&self, kind: TrapKind, message: &str) {
        let Some(all) = &self.all else { return };
        all.traps
            .get_or_create(&TrapLabels {
                route: self.name.clone(),
                kind,
            })
            .inc();
        all.journal.trap(Trap {
            at_ms: now_ms(),
            route: self.name.clone(),
            kind: kind.label(),
            message: message.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routes_counters_show_with_its_label() {
        let metrics = Arc::new(Metrics::new());
        let chat = metrics.route("chat");
        chat.messages_in.inc();
        chat.bytes_in.inc_by(5);
        chat.connections.inc();
        chat.event(EventKind::message)
            .observe(Duration::from_micros(30));
        chat.event(EventKind::message)
            .observe(Duration::from_secs(10));
        chat.closed(1000);
        chat.closed(4321);
        chat.trapped(TrapKind::budget, "out of budget");
        metrics.upgrade("chat", 101);
        metrics.upgrade("", 404);
        metrics.reload(ReloadResult::swapped);
        // The same route again (a reload) counts on the same series.
        metrics.route("chat").messages_in.inc();
        let text = metrics.encode();
        for line in [
            "switchyard_messages_received_total{route=\"chat\"} 2",
            "switchyard_received_bytes_total{route=\"chat\"} 5",
            "switchyard_connections{route=\"chat\"} 1",
            "switchyard_connections_closed_total{route=\"chat\",code=\"1000\"} 1",
            "switchyard_connections_closed_total{route=\"chat\",code=\"4xxx\"} 1",
            "switchyard_guest_traps_total{route=\"chat\",kind=\"budget\"} 1",
            "switchyard_upgrades_total{route=\"chat\",status=\"101\"} 1",
            "switchyard_upgrades_total{route=\"\",status=\"404\"} 1",
            "switchyard_reloads_total{result=\"swapped\"} 1",
            "switchyard_event_duration_seconds_count{route=\"chat\",event=\"message\"} 2",
            "switchyard_event_duration_seconds_bucket{le=\"0.00005\",route=\"chat\",event=\"message\"} 1",
            "switchyard_event_duration_seconds_bucket{le=\"+Inf\",route=\"chat\",event=\"message\"} 2",
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
    }

    #[test]
    fn counts_from_more_threads_than_slots_add_up() {
        let count = Count::default();
        let durations = Durations::default();
        for _ in 0..2 {
            // Twice: the second wave's threads take the slots the first
            // gave back, over the values those left.
            std::thread::scope(|scope| {
                for _ in 0..SLOTS * 2 {
                    scope.spawn(|| {
                        for _ in 0..1_000 {
                            count.inc_by(2);
                            durations.observe(Duration::from_micros(20));
                        }
                    });
                }
            });
        }
        let events = 2 * SLOTS as u64 * 2 * 1_000;
        assert_eq!(count.get(), 2 * events);
        let (counts, sum) = durations.totals();
        assert_eq!(
            counts[1], events,
            "20 µs is in the 25 µs bucket: {counts:?}"
        );
        assert_eq!(counts.iter().sum::<u64>(), events);
        assert_eq!(sum, events * 20_000);
    }

    #[test]
    fn detached_counters_are_nobodys() {
        let route = RouteMetrics::detached();
        route.closed(1000);
        route.trapped(TrapKind::panic, "unreachable");
        route.messages_in.inc();
    }
}
