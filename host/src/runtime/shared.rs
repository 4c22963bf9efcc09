//! What a route's instances share, beyond any one instance: every open
//! connection of the route, group membership and attachments. Host
//! functions read and change it (`broadcast`, `publish`, `join`,
//! `attachment`); the route keeps it across instance replacements and hot
//! reloads, so a swap loses no member.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use crate::metrics::RouteMetrics;
use crate::wire::frame::Frame;
use crate::wire::outbound::ConnHandle;

/// Longest group name, in bytes.
pub const MAX_GROUP_NAME: usize = 256;

/// Route-wide state that outlives instances: open connections, groups and
/// attachments. A std mutex: held only to read or update maps (and to
/// queue frames, which never waits), never across an await.
pub struct RouteShared {
    state: Mutex<SharedState>,
    /// The route's counters, for its connections and instances.
    pub metrics: Arc<RouteMetrics>,
}

#[derive(Default)]
struct SharedState {
    conns: HashMap<u64, Arc<ConnHandle>>,
    groups: HashMap<String, BTreeSet<u64>>,
    /// The groups of each connection, to clear them when it closes.
    joined: HashMap<u64, BTreeSet<String>>,
    attachments: HashMap<u64, Vec<u8>>,
}

impl RouteShared {
    /// Empty state for a new route.
    pub fn new(metrics: Arc<RouteMetrics>) -> Arc<RouteShared> {
        Arc::new(RouteShared {
            state: Mutex::new(SharedState::default()),
            metrics,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.state.lock().expect("route state lock")
    }

    /// A connection opened on this route.
    pub fn register(&self, id: u64, handle: Arc<ConnHandle>) {
        self.state().conns.insert(id, handle);
    }

    /// A connection is gone (after its `on-close`): it leaves every group
    /// and loses its attachment.
    pub fn forget(&self, id: u64) {
        let mut state = self.state();
        state.conns.remove(&id);
        state.attachments.remove(&id);
        for group in state.joined.remove(&id).unwrap_or_default() {
            if let Some(members) = state.groups.get_mut(&group) {
                members.remove(&id);
                if members.is_empty() {
                    state.groups.remove(&group);
                }
            }
        }
    }

    /// Adds `id` to `group`.
    pub fn join(&self, id: u64, group: &str) {
        let mut state = self.state();
        state.groups.entry(group.to_owned()).or_default().insert(id);
        state.joined.entry(id).or_default().insert(group.to_owned());
    }

    /// Removes `id` from `group`; returns whether it was a member.
    pub fn leave(&self, id: u64, group: &str) -> bool {
        let mut state = self.state();
        let was_member = state
            .groups
            .get_mut(group)
            .is_some_and(|members| members.remove(&id));
        if state.groups.get(group).is_some_and(BTreeSet::is_empty) {
            state.groups.remove(group);
        }
        if let Some(groups) = state.joined.get_mut(&id) {
            groups.remove(group);
        }
        was_member
    }

    /// Queues `frame` for every member of `group` but `except`; returns how
    /// many took it.
    pub fn publish(&self, group: &str, frame: &Frame, except: Option<u64>) -> u32 {
        let state = self.state();
        let Some(members) = state.groups.get(group) else {
            return 0;
        };
        let mut shared = crate::wire::deflate::Shared::new(frame.payload());
        let mut queued = 0;
        for id in members.iter().filter(|id| Some(**id) != except) {
            if let Some(conn) = state.conns.get(id)
                && conn.push_shared(frame, &mut shared).is_ok()
            {
                queued += 1;
            }
        }
        self.metrics.deliveries.inc_by(u64::from(queued));
        queued
    }

    /// The members of `group`, sorted.
    pub fn members(&self, group: &str) -> Vec<u64> {
        self.state()
            .groups
            .get(group)
            .map(|members| members.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Replaces the attachment of `id`.
    pub fn set_attachment(&self, id: u64, value: Vec<u8>) {
        self.state().attachments.insert(id, value);
    }

    /// The attachment of `id`.
    pub fn attachment(&self, id: u64) -> Option<Vec<u8>> {
        self.state().attachments.get(&id).cloned()
    }
}
