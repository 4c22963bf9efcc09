//! Connection limits: how many connections the server, each route and each
//! client address may hold at once, and how many may be in their upgrade.
//!
//! The accept loop asks [`Admission::begin_upgrade`] for an
//! [`UpgradePermit`] before it spends anything on a new socket: sockets
//! that have not sent their request yet are bounded server-wide and per
//! address, so silent ones cannot take every file descriptor (503 or 429
//! beyond, written without waiting, and the socket closed).
//!
//! The server asks [`Admission::admit`] for a [`Permit`] after routing a
//! request and before answering `101`; a refusal becomes an HTTP answer
//! (503 when the server or the route is full, 429 when one address holds
//! too many). The permit lives as long as the connection and gives its
//! places back when dropped, however the connection ends.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::wire::handshake::Rejection;

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
    /// Upgrades in progress, in all and by address.
    upgrading: usize,
    upgrading_from: HashMap<IpAddr, usize>,
}

/// The unit per-address limits count by: an IPv4 address (an IPv4-mapped
/// IPv6 one counts as its IPv4 address), or the /64 network of an IPv6
/// address, since one IPv6 client usually holds a whole /64 and could
/// otherwise use a fresh address per connection.
fn client(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// Adds one to the count of `address` if it is below `limit`; returns
/// whether it was.
fn take(counts: &mut HashMap<IpAddr, usize>, address: IpAddr, limit: usize) -> bool {
    let count = counts.entry(address).or_insert(0);
    let room = *count < limit;
    if room {
        *count += 1;
    }
    room
}

/// Takes one from a per-address count, forgetting addresses at zero.
fn release(counts: &mut HashMap<IpAddr, usize>, address: IpAddr) {
    if let Some(n) = counts.get_mut(&address) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&address);
        }
    }
}

