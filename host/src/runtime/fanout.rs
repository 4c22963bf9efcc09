//! A run's broadcasts, handed to each recipient together.
//!
//! A busy route's instance runs its queued events one after another: a run
//! is the events a drainer takes before it lets the instance go, or the one
//! event a connection's task runs itself. A `broadcast` made during a run
//! waits here instead of going into every recipient's queue at once; when
//! the run ends, each recipient takes all of them with one lock of its
//! queue and at most one wake-up. Putting a frame in another connection's
//! queue costs about one cross-core cache miss however many frames come
//! with it (BENCHMARKS.md, session 15), so a run of ten broadcasts pays it
//! once per recipient instead of ten times.
//!
//! Nothing is reordered. Whatever else the instance queues (a `send`, an
//! event's reply, a `close`, a group `publish`) hands over what waits
//! first, and so does every event that changes who the recipients are
//! (an open, a close, an error). The instance hands over before it is
//! replaced (a trap, a recycle) and before a run lets it go. At most
//! [`MAX_WAITING`] broadcasts wait: a burst within one event reaches the
//! queues as it goes, as it did one by one, so a client that keeps up with
//! it is not closed as a slow consumer.

use crate::runtime::host_api::ConnTable;
use crate::wire::deflate;
use crate::wire::frame::Frame;

/// Broadcasts waiting at most; the next one hands them over.
pub const MAX_WAITING: usize = 64;

/// Broadcasts of the running events, not yet in their recipients' queues.
#[derive(Default)]
pub struct Fanout {
    /// Each frame, and the connection it is not for.
    waiting: Vec<(Frame, Option<u64>)>,
}

impl Fanout {
    /// Holds `frame` for every connection of `conns` but `except`, handing
    /// everything over when [`MAX_WAITING`] broadcasts wait.
    pub fn add(&mut self, frame: Frame, except: Option<u64>, conns: &ConnTable) {
        self.waiting.push((frame, except));
        if self.waiting.len() >= MAX_WAITING {
            self.hand_over(conns);
        }
    }

    /// Queues what waits for each of `conns`, in the order it was
    /// broadcast; a connection whose queue fills up is closed as a slow
    /// consumer. Returns how many frames were queued.
    pub fn hand_over(&mut self, conns: &ConnTable) -> usize {
        if self.waiting.is_empty() {
            return 0;
        }
        // Each frame is compressed at most once, for all who agreed on it.
        let mut shared: Vec<deflate::Shared<'_>> = self
            .waiting
            .iter()
            .map(|(frame, _)| deflate::Shared::new(frame.payload()))
            .collect();
        let mut queued = 0;
        for (id, conn) in conns {
            let for_this = self
                .waiting
                .iter()
                .zip(shared.iter_mut())
                .filter(|((_, except), _)| *except != Some(*id))
                .map(|((frame, _), shared)| (frame, shared));
            queued += conn.push_all(for_this);
        }
        drop(shared);
        self.waiting.clear();
        queued
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_tungstenite::tungstenite::Utf8Bytes;

    use super::*;
    use crate::metrics::RouteMetrics;
    use crate::wire::outbound::ConnHandle;

    fn table(ids: &[u64]) -> ConnTable {
        let limits = crate::config::Limits::default();
        ids.iter()
            .map(|&id| {
                let handle = ConnHandle::new(id, &limits, None, RouteMetrics::detached());
                (id, Arc::new(handle))
            })
            .collect()
    }

    fn text(text: &str) -> Frame {
        Frame::text(Utf8Bytes::from(text.to_owned()))
    }

    /// What is queued for `id`, taken from its queue.
    fn taken(conns: &ConnTable, id: u64) -> Vec<String> {
        let mut batch = Vec::new();
        conns[&id].dequeue_into(&mut batch, usize::MAX);
        batch
            .iter()
            .map(|frame| String::from_utf8_lossy(frame.payload()).into_owned())
            .collect()
    }

    #[test]
    fn broadcasts_wait_for_the_hand_over_and_skip_their_sender() {
        let conns = table(&[1, 2, 3]);
        let mut fanout = Fanout::default();
        fanout.add(text("a"), Some(1), &conns);
        fanout.add(text("b"), None, &conns);
        fanout.add(text("c"), Some(3), &conns);
        assert!(taken(&conns, 2).is_empty(), "nothing before the hand-over");
        assert_eq!(fanout.hand_over(&conns), 7);
        assert_eq!(taken(&conns, 1), ["b", "c"]);
        assert_eq!(taken(&conns, 2), ["a", "b", "c"]);
        assert_eq!(taken(&conns, 3), ["a", "b"]);
        assert_eq!(fanout.hand_over(&conns), 0, "handed over once");
    }

    #[test]
    fn a_burst_is_handed_over_as_it_goes() {
        let conns = table(&[1]);
        let mut fanout = Fanout::default();
        for i in 0..MAX_WAITING - 1 {
            fanout.add(text(&i.to_string()), None, &conns);
        }
        assert!(taken(&conns, 1).is_empty());
        fanout.add(text("last"), None, &conns);
        let queued = taken(&conns, 1);
        assert_eq!(queued.len(), MAX_WAITING);
        assert_eq!(queued[0], "0");
        assert_eq!(queued[MAX_WAITING - 1], "last");
        assert_eq!(fanout.hand_over(&conns), 0);
    }
}
