//! The cluster: several Switchyard nodes serving one application, joined
//! through one Redis server (`[cluster]` in the config). Without that
//! section none of this runs.
//!
//! What crosses nodes, and how:
//! - **Deliveries.** `broadcast`, `publish`, `send` and `close` reach
//!   connections on other nodes as one [`Envelope`] per receiving node,
//!   published on that node's inbox channel (`<prefix>:inbox:<node>`). Only
//!   nodes that serve a recipient get one; a node never sends to itself.
//!   The receiving node's host queues the frame straight on its sockets
//!   (no guest call), encoded once. One link task publishes everything in
//!   the order it was queued over one connection, so a publisher's
//!   messages arrive in order; nothing is retried, so nothing arrives
//!   twice.
//! - **Presence.** Each node keeps its connections (route, scope, groups,
//!   attachment) in a Redis hash (`<prefix>:presence:<node>`) and sends
//!   each change, numbered, to the other nodes' inboxes. Every node keeps a
//!   [`View`] of the others, which host calls read without waiting; a
//!   numbering gap, a new or restarted node, a reconnect and a timer
//!   (`resync_ms`) read a node's hash again in full.
//! - **Liveness.** Every `heartbeat_ms` a node refreshes its alive key
//!   (`<prefix>:alive:<node>`, expiring after `node_timeout_ms`) and reads
//!   the others'. A node whose key has expired is dead: its connections
//!   leave the view at the next heartbeat, so within `node_timeout_ms +
//!   heartbeat_ms` of its last heartbeat.
//!
//! Connection ids are unique across the cluster: a random 24-bit node tag,
//! drawn at each start, above a 40-bit counter (see [`Cluster::next_id`]).
//!
//! The broker's connection is [`link`]'s; delivery of what arrives is
//! [`inbound`]'s. Host calls only queue (bounded, `queue_messages`): while
//! the broker is unreachable, or the queue is full, deliveries to other
//! nodes are dropped and counted, and presence is written again in full
//! once the broker is back.

mod envelope;
mod inbound;
mod link;
mod view;

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{Notify, mpsc};

pub use envelope::Scope;
use envelope::{Body, Envelope, Member, Payload};
use view::View;

use crate::config;
use crate::metrics::ClusterMetrics;
use crate::wire::frame::Frame;

/// Bits of a connection id below the node tag.
const COUNTER_BITS: u32 = 40;
/// Bits of the node tag.
const TAG_BITS: u32 = 24;

