//! What the fiber of an async guest call costs: `on-message` of the echo
//! controller called with wasmtime's `call_async` (on a fiber, as the
//! server calls every event, so that a guest yields at each epoch tick and
//! a runaway event gives its worker thread back) and with the synchronous
//! `call`, in alternating blocks on the same instance
//! ([`switchyard::module::time_call_modes`]); and, for scale, the whole
//! in-process event as the server runs it ([`switchyard::module::time_events`]:
//! the call, the instance's turn, the reply queued for the connection).
//!
//! `cargo run --release -p switchyard-bench --bin call-cost -- [ROUNDS]`

use std::path::Path;

use switchyard_bench::modules::built;
use switchyard_bench::stats::{median, min_max};

const CALLS: usize = 200_000;
const PAYLOAD: usize = 32;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(5);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let echo = built(&repo.join("controllers"), "echo")?;
    let config = switchyard::Config::default;
    let (mut asyncs, mut syncs, mut events, mut saved) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        let (in_async, in_sync) =
            switchyard::module::time_call_modes(config(), &echo, CALLS, PAYLOAD).await?;
        let event = switchyard::module::time_events(config(), &echo, CALLS, PAYLOAD).await?;
        let ns = |d: std::time::Duration| d.as_secs_f64() * 1e9 / CALLS as f64;
        let (a, s, e) = (ns(in_async), ns(in_sync), ns(event));
        println!(
            "round {round}: call_async {a:.0} ns, call {s:.0} ns, fiber {:.0} ns; whole event {e:.0} ns",
            a - s
        );
        asyncs.push(a);
        syncs.push(s);
        events.push(e);
        saved.push((a - s) / e);
    }
    let show = |label: &str, values: Vec<f64>, unit: &str| {
        let (lo, hi) = min_max(&values);
        println!(
            "{label:<44} {:>8.3} {unit} [{lo:.3}–{hi:.3}]",
            median(values)
        );
    };
    println!(
        "\n{CALLS} calls of {PAYLOAD} B per mode and round, {rounds} rounds: median [min–max]"
    );
    show("on-message with call_async (fiber)", asyncs, "ns");
    show("on-message with call (no fiber)", syncs, "ns");
    show("whole in-process event (server path, async)", events, "ns");
    show("share of the event a sync call would save", saved, "");
    Ok(())
}
