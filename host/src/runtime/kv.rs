//! The per-instance key-value store behind `host.state-*`.
//!
//! It lives in the host, not in guest memory: an instance's store moves to
//! the replacement instance after a trap and to the new version on a hot
//! reload, and a keyed instance's store is kept a while after the instance
//! is dropped (see `route`). Sizes are capped per value and in total, counting keys, so a
//! controller cannot grow host memory without bound.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A store shared by the instances that follow one another on a route or
/// key (after a trap, on reload, or when a keyed room comes back). A std
/// mutex: held only for one map operation, never across an await.
pub type SharedKv = Arc<Mutex<KvStore>>;

/// Why a value was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// A bounded map from string keys to byte values.
#[derive(Debug, Default)]
pub struct KvStore {
    entries: BTreeMap<String, Vec<u8>>,
    /// Sum of key and value lengths, kept so a check is O(1).
    bytes: usize,
    max_entry: usize,
    max_total: usize,
}

impl KvStore {
    /// An empty store with the given caps.
    pub fn new(max_entry: usize, max_total: usize) -> Self {
        KvStore {
            entries: BTreeMap::new(),
            bytes: 0,
            max_entry,
            max_total,
        }
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// Stores `value` under `key` if the caps allow; otherwise changes
    /// nothing.
    pub fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), TooLarge> {
        let size = key.len() + value.len();
        if size > self.max_entry {
            return Err(TooLarge);
        }
        let replaced = self
            .entries
            .get(&key)
            .map_or(0, |old| key.len() + old.len());
        let total = self.bytes - replaced + size;
        if total > self.max_total {
            return Err(TooLarge);
        }
        self.bytes = total;
        self.entries.insert(key, value);
        Ok(())
    }

    /// Removes `key`; returns whether it was there.
    pub fn delete(&mut self, key: &str) -> bool {
        match self.entries.remove(key) {
            Some(old) => {
                self.bytes -= key.len() + old.len();
                true
            }
            None => false,
        }
    }

    /// The keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Bytes used by keys and values.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_delete() {
        let mut kv = KvStore::new(100, 1000);
        assert_eq!(kv.get("a"), None);
        kv.set("a".into(), b"one".to_vec()).unwrap();
        assert_eq!(kv.get("a"), Some(&b"one"[..]));
        kv.set("a".into(), b"three".to_vec()).unwrap();
        assert_eq!(kv.get("a"), Some(&b"three"[..]));
        assert_eq!(kv.bytes(), 6);
        kv.set("b".into(), vec![]).unwrap();
        assert_eq!(kv.keys(), vec!["a".to_owned(), "b".to_owned()]);
        assert!(kv.delete("a"));
        assert!(!kv.delete("a"));
        assert_eq!(kv.bytes(), 1);
    }

    #[test]
    fn caps_count_keys_and_leave_the_store_unchanged() {
        let mut kv = KvStore::new(10, 25);
        assert_eq!(kv.set("key".into(), vec![0; 8]), Err(TooLarge));
        kv.set("k1".into(), vec![0; 8]).unwrap();
        kv.set("k2".into(), vec![0; 8]).unwrap();
        assert_eq!(kv.set("k3".into(), vec![0; 8]), Err(TooLarge));
        assert_eq!(kv.get("k3"), None);
        assert_eq!(kv.bytes(), 20);
        // Replacing a value only counts the difference.
        kv.set("k2".into(), vec![1; 8]).unwrap();
        assert_eq!(kv.bytes(), 20);
        kv.delete("k1");
        kv.set("k3".into(), vec![0; 8]).unwrap();
        assert_eq!(kv.bytes(), 20);
    }
}
