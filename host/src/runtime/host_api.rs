//! The `host` interface of the WIT world: what a controller may ask of the
//! host while it handles an event.
//!
//! [`HostState`] is the data of one instance's wasmtime `Store`. It holds the
//! controller's connection table, which is host-owned: when an instance is
//! replaced (after a trap, or on reload) the table moves to the new store.
//! Every function here returns at once; sending only queues a frame on a
//! [`ConnHandle`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::runtime::engine::MemoryCap;
use crate::runtime::fanout::Fanout;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::cluster::Scope;
use crate::runtime::bindings::switchyard::controller::types::{HostError, LogLevel};
use crate::runtime::bindings::switchyard::controller::{host, types};
use crate::runtime::bindings::{Connection, Message};
use crate::runtime::kv::{KvStore, SharedKv};
use crate::runtime::shared::{MAX_GROUP_NAME, RouteShared};
use crate::wire::ConnectionInfo;
use crate::wire::frame::Frame;
use crate::wire::opcode::close_code_valid;
use crate::wire::outbound::{ConnHandle, PushError};

/// Open connections of one controller instance, by id. Ids grow with time,
/// so iteration order is connection order.
pub type ConnTable = BTreeMap<u64, Arc<ConnHandle>>;

/// What the host keeps for a controller across instances: moved from the
/// old store to the new one after a trap or on a hot reload.
pub struct HostOwned {
    /// The instance's open connections.
    pub conns: ConnTable,
    /// What each connection that got `on-open` here is, until its
    /// `on-close` has returned (a closing connection has left `conns`).
    pub infos: HashMap<u64, Arc<ConnectionInfo>>,
    /// The `host.state-*` key-value store.
    pub kv: SharedKv,
    /// Route-wide state: every connection, groups, attachments.
    pub route: Arc<RouteShared>,
    /// Which of the route's connections, on any node, `broadcast` and
    /// `connections` reach.
    pub scope: Scope,
    /// The broadcasts: the feed the connections read them from.
    pub fanout: Fanout,
}

impl HostOwned {
    /// No connections yet.
    pub fn new(kv: SharedKv, route: Arc<RouteShared>, scope: Scope) -> HostOwned {
        HostOwned {
            conns: ConnTable::new(),
            infos: HashMap::new(),
            kv,
            route,
            scope,
            fanout: Fanout::default(),
        }
    }

    /// Moves the connection table out, leaving the shared parts in place.
    pub fn take(&mut self) -> HostOwned {
        HostOwned {
            conns: std::mem::take(&mut self.conns),
            infos: std::mem::take(&mut self.infos),
            kv: self.kv.clone(),
            route: self.route.clone(),
            scope: self.scope.clone(),
            fanout: std::mem::take(&mut self.fanout),
        }
    }

    /// Drops what is left of connection `id` once its `on-close` has run
    /// (or would have: it never got `on-open` here): its record, and its
    /// route-wide entries (attachment, groups).
    pub fn forget(&mut self, id: u64) {
        self.infos.remove(&id);
        self.route.forget(id);
    }

    fn kv(&self) -> std::sync::MutexGuard<'_, KvStore> {
        self.kv.lock().expect("key-value store lock")
    }
}

/// The sizes the host functions enforce on a controller, from the config;
/// `host.get-limits` reports them.
#[derive(Debug, Clone, Copy)]
pub struct GuestSizes {
    /// Largest message a controller may send (`limits.max_message_bytes`).
    pub max_message_bytes: usize,
    /// Largest attachment (`sandbox.attachment_bytes`).
    pub attachment_bytes: usize,
    /// Largest key and value in the store (`sandbox.state_value_bytes`).
    pub state_value_bytes: usize,
    /// Largest store (`sandbox.state_total_bytes`).
    pub state_total_bytes: usize,
}

impl GuestSizes {
    /// The frame for a message a controller sends (by a host call or as a
    /// handler's reply), if it is within `limits.max_message_bytes`: the
    /// one place that limit is checked on the way out.
    pub fn frame(&self, msg: Message) -> Result<Frame, HostError> {
        if msg.len() > self.max_message_bytes {
            return Err(HostError::TooLarge);
        }
        Ok(msg.into_frame())
    }

    /// The sizes of `config`.
    pub fn of(config: &crate::Config) -> Self {
        GuestSizes {
            max_message_bytes: config.limits.max_message_bytes,
            attachment_bytes: config.sandbox.attachment_bytes,
            state_value_bytes: config.sandbox.state_value_bytes,
            state_total_bytes: config.sandbox.state_total_bytes,
        }
    }
}

