//! What the server counts, for Prometheus.
//!
//! One [`Metrics`] per server holds the metric families, registered once
//! in a `prometheus-client` registry that the admin listener encodes at
//! `/metrics`. The message path never looks a metric up: each route gets a
//! [`RouteMetrics`] when it is first served (kept across hot reloads), whose
//! counters are shared atomics a connection or an instance bumps directly.
//! Labels are route names, HTTP statuses, close codes and fixed kinds, never
//! room keys, connection ids or user ids, so the number of series stays
//! bounded by the number of routes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

/// Upper bounds of the event duration buckets, in seconds: 10 µs to 2.5 s.
const EVENT_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1, 0.5, 2.5,
];

/// A histogram of event durations whose observation is two relaxed
/// atomic adds: `prometheus-client`'s own histogram takes a lock per
/// observation, which every event would pay.
/// A handle: clones count into the same histogram.
#[derive(Debug, Default, Clone)]
pub struct Durations(Arc<Buckets>);

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
        let seconds = took.as_secs_f64();
        let bucket = EVENT_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(EVENT_BUCKETS.len());
        self.0.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for Durations {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Durations {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = EVENT_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.0.counts)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, count)| count).sum();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Every metric family of one server.
pub struct Metrics {
    registry: Registry,
    connections: Family<RouteLabel, Gauge>,
    upgrades: Family<UpgradeLabels, Counter>,
    closed: Family<CloseLabels, Counter>,
    messages_in: Family<RouteLabel, Counter>,
    bytes_in: Family<RouteLabel, Counter>,
    messages_out: Family<RouteLabel, Counter>,
    bytes_out: Family<RouteLabel, Counter>,
    deliveries: Family<RouteLabel, Counter>,
    slow_consumers: Family<RouteLabel, Counter>,
    instances: Family<RouteLabel, Gauge>,
    events: Family<EventLabels, Durations>,
    traps: Family<TrapLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    pool_used: Gauge,
    pool_slots: Gauge,
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
        let messages_in = Family::<RouteLabel, Counter>::default();
        let bytes_in = Family::<RouteLabel, Counter>::default();
        let messages_out = Family::<RouteLabel, Counter>::default();
        let bytes_out = Family::<RouteLabel, Counter>::default();
        let deliveries = Family::<RouteLabel, Counter>::default();
        let slow_consumers = Family::<RouteLabel, Counter>::default();
        let instances = Family::<RouteLabel, Gauge>::default();
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
            "Frames written to clients (data, pings, pongs)",
            messages_out.clone(),
        );
        registry.register_with_unit(
            "sent",
            "Payload bytes of the frames written",
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
            events,
            traps,
            reloads,
            pool_used,
            pool_slots,
        }
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
    pub messages_in: Counter,
    /// Payload bytes received.
    pub bytes_in: Counter,
    /// Frames written.
    pub messages_out: Counter,
    /// Payload bytes written.
    pub bytes_out: Counter,
    /// Frames queued by broadcast and publish.
    pub deliveries: Counter,
    /// Slow-consumer closes.
    pub slow_consumers: Counter,
    /// Live instances.
    pub instances: Gauge,
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

    /// An event trapped.
    pub fn trapped(&self, kind: TrapKind) {
        let Some(all) = &self.all else { return };
        all.traps
            .get_or_create(&TrapLabels {
                route: self.name.clone(),
                kind,
            })
            .inc();
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
        chat.trapped(TrapKind::budget);
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
    fn detached_counters_are_nobodys() {
        let route = RouteMetrics::detached();
        route.closed(1000);
        route.trapped(TrapKind::panic);
        route.messages_in.inc();
    }
}
