//! An instance's broadcasts, written once and read by every recipient.
//!
//! A `broadcast` used to put a copy of its frame in each recipient's own
//! queue: a lock, a store into a cache line the recipient's writer on the
//! other core last touched, and a reference count bumped, all once per
//! recipient (a fifth of a busy chat server's time, BENCHMARKS.md). Here
//! the instance appends the frame once to its feed ([`Feed`]); each
//! recipient's writer reads the feed from its own [`Cursor`] when it next
//! writes, with what it reads in the same order as everything else queued
//! for it (see [`crate::wire::outbound`]).
//!
//! The feed is a list of chunks, each a fixed row of slots set once. The
//! instance is its only writer; readers on any thread see an entry once
//! the feed's `end` says it is there (a release store after the slot is
//! set). A chunk lives while the instance or a cursor still points into
//! it, so a recipient that falls behind holds what it has not read; the
//! instance closes one that falls too far behind as a slow consumer.
//!
//! Only an idle writer needs a wake-up: a cursor that has read everything
//! asks for one ([`Cursor::listen`]) and the instance wakes those that
//! asked when it hands its broadcasts over. A writer with frames still to
//! write comes back for the rest by itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::wire::deflate::{self, Deflate};
use crate::wire::frame::Frame;

/// Slots in the first chunk of a feed; each next chunk doubles, up to
/// [`MAX_CHUNK`]. A quiet instance keeps a small one.
const FIRST_CHUNK: usize = 4;

/// Slots in a chunk at most.
const MAX_CHUNK: usize = 16;

/// One broadcast.
struct Entry {
    frame: Frame,
    /// The connection it is not for.
    except: Option<u64>,
    /// Its compressed form, made by the first recipient that can share one.
    compressed: deflate::SharedCell,
}

/// A row of entries, set one by one by the instance.
struct Chunk {
    /// The sequence number of the first slot.
    first: u64,
    slots: Box<[OnceLock<Entry>]>,
    /// The chunk after this one, set before its first entry is published.
    next: OnceLock<Arc<Chunk>>,
}

impl Drop for Chunk {
    /// Frees the chunks behind this one that nobody else holds one by one:
    /// a cursor far behind can be the only holder of a long chain, whose
    /// nested drops would overflow the stack.
    fn drop(&mut self) {
        let mut next = self.next.take();
        while let Some(chunk) = next {
            next = match Arc::try_unwrap(chunk) {
                Ok(mut chunk) => chunk.next.take(),
                Err(_) => None,
            };
        }
    }
}

impl Chunk {
    fn new(first: u64, len: usize) -> Arc<Chunk> {
        Arc::new(Chunk {
            first,
            slots: (0..len).map(|_| OnceLock::new()).collect(),
            next: OnceLock::new(),
        })
    }

    /// The sequence number after its last slot.
    fn end(&self) -> u64 {
        self.first + self.slots.len() as u64
    }

    /// The next chunk when `at` starts it (a reader at `at` steps into it);
    /// `None` while `at` is in this one.
    fn step_for(&self, at: u64) -> Option<&Arc<Chunk>> {
        (at == self.end()).then(|| self.next.get().expect("published past a chunk"))
    }

    /// The entry at `at`, which is in this chunk and published.
    fn entry(&self, at: u64) -> &Entry {
        self.slots[(at - self.first) as usize]
            .get()
            .expect("a published slot is set")
    }
}

/// What the instance and the cursors share.
#[derive(Default)]
struct Shared {
    /// Entries published so far: every slot before it is set.
    end: AtomicU64,
    /// Payload bytes published so far.
    bytes: AtomicU64,
    /// Connections whose cursor has read everything and that want a
    /// wake-up with the next broadcast. A std mutex: held only to push to
    /// or swap the list.
    listeners: Mutex<Vec<u64>>,
}

/// The appending side, owned by the instance (and moved to the next one
/// with its connections).
pub struct Feed {
    shared: Arc<Shared>,
    tail: Arc<Chunk>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            shared: Arc::default(),
            tail: Chunk::new(0, FIRST_CHUNK),
        }
    }
}