/// The data of an instance's store.
pub struct HostState {
    /// Connections and key-value store; survive instance replacement.
    pub owned: HostOwned,
    /// The route name, to tag logs.
    pub route: Arc<str>,
    /// What a controller may send and store.
    pub sizes: GuestSizes,
    /// Epoch ticks left for the running event; see `instance`.
    pub ticks_left: u64,
    /// Caps the instance's memory and notes when it should be recycled.
    pub memory: MemoryCap,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostState {
    /// State for a fresh instance owning `conns`.
    pub fn new(route: Arc<str>, owned: HostOwned, sizes: GuestSizes, memory: MemoryCap) -> Self {
        // No preopened directories, no network, no environment, no args.
        let wasi = WasiCtx::builder()
            .stdout(crate::runtime::guest_log::GuestOutput::new(
                route.clone(),
                "stdout",
            ))
            .stderr(crate::runtime::guest_log::GuestOutput::new(
                route.clone(),
                "stderr",
            ))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            owned,
            route,
            sizes,
            ticks_left: 0,
            memory,
            wasi,
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn host_error(err: PushError) -> HostError {
    match err {
        PushError::Closed => HostError::Closed,
        PushError::SlowConsumer => HostError::SlowConsumer,
    }
}

impl types::Host for HostState {}

impl HostState {
    /// Wakes the recipients of the run's broadcasts that wait for one (see
    /// [`crate::runtime::fanout`]): before a recipient leaves, and when the
    /// run of events ends.
    pub fn hand_over(&mut self) {
        let owned = &mut self.owned;
        owned.fanout.hand_over(&owned.conns);
    }

    /// Checks that `conn` is one of this instance's open connections.
    fn own(&self, conn: u64) -> Result<&Arc<ConnHandle>, HostError> {
        self.owned
            .conns
            .get(&conn)
            .ok_or(HostError::UnknownConnection)
    }
}

impl host::Host for HostState {
    fn get_limits(&mut self) -> types::Limits {
        let sizes = self.sizes;
        types::Limits {
            max_message_bytes: sizes.max_message_bytes as u64,
            attachment_bytes: sizes.attachment_bytes as u64,
            state_value_bytes: sizes.state_value_bytes as u64,
            state_total_bytes: sizes.state_total_bytes as u64,
        }
    }

    fn connection_info(&mut self, conn: u64) -> Option<Connection> {
        self.owned
            .infos
            .get(&conn)
            .map(|info| Connection::from(&**info))
    }

    fn send(&mut self, to: u64, msg: Message) -> Result<(), HostError> {
        let frame = self.sizes.frame(msg)?;
        match self.own(to) {
            Ok(conn) => conn.push(frame).map_err(host_error),
            Err(err) => {
                let owned = &self.owned;
                let cluster = owned.route.cluster.as_ref().ok_or(err)?;
                match cluster.send(&owned.route.name, &owned.scope, to, &frame) {
                    true => Ok(()),
                    false => Err(err),
                }
            }
        }
    }

    fn broadcast(&mut self, msg: Message, except: Option<u64>) -> Result<u32, HostError> {
        // One frame in the feed, and at most one compressed frame, made by
        // the first recipient that reads it.
        let frame = self.sizes.frame(msg)?;
        let mut queued = 0;
        for (id, conn) in &self.owned.conns {
            if Some(*id) != except && !conn.is_closing() {
                queued += 1;
            }
        }
        let owned = &self.owned;
        owned.route.metrics.deliveries.inc_by(u64::from(queued));
        if let Some(cluster) = &owned.route.cluster {
            queued += cluster.broadcast(&owned.route.name, &owned.scope, &frame, except);
        }
        let owned = &mut self.owned;
        owned.fanout.add(frame, except, &owned.conns);
        Ok(queued)
    }

    fn connections(&mut self) -> Vec<u64> {
        let owned = &self.owned;
        let mut ids: Vec<u64> = owned.conns.keys().copied().collect();
        if let Some(cluster) = &owned.route.cluster {
            ids.extend(cluster.connections(&owned.route.name, &owned.scope));
        }
        ids
    }

    fn close(&mut self, conn: u64, code: u16, reason: String) -> Result<(), HostError> {
        if !close_code_valid(code) {
            return Err(HostError::InvalidCloseCode);
        }
        match self.own(conn) {
            Ok(handle) => handle.close(code, &reason).map_err(host_error),
            Err(err) => {
                let owned = &self.owned;
                let cluster = owned.route.cluster.as_ref().ok_or(err)?;
                match cluster.close(&owned.route.name, &owned.scope, conn, code, &reason) {
                    true => Ok(()),
                    false => Err(err),
                }
            }
        }
    }

    fn log(&mut self, level: LogLevel, message: String) {
        let route = &*self.route;
        match level {
            LogLevel::Trace => tracing::trace!(target: "guest", route, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "guest", route, "{message}"),
            LogLevel::Info => tracing::info!(target: "guest", route, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "guest", route, "{message}"),
            LogLevel::Error => tracing::error!(target: "guest", route, "{message}"),
        }
    }

    fn state_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.owned.kv().get(&key).map(<[u8]>::to_vec)
    }

    fn state_set(&mut self, key: String, value: Vec<u8>) -> Result<(), HostError> {
        self.owned
            .kv()
            .set(key, value)
            .map_err(|_| HostError::TooLarge)
    }

    fn state_delete(&mut self, key: String) -> bool {
        self.owned.kv().delete(&key)
    }

    fn state_keys(&mut self) -> Vec<String> {
        self.owned.kv().keys()
    }

    fn join(&mut self, conn: u64, group: String) -> Result<(), HostError> {
        self.own(conn)?;
        if group.len() > MAX_GROUP_NAME {
            return Err(HostError::TooLarge);
        }
        self.owned.route.join(conn, &group);
        Ok(())
    }

    fn leave(&mut self, conn: u64, group: String) -> Result<bool, HostError> {
        self.own(conn)?;
        Ok(self.owned.route.leave(conn, &group))
    }

    fn publish(
        &mut self,
        group: String,
        msg: Message,
        except: Option<u64>,
    ) -> Result<u32, HostError> {
        let frame = self.sizes.frame(msg)?;
        Ok(self.owned.route.publish(&group, &frame, except))
    }

    fn members(&mut self, group: String) -> Vec<u64> {
        self.owned.route.members(&group)
    }

    fn set_attachment(&mut self, conn: u64, value: Vec<u8>) -> Result<(), HostError> {
        self.own(conn)?;
        if value.len() > self.sizes.attachment_bytes {
            return Err(HostError::TooLarge);
        }
        self.owned.route.set_attachment(conn, value);
        Ok(())
    }

    fn attachment(&mut self, conn: u64) -> Option<Vec<u8>> {
        self.owned.route.attachment(conn)
    }
}
