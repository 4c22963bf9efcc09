//! Routing and admission: which controller serves an upgrade, and whether
//! it may.
//!
//! The [`router`] matches a request path against the routing table
//! (patterns with captures, most specific first); [`auth`] checks the
//! route's roles against the request's token; [`admission`] bounds
//! handshakes and connections in all and per client; [`route`] holds each
//! served route's module version and hands out the instance that serves a
//! connection (shared, keyed or per connection). Rejections are HTTP answers
//! from the wire's [`handshake`](crate::wire::handshake).

pub mod admission;
pub mod auth;
pub mod route;
pub mod router;
