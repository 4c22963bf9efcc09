//! The last notable events of a server, for people watching it: hot
//! reloads and guest traps, each with its time.
//!
//! The reload registry ([`crate::reload`]) and the instances (a trap, in
//! `runtime/instance.rs`) write here through [`crate::metrics::Metrics`];
//! the dashboard reads it. Both kinds are rare (a reload per save, a trap
//! per failed event), so each ring sits behind a `std` mutex that is never
//! held across an `.await`, and the message path never touches it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Entries kept of each kind; older ones are forgotten.
pub const KEPT: usize = 20;

/// A hot-reload outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Reload {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `added`, `swapped`, `removed` or `rejected`.
    pub result: &'static str,
    /// The module file's name.
    pub file: String,
    /// Its route name, when the module was loaded.
    pub route: Option<String>,
    /// The hash of the version now serving, when one went live.
    pub hash: Option<String>,
    /// From the first change seen to live, in milliseconds.
    pub took_ms: Option<u64>,
    /// Why it was refused.
    pub error: Option<String>,
}

/// A guest call that failed.
#[derive(Debug, Clone, Serialize)]
pub struct Trap {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The route name.
    pub route: String,
    /// `panic`, `budget`, `memory` or `other`.
    pub kind: &'static str,
    /// The trap's message.
    pub message: String,
}

/// The last [`KEPT`] reloads and traps, newest last.
#[derive(Debug, Default)]
pub struct Journal {
    reloads: Mutex<VecDeque<Reload>>,
    traps: Mutex<VecDeque<Trap>>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn push<T>(ring: &Mutex<VecDeque<T>>, entry: T) {
    let mut ring = ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if ring.len() == KEPT {
        ring.pop_front();
    }
    ring.push_back(entry);
}

fn read<T: Clone>(ring: &Mutex<VecDeque<T>>) -> Vec<T> {
    let ring = ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    ring.iter().cloned().collect()
}

impl Journal {
    /// Notes a reload outcome.
    pub fn reload(&self, reload: Reload) {
        push(&self.reloads, reload);
    }

    /// Notes a trap.
    pub fn trap(&self, trap: Trap) {
        push(&self.traps, trap);
    }

    /// The reloads kept, oldest first.
    pub fn reloads(&self) -> Vec<Reload> {
        read(&self.reloads)
    }

    /// The traps kept, oldest first.
    pub fn traps(&self) -> Vec<Trap> {
        read(&self.traps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_are_kept() {
        let journal = Journal::default();
        for n in 0..KEPT + 5 {
            journal.trap(Trap {
                at_ms: n as u64,
                route: "chat".into(),
                kind: "panic",
                message: format!("trap {n}"),
            });
        }
        let traps = journal.traps();
        assert_eq!(traps.len(), KEPT);
        assert_eq!(traps[0].message, "trap 5");
        assert_eq!(traps[KEPT - 1].message, format!("trap {}", KEPT + 4));
        assert!(journal.reloads().is_empty());
    }
}