impl Feed {
    /// Publishes `frame` for every reader but `except`.
    pub fn append(&mut self, frame: Frame, except: Option<u64>) {
        // Only this side stores `end`: a relaxed load reads our own store.
        let seq = self.shared.end.load(Ordering::Relaxed);
        if seq == self.tail.end() {
            let len = (self.tail.slots.len() * 2).min(MAX_CHUNK);
            let next = Chunk::new(seq, len);
            let _ = self.tail.next.set(next.clone());
            self.tail = next;
        }
        let len = frame.len() as u64;
        let slot = &self.tail.slots[(seq - self.tail.first) as usize];
        let _ = slot.set(Entry {
            frame,
            except,
            compressed: deflate::SharedCell::default(),
        });
        self.shared.bytes.fetch_add(len, Ordering::Relaxed);
        self.shared.end.store(seq + 1, Ordering::Release);
    }

    /// A cursor that reads what is published from now on.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            shared: self.shared.clone(),
            chunk: self.tail.clone(),
            next: self.end(),
            bytes: self.bytes(),
            stop: u64::MAX,
            stop_bytes: u64::MAX,
        }
    }

    /// Entries published so far.
    pub fn end(&self) -> u64 {
        self.shared.end.load(Ordering::Relaxed)
    }

    /// Payload bytes published so far.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// Replaces what `into` holds with the ids of the connections that
    /// asked for a wake-up; they ask again once they have read everything.
    pub fn take_listeners(&self, into: &mut Vec<u64>) {
        into.clear();
        let mut listeners = self.shared.listeners.lock().expect("feed listeners lock");
        std::mem::swap(&mut *listeners, into);
    }
}

/// How far one reader has read: where it reads next, and the payload bytes
/// it has passed (so its lag is known in bytes too).
pub struct Cursor {
    shared: Arc<Shared>,
    /// The chunk holding `next` (or the one before, when `next` starts
    /// the chunk not yet made).
    chunk: Arc<Chunk>,
    next: u64,
    bytes: u64,
    /// Where reading stops: the end when the connection left the instance
    /// (`u64::MAX` while it belongs to it), and the bytes published by then.
    stop: u64,
    stop_bytes: u64,
}

impl Cursor {
    /// The sequence number it reads next.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Payload bytes it has passed.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Entries published so far for this reader.
    pub fn end(&self) -> u64 {
        self.shared.end.load(Ordering::Acquire).min(self.stop)
    }

    /// Reads nothing published from now on (the connection left).
    pub fn stop_here(&mut self) {
        self.stop = self.end();
        self.stop_bytes = self.shared.bytes.load(Ordering::Relaxed);
    }

    /// Everything this reader will read is read.
    pub fn exhausted(&self) -> bool {
        self.next >= self.stop
    }

    /// Entries and payload bytes published and not read yet.
    pub fn lag(&self) -> (u64, u64) {
        if self.exhausted() {
            return (0, 0);
        }
        let end = self.end();
        let bytes = self
            .shared
            .bytes
            .load(Ordering::Relaxed)
            .min(self.stop_bytes);
        (
            end.saturating_sub(self.next),
            bytes.saturating_sub(self.bytes),
        )
    }

    /// Reads the entries before `until` (and published) into `batch`, until
    /// it holds `max` frames, skipping those not for connection `id`. A
    /// frame is the one broadcast, or the compressed frame it shares with
    /// every recipient that agreed on `deflate` the same way.
    pub fn read(
        &mut self,
        id: u64,
        until: u64,
        batch: &mut Vec<Frame>,
        max: usize,
        deflate: Option<&Deflate>,
    ) {
        let until = until.min(self.end());
        while self.next < until && batch.len() < max {
            self.step();
            let entry = self.chunk.entry(self.next);
            self.next += 1;
            self.bytes += entry.frame.len() as u64;
            if entry.except == Some(id) {
                continue;
            }
            let payload = entry.frame.payload();
            batch.push(
                match deflate.and_then(|d| entry.compressed.compressed_for(d, payload)) {
                    Some(compressed) => entry.frame.compressed(compressed),
                    None => entry.frame.clone(),
                },
            );
        }
    }