/// One accepted socket's place among the upgrades in progress, given back
/// when dropped (after the upgrade's answer, whatever it was).
pub struct UpgradePermit {
    admission: Arc<Admission>,
    /// The client counted against `max_handshakes_per_ip`; `None` when
    /// that limit is off (nothing was counted per address).
    address: Option<IpAddr>,
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
        let address = client(address);
        let limits = &self.config.limits;
        let route_limit = self.config.route_max_connections(route);
        let per_address =
            (limits.max_connections_per_ip > 0).then_some(limits.max_connections_per_ip);
        let mut counts = self.counts.lock().expect("admission lock");
        if counts.total >= limits.max_connections {
            return Err(Rejection::try_later(
                503,
                format!(
                    "the server is at its connection limit ({}); try again later",
                    limits.max_connections
                ),
            ));
        }
        let on_route = counts.routes.get(route).copied().unwrap_or(0);
        if let Some(limit) = route_limit
            && on_route >= limit
        {
            return Err(Rejection::try_later(
                503,
                format!("route {route} is at its connection limit ({limit}); try again later"),
            ));
        }
        if let Some(limit) = per_address
            && !take(&mut counts.addresses, address, limit)
        {
            return Err(Rejection::try_later(
                429,
                format!("too many connections from your address or network (limit {limit})"),
            ));
        }
        counts.total += 1;
        *counts.routes.entry(route.clone()).or_insert(0) += 1;
        Ok(Permit {
            admission: self.clone(),
            route: route.clone(),
            address: per_address.map(|_| address),
        })
    }

    /// Takes a place for an upgrade from `address`, or says which limit of
    /// upgrades in progress is reached.
    pub fn begin_upgrade(self: &Arc<Self>, address: IpAddr) -> Result<UpgradePermit, Rejection> {
        let address = client(address);
        let limits = &self.config.limits;
        let per_address =
            (limits.max_handshakes_per_ip > 0).then_some(limits.max_handshakes_per_ip);
        let mut counts = self.counts.lock().expect("admission lock");
        if counts.upgrading >= limits.max_handshakes {
            return Err(Rejection::try_later(
                503,
                format!(
                    "the server is at its limit of upgrades in progress ({}); try again later",
                    limits.max_handshakes
                ),
            ));
        }
        if let Some(limit) = per_address
            && !take(&mut counts.upgrading_from, address, limit)
        {
            return Err(Rejection::try_later(
                429,
                format!(
                    "too many upgrades in progress from your address or network (limit {limit})"
                ),
            ));
        }
        counts.upgrading += 1;
        Ok(UpgradePermit {
            admission: self.clone(),
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
        if let Some(address) = self.address {
            release(&mut counts.addresses, address);
        }
    }
}

impl Drop for UpgradePermit {
    fn drop(&mut self) {
        let mut counts = self.admission.counts.lock().expect("admission lock");
        counts.upgrading -= 1;
        if let Some(address) = self.address {
            release(&mut counts.upgrading_from, address);
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
        let refused = admission.admit(&chat, A).err().unwrap();
        assert_eq!(refused.status, 429);
        assert_eq!(refused.headers, [("Retry-After", "1".to_owned())]);
        let _other = admission.admit(&chat, B).unwrap();
        drop(held);
        let _again = admission.admit(&chat, A).unwrap();
        // A refusal takes no place.
        assert_eq!(admission.total(), 2);
    }

    #[test]
    fn upgrades_in_progress_are_limited_in_all_and_per_address() {
        let admission = admission("[limits]\nmax_handshakes = 3\nmax_handshakes_per_ip = 2\n");
        let a1 = admission.begin_upgrade(A).unwrap();
        let _a2 = admission.begin_upgrade(A).unwrap();
        let refused = admission.begin_upgrade(A).err().unwrap();
        assert_eq!(refused.status, 429);
        assert!(refused.body.contains("limit 2"), "{}", refused.body);
        assert_eq!(refused.headers, [("Retry-After", "1".to_owned())]);
        let _b1 = admission.begin_upgrade(B).unwrap();
        let refused = admission.begin_upgrade(B).err().unwrap();
        assert_eq!(refused.status, 503);
        assert!(refused.body.contains("(3)"), "{}", refused.body);
        // A finished upgrade gives its place back; connections count apart.
        drop(a1);
        let _chat = admission.admit(&"chat".into(), A).unwrap();
        let _a3 = admission.begin_upgrade(A).unwrap();
        assert!(admission.begin_upgrade(A).is_err());
    }

    #[test]
    fn zero_per_address_means_only_the_global_upgrade_limit() {
        let admission = admission("[limits]\nmax_handshakes = 3\nmax_handshakes_per_ip = 0\n");
        let held: Vec<_> = (0..3)
            .map(|_| admission.begin_upgrade(A).unwrap())
            .collect();
        assert_eq!(admission.begin_upgrade(A).err().unwrap().status, 503);
        drop(held);
        assert!(admission.counts.lock().unwrap().upgrading_from.is_empty());
        admission.begin_upgrade(A).unwrap();
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let admission = admission("[limits]\nmax_handshakes_per_ip = 2\n");
        let v6 = |text: &str| IpAddr::V6(text.parse().unwrap());
        let _a = admission.begin_upgrade(v6("2001:db8:1:2::1")).unwrap();
        let _b = admission.begin_upgrade(v6("2001:db8:1:2:ffff::9")).unwrap();
        let refused = admission
            .begin_upgrade(v6("2001:db8:1:2:1234::77"))
            .err()
            .unwrap();
        assert_eq!(refused.status, 429);
        // Another /64 is another client.
        let _c = admission.begin_upgrade(v6("2001:db8:1:3::1")).unwrap();
        let _d = admission.begin_upgrade(A).unwrap();
        let _e = admission.begin_upgrade(v6("::ffff:10.0.0.1")).unwrap();
        assert_eq!(admission.begin_upgrade(A).err().unwrap().status, 429);
    }
}
