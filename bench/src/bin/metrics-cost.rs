//! What the metrics cost one echoed message, measured alone: the counters
//! a message bumps on its way (received, its event's duration, sent) run
//! in a loop on one route's `RouteMetrics` by one and by two threads at
//! once (two: the workers share the route's cache lines, as in the
//! server), against the same loop without them. The compare benchmark's
//! noise is larger than this cost, so it is measured here and set against
//! the server's CPU per message from that benchmark.
//!
//! `cargo run --release -p switchyard-bench --bin metrics-cost`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::metrics::{EventKind, Metrics, RouteMetrics};
use switchyard_bench::stats::{median, min_max};

const MESSAGES: u64 = 5_000_000;

/// One echoed message of 32 bytes, as the server counts it: received,
/// its `on-message` timed, its reply taken from the queue.
fn count_one(route: &RouteMetrics, work: u64) -> u64 {
    route.messages_in.inc();
    route.bytes_in.inc_by(32);
    let started = Instant::now();
    let result = black_box(work).wrapping_mul(31);
    route.event(EventKind::message).observe(started.elapsed());
    route.messages_out.inc_by(1);
    route.bytes_out.inc_by(32);
    result
}

fn uncounted(work: u64) -> u64 {
    black_box(work).wrapping_mul(31)
}

/// Nanoseconds per message with `threads` threads each doing `MESSAGES`.
fn per_message(threads: usize, counted: bool, route: &Arc<RouteMetrics>) -> f64 {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let route = route.clone();
            scope.spawn(move || {
                let mut sum = 0u64;
                for i in 0..MESSAGES {
                    sum = sum.wrapping_add(if counted {
                        count_one(&route, i)
                    } else {
                        uncounted(i)
                    });
                }
                black_box(sum)
            });
        }
    });
    let took: Duration = started.elapsed();
    took.as_nanos() as f64 / MESSAGES as f64
}

fn main() {
    let metrics = Arc::new(Metrics::new());
    let route = metrics.route("echo");
    println!(
        "metrics per echoed message: {MESSAGES} messages per thread, 5 rounds, medians (range)"
    );
    for threads in [1, 2] {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            without.push(per_message(threads, false, &route));
            with.push(per_message(threads, true, &route));
        }
        let cost: Vec<f64> = with.iter().zip(&without).map(|(w, o)| w - o).collect();
        let range = |v: &[f64]| {
            let (min, max) = min_max(v);
            format!("{min:.1}-{max:.1}")
        };
        println!(
            "  {threads} thread(s): {:.1} ns per message ({}) over a loop of {:.1} ns",
            median(cost.clone()),
            range(&cost),
            median(without.clone())
        );
    }
    assert!(
        metrics
            .encode()
            .contains("switchyard_messages_received_total")
    );
}
