//! An instance's broadcasts: published once to its feed, read by each
//! recipient, and the recipients woken together when a run ends.
//!
//! A busy route's instance runs its queued events one after another: a run
//! is the events a drainer takes before it lets the instance go, or the one
//! event a connection's task runs itself. A `broadcast` appends its frame to
//! the instance's [`Feed`] at once; every connection of the instance reads
//! it from there in order with what else is queued for it (see
//! [`crate::wire::feed`] and [`crate::wire::outbound`]), so a broadcast
//! touches none of its recipients. Only the recipients that had read
//! everything wait for a wake-up, and they get it when the run hands its
//! broadcasts over ([`Fanout::hand_over`]): before anything else is queued,
//! before the recipients change, before the instance is replaced or let
//! go, and after every [`MAX_WAITING`] broadcasts of one event, so a burst
//! reaches the clients as it goes.
//!
//! A recipient that falls behind by more than its outbound limits (the
//! messages and bytes of `limits.outbound_queue_*`, counted with its own
//! queue) is closed as a slow consumer. The instance looks every
//! [`CHECK_EVERY`] broadcasts, so a stalled client holds at most that many
//! more of them before it is let go. What the connection whose event is
//! running broadcasts in that event to everyone but itself does not count
//! against it until the next event: its task may be the one running the
//! event, and reads (passes) them only after it, so a controller answering
//! one message with a burst of broadcasts to the others makes no slow
//! consumer. From then on they count until its writer passes them: they
//! hold the feed's memory.

use crate::runtime::host_api::ConnTable;
use crate::wire::feed::Feed;
use crate::wire::frame::Frame;
use crate::wire::outbound::ConnHandle;

/// Broadcasts of one run after which the waiting recipients are woken
/// anyway.
pub const MAX_WAITING: usize = 64;

/// Broadcasts between two looks for recipients too far behind.
pub const CHECK_EVERY: u64 = 16;

/// An instance's broadcasts: the feed, and who is to be woken.
#[derive(Default)]
pub struct Fanout {
    feed: Feed,
    /// Broadcasts since the last hand-over.
    waiting: usize,
    /// The listeners taken at a hand-over (kept for its capacity).
    woken: Vec<u64>,
    /// The event running, whose connection's lag leaves out what it has
    /// broadcast to everyone but that connection.
    running: Option<Running>,
}

/// The connection of the event running, and what the event has broadcast
/// to everyone but it so far.
struct Running {
    id: u64,
    entries: u64,
    bytes: u64,
}

impl Fanout {
    /// Publishes `frame` for every connection of `conns` but `except`.
    pub fn add(&mut self, frame: Frame, except: Option<u64>, conns: &ConnTable) {
        if let Some(running) = &mut self.running
            && except == Some(running.id)
        {
            running.entries += 1;
            running.bytes += frame.len() as u64;
        }
        self.feed.append(frame, except);
        self.waiting += 1;
        if self.feed.end().is_multiple_of(CHECK_EVERY) {
            let now = (self.feed.end(), self.feed.bytes());
            for (id, conn) in conns {
                let (end, bytes) = match &self.running {
                    Some(running) if running.id == *id => {
                        (now.0 - running.entries, now.1 - running.bytes)
                    }
                    _ => now,
                };
                if conn.too_far_behind(end, bytes) {
                    conn.drop_for_lag();
                }
            }
        }
        if self.waiting >= MAX_WAITING {
            self.hand_over(conns);
        }
    }

    /// An event of connection `id` starts: what it broadcasts to the
    /// others until the next event does not count in its lag.
    pub fn event_starts(&mut self, id: u64) {
        self.running = Some(Running {
            id,
            entries: 0,
            bytes: 0,
        });
    }

    /// `conn` joins: it gets what is broadcast from now on.
    pub fn join(&self, conn: &ConnHandle) {
        conn.join(self.feed.cursor());
    }

