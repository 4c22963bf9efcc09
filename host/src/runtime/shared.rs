//! What a route's instances share, beyond any one instance: every open
//! connection of the route, group membership and attachments. Host
//! functions read and change it (`broadcast`, `publish`, `join`,
//! `attachment`); the route keeps it across instance replacements and hot
//! reloads, so a swap loses no member.
//!
//! In a cluster, each change is also told to the [`Cluster`], and what
//! reaches a route from other nodes comes in through [`LocalRoutes`], the
//! node's routes by name.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

use crate::cluster::{Cluster, Local, Recipients, Scope};
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
    /// The route's name, as other nodes know it.
    pub name: Arc<str>,
    /// The cluster this node is part of, if any.
    pub cluster: Option<Arc<Cluster>>,
}

#[derive(Default)]
struct SharedState {
    conns: HashMap<u64, Arc<ConnHandle>>,
    /// The connections of each key of a keyed route, for broadcasts from
    /// other nodes.
    keys: HashMap<String, BTreeSet<u64>>,
    /// The key of each connection of a keyed route.
    key_of: HashMap<u64, String>,
    groups: HashMap<String, BTreeSet<u64>>,
    /// The groups of each connection, to clear them when it closes.
    joined: HashMap<u64, BTreeSet<String>>,
    attachments: HashMap<u64, Vec<u8>>,
}

impl RouteShared {
    /// Empty state for a new route, reachable from other nodes through
    /// `local` when there is a cluster.
    pub fn new(
        name: &str,
        metrics: Arc<RouteMetrics>,
        cluster: Option<Arc<Cluster>>,
        local: &LocalRoutes,
    ) -> Arc<RouteShared> {
        let shared = Arc::new(RouteShared {
            state: Mutex::new(SharedState::default()),
            metrics,
            name: name.into(),
            cluster,
        });
        if shared.cluster.is_some() {
            local.insert(&shared);
        }
        shared
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SharedState> {
        self.state.lock().expect("route state lock")
    }

    /// A connection opened on this route, in an instance with `scope`.
    pub fn register(&self, id: u64, handle: Arc<ConnHandle>, scope: &Scope) {
        let mut state = self.state();
        state.conns.insert(id, handle);
        if let Scope::Key(key) = scope {
            state.keys.entry(key.clone()).or_default().insert(id);
            state.key_of.insert(id, key.clone());
        }
        drop(state);
        if let Some(cluster) = &self.cluster {
            cluster.opened(id, &self.name, scope.clone());
        }
    }

    /// Connection `id`'s `on-open` has run: other nodes may list it now.
    pub fn announce(&self, id: u64) {
        if let Some(cluster) = &self.cluster
            && self.state().conns.contains_key(&id)
        {
            cluster.announce(id);
        }
    }

    /// A connection is gone (after its `on-close`): it leaves every group
    /// and loses its attachment.
    pub fn forget(&self, id: u64) {
        let mut state = self.state();
        if state.conns.remove(&id).is_some()
            && let Some(cluster) = &self.cluster
        {
            cluster.gone(id);
        }
        state.attachments.remove(&id);
        if let Some(key) = state.key_of.remove(&id)
            && let Some(ids) = state.keys.get_mut(&key)
        {
            ids.remove(&id);
            if ids.is_empty() {
                state.keys.remove(&key);
            }
        }
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
        if let Some(cluster) = &self.cluster {
            cluster.joined(id, group);
        }
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
        if was_member && let Some(cluster) = &self.cluster {
            cluster.left(id, group);
        }
        was_member
    }

    /// Queues `frame` for every member of `group` but `except`, on this
    /// node and the others; returns how many it went to.
    pub fn publish(&self, group: &str, frame: &Frame, except: Option<u64>) -> u32 {
        let remote = self.cluster.as_ref().map_or(0, |cluster| {
            cluster.publish(&self.name, group, frame, except)
        });
        remote + self.publish_here(group, frame, except)
    }

    /// Queues `frame` for every member of `group` on this node but
    /// `except`; returns how many took it.
    fn publish_here(&self, group: &str, frame: &Frame, except: Option<u64>) -> u32 {
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

    /// The members of `group`, on every node, sorted.
    pub fn members(&self, group: &str) -> Vec<u64> {
        let mut members: Vec<u64> = self
            .state()
            .groups
            .get(group)
            .map(|members| members.iter().copied().collect())
            .unwrap_or_default();
        if let Some(cluster) = &self.cluster {
            members.extend(cluster.members(&self.name, group));
            members.sort_unstable();
        }
        members
    }

    /// Replaces the attachment of `id`.
    pub fn set_attachment(&self, id: u64, value: Vec<u8>) {
        if let Some(cluster) = &self.cluster {
            cluster.attached(id, &value);
        }
        self.state().attachments.insert(id, value);
    }

    /// The attachment of `id`, on any node.
    pub fn attachment(&self, id: u64) -> Option<Vec<u8>> {
        let here = self.state().attachments.get(&id).cloned();
        here.or_else(|| self.cluster.as_ref()?.attachment(&self.name, id))
    }

    /// Queues `frame` for connections of this node's that `to` names.
    fn deliver(&self, to: Recipients<'_>, frame: &Frame) -> u32 {
        let (scope, except) = match to {
            Recipients::Group(group, except) => return self.publish_here(group, frame, except),
            Recipients::One(id) => {
                let conn = self.state().conns.get(&id).cloned();
                return conn.is_some_and(|conn| conn.push(frame.clone()).is_ok()) as u32;
            }
            Recipients::Scope(scope, except) => (scope, except),
        };
        let state = self.state();
        let mut shared = crate::wire::deflate::Shared::new(frame.payload());
        let mut queued = 0;
        let mut push = |id: &u64, conn: &Arc<ConnHandle>| {
            if Some(*id) != except && conn.push_shared(frame, &mut shared).is_ok() {
                queued += 1;
            }
        };
        match scope {
            Scope::Route => state.conns.iter().for_each(|(id, conn)| push(id, conn)),
            Scope::Key(key) => {
                for id in state.keys.get(key).into_iter().flatten() {
                    if let Some(conn) = state.conns.get(id) {
                        push(id, conn);
                    }
                }
            }
            Scope::Own => {}
        }
        self.metrics.deliveries.inc_by(u64::from(queued));
        queued
    }
}

/// This node's routes by name, for what other nodes send them. Holds them
/// weakly: a removed route is gone from here with its last user.
#[derive(Default)]
pub struct LocalRoutes {
    /// A std mutex: held to look a route up or replace it, never across
    /// an await.
    routes: Mutex<HashMap<Arc<str>, Weak<RouteShared>>>,
}

impl LocalRoutes {
    fn insert(&self, route: &Arc<RouteShared>) {
        let mut routes = self.routes.lock().expect("local routes lock");
        routes.retain(|_, route| route.strong_count() > 0);
        routes.insert(route.name.clone(), Arc::downgrade(route));
    }

    fn get(&self, name: &str) -> Option<Arc<RouteShared>> {
        self.routes
            .lock()
            .expect("local routes lock")
            .get(name)
            .and_then(Weak::upgrade)
    }
}

impl Local for LocalRoutes {
    fn deliver(&self, route: &str, to: Recipients<'_>, frame: &Frame) -> u32 {
        self.get(route).map_or(0, |route| route.deliver(to, frame))
    }

    fn close(&self, route: &str, id: u64, code: u16, reason: &str) {
        let conn = self
            .get(route)
            .and_then(|route| route.state().conns.get(&id).cloned());
        if let Some(conn) = conn {
            let _ = conn.close(code, reason);
        }
    }
}