    /// Passes the published entries that skip connection `id` (its own
    /// broadcasts), up to the first one for it: reading them would take
    /// nothing, and passed they neither count in its lag nor hold the
    /// chunks they sit in.
    pub fn pass_own(&mut self, id: u64) {
        let end = self.end();
        while self.next < end {
            self.step();
            let entry = self.chunk.entry(self.next);
            if entry.except != Some(id) {
                return;
            }
            self.next += 1;
            self.bytes += entry.frame.len() as u64;
        }
    }

    /// Entries and payload bytes published and not read yet that are for
    /// connection `id` (its own broadcasts left out), counted until either
    /// passes its limit. Walks what is unread: for when [`Cursor::lag`],
    /// which counts everything, is over a limit.
    pub fn lag_for(&self, id: u64, max_entries: u64, max_bytes: u64) -> (u64, u64) {
        let end = self.end();
        let (mut chunk, mut at) = (&self.chunk, self.next);
        let (mut entries, mut bytes) = (0, 0);
        while at < end && entries <= max_entries && bytes <= max_bytes {
            if let Some(next) = chunk.step_for(at) {
                chunk = next;
            }
            let entry = chunk.entry(at);
            if entry.except != Some(id) {
                entries += 1;
                bytes += entry.frame.len() as u64;
            }
            at += 1;
        }
        (entries, bytes)
    }

    /// Steps into the next chunk when `next` starts it.
    fn step(&mut self) {
        if let Some(next) = self.chunk.step_for(self.next) {
            self.chunk = next.clone();
        }
    }