    /// Wakes the connections of `conns` that had read every broadcast and
    /// asked for a wake-up, if anything was broadcast since the last time.
    pub fn hand_over(&mut self, conns: &ConnTable) {
        if self.waiting == 0 {
            return;
        }
        self.waiting = 0;
        self.feed.take_listeners(&mut self.woken);
        for id in self.woken.drain(..) {
            if let Some(conn) = conns.get(&id) {
                conn.wake_for_feed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use tokio_tungstenite::tungstenite::Utf8Bytes;

    use super::*;
    use crate::metrics::RouteMetrics;

    fn table(ids: &[u64], limits: &crate::config::Limits) -> ConnTable {
        ids.iter()
            .map(|&id| {
                let handle = ConnHandle::new(id, limits, None, RouteMetrics::detached());
                (id, Arc::new(handle))
            })
            .collect()
    }

    /// Connections `ids`, each allowed `messages` queued, joined to a new
    /// fanout.
    fn joined(ids: &[u64], messages: usize) -> (ConnTable, Fanout) {
        let limits = crate::config::Limits {
            outbound_queue_messages: messages,
            ..Default::default()
        };
        let conns = table(ids, &limits);
        let fanout = Fanout::default();
        for conn in conns.values() {
            fanout.join(conn);
        }
        (conns, fanout)
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

    /// A waker that counts its wakes, standing in for a connection's task.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn joined_connections_read_broadcasts_in_order_with_what_is_sent_to_them() {
        let conns = table(&[1, 2, 3], &Default::default());
        let mut fanout = Fanout::default();
        fanout.add(text("before"), None, &conns);
        for conn in conns.values() {
            fanout.join(conn);
        }
        fanout.add(text("a"), Some(1), &conns);
        conns[&2].push(text("to 2")).unwrap();
        fanout.add(text("b"), None, &conns);
        fanout.add(text("c"), Some(3), &conns);
        assert_eq!(taken(&conns, 1), ["b", "c"]);
        assert_eq!(taken(&conns, 2), ["a", "to 2", "b", "c"]);
        assert_eq!(taken(&conns, 3), ["a", "b"]);
        assert!(taken(&conns, 2).is_empty(), "read once");
    }

    #[test]
    fn a_connection_that_left_reads_only_what_came_before() {
        let conns = table(&[1], &Default::default());
        let mut fanout = Fanout::default();
        fanout.join(&conns[&1]);
        fanout.add(text("a"), None, &conns);
        conns[&1].part();
        fanout.add(text("b"), None, &conns);
        assert_eq!(taken(&conns, 1), ["a"]);
        assert!(!conns[&1].has_queued());
    }

    #[test]
    fn only_idle_readers_are_woken_and_once_per_hand_over() {
        let conns = table(&[1, 2], &Default::default());
        let mut fanout = Fanout::default();
        let counts: Vec<Arc<Count>> = [1, 2]
            .iter()
            .map(|id| {
                let count = Arc::new(Count(AtomicUsize::new(0)));
                conns[id].register_waker(&Waker::from(count.clone()));
                fanout.join(&conns[id]);
                count
            })
            .collect();
        // Connection 1's writer has read everything and listens; 2's has
        // not looked yet.
        assert!(taken(&conns, 1).is_empty());
        for i in 0..3 {
            fanout.add(text(&i.to_string()), None, &conns);
        }
        assert_eq!(
            counts[0].0.load(Ordering::SeqCst),
            0,
            "woken at the hand-over"
        );
        fanout.hand_over(&conns);
        fanout.hand_over(&conns);
        assert_eq!(counts[0].0.load(Ordering::SeqCst), 1);
        assert_eq!(counts[1].0.load(Ordering::SeqCst), 0, "2 was not listening");
        assert!(conns[&2].has_queued());
        assert_eq!(taken(&conns, 2), ["0", "1", "2"]);
    }

    #[test]
    fn a_burst_wakes_the_readers_as_it_goes() {
        let conns = table(&[1], &Default::default());
        let mut fanout = Fanout::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        conns[&1].register_waker(&Waker::from(count.clone()));
        fanout.join(&conns[&1]);
        assert!(taken(&conns, 1).is_empty());
        for i in 0..MAX_WAITING {
            fanout.add(text(&i.to_string()), None, &conns);
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(taken(&conns, 1).len(), MAX_WAITING);
    }

    /// A connection's writer on a thread of its own: it parks whenever
    /// `dequeue_into` leaves it nothing to come back for, until its waker
    /// is called; it counts what it takes in `got` and checks the order.
    fn writer_thread(
        conn: Arc<ConnHandle>,
        got: Arc<AtomicUsize>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        struct Unpark(std::thread::Thread, std::sync::atomic::AtomicBool);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.1.store(true, Ordering::SeqCst);
                self.0.unpark();
            }
        }
        std::thread::spawn(move || {
            let woken = Arc::new(Unpark(
                std::thread::current(),
                std::sync::atomic::AtomicBool::new(false),
            ));
            let waker = Waker::from(woken.clone());
            let mut last = None;
            let mut batch = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                // Cleared before the waker is handed out: a wake-up from
                // then on counts.
                woken.1.store(false, Ordering::SeqCst);
                conn.register_waker(&waker);
                batch.clear();
                conn.dequeue_into(&mut batch, 64);
                for frame in &batch {
                    let n: u64 = std::str::from_utf8(frame.payload())
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(last < Some(n), "{n} after {last:?}");
                    last = Some(n);
                }
                got.fetch_add(batch.len(), Ordering::SeqCst);
                if batch.len() == 64 {
                    continue; // a full batch: the writer comes back by itself
                }
                while !woken.1.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                    std::thread::park_timeout(std::time::Duration::from_millis(20));
                }
            }
        })
    }

