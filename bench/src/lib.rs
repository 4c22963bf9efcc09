//! Benchmarks for Switchyard, with a hand-written baseline measured in the
//! same run (results in `BENCHMARKS.md`).
//!
//! The `compare` binary drives everything: it starts each server as a child
//! process ([`process`]), either Switchyard with the sample controllers or
//! the [`native`] baseline, runs a scenario against it with the [`load`]
//! generator, and alternates the two servers round after round.
//! Latencies are kept in a [`histogram::Histogram`].

pub mod histogram;
pub mod load;
pub mod modules;
pub mod native;
pub mod process;
pub mod stats;