    /// Asks for a wake-up of connection `id` with the next broadcast.
    /// Returns whether everything published is read: when not, more came
    /// meanwhile and the caller reads it instead of waiting.
    pub fn listen(&self, id: u64) -> bool {
        // Pushed under the lock that the instance takes after publishing:
        // either it sees this id, or this load sees what it published.
        self.shared
            .listeners
            .lock()
            .expect("feed listeners lock")
            .push(id);
        self.end() == self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn text(text: &str) -> Frame {
        Frame::text(Utf8Bytes::from(text.to_owned()))
    }

    fn read(cursor: &mut Cursor, id: u64, until: u64, max: usize) -> Vec<String> {
        let mut batch = Vec::new();
        cursor.read(id, until, &mut batch, max, None);
        batch
            .iter()
            .map(|frame| String::from_utf8_lossy(frame.payload()).into_owned())
            .collect()
    }

    #[test]
    fn a_cursor_reads_what_came_after_it_across_chunks_but_its_own() {
        let mut feed = Feed::default();
        feed.append(text("before"), None);
        let mut cursor = feed.cursor();
        let mut expected = Vec::new();
        for i in 0..200 {
            let except = (i % 3 == 0).then_some(7);
            feed.append(text(&i.to_string()), except);
            if except.is_none() {
                expected.push(i.to_string());
            }
        }
        assert_eq!(cursor.lag().0, 200);
        assert_eq!(read(&mut cursor, 7, u64::MAX, usize::MAX), expected);
        assert_eq!(cursor.lag(), (0, 0));
        assert_eq!(cursor.next(), 201);
    }

    #[test]
    fn reading_stops_at_the_limit_and_at_the_batch_size() {
        let mut feed = Feed::default();
        let mut cursor = feed.cursor();
        for i in 0..10 {
            feed.append(text(&i.to_string()), None);
        }
        assert_eq!(read(&mut cursor, 1, 3, usize::MAX), ["0", "1", "2"]);
        let mut batch = vec![text("held")];
        cursor.read(1, u64::MAX, &mut batch, 3, None);
        assert_eq!(batch.len(), 3, "filled up to the batch size");
        assert_eq!(cursor.next(), 5);
        assert_eq!(cursor.lag(), (5, 5));
    }

    #[test]
    fn chunks_nobody_reads_are_freed() {
        let mut feed = Feed::default();
        let cursor = feed.cursor();
        let first = Arc::downgrade(&cursor.chunk);
        for i in 0..100 {
            feed.append(text(&i.to_string()), None);
        }
        assert!(first.upgrade().is_some(), "held by the cursor behind");
        drop(cursor);
        assert!(first.upgrade().is_none());
    }

    #[test]
    fn a_long_chain_held_by_one_cursor_is_freed_without_deep_recursion() {
        // 4,000 chunks behind one cursor, dropped on a 64 KiB stack.
        std::thread::Builder::new()
            .stack_size(64 << 10)
            .spawn(|| {
                let mut feed = Feed::default();
                let cursor = feed.cursor();
                for _ in 0..MAX_CHUNK * 4_000 {
                    feed.append(Frame::ping(), None);
                }
                drop(feed);
                drop(cursor);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_listener_is_taken_once_and_told_when_it_is_behind() {
        let mut feed = Feed::default();
        let cursor = feed.cursor();
        assert!(cursor.listen(4), "nothing to read");
        feed.append(text("a"), None);
        let mut woken = Vec::new();
        feed.take_listeners(&mut woken);
        assert_eq!(woken, [4]);
        woken.clear();
        feed.take_listeners(&mut woken);
        assert!(woken.is_empty());
        assert!(!cursor.listen(4), "\"a\" waits");
    }

    #[test]
    fn a_stopped_cursor_reads_only_what_came_before() {
        let mut feed = Feed::default();
        let mut cursor = feed.cursor();
        feed.append(text("a"), None);
        cursor.stop_here();
        feed.append(text("b"), None);
        assert!(!cursor.exhausted());
        assert_eq!(read(&mut cursor, 1, u64::MAX, usize::MAX), ["a"]);
        assert!(cursor.exhausted());
        assert_eq!(cursor.lag(), (0, 0));
    }

    #[test]
    fn a_stopped_cursor_lags_only_by_what_came_before() {
        let mut feed = Feed::default();
        let mut cursor = feed.cursor();
        feed.append(text("ab"), None);
        cursor.stop_here();
        feed.append(text("cde"), None);
        assert_eq!(cursor.lag(), (1, 2));
    }

    #[test]
    fn a_reader_passes_its_own_broadcasts_up_to_the_first_for_it() {
        let mut feed = Feed::default();
        let mut cursor = feed.cursor();
        // Across a chunk's end: the first chunk has 4 slots.
        for own in ["1", "22", "333", "4444", "55555"] {
            feed.append(text(own), Some(7));
        }
        feed.append(text("for 7"), Some(8));
        feed.append(text("own again"), Some(7));
        assert_eq!(cursor.lag(), (7, 29));
        cursor.pass_own(7);
        assert_eq!(cursor.lag(), (2, 14), "stops at the first entry for it");
        cursor.pass_own(7);
        assert_eq!(cursor.lag(), (2, 14));
        assert_eq!(read(&mut cursor, 7, u64::MAX, usize::MAX), ["for 7"]);
        assert_eq!(cursor.lag(), (0, 0));
    }

    #[test]
    fn what_is_for_a_reader_is_counted_without_its_own_up_to_a_limit() {
        let mut feed = Feed::default();
        let cursor = feed.cursor();
        feed.append(text("for 7"), None);
        for own in ["1", "22", "333", "4444", "55555"] {
            feed.append(text(own), Some(7));
        }
        feed.append(text("to 7"), Some(8));
        assert_eq!(cursor.lag(), (7, 24));
        assert_eq!(cursor.lag_for(7, 10, 100), (2, 9));
        assert_eq!(cursor.lag_for(8, 10, 100), (6, 20));
        // Stops once past a limit.
        assert_eq!(cursor.lag_for(8, 1, 100), (2, 6));
        assert_eq!(cursor.lag_for(8, 10, 5), (2, 6));
    }

    #[test]
    fn readers_on_other_threads_see_every_entry_in_order() {
        let mut feed = Feed::default();
        let readers: Vec<_> = (0..4)
            .map(|id| {
                let mut cursor = feed.cursor();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    while seen.len() < 5_000 {
                        let mut batch = Vec::new();
                        cursor.read(id, u64::MAX, &mut batch, 64, None);
                        seen.extend(batch.iter().map(|f| f.payload().to_vec()));
                    }
                    seen
                })
            })
            .collect();
        for i in 0..5_000u32 {
            feed.append(Frame::binary(i.to_be_bytes().to_vec().into()), None);
        }
        for reader in readers {
            let seen = reader.join().unwrap();
            let expected: Vec<Vec<u8>> = (0..5_000u32).map(|i| i.to_be_bytes().to_vec()).collect();
            assert_eq!(seen, expected);
        }
    }
}