    /// Runs of one to seven broadcasts, each handed over, and a send to
    /// connection 1 now and then; after each run every writer must get
    /// everything without any other nudge: a wake-up lost at the end of a
    /// run leaves one waiting.
    #[test]
    fn writers_on_other_threads_are_woken_for_every_broadcast_and_send() {
        let limits = crate::config::Limits {
            outbound_queue_messages: usize::MAX / 2,
            outbound_queue_bytes: usize::MAX / 2,
            ..Default::default()
        };
        let conns = table(&[1, 2, 3, 4], &limits);
        let mut fanout = Fanout::default();
        for conn in conns.values() {
            fanout.join(conn);
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let got: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::default()).collect();
        let writers: Vec<_> = conns
            .values()
            .zip(&got)
            .map(|(conn, got)| writer_thread(conn.clone(), got.clone(), stop.clone()))
            .collect();
        let (mut n, mut broadcasts, mut direct) = (0u64, 0, 0);
        for run in 0..3_000 {
            if run % 5 == 0 {
                conns[&1].push(text(&n.to_string())).unwrap();
                (n, direct) = (n + 1, direct + 1);
            }
            for _ in 0..=run % 7 {
                fanout.add(text(&n.to_string()), None, &conns);
                (n, broadcasts) = (n + 1, broadcasts + 1);
            }
            fanout.hand_over(&conns);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            for (i, got) in got.iter().enumerate() {
                let expected = broadcasts + if i == 0 { direct } else { 0 };
                while got.load(Ordering::SeqCst) < expected {
                    if std::time::Instant::now() > deadline {
                        stop.store(true, Ordering::SeqCst);
                        panic!(
                            "run {run}: connection {} has {} of {expected}: a lost wake-up",
                            i + 1,
                            got.load(Ordering::SeqCst)
                        );
                    }
                    std::thread::yield_now();
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        for writer in writers {
            writer.join().unwrap();
        }
    }

    #[test]
    fn a_reader_too_far_behind_is_closed_as_a_slow_consumer() {
        let (conns, mut fanout) = joined(&[1, 2], 20);
        for i in 0..CHECK_EVERY * 2 {
            fanout.add(text(&i.to_string()), None, &conns);
            // Runs of four events; 2's writer reads after each.
            if i % 4 == 3 {
                fanout.hand_over(&conns);
                taken(&conns, 2);
            }
        }
        assert!(conns[&1].is_closing(), "32 behind, 20 allowed");
        assert!(!conns[&2].is_closing());
        // A direct send counts what the feed holds for it.
        assert_eq!(conns[&2].push(text("x")), Ok(()));
    }

    #[test]
    fn what_a_connection_broadcasts_to_the_others_in_its_own_event_does_not_make_it_slow() {
        let (conns, mut fanout) = joined(&[1, 2], 20);
        // 1's event answers with one broadcast to everyone and a burst to
        // the others: its task runs the event and reads only after it.
        fanout.event_starts(1);
        fanout.add(text("all"), None, &conns);
        for i in 0..CHECK_EVERY * 3 {
            fanout.add(text(&i.to_string()), Some(1), &conns);
            if i % 4 == 3 {
                fanout.hand_over(&conns);
                taken(&conns, 2);
            }
        }
        assert!(!conns[&1].is_closing(), "49 behind, one of them for it");
        // A reply counts only what is for it.
        assert_eq!(conns[&1].push(text("reply")), Ok(()));
        assert_eq!(taken(&conns, 1), ["all", "reply"]);
        // Broadcasts to everyone count in its own event too: it has more
        // than the limit to read.
        fanout.event_starts(1);
        for i in 0..CHECK_EVERY * 2 {
            fanout.add(text(&format!("all {i}")), None, &conns);
            if i % 4 == 3 {
                fanout.hand_over(&conns);
                taken(&conns, 2);
            }
        }
        assert!(conns[&1].is_closing(), "32 for it, 20 allowed");
        assert!(!conns[&2].is_closing());
    }

    #[test]
    fn own_broadcasts_of_earlier_events_count_until_read() {
        let (conns, mut fanout) = joined(&[1, 2], 20);
        fanout.event_starts(1);
        for i in 0..CHECK_EVERY * 2 {
            fanout.add(text(&i.to_string()), Some(1), &conns);
        }
        assert!(!conns[&1].is_closing());
        // Its event is over and its writer never read: the feed it holds
        // counts (a stalled client broadcasting alone is let go).
        fanout.event_starts(2);
        for i in 0..CHECK_EVERY {
            fanout.add(text(&format!("from 2: {i}")), Some(2), &conns);
        }
        assert!(conns[&1].is_closing(), "48 held, 20 allowed");
    }

    #[test]
    fn closing_connections_let_go_of_the_feed_or_are_killed() {
        let limits = crate::config::Limits {
            outbound_queue_messages: 20,
            ..Default::default()
        };
        let conns = table(&[1, 2, 3], &limits);
        let mut fanout = Fanout::default();
        // 1 closes before its on-open: it never reads the feed.
        conns[&1].close(1000, "bye").unwrap();
        for conn in conns.values() {
            fanout.join(conn);
        }
        fanout.add(text("a"), None, &conns);
        // 2's writer takes its close: it reads nothing after it.
        conns[&2].close(4000, "done").unwrap();
        fanout.add(text("b"), None, &conns);
        let mut batch = Vec::new();
        assert!(conns[&2].dequeue_into(&mut batch, 512).is_some());
        assert_eq!(batch.len(), 1, "\"a\", then the close");
        // 3's close waits behind a writer that reads nothing.
        conns[&3].close(4000, "done").unwrap();
        for i in 0..CHECK_EVERY * 2 {
            fanout.add(text(&i.to_string()), None, &conns);
        }
        assert!(conns[&1].take_kill().is_none());
        assert!(conns[&2].take_kill().is_none());
        let kill = conns[&3].take_kill().expect("killed: too far behind");
        assert_eq!(u16::from(kill.code), 1008);
    }
}
