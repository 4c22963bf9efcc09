//! Connection limits: how many connections the server, each route and each
//! client address may hold at once.
//!
//! The server asks [`Admission::admit`] for a [`Permit`] after routing a
//! request and before answering `101`; a refusal becomes an HTTP answer
//! (503 when the server or the route is full, 429 when one address holds
//! too many). The permit lives as long as the connection and gives its
//! places back when dropped, however the connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::handshake::Rejection;

/// Live connection counts, checked against the configured limits.
pub struct Admission {
    config: Arc<Config>,
    /// Counts by route name and by client address. A std mutex: held only
    /// to read and update two map entries, never across an await.
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    routes: HashMap<Arc<str>, usize>,
    addresses: HashMap<IpAddr, usize>,
}

/// One admitted connection's places in the counts.
pub struct Permit {
    admission: Arc<Admission>,
    route: Arc<str>,
    address: Option<IpAddr>,
}

impl Admission {
    /// Empty counts for the limits of `config`.
    pub fn new(config: Arc<Config>) -> Arc<Admission> {
        Arc::new(Admission {
            config,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Takes a place for a connection from `address` to `route`, or says
    /// which limit is reached.
    pub fn admit(self: &Arc<Self>, route: &Arc<str>, address: IpAddr) -> Result<Permit, Rejection> {
        let limits = &self.config.limits;
        let route_limit = self.config.route_max_connections(route);
        let per_address =
            (limits.max_connections_per_ip > 0).then_some(limits.max_connections_per_ip);
        let mut counts = self.counts.lock().expect("admission lock");
        if counts.total >= limits.max_connections {
            return Err(Rejection::new(
                503,
                format!(
                    "the server is at its connection limit ({}); try again later",
                    limits.max_connections
                ),
            )
            .with_header("Retry-After", "1"));
        }
        let on_route = counts.routes.get(route).copied().unwrap_or(0);
        if let Some(limit) = route_limit
            && on_route >= limit
        {
            return Err(Rejection::new(
                503,
                format!("route {route} is at its connection limit ({limit}); try again later"),
            )
            .with_header("Retry-After", "1"));
        }
        if let Some(limit) = per_address {
            let from_address = counts.addresses.entry(address).or_insert(0);
            if *from_address >= limit {
                return Err(Rejection::new(
                    429,
                    format!("too many connections from your address (limit {limit})"),
                ));
            }
            *from_address += 1;
        }
        counts.total += 1;
        *counts.routes.entry(route.clone()).or_insert(0) += 1;
        Ok(Permit {
            admission: self.clone(),
            route: route.clone(),
            address: per_address.map(|_| address),
        })
    }

    /// Connections held now.
    pub fn total(&self) -> usize {
        self.counts.lock().expect("admission lock").total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.admission.counts.lock().expect("admission lock");
        counts.total -= 1;
        if let Some(n) = counts.routes.get_mut(&self.route) {
            *n -= 1;
            if *n == 0 {
                counts.routes.remove(&self.route);
            }
        }
        if let Some(address) = self.address
            && let Some(n) = counts.addresses.get_mut(&address)
        {
            *n -= 1;
            if *n == 0 {
                counts.addresses.remove(&address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(toml: &str) -> Arc<Admission> {
        Admission::new(Arc::new(Config::from_toml(toml).unwrap()))
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn global_limit_refuses_with_503_and_frees_on_drop() {
        let admission = admission("[limits]\nmax_connections = 2\n");
        let chat: Arc<str> = "chat".into();
        let first = admission.admit(&chat, A).unwrap();
        let _second = admission.admit(&chat, B).unwrap();
        let refused = admission.admit(&chat, A).err().unwrap();
        assert_eq!(refused.status, 503);
        assert!(
            refused.body.contains("connection limit (2)"),
            "{}",
            refused.body
        );
        drop(first);
        assert_eq!(admission.total(), 1);
        admission.admit(&chat, A).unwrap();
    }

    #[test]
    fn route_limit_names_the_route_and_leaves_others_alone() {
        let admission = admission("[routes.chat]\nmax_connections = 1\n");
        let chat: Arc<str> = "chat".into();
        let echo: Arc<str> = "echo".into();
        let held = admission.admit(&chat, A).unwrap();
        let refused = admission.admit(&chat, B).err().unwrap();
        assert_eq!(refused.status, 503);
        assert!(refused.body.contains("route chat"), "{}", refused.body);
        let _echo = admission.admit(&echo, A).unwrap();
        drop(held);
        admission.admit(&chat, B).unwrap();
    }

    #[test]
    fn address_limit_refuses_with_429_per_address() {
        let admission = admission("[limits]\nmax_connections_per_ip = 1\n");
        let chat: Arc<str> = "chat".into();
        let held = admission.admit(&chat, A).unwrap();
        assert_eq!(admission.admit(&chat, A).err().unwrap().status, 429);
        let _other = admission.admit(&chat, B).unwrap();
        drop(held);
        let _again = admission.admit(&chat, A).unwrap();
        // A refusal takes no place.
        assert_eq!(admission.total(), 2);
    }
}
