//! A served route: its module version, its instances and the state they
//! share.
//!
//! The routing table maps a pattern to a [`RouteHandle`]. For each upgrade
//! the server asks it for a [`Lease`] on the instance that will serve the
//! connection: the one shared instance, the instance of the connection's key
//! (`keyed` mode, e.g. one per room), or a new instance of its own
//! (`per-connection`). Instances are created on first use from the
//! module's pre-instantiated component and dropped when their last lease
//! ends; a keyed instance's key-value store is kept for
//! `limits.keyed_state_keep_ms` so a room that empties briefly keeps its
//! state, within `limits.keyed_state_keep_keys` stores and
//! `limits.keyed_state_keep_bytes` per route (the oldest are forgotten
//! first, so clients cycling through keys cannot grow the server). What belongs to the route rather than to
//! an instance (connections, groups, attachments) is the runtime's
//! [`RouteShared`](crate::runtime::shared::RouteShared).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::cluster::Scope;
use crate::config::InstanceMode;
use crate::metrics::RouteMetrics;
use crate::runtime::host_api::HostOwned;
use crate::runtime::instance::ControllerInstance;
use crate::runtime::kv::SharedKv;
use crate::runtime::module::Module;
use crate::runtime::shared::RouteShared;
use crate::runtime::{InstanceSlot, Runtime};
use crate::wire::handshake::Rejection;

/// Which instance serves a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum InstanceKey {
    Shared,
    Keyed(String),
    Connection(u64),
}

/// A served route.
pub struct RouteHandle {
    runtime: Arc<Runtime>,
    /// The version new instances start from; swapped on reload.
    module: ArcSwap<Module>,
    shared: Arc<RouteShared>,
    /// A std mutex: held only to look up or update the maps, never across
    /// an await.
    instances: Mutex<Instances>,
}

#[derive(Default)]
struct Instances {
    live: HashMap<InstanceKey, Leased>,
    /// Key-value stores of keyed instances, live or kept after their
    /// instance was dropped.
    kept: HashMap<String, Kept>,
    /// Dropped keys in the order they were dropped, so the oldest kept
    /// stores are found without scanning them all. An entry whose key was
    /// taken again since is stale and skipped.
    expiring: VecDeque<(Instant, String)>,
    /// Stores kept for dropped keys, and their bytes.
    dormant: usize,
    dormant_bytes: usize,
    retired: bool,
}

/// A keyed instance's store.
struct Kept {
    kv: SharedKv,
    /// When its instance was dropped; `None` while one lives.
    dropped: Option<Instant>,
    /// What it counts against `limits.keyed_state_keep_bytes` while
    /// dormant (its store cannot change then).
    bytes: usize,
}

/// What keeping one store costs beyond its keys and values: its key in
/// the map and the queue, the store's map and lock.
const KEPT_OVERHEAD: usize = 256;
/// What one entry of a store costs beyond its key and value: the map's
/// node share and two vectors' headers (many tiny entries cost mostly this).
const ENTRY_OVERHEAD: usize = 64;

/// How long and how many dropped keys' stores a route keeps.
#[derive(Debug, Clone, Copy)]
struct KeepLimits {
    time: Duration,
    keys: usize,
    bytes: usize,
}

impl KeepLimits {
    fn of(limits: &crate::config::Limits) -> Self {
        KeepLimits {
            time: limits.keyed_state_keep(),
            keys: limits.keyed_state_keep_keys,
            bytes: limits.keyed_state_keep_bytes,
        }
    }
}

impl Instances {
    /// The store of `key`, kept or new, now in use by a live instance.
    fn take_kv(&mut self, key: &str, new: impl FnOnce() -> SharedKv) -> SharedKv {
        let kept = self.kept.entry(key.to_owned()).or_insert_with(|| Kept {
            kv: new(),
            dropped: None,
            bytes: 0,
        });
        if kept.dropped.take().is_some() {
            self.dormant -= 1;
            self.dormant_bytes -= kept.bytes;
        }
        kept.kv.clone()
    }

