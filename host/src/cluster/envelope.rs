//! What nodes say to each other through the broker, and how it is encoded
//! (MessagePack, through `rmp-serde`): presence (a connection opened,
//! changed or closed, with the sender's sequence number) and deliveries
//! (broadcast, publish, send, close). One envelope is one Redis message on
//! the receiving node's inbox channel.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Which connections an instance reaches with `broadcast` and
/// `connections`: its route's, its key's, or only its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// A shared instance: every connection of the route.
    Route,
    /// A keyed instance: the route's connections with this key.
    Key(String),
    /// A per-connection instance: no other connection.
    Own,
}

impl Scope {
    /// Whether a connection in `other` is within reach of an instance
    /// whose scope is `self` (on the same route).
    pub fn reaches(&self, other: &Scope) -> bool {
        match self {
            Scope::Route => true,
            Scope::Key(key) => matches!(other, Scope::Key(k) if k == key),
            Scope::Own => false,
        }
    }
}

/// What the cluster knows of one connection: where it belongs and what
/// other nodes may ask about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The connection id, unique across the cluster.
    pub id: u64,
    /// The route's name.
    pub route: String,
    /// The instance scope it belongs to.
    pub scope: Scope,
    /// Its groups.
    pub groups: BTreeSet<String>,
    /// Its attachment.
    #[serde(with = "serde_bytes")]
    pub attachment: Option<Vec<u8>>,
}

impl Member {
    /// A connection that just opened: no groups, no attachment.
    pub fn new(id: u64, route: &str, scope: Scope) -> Member {
        Member {
            id,
            route: route.to_owned(),
            scope,
            groups: BTreeSet::new(),
            attachment: None,
        }
    }
}

/// A text or binary message, as a controller sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// A text message (valid UTF-8), else binary.
    pub text: bool,
    /// The message's bytes.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// One message from a node to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending node's id.
    pub node: String,
    /// The sending process's start: a node id that comes back after a
    /// restart starts its sequence again, and this tells the two apart.
    pub incarnation: u64,
    /// What it says.
    pub body: Body,
}

/// What a node says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// The sender (re)wrote its presence in full, at sequence `seq`: read
    /// it again.
    Hello {
        /// Its presence sequence number now.
        seq: u64,
    },
    /// A connection of the sender opened or changed (presence change `seq`).
    Upsert {
        /// The sender's presence sequence number after this change.
        seq: u64,
        /// The connection, in full.
        member: Member,
    },
    /// A connection of the sender closed (presence change `seq`).
    Gone {
        /// The sender's presence sequence number after this change.
        seq: u64,
        /// The connection.
        id: u64,
    },
    /// `broadcast` from an instance of `route` with `scope`.
    Broadcast {
        /// The route's name.
        route: String,
        /// The broadcasting instance's scope.
        scope: Scope,
        /// A connection not to deliver to.
        except: Option<u64>,
        /// The message.
        payload: Payload,
    },
    /// `publish` to a group of `route`.
    Publish {
        /// The route's name.
        route: String,
        /// The group.
        group: String,
        /// A connection not to deliver to.
        except: Option<u64>,
        /// The message.
        payload: Payload,
    },
    /// `send` to one connection of the receiver.
    Send {
        /// The route's name.
        route: String,
        /// The connection.
        to: u64,
        /// The message.
        payload: Payload,
    },
    /// `close` of one connection of the receiver.
    Close {
        /// The route's name.
        route: String,
        /// The connection.
        to: u64,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
}

impl Envelope {
    /// The bytes that go to the broker.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("an envelope always encodes")
    }

    /// An envelope from the broker's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_garbage_is_an_error() {
        let mut member = Member::new(7 << 40 | 3, "rooms", Scope::Key("lounge".into()));
        member.groups.insert("admins".into());
        member.attachment = Some(vec![0, 159, 146, 150]);
        for body in [
            Body::Hello { seq: 9 },
            Body::Upsert { seq: 10, member },
            Body::Gone { seq: 11, id: 3 },
            Body::Broadcast {
                route: "chat".into(),
                scope: Scope::Route,
                except: Some(4),
                payload: Payload {
                    text: false,
                    bytes: vec![0xff, 0],
                },
            },
            Body::Close {
                route: "chat".into(),
                to: 5,
                code: 4000,
                reason: "bye".into(),
            },
        ] {
            let envelope = Envelope {
                node: "a".into(),
                incarnation: 42,
                body,
            };
            assert_eq!(Envelope::decode(&envelope.encode()).unwrap(), envelope);
        }
        assert!(Envelope::decode(b"not an envelope").is_err());
    }

    #[test]
    fn a_scope_reaches_its_route_its_key_or_nothing() {
        let lounge = Scope::Key("lounge".into());
        assert!(Scope::Route.reaches(&lounge));
        assert!(lounge.reaches(&Scope::Key("lounge".into())));
        assert!(!lounge.reaches(&Scope::Key("attic".into())));
        assert!(!lounge.reaches(&Scope::Route));
        assert!(!Scope::Own.reaches(&Scope::Own));
    }
}