/// Who a delivery from another node is for, on one route of this node.
#[derive(Debug, Clone, Copy)]
pub enum Recipients<'a> {
    /// The connections an instance with this scope reaches, but one.
    Scope(&'a Scope, Option<u64>),
    /// The members of a group, but one.
    Group(&'a str, Option<u64>),
    /// One connection.
    One(u64),
}

/// This node's connections, as the cluster reaches them: implemented by
/// the runtime, which knows the routes.
pub trait Local: Send + Sync {
    /// Queues `frame` for `to` on route `route`; returns how many took it.
    fn deliver(&self, route: &str, to: Recipients<'_>, frame: &Frame) -> u32;
    /// Starts closing connection `id` of route `route`.
    fn close(&self, route: &str, id: u64, code: u16, reason: &str);
}

/// This node's membership in the cluster. Every method returns at once.
pub struct Cluster {
    node: Arc<str>,
    incarnation: u64,
    config: config::Cluster,
    /// The node tag, shifted into place: the high bits of new ids.
    tag: AtomicU64,
    next: AtomicU64,
    /// The other nodes' connections. A std lock: held to read or apply a
    /// change, never across an await.
    view: RwLock<View>,
    /// This node's connections, as announced. A std mutex: held to change
    /// one and queue the change (which never waits), so changes are queued
    /// in the order they are numbered.
    presence: Mutex<Presence>,
    outbound: mpsc::Sender<Outbound>,
    /// For the link, and for [`Cluster::leave`].
    client: redis::Client,
    /// The link's connection to the broker is up.
    up: AtomicBool,
    /// A presence change could not be queued: write it all again.
    reannounce: AtomicBool,
    /// Deliveries dropped since the link last said so in the log.
    dropped_unlogged: AtomicU64,
    /// Nodes whose presence should be read again in full; `resync` wakes
    /// the link for them.
    dirty: Mutex<BTreeSet<Arc<str>>>,
    resync: Notify,
    /// The live nodes but this one, as the last heartbeat found them.
    peers: RwLock<Vec<Arc<str>>>,
    metrics: ClusterMetrics,
    local: Arc<dyn Local>,
    /// Stops the link ([`Cluster::leave`]).
    stop: tokio_util::sync::CancellationToken,
    /// The link task, to wait for it to stop. A std mutex: held to take
    /// the handle, never across an await.
    link: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// This node's connections and the number of the last change to them.
#[derive(Default)]
struct Presence {
    seq: u64,
    members: HashMap<u64, Member>,
}

/// Nodes a delivery goes to.
type Nodes = Vec<Arc<str>>;

/// What the link publishes: an envelope and where to.
struct Outbound {
    /// Those nodes; `None`: every live node but this one (presence).
    to: Option<Nodes>,
    envelope: Envelope,
}

/// A random number from the operating system's seed for hash maps: enough
/// for a node tag or name, without another dependency.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    hasher.finish()
}

fn random_tag() -> u64 {
    // Never 0, which a node outside any cluster uses.
    (random_u64() % ((1 << TAG_BITS) - 1) + 1) << COUNTER_BITS
}

/// `<host name>-<process id>-<4 random hex digits>`.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "switchyard".to_owned());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        random_u64() & 0xffff
    )
}

impl Cluster {
    /// Joins the cluster of `config`: starts the link to the broker, which
    /// keeps trying until it gets through. Must run within a tokio runtime.
    pub fn start(
        config: &config::Cluster,
        local: Arc<dyn Local>,
        metrics: ClusterMetrics,
    ) -> Result<Arc<Cluster>, redis::RedisError> {
        let client = redis::Client::open(config.redis_url.as_str())?;
        let node: Arc<str> = if config.node_id.is_empty() {
            default_node_id().into()
        } else {
            config.node_id.as_str().into()
        };
        let (outbound, queued) = mpsc::channel(config.queue_messages);
        let cluster = Arc::new(Cluster {
            node,
            incarnation: random_u64(),
            config: config.clone(),
            tag: AtomicU64::new(random_tag()),
            next: AtomicU64::new(1),
            view: RwLock::new(View::default()),
            presence: Mutex::new(Presence::default()),
            outbound,
            client,
            up: AtomicBool::new(false),
            reannounce: AtomicBool::new(false),
            dropped_unlogged: AtomicU64::new(0),
            dirty: Mutex::new(BTreeSet::new()),
            resync: Notify::new(),
            peers: RwLock::new(Vec::new()),
            metrics,
            local,
            stop: tokio_util::sync::CancellationToken::new(),
            link: Mutex::new(None),
        });
        tracing::info!(node = %cluster.node, url = %config.redis_url, "joining the cluster");
        let deliveries = inbound::Inbound::start(cluster.clone());
        let link = tokio::spawn(link::run(cluster.clone(), queued, deliveries));
        *cluster.link.lock().expect("cluster link lock") = Some(link);
        Ok(cluster)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the broker is connected.
    pub fn broker_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Live nodes but this one, as the last heartbeat found them.
    pub fn peers(&self) -> usize {
        self.peers.read().expect("peers lock").len()
    }

    /// Connections on other nodes, as this node knows them.
    pub fn remote_connections(&self) -> usize {
        self.view().count()
    }

    /// Brings the gauges read from the view up to date, for a scrape.
    pub fn refresh_metrics(&self) {
        self.metrics
            .remote_connections
            .set(self.remote_connections() as i64);
    }

    /// A new connection id: this node's tag above a counter.
    pub fn next_id(&self) -> u64 {
        let n = self.next.fetch_add(1, Ordering::Relaxed) & ((1 << COUNTER_BITS) - 1);
        self.tag.load(Ordering::Relaxed) | n
    }

    /// Asks the link to read `node`'s presence again in full.
    fn want_resync(&self, node: Arc<str>) {
        self.dirty.lock().expect("cluster dirty lock").insert(node);
        self.resync.notify_one();
    }

    fn view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().expect("cluster view lock")
    }