    /// The instance of `key` was dropped: its store is kept, within
    /// `limits`, oldest forgotten first.
    fn keep(&mut self, key: &str, limits: KeepLimits) {
        let now = Instant::now();
        if let Some(kept) = self.kept.get_mut(key)
            && kept.dropped.is_none()
        {
            let kv = kept.kv.lock().expect("kv lock");
            let bytes = kv.bytes() + kv.len() * ENTRY_OVERHEAD;
            drop(kv);
            kept.bytes = bytes + key.len() + KEPT_OVERHEAD;
            kept.dropped = Some(now);
            self.dormant += 1;
            self.dormant_bytes += kept.bytes;
            self.expiring.push_back((now, key.to_owned()));
        }
        self.expire(limits);
    }

    /// Forgets kept stores dropped `limits.time` ago or more, then the
    /// oldest until the rest fit `limits.keys` and `limits.bytes`.
    fn expire(&mut self, limits: KeepLimits) {
        while let Some((dropped, _)) = self.expiring.front() {
            let over = self.dormant > limits.keys || self.dormant_bytes > limits.bytes;
            if !over && dropped.elapsed() < limits.time {
                break;
            }
            let (dropped, key) = self.expiring.pop_front().expect("front exists");
            if let Some(kept) = self.kept.get(&key)
                && kept.dropped == Some(dropped)
            {
                self.dormant -= 1;
                self.dormant_bytes -= kept.bytes;
                self.kept.remove(&key);
            }
        }
        // A key dropped and taken again often leaves stale entries behind:
        // keep the queue within a small multiple of what it tracks.
        if self.expiring.len() > 2 * self.dormant + 64 {
            let kept = &self.kept;
            self.expiring.retain(|(dropped, key)| {
                kept.get(key).is_some_and(|k| k.dropped == Some(*dropped))
            });
        }
    }
}

struct Leased {
    handle: Arc<ControllerInstance>,
    /// Connections using the instance.
    leases: usize,
}

/// A connection's hold on the instance serving it; the instance is dropped
/// when its last lease ends (a shared instance never is).
pub struct Lease {
    route: Arc<RouteHandle>,
    key: InstanceKey,
    /// The instance to send the connection's events to.
    pub handle: Arc<ControllerInstance>,
}

