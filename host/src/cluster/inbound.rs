//! What other nodes sent this one: presence changes go into the view,
//! deliveries onto this node's sockets.
//!
//! The link's reader hands each envelope to [`Inbound::offer`], which never
//! waits: a bounded queue (`queue_messages`) stands between the broker and
//! the task that applies them, so the reader keeps draining Redis even when
//! this node is too busy to keep up. Past the bound an envelope is dropped
//! and counted (`switchyard_cluster_dropped_total{reason="inbound_full"}`);
//! a dropped presence change makes its node's presence be read again in
//! full, so only deliveries are lost.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};

use crate::cluster::envelope::{Body, Envelope, Payload};
use crate::cluster::view::{Applied, Change};
use crate::cluster::{Cluster, Recipients};
use crate::wire::frame::Frame;

/// The sending side of the queue of envelopes to apply.
#[derive(Clone)]
pub struct Inbound {
    queue: mpsc::Sender<Envelope>,
}

impl Inbound {
    /// Starts the task that applies what arrives.
    pub fn start(cluster: Arc<Cluster>) -> Inbound {
        let (queue, mut arrived) = mpsc::channel(cluster.config.queue_messages);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(64);
            while arrived.recv_many(&mut batch, 64).await > 0 {
                for envelope in batch.drain(..) {
                    apply(&cluster, envelope);
                }
            }
        });
        Inbound { queue }
    }

    /// Queues `envelope` to be applied, or drops it when the queue is full.
    pub fn offer(&self, cluster: &Cluster, envelope: Envelope) {
        cluster.metrics.received.inc();
        if let Err(err) = self.queue.try_send(envelope) {
            let envelope = err.into_inner();
            cluster.metrics.dropped("inbound_full");
            if matches!(
                envelope.body,
                Body::Hello { .. } | Body::Upsert { .. } | Body::Gone { .. }
            ) {
                cluster.want_resync(envelope.node.as_str().into());
            }
        }
    }
}

fn apply(cluster: &Cluster, envelope: Envelope) {
    let Envelope {
        node,
        incarnation,
        body,
    } = envelope;
    if *node == *cluster.node {
        return;
    }
    let (seq, change) = match body {
        Body::Hello { seq } => (seq, Change::Hello),
        Body::Upsert { seq, member } => (seq, Change::Upsert(member)),
        Body::Gone { seq, id } => (seq, Change::Gone(id)),
        Body::Broadcast {
            route,
            scope,
            except,
            payload,
        } => {
            deliver(cluster, &route, Recipients::Scope(&scope, except), payload);
            return;
        }
        Body::Publish {
            route,
            group,
            except,
            payload,
        } => {
            deliver(cluster, &route, Recipients::Group(&group, except), payload);
            return;
        }
        Body::Send { route, to, payload } => {
            deliver(cluster, &route, Recipients::One(to), payload);
            return;
        }
        Body::Close {
            route,
            to,
            code,
            reason,
        } => {
            cluster.local.close(&route, to, code, &reason);
            return;
        }
    };
    let applied =
        cluster
            .view
            .write()
            .expect("cluster view lock")
            .apply(&node, incarnation, seq, change);
    if applied == Applied::Resync {
        cluster.want_resync(node.into());
    }
}

/// Queues `payload` for `to`, as one frame shared by every recipient.
fn deliver(cluster: &Cluster, route: &str, to: Recipients<'_>, payload: Payload) {
    let bytes = Bytes::from(payload.bytes);
    let frame = if payload.text {
        match Utf8Bytes::try_from(bytes) {
            Ok(text) => Frame::text(text),
            Err(_) => {
                tracing::warn!(route, "dropped a text message from another node: not UTF-8");
                return;
            }
        }
    } else {
        Frame::binary(bytes)
    };
    cluster.local.deliver(route, to, &frame);
}
