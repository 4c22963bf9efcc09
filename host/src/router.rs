//! Route patterns and the routing table.
//!
//! A controller's `describe()` gives a pattern such as `/rooms/{room}` or
//! `/files/{*path}`; [`RoutePattern::parse`] checks it against the grammar
//! the SDK's `#[socket_route]` checks too (the `switchyard-grammar` crate), and
//! [`RouteTable::lookup`] maps a request path to the most specific route and
//! its captured parameters. The table is immutable: the server builds a new
//! one and swaps it in whole, so a lookup never waits.

use std::fmt;

use switchyard_grammar::Segment as Grammar;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    CatchAll(String),
}

impl Segment {
    /// Higher is more specific; used to pick between overlapping routes.
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 2,
            Segment::Param(_) => 1,
            Segment::CatchAll(_) => 0,
        }
    }
}

/// A parsed route pattern.
#[derive(Debug, Clone)]
pub struct RoutePattern {
    raw: String,
    segments: Vec<Segment>,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid route pattern `{pattern}`: {reason}")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

impl RoutePattern {
    /// Parses a pattern: literal segments, `{name}` captures of one segment,
    /// and an optional last `{*name}` capturing the rest of the path. Empty
    /// segments (and so a trailing slash) are ignored.
    pub fn parse(pattern: &str) -> Result<RoutePattern, PatternError> {
        let segments = switchyard_grammar::route_segments(pattern)
            .map_err(|reason| PatternError {
                pattern: pattern.to_owned(),
                reason,
            })?
            .into_iter()
            .map(|segment| match segment {
                Grammar::Literal(text) => Segment::Literal(percent_decode(text, false)),
                Grammar::Param(name) => Segment::Param(name.to_owned()),
                Grammar::CatchAll(name) => Segment::CatchAll(name.to_owned()),
            })
            .collect();
        Ok(RoutePattern {
            raw: pattern.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the pattern captures a parameter called `name`.
    pub fn captures(&self, name: &str) -> bool {
        self.segments.iter().any(|segment| {
            matches!(segment, Segment::Param(param) | Segment::CatchAll(param) if param == name)
        })
    }

    /// Whether two patterns accept exactly the same paths (capture names
    /// aside), so that neither could ever be chosen over the other.
    pub fn conflicts_with(&self, other: &RoutePattern) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Literal(x), Segment::Literal(y)) => x == y,
                    (Segment::Param(_), Segment::Param(_)) => true,
                    (Segment::CatchAll(_), Segment::CatchAll(_)) => true,
                    _ => false,
                })
    }

    /// Matches a request path (without query); returns the captures in
    /// pattern order, percent-decoded.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut rest = path.trim_start_matches('/');
        let mut params = Vec::new();
        for segment in &self.segments {
            if let Segment::CatchAll(name) = segment {
                let tail = rest.trim_end_matches('/');
                params.push((name.clone(), percent_decode(tail, false)));
                return Some(params);
            }
            let (part, tail) = match rest.split_once('/') {
                Some((part, tail)) => (part, tail),
                None => (rest, ""),
            };
            if part.is_empty() {
                return None;
            }
            match segment {
                Segment::Literal(literal) => {
                    if percent_decode(part, false) != *literal {
                        return None;
                    }
                }
                Segment::Param(name) => params.push((name.clone(), percent_decode(part, false))),
                Segment::CatchAll(_) => unreachable!("handled above"),
            }
            rest = tail.trim_start_matches('/');
        }
        rest.is_empty().then_some(params)
    }

    fn ranks(&self) -> impl Iterator<Item = u8> + '_ {
        self.segments.iter().map(Segment::rank)
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

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

/// Decodes `%XX` escapes (and `+` as space when `plus_is_space`). Malformed
/// escapes are kept as written; invalid UTF-8 becomes U+FFFD.
pub fn percent_decode(input: &str, plus_is_space: bool) -> String {
    if !input.contains(['%', '+']) {
        return input.to_owned();
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    std::str::from_utf8(h)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                });
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
