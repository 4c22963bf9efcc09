//! The link to the broker: one task that connects to Redis, keeps the
//! connection, and reconnects when it is lost.
//!
//! A session holds two connections from the `redis` crate: a multiplexed
//! one for commands and publishing, and a pub/sub one subscribed to this
//! node's inbox. Both come and go together, and a new session must write
//! this node's presence again and read the others', so the loop here
//! reconnects rather than the crate's connection manager. While connected,
//! the task publishes what host calls queued (in batches, in order, one
//! pipeline each), beats the heartbeat, and reads presence that changed.
//! While not, it drops and counts what is queued, and tries again every
//! `retry_ms`, saying so once per try.
//!
//! Redis keys, under `prefix`: `nodes` (a set of node ids), `alive:<node>`
//! (`<tag>:<incarnation>`, expiring after `node_timeout_ms`), `presence:<node>` (a hash:
//! `inc`, `seq` and `c:<id>` per connection, expiring likewise), and the
//! channel `inbox:<node>`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::cluster::envelope::{Body, Envelope, Member};
use crate::cluster::inbound::Inbound;
use crate::cluster::{COUNTER_BITS, Cluster, Outbound, TAG_BITS, random_tag};

/// Most queued envelopes published in one pipeline.
const BATCH: usize = 256;

impl Cluster {
    fn key(&self, what: &str, node: &str) -> String {
        format!("{}:{what}:{node}", self.config.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.config.prefix)
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.node_timeout_ms)
    }

    pub(super) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.metrics.broker_up.set(i64::from(up));
    }

    /// Says in the log how many deliveries were dropped since it last did.
    fn log_dropped(&self) {
        let dropped = self.dropped_unlogged.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            warn!(
                node = %self.node,
                dropped,
                "messages for other nodes were dropped (the broker was unreachable or the queue to it full); \
                 they are not retried"
            );
        }
    }
}

/// Runs the link until the process ends.
pub(super) async fn run(
    cluster: Arc<Cluster>,
    mut queued: mpsc::Receiver<Outbound>,
    inbound: Inbound,
) {
    let retry = Duration::from_millis(cluster.config.retry_ms);
    loop {
        let opened = tokio::select! {
            () = cluster.stop.cancelled() => return,
            opened = Session::open(&cluster, &inbound) => opened,
        };
        match opened {
            Ok(session) => {
                info!(node = %cluster.node, url = %cluster.config.redis_url, "connected to the cluster's broker");
                let error = session.run(&cluster, &mut queued).await;
                cluster.set_up(false);
                if cluster.stop.is_cancelled() {
                    return;
                }
                warn!(
                    node = %cluster.node,
                    %error,
                    "lost the cluster's broker: serving this node's clients only, reconnecting every {} ms",
                    retry.as_millis()
                );
            }
            Err(error) => warn!(
                node = %cluster.node,
                url = %cluster.config.redis_url,
                %error,
                "cannot reach the cluster's broker: serving this node's clients only, retrying in {} ms",
                retry.as_millis()
            ),
        }
        // Until the next try, what host calls queued cannot be sent.
        let next = tokio::time::Instant::now() + retry;
        loop {
            tokio::select! {
                () = cluster.stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => break,
                out = queued.recv() => match out {
                    Some(out) if out.to.is_some() => {
                        cluster.metrics.dropped("broker_down");
                        cluster.dropped_unlogged.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) => {}
                    None => return,
                },
            }
        }
        cluster.log_dropped();
    }
}

/// Removes this node from the broker (once the link has stopped), so
/// that the others forget it at their next heartbeat.
pub(super) async fn leave(cluster: &Cluster) {
    let Ok(mut conn) = cluster.client.get_multiplexed_async_connection().await else {
        return;
    };
    let node = &*cluster.node;
    let _: redis::RedisResult<()> = redis::pipe()
        .cmd("DEL")
        .arg(cluster.key("alive", node))
        .arg(cluster.key("presence", node))
        .ignore()
        .cmd("SREM")
        .arg(cluster.nodes_key())
        .arg(node)
        .ignore()
        .query_async(&mut conn)
        .await;
}

/// One connection to the broker, from connect to loss.
struct Session {
    conn: MultiplexedConnection,
    /// The task reading this node's inbox; it ends with the subscription.
    /// Taken by [`Session::run`].
    reader: Option<tokio::task::JoinHandle<()>>,
    connected: Instant,
    last_full_read: Instant,
    /// Whether the first heartbeat has run.
    registered: bool,
    /// When a clash of node ids was last logged.
    clash_logged: Option<Instant>,
}

