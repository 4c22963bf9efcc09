//! Route patterns and the routing table.
//!
//! A controller's `describe()` gives a pattern such as `/rooms/{room}` or
//! `/files/{*path}`; [`RoutePattern::parse`] checks it against the grammar
//! the SDK's `#[socket_route]` checks too (the `switchyard-grammar` crate), and
//! [`RouteTable::lookup`] maps a request path to the most specific route and
//! its captured parameters. The table is immutable: the server builds a new
//! one and swaps it in whole, so a lookup never waits.

pub use switchyard_grammar::{PatternError, RoutePattern, percent_decode};

/// A successful lookup.
#[derive(Debug)]
pub struct Matched<'a, T> {
    /// What the route leads to.
    pub target: &'a T,
    /// The route's pattern.
    pub pattern: &'a RoutePattern,
    /// `{name}` captures, in pattern order.
    pub params: Vec<(String, String)>,
}

/// An immutable set of routes.
#[derive(Debug)]
pub struct RouteTable<T> {
    routes: Vec<(RoutePattern, T)>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable { routes: Vec::new() }
    }
}

impl<T> RouteTable<T> {
    /// A table of the given routes. Callers ensure no two conflict.
    pub fn new(routes: Vec<(RoutePattern, T)>) -> Self {
        RouteTable { routes }
    }

    /// The routes, in insertion order.
    pub fn routes(&self) -> impl Iterator<Item = &(RoutePattern, T)> {
        self.routes.iter()
    }

    /// The most specific route matching `path`: at the first segment where
    /// two matching routes differ, a literal beats a capture, which beats a
    /// catch-all.
    pub fn lookup(&self, path: &str) -> Option<Matched<'_, T>> {
        let mut best: Option<Matched<'_, T>> = None;
        for (pattern, target) in &self.routes {
            let Some(params) = pattern.matches(path) else {
                continue;
            };
            let better = match &best {
                None => true,
                Some(current) => pattern.ranks().cmp(current.pattern.ranks()).is_gt(),
            };
            if better {
                best = Some(Matched {
                    target,
                    pattern,
                    params,
                });
            }
        }
        best
    }
}

/// Splits a query string into decoded key/value pairs, in order. A key
/// without `=` has an empty value; empty pieces are skipped.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
            (percent_decode(key, true), percent_decode(value, true))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pattern: &str) -> RoutePattern {
        RoutePattern::parse(pattern).unwrap()
    }

    fn params(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn exact_paths_tolerate_trailing_slash() {
        assert_eq!(p("/echo").matches("/echo"), Some(vec![]));
        assert_eq!(p("/echo").matches("/echo/"), Some(vec![]));
        assert_eq!(p("/chat/").matches("/chat"), Some(vec![]));
        assert_eq!(p("/chat/").matches("/chat/"), Some(vec![]));
        assert_eq!(p("/").matches("/"), Some(vec![]));
        assert_eq!(p("/echo").matches("/echoes"), None);
        assert_eq!(p("/echo").matches("/echo/more"), None);
        assert_eq!(p("/a/b").matches("/a"), None);
        assert_eq!(p("/").matches("/x"), None);
    }

    #[test]
    fn captures_take_one_segment() {
        let rooms = p("/rooms/{room}");
        assert_eq!(
            rooms.matches("/rooms/blue"),
            Some(params(&[("room", "blue")]))
        );
        assert_eq!(
            rooms.matches("/rooms/blue/"),
            Some(params(&[("room", "blue")]))
        );
        assert_eq!(rooms.matches("/rooms"), None);
        assert_eq!(rooms.matches("/rooms/"), None);
        assert_eq!(rooms.matches("/rooms/a/b"), None);
        assert_eq!(
            p("/u/{user}/doc/{doc}").matches("/u/ann/doc/7"),
            Some(params(&[("user", "ann"), ("doc", "7")]))
        );
    }

    #[test]
    fn captures_are_percent_decoded_after_splitting() {
        assert_eq!(
            p("/rooms/{room}").matches("/rooms/caf%C3%A9%2Fbar"),
            Some(params(&[("room", "café/bar")]))
        );
        assert_eq!(p("/a b").matches("/a%20b"), Some(vec![]));
    }

    #[test]
    fn catch_all_takes_the_rest() {
        let files = p("/files/{*path}");
        assert_eq!(
            files.matches("/files/a/b/c.txt"),
            Some(params(&[("path", "a/b/c.txt")]))
        );
        assert_eq!(files.matches("/files/a/"), Some(params(&[("path", "a")])));
        assert_eq!(files.matches("/files"), Some(params(&[("path", "")])));
        assert_eq!(files.matches("/other/a"), None);
    }

    #[test]
    fn bad_patterns_are_refused_with_reason() {
        for (pattern, needle) in [
            ("echo", "starts with"),
            ("/a/{}", "capture name"),
            ("/a/{x-y}", "capture name"),
            ("/a/x{y}", "whole segment"),
            ("/{*rest}/a", "last segment"),
            ("/{a}/{a}", "twice"),
            ("/a?b", "query"),
        ] {
            let err = RoutePattern::parse(pattern).unwrap_err();
            assert!(err.to_string().contains(needle), "{pattern}: {err}");
            assert!(err.to_string().contains(pattern), "{pattern}: {err}");
        }
    }

    #[test]
    fn conflicts_ignore_capture_names_and_slashes() {
        assert!(p("/chat/").conflicts_with(&p("/chat")));
        assert!(p("/rooms/{a}").conflicts_with(&p("/rooms/{b}")));
        assert!(p("/f/{*a}").conflicts_with(&p("/f/{*b}")));
        assert!(!p("/rooms/{a}").conflicts_with(&p("/rooms/lobby")));
        assert!(!p("/f/{*a}").conflicts_with(&p("/f/{a}")));
        assert!(!p("/a").conflicts_with(&p("/b")));
    }

    #[test]
    fn most_specific_route_wins() {
        let table = RouteTable::new(vec![
            (p("/{*all}"), "fallback"),
            (p("/rooms/{room}"), "room"),
            (p("/rooms/lobby"), "lobby"),
            (p("/{section}/lobby"), "section-lobby"),
        ]);
        let target = |path: &str| table.lookup(path).map(|m| *m.target);
        assert_eq!(target("/rooms/lobby"), Some("lobby"));
        assert_eq!(target("/rooms/blue"), Some("room"));
        assert_eq!(target("/halls/lobby"), Some("section-lobby"));
        assert_eq!(target("/anything/else/here"), Some("fallback"));
        let empty: RouteTable<&str> = RouteTable::default();
        assert!(empty.lookup("/rooms/blue").is_none());
    }

    #[test]
    fn query_strings() {
        assert_eq!(
            parse_query("name=al+ice&x=%26&flag&=v&&name=2"),
            params(&[
                ("name", "al ice"),
                ("x", "&"),
                ("flag", ""),
                ("", "v"),
                ("name", "2")
            ])
        );
        assert!(parse_query("").is_empty());
    }

    #[test]
    fn percent_decoding_edge_cases() {
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
        assert_eq!(percent_decode("%ff", false), "\u{fffd}");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("a+b", true), "a b");
    }
}