    fn presence(&self) -> std::sync::MutexGuard<'_, Presence> {
        self.presence.lock().expect("cluster presence lock")
    }

    // Presence: this node's connections, announced to the others.

    /// Connection `id` of `route` opened in an instance with `scope`. The
    /// others learn of it with its first change or [`Cluster::announce`],
    /// so with what its `on-open` set (attachment, groups).
    pub fn opened(&self, id: u64, route: &str, scope: Scope) {
        self.presence()
            .members
            .insert(id, Member::new(id, route, scope));
    }

    /// Tells the others about connection `id` as it is now (after its
    /// `on-open`).
    pub fn announce(&self, id: u64) {
        self.change(id, |_| {});
    }

    /// Connection `id` joined `group`.
    pub fn joined(&self, id: u64, group: &str) {
        self.change(id, |members| {
            if let Some(member) = members.get_mut(&id) {
                member.groups.insert(group.to_owned());
            }
        });
    }

    /// Connection `id` left `group`.
    pub fn left(&self, id: u64, group: &str) {
        self.change(id, |members| {
            if let Some(member) = members.get_mut(&id) {
                member.groups.remove(group);
            }
        });
    }

    /// Connection `id` has a new attachment.
    pub fn attached(&self, id: u64, value: &[u8]) {
        self.change(id, |members| {
            if let Some(member) = members.get_mut(&id) {
                member.attachment = Some(value.to_vec());
            }
        });
    }

    /// Connection `id` closed.
    pub fn gone(&self, id: u64) {
        self.change(id, |members| {
            members.remove(&id);
        });
    }

    /// Applies `change` to this node's connections and, while the broker
    /// is up, queues the changed record (or its end) for the other nodes.
    fn change(&self, id: u64, change: impl FnOnce(&mut HashMap<u64, Member>)) {
        let mut presence = self.presence();
        change(&mut presence.members);
        presence.seq += 1;
        let seq = presence.seq;
        if !self.broker_up() {
            // Written in full when the broker is back.
            return;
        }
        let body = match presence.members.get(&id) {
            Some(member) => Body::Upsert {
                seq,
                member: member.clone(),
            },
            None => Body::Gone { seq, id },
        };
        let presence = Outbound {
            to: None,
            envelope: self.envelope(body),
        };
        if self.outbound.try_send(presence).is_err() {
            self.reannounce.store(true, Ordering::Release);
            self.resync.notify_one();
        }
    }

    /// This node's connections and the number of their last change.
    fn snapshot(&self) -> (u64, Vec<Member>) {
        let presence = self.presence();
        (presence.seq, presence.members.values().cloned().collect())
    }

    fn envelope(&self, body: Body) -> Envelope {
        Envelope {
            node: self.node.to_string(),
            incarnation: self.incarnation,
            body,
        }
    }

    // Deliveries: what this node's controllers send to other nodes.

    /// Queues `body` for `nodes`; returns whether it was queued. While the
    /// broker is down, or the queue is full, it is dropped and counted.
    fn deliver(&self, nodes: Nodes, body: Body) -> bool {
        if nodes.is_empty() {
            return true;
        }
        let reason = if !self.broker_up() {
            "broker_down"
        } else {
            let delivery = Outbound {
                to: Some(nodes),
                envelope: self.envelope(body),
            };
            match self.outbound.try_send(delivery) {
                Ok(()) => return true,
                Err(_) => "queue_full",
            }
        };
        self.metrics.dropped(reason);
        self.dropped_unlogged.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// `broadcast` from an instance of `route` with `scope`: queued for
    /// the other nodes serving connections in reach. Returns how many
    /// connections there it was sent towards.
    pub fn broadcast(&self, route: &str, scope: &Scope, frame: &Frame, except: Option<u64>) -> u32 {
        let reach = self.view().scope_reach(route, scope, except);
        self.fan_out(reach, || Body::Broadcast {
            route: route.to_owned(),
            scope: scope.clone(),
            except,
            payload: payload(frame),
        })
    }

    /// `publish` to `group` of `route`: queued for the other nodes serving
    /// members. Returns how many members there it was sent towards.
    pub fn publish(&self, route: &str, group: &str, frame: &Frame, except: Option<u64>) -> u32 {
        let reach = self.view().group_reach(route, group, except);
        self.fan_out(reach, || Body::Publish {
            route: route.to_owned(),
            group: group.to_owned(),
            except,
            payload: payload(frame),
        })
    }

    /// Queues the envelope `body` makes for the nodes of `reach`, if it
    /// reaches anyone; returns the connections it went towards.
    fn fan_out(&self, reach: view::Reach, body: impl FnOnce() -> Body) -> u32 {
        if reach.count == 0 {
            return 0;
        }
        if self.deliver(reach.nodes, body()) {
            reach.count
        } else {
            0
        }
    }

    /// The node serving connection `id` of `route`, if it is another
    /// node's and within reach of `scope`.
    fn owner(&self, route: &str, scope: &Scope, id: u64) -> Option<Arc<str>> {
        let view = self.view();
        let remote = view.get(id)?;
        (remote.member.route == route && scope.reaches(&remote.member.scope))
            .then(|| remote.node.clone())
    }

    /// `send` to connection `to` of another node; `false` when no node in
    /// reach serves it.
    pub fn send(&self, route: &str, scope: &Scope, to: u64, frame: &Frame) -> bool {
        let Some(node) = self.owner(route, scope, to) else {
            return false;
        };
        self.deliver(
            vec![node],
            Body::Send {
                route: route.to_owned(),
                to,
                payload: payload(frame),
            },
        );
        true
    }

    /// `close` of connection `to` of another node; `false` when no node in
    /// reach serves it.
    pub fn close(&self, route: &str, scope: &Scope, to: u64, code: u16, reason: &str) -> bool {
        let Some(node) = self.owner(route, scope, to) else {
            return false;
        };
        self.deliver(
            vec![node],
            Body::Close {
                route: route.to_owned(),
                to,
                code,
                reason: reason.to_owned(),
            },
        );
        true
    }

    // What host calls read: the view, never the network.

    /// Connections of `route` on other nodes within reach of `scope`,
    /// sorted.
    pub fn connections(&self, route: &str, scope: &Scope) -> Vec<u64> {
        self.view().in_scope(route, scope)
    }

    /// Members of `group` of `route` on other nodes, sorted.
    pub fn members(&self, route: &str, group: &str) -> Vec<u64> {
        self.view().in_group(route, group)
    }

    /// The attachment of connection `id` of `route` on another node.
    pub fn attachment(&self, route: &str, id: u64) -> Option<Vec<u8>> {
        let view = self.view();
        let remote = view.get(id)?;
        if remote.member.route != route {
            return None;
        }
        remote.member.attachment.clone()
    }

    /// Leaves the cluster, for a server stopping: stops the link (no more
    /// heartbeats, nothing more published), then removes this node from
    /// the broker so that the others stop counting it at their next
    /// heartbeat rather than after `node_timeout_ms`.
    pub async fn leave(&self) {
        self.stop.cancel();
        let link = self.link.lock().expect("cluster link lock").take();
        if let Some(link) = link {
            let _ = link.await;
        }
        self.set_up(false);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), link::leave(self)).await;
    }
}

/// The payload of a data frame, as it goes to other nodes.
fn payload(frame: &Frame) -> Payload {
    Payload {
        text: frame.is_text(),
        bytes: frame.payload().to_vec(),
    }
}