impl Session {
    /// Connects, subscribes to this node's inbox, registers this node,
    /// writes its presence in full and reads the others'.
    async fn open(cluster: &Arc<Cluster>, inbound: &Inbound) -> redis::RedisResult<Session> {
        let wait = cluster.timeout().min(Duration::from_secs(5));
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(wait))
            .set_response_timeout(Some(wait));
        let conn = cluster
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut pubsub = tokio::time::timeout(wait, cluster.client.get_async_pubsub())
            .await
            .map_err(|_| {
                broken(
                    std::io::ErrorKind::TimedOut,
                    "connecting for pub/sub timed out",
                )
            })??;
        tokio::time::timeout(wait, pubsub.subscribe(cluster.key("inbox", &cluster.node)))
            .await
            .map_err(|_| broken(std::io::ErrorKind::TimedOut, "subscribing timed out"))??;
        let mut stream = pubsub.into_on_message();
        let reader = {
            let cluster = cluster.clone();
            let inbound = inbound.clone();
            tokio::spawn(async move {
                while let Some(msg) = stream.next().await {
                    match Envelope::decode(msg.get_payload_bytes()) {
                        Ok(envelope) => inbound.offer(&cluster, envelope),
                        Err(error) => {
                            tracing::debug!(%error, "ignored a message on the inbox that is not a Switchyard envelope")
                        }
                    }
                }
            })
        };
        let mut session = Session {
            conn,
            reader: Some(reader),
            connected: Instant::now(),
            last_full_read: Instant::now(),
            registered: false,
            clash_logged: None,
        };
        let opened = async {
            session.heartbeat(cluster).await?;
            // Presence changes queue from now on; the full write below
            // covers every change before it.
            cluster.set_up(true);
            session.announce(cluster).await?;
            for peer in cluster.peers.read().expect("peers lock").iter() {
                cluster
                    .dirty
                    .lock()
                    .expect("cluster dirty lock")
                    .insert(peer.clone());
            }
            session.read_dirty(cluster).await
        };
        match opened.await {
            Ok(()) => Ok(session),
            Err(err) => {
                cluster.set_up(false);
                if let Some(reader) = session.reader.take() {
                    reader.abort();
                }
                Err(err)
            }
        }
    }

    /// Publishes, beats and reads until the connection fails; returns why.
    async fn run(
        mut self,
        cluster: &Arc<Cluster>,
        queued: &mut mpsc::Receiver<Outbound>,
    ) -> String {
        let mut beat = tokio::time::interval(Duration::from_millis(cluster.config.heartbeat_ms));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.tick().await;
        let mut batch = Vec::with_capacity(BATCH);
        let mut reader = self.reader.take().expect("a session runs once");
        let result: redis::RedisResult<()> = async {
            loop {
                tokio::select! {
                    () = cluster.stop.cancelled() => {
                        // What the last connections' closes queued still
                        // goes out.
                        while let Ok(out) = queued.try_recv() {
                            batch.push(out);
                        }
                        if !batch.is_empty() {
                            self.publish(cluster, &mut batch).await?;
                        }
                        return Ok(());
                    }
                    n = queued.recv_many(&mut batch, BATCH) => {
                        if n == 0 {
                            return Ok(());
                        }
                        self.publish(cluster, &mut batch).await?;
                    }
                    _ = beat.tick() => self.heartbeat(cluster).await?,
                    () = cluster.resync.notified() => {}
                    _ = &mut reader => return Err(broken(std::io::ErrorKind::ConnectionAborted, "the inbox subscription ended")),
                }
                if cluster.reannounce.swap(false, Ordering::AcqRel) {
                    self.announce(cluster).await?;
                }
                self.read_dirty(cluster).await?;
            }
        }
        .await;
        reader.abort();
        match result {
            Ok(()) => "the server is stopping".to_owned(),
            Err(err) => err.to_string(),
        }
    }

    /// Publishes `batch`, in order, in one pipeline; what a failed
    /// pipeline carried counts as dropped (it may or may not have gone out:
    /// it is not sent again).
    async fn publish(
        &mut self,
        cluster: &Cluster,
        batch: &mut Vec<Outbound>,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        let presence = cluster.key("presence", &cluster.node);
        let peers = cluster.peers.read().expect("peers lock").clone();
        let mut published = 0;
        let mut deliveries = 0;
        for Outbound { to, envelope } in batch.iter() {
            match &envelope.body {
                Body::Upsert { seq, member } => {
                    pipe.cmd("HSET")
                        .arg(&presence)
                        .arg(format!("c:{}", member.id))
                        .arg(rmp_serde::to_vec(member).expect("a member always encodes"))
                        .arg("seq")
                        .arg(seq)
                        .ignore();
                }
                Body::Gone { seq, id } => {
                    pipe.cmd("HDEL")
                        .arg(&presence)
                        .arg(format!("c:{id}"))
                        .ignore()
                        .cmd("HSET")
                        .arg(&presence)
                        .arg("seq")
                        .arg(seq)
                        .ignore();
                }
                _ => deliveries += 1,
            }
            let bytes = envelope.encode();
            for node in to.as_ref().unwrap_or(&peers) {
                pipe.cmd("PUBLISH")
                    .arg(cluster.key("inbox", node))
                    .arg(&bytes)
                    .ignore();
                published += 1;
            }
        }
        batch.clear();
        match pipe.query_async::<()>(&mut self.conn).await {
            Ok(()) => {
                cluster.metrics.sent.inc_by(published);
                Ok(())
            }
            Err(err) => {
                for _ in 0..deliveries {
                    cluster.metrics.dropped("broker_down");
                }
                cluster
                    .dropped_unlogged
                    .fetch_add(deliveries, Ordering::Relaxed);
                Err(err)
            }
        }
    }

    /// Says this node is alive, learns which others are, forgets the dead
    /// ones' connections and reads the new ones'.
    async fn heartbeat(&mut self, cluster: &Cluster) -> redis::RedisResult<()> {
        let node = &*cluster.node;
        let timeout = cluster.config.node_timeout_ms;
        let alive = cluster.key("alive", node);
        let tag = cluster.tag.load(Ordering::Relaxed) >> COUNTER_BITS;
        let mine = format!("{tag}:{}", cluster.incarnation);
        let (before, members): (Option<String>, Vec<String>) = redis::pipe()
            .cmd("SET")
            .arg(&alive)
            .arg(&mine)
            .arg("PX")
            .arg(timeout)
            .arg("GET")
            .cmd("SADD")
            .arg(cluster.nodes_key())
            .arg(node)
            .ignore()
            .cmd("PEXPIRE")
            .arg(cluster.key("presence", node))
            .arg(timeout)
            .ignore()
            .cmd("SMEMBERS")
            .arg(cluster.nodes_key())
            .query_async(&mut self.conn)
            .await?;
        match before {
            None if self.registered => {
                // Taken for dead (a stall longer than node_timeout_ms) or
                // the broker lost its data: the others forgot this node.
                warn!(node = %node, "this node's heartbeat had lapsed: announcing its connections again");
                cluster.reannounce.store(true, Ordering::Release);
            }
            // The first heartbeat may find this node's previous run; later
            // ones find only their own value, unless another live process
            // beats under the same id.
            Some(other) if self.registered && other != mine => {
                let due = self
                    .clash_logged
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
                if due {
                    self.clash_logged = Some(Instant::now());
                    tracing::error!(
                        node = %node,
                        "another live process uses this node id: give each node its own \
                         `cluster.node_id` (or leave it unset to derive one); deliveries and presence \
                         between the two are mixed up until then"
                    );
                }
            }
            _ => {}
        }
        self.registered = true;
        let others: Vec<String> = members.into_iter().filter(|m| m != node).collect();
        let values: Vec<Option<String>> = if others.is_empty() {
            Vec::new()
        } else {
            let keys: Vec<String> = others.iter().map(|o| cluster.key("alive", o)).collect();
            redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut self.conn)
                .await?
        };
        // Right after connecting, the others may still be reconnecting
        // (after the broker restarted): nobody is taken for dead until
        // they have had a node timeout to come back.
        let judge = self.connected.elapsed() >= cluster.timeout();
        let mut live: Vec<Arc<str>> = Vec::new();
        let mut dead = Vec::new();
        for (other, value) in others.into_iter().zip(values) {
            let their_tag = value.map(|v| v.split(':').next().unwrap_or("").parse::<u64>().ok());
            match their_tag {
                Some(their_tag) => {
                    if their_tag == Some(tag) && *other < *node {
                        let fresh = random_tag();
                        warn!(
                            node,
                            other,
                            "another live node drew this node's id tag: new connections get a new one"
                        );
                        cluster.tag.store(fresh, Ordering::Relaxed);
                    }
                    live.push(other.into());
                }
                None => dead.push(other),
            }
        }
        if judge && !dead.is_empty() {
            let _: () = redis::cmd("SREM")
                .arg(cluster.nodes_key())
                .arg(&dead)
                .query_async(&mut self.conn)
                .await?;
        }
        {
            let mut view = cluster.view.write().expect("cluster view lock");
            let known: Vec<Arc<str>> = view.nodes().cloned().collect();
            for gone in known.iter().filter(|n| !live.contains(n)) {
                if judge {
                    info!(node = %node, other = %gone, "a node stopped beating: its connections are forgotten");
                    view.forget_node(gone);
                }
            }
            let mut dirty = cluster.dirty.lock().expect("cluster dirty lock");
            for new in live.iter().filter(|n| !known.contains(n)) {
                dirty.insert(new.clone());
            }
            if self.last_full_read.elapsed() >= Duration::from_millis(cluster.config.resync_ms) {
                self.last_full_read = Instant::now();
                dirty.extend(live.iter().cloned());
            }
            cluster.metrics.remote_connections.set(view.count() as i64);
        }
        cluster.metrics.nodes.set(live.len() as i64 + 1);
        *cluster.peers.write().expect("peers lock") = live;
        cluster.log_dropped();
        Ok(())
    }

    /// Writes this node's presence in full and tells the others to read it.
    async fn announce(&mut self, cluster: &Cluster) -> redis::RedisResult<()> {
        let (seq, members) = cluster.snapshot();
        let presence = cluster.key("presence", &cluster.node);
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(&presence).ignore();
        let hset = pipe
            .cmd("HSET")
            .arg(&presence)
            .arg("inc")
            .arg(cluster.incarnation)
            .arg("seq")
            .arg(seq);
        for member in &members {
            hset.arg(format!("c:{}", member.id))
                .arg(rmp_serde::to_vec(member).expect("a member always encodes"));
        }
        hset.ignore();
        pipe.cmd("PEXPIRE")
            .arg(&presence)
            .arg(cluster.config.node_timeout_ms)
            .ignore();
        let hello = cluster.envelope(Body::Hello { seq }).encode();
        let peers = cluster.peers.read().expect("peers lock").clone();
        for peer in &peers {
            pipe.cmd("PUBLISH")
                .arg(cluster.key("inbox", peer))
                .arg(&hello)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn).await?;
        cluster.metrics.sent.inc_by(peers.len() as u64);
        Ok(())
    }

    /// Reads in full the presence of the nodes marked for it.
    async fn read_dirty(&mut self, cluster: &Cluster) -> redis::RedisResult<()> {
        let dirty = std::mem::take(&mut *cluster.dirty.lock().expect("cluster dirty lock"));
        for node in dirty {
            let fields: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
                .arg(cluster.key("presence", &node))
                .query_async(&mut self.conn)
                .await?;
            let Some((incarnation, seq, members)) = parse_presence(&fields) else {
                // Not written yet (it is connecting) or gone: its hello or
                // the heartbeat will tell.
                continue;
            };
            cluster.metrics.resyncs.inc();
            let mut view = cluster.view.write().expect("cluster view lock");
            view.replace(&node, incarnation, seq, members);
            cluster.metrics.remote_connections.set(view.count() as i64);
        }
        Ok(())
    }
}

/// A node's presence hash: its incarnation, sequence number and members.
fn parse_presence(fields: &HashMap<String, Vec<u8>>) -> Option<(u64, u64, Vec<Member>)> {
    let number =
        |key: &str| -> Option<u64> { std::str::from_utf8(fields.get(key)?).ok()?.parse().ok() };
    let incarnation = number("inc")?;
    let seq = number("seq")?;
    let members = fields
        .iter()
        .filter(|(key, _)| key.starts_with("c:"))
        .filter_map(|(_, value)| rmp_serde::from_slice(value).ok())
        .collect();
    Some((incarnation, seq, members))
}

fn broken(kind: std::io::ErrorKind, what: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(kind, what.to_owned()))
}

const _: () = assert!(TAG_BITS + COUNTER_BITS == 64);