impl RouteHandle {
    /// A route serving `module`; a shared route starts its instance now.
    pub fn new(runtime: Arc<Runtime>, module: Arc<Module>) -> Arc<RouteHandle> {
        let metrics = runtime.metrics().route(&module.name);
        let shared = runtime.route_shared(&module.name, metrics);
        let route = Arc::new(RouteHandle {
            runtime,
            module: ArcSwap::new(module.clone()),
            shared,
            instances: Mutex::new(Instances::default()),
        });
        if module.instance == InstanceMode::Shared {
            // A shared instance is part of loading the module: it takes a
            // pool place when one is free but is never refused for it.
            let slot = route.runtime.reserve_instance();
            let handle = route.instance(module, route.runtime.new_kv(), slot, Scope::Route);
            handle.start();
            route
                .lock()
                .live
                .insert(InstanceKey::Shared, Leased { handle, leases: 0 });
        }
        route
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instances> {
        self.instances.lock().expect("route instances lock")
    }

    fn instance(
        &self,
        module: Arc<Module>,
        kv: SharedKv,
        slot: Option<InstanceSlot>,
        scope: Scope,
    ) -> Arc<ControllerInstance> {
        let owned = HostOwned::new(kv, self.shared.clone(), scope);
        ControllerInstance::new(self.runtime.clone(), module, owned, slot)
    }

    /// The route's counters.
    pub fn metrics(&self) -> &Arc<RouteMetrics> {
        &self.shared.metrics
    }

    /// The version serving new instances.
    pub fn module(&self) -> Arc<Module> {
        self.module.load_full()
    }

    /// The instance for connection `id` with route captures `params`,
    /// created if needed. Refused (503) when the route or the server has no
    /// room for another instance.
    pub fn lease(
        self: &Arc<Self>,
        params: &[(String, String)],
        id: u64,
    ) -> Result<Lease, Rejection> {
        // Under the lock, so that a concurrent swap either finds this
        // instance in `live` or has already stored the version it gets.
        let mut instances = self.lock();
        let module = self.module();
        let key = match &module.instance {
            InstanceMode::Shared => InstanceKey::Shared,
            InstanceMode::PerConnection => InstanceKey::Connection(id),
            InstanceMode::Keyed(param) => InstanceKey::Keyed(
                params
                    .iter()
                    .find(|(name, _)| name == param)
                    .map(|(_, value)| value.clone())
                    .unwrap_or_default(),
            ),
        };
        if instances.retired {
            return Err(Rejection::new(
                503,
                format!("route {} is being removed", module.name),
            ));
        }
        if let Some(live) = instances.live.get_mut(&key) {
            live.leases += 1;
            return Ok(Lease {
                route: self.clone(),
                key,
                handle: live.handle.clone(),
            });
        }
        let max = self.runtime.config().route_max_instances(&module.name);
        if instances.live.len() >= max {
            return Err(Rejection::try_later(
                503,
                format!(
                    "route {} is at its instance limit ({max}); try again later",
                    module.name
                ),
            ));
        }
        let Some(slot) = self.runtime.reserve_instance() else {
            return Err(Rejection::try_later(
                503,
                "the server is at its instance limit (sandbox.pool_instances); try again later",
            ));
        };
        instances.expire(KeepLimits::of(&self.runtime.config().limits));
        let kv = match &key {
            InstanceKey::Keyed(value) => instances.take_kv(value, || self.runtime.new_kv()),
            _ => self.runtime.new_kv(),
        };
        let scope = match &key {
            InstanceKey::Shared => Scope::Route,
            InstanceKey::Keyed(value) => Scope::Key(value.clone()),
            InstanceKey::Connection(_) => Scope::Own,
        };
        let handle = self.instance(module, kv, Some(slot), scope);
        instances.live.insert(
            key.clone(),
            Leased {
                handle: handle.clone(),
                leases: 1,
            },
        );
        Ok(Lease {
            route: self.clone(),
            key,
            handle,
        })
    }

    /// Continues every instance, and every later one, with `module`. The
    /// instance mode cannot change this way.
    pub async fn swap(&self, module: Arc<Module>) -> Result<(), String> {
        let old = self.module();
        if old.instance != module.instance {
            return Err(format!(
                "the instance mode changed from {} to {}; restart the server to apply that",
                old.instance, module.instance
            ));
        }
        // New instances start from the new version from now on; the live
        // ones switch between two events. Both under the lock, so that no
        // instance created meanwhile is missed.
        let handles: Vec<_> = {
            let instances = self.lock();
            self.module.store(module.clone());
            instances.live.values().map(|l| l.handle.clone()).collect()
        };
        for (i, handle) in handles.iter().enumerate() {
            if let Err(reason) = handle.swap(module.clone()).await {
                if i == 0 {
                    self.module.store(old);
                    return Err(reason);
                }
                tracing::error!(route = %module.name, error = %reason, "an instance kept the old version");
            }
        }
        Ok(())
    }

    /// The module was removed: every instance runs `on-close` for its
    /// connections and closes them with 1001; no new connection is admitted.
    pub async fn retire(&self) {
        let handles: Vec<_> = {
            let mut instances = self.lock();
            instances.retired = true;
            instances.live.values().map(|l| l.handle.clone()).collect()
        };
        for handle in handles {
            handle.retire().await;
        }
    }
}

impl Lease {
    /// The route the instance serves.
    pub fn route(&self) -> &Arc<RouteHandle> {
        &self.route
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut instances = self.route.lock();
        let Some(live) = instances.live.get_mut(&self.key) else {
            return;
        };
        live.leases -= 1;
        if live.leases > 0 || self.key == InstanceKey::Shared {
            return;
        }
        // The last connection left, after its on-close: the instance ends
        // with this lease, which holds the last handle but the map's.
        instances.live.remove(&self.key);
        let limits = KeepLimits::of(&self.route.runtime.config().limits);
        match &self.key {
            InstanceKey::Keyed(value) => instances.keep(value, limits),
            _ => instances.expire(limits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(bytes: usize) -> SharedKv {
        let mut store = crate::runtime::kv::KvStore::new(1 << 20, 1 << 20);
        if bytes > 0 {
            store.set("k".into(), vec![0; bytes - 1]).unwrap();
        }
        Arc::new(Mutex::new(store))
    }

    const FOREVER: KeepLimits = KeepLimits {
        time: Duration::from_secs(3600),
        keys: usize::MAX,
        bytes: usize::MAX,
    };

    fn kept(instances: &Instances) -> Vec<&str> {
        let mut keys: Vec<&str> = instances
            .kept
            .iter()
            .filter(|(_, k)| k.dropped.is_some())
            .map(|(key, _)| key.as_str())
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn expiry_forgets_only_stores_dropped_long_enough_and_not_reused() {
        let mut instances = Instances::default();
        for key in ["old", "reused", "recent"] {
            instances.take_kv(key, || kv(0));
            instances.keep(key, FOREVER);
        }
        // "old" and "reused" were dropped long ago; "reused" was then taken
        // again by a new instance.
        let long_ago = Instant::now() - Duration::from_secs(10);
        for entry in instances.expiring.iter_mut().take(2) {
            entry.0 = long_ago;
            instances.kept.get_mut(&entry.1).unwrap().dropped = Some(long_ago);
        }
        instances.take_kv("reused", || kv(0));
        let five_s = KeepLimits {
            time: Duration::from_secs(5),
            ..FOREVER
        };
        instances.expire(five_s);
        assert_eq!(kept(&instances), ["recent"]);
        assert!(instances.kept.contains_key("reused"), "in use, not kept");
        assert_eq!(instances.expiring.len(), 1);
        assert_eq!(instances.dormant, 1);
        instances.expire(KeepLimits {
            time: Duration::ZERO,
            ..FOREVER
        });
        assert!(!instances.kept.contains_key("recent"));
        assert!(instances.kept.contains_key("reused"));
        assert_eq!((instances.dormant, instances.dormant_bytes), (0, 0));
    }

    #[test]
    fn kept_stores_are_capped_by_count_and_bytes_oldest_first() {
        let mut instances = Instances::default();
        let by_count = KeepLimits { keys: 3, ..FOREVER };
        for i in 0..10 {
            let key = format!("room{i}");
            instances.take_kv(&key, || kv(1000));
            instances.keep(&key, by_count);
        }
        assert_eq!(kept(&instances), ["room7", "room8", "room9"]);
        assert_eq!(instances.dormant, 3);

        // Each store is one entry of 1000 bytes, its key and the overheads.
        let each = 1000 + ENTRY_OVERHEAD + "room0".len() + KEPT_OVERHEAD;
        assert_eq!(instances.dormant_bytes, 3 * each);
        let by_bytes = KeepLimits {
            bytes: 2 * each,
            ..FOREVER
        };
        instances.expire(by_bytes);
        assert_eq!(kept(&instances), ["room8", "room9"]);
        // A store larger than the whole budget is not kept at all.
        instances.take_kv("huge", || kv(10 * each));
        instances.keep("huge", by_bytes);
        assert!(!instances.kept.contains_key("huge"));
        assert!(instances.kept.is_empty());
        assert_eq!((instances.dormant, instances.dormant_bytes), (0, 0));

        // Taking a kept store again takes it out of the budget.
        instances.take_kv("back", || kv(1000));
        instances.keep("back", FOREVER);
        assert_eq!(instances.dormant, 1);
        instances.take_kv("back", || unreachable!("kept"));
        assert_eq!((instances.dormant, instances.dormant_bytes), (0, 0));
        instances.expire(KeepLimits {
            keys: 0,
            bytes: 0,
            ..FOREVER
        });
        assert!(instances.kept.contains_key("back"), "live stores stay");
    }

    #[test]
    fn a_key_taken_and_dropped_over_and_over_does_not_grow_the_queue() {
        let mut instances = Instances::default();
        for _ in 0..10_000 {
            instances.take_kv("busy", || kv(10));
            instances.keep("busy", FOREVER);
        }
        assert_eq!(instances.dormant, 1);
        assert!(
            instances.expiring.len() <= 2 + 64,
            "{}",
            instances.expiring.len()
        );
    }
}
