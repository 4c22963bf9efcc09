//! The grammar of Switchyard's route patterns and instance modes, in one
//! place: the host parses what a controller's `describe()` returns and the
//! config's `[routes.NAME] instance` with it, and the SDK's
//! `#[socket_route]` checks its arguments with it at compile time, so both
//! accept exactly the same patterns and say the same thing when they
//! refuse one. No dependencies: the proc-macro builds it for the host
//! machine, the host for itself.

#![deny(missing_docs)]

mod pattern;

pub use pattern::{PatternError, RoutePattern, percent_decode};

/// One segment of a route pattern, as written (a literal is not
/// percent-decoded here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Matches itself.
    Literal(&'a str),
    /// `{name}`: captures one path segment.
    Param(&'a str),
    /// `{*name}`: captures the rest of the path; only last.
    CatchAll(&'a str),
}

impl<'a> Segment<'a> {
    /// The name a capture gives its value; `None` for a literal.
    pub fn capture(self) -> Option<&'a str> {
        match self {
            Segment::Literal(_) => None,
            Segment::Param(name) | Segment::CatchAll(name) => Some(name),
        }
    }
}

/// The segments of `pattern`: it starts with `/`; empty segments (so a
/// trailing slash) are ignored; a capture is a whole segment, `{name}` or,
/// last, `{*name}`, its name made of ASCII letters, digits and `_`, each
/// name once. `Err` holds a sentence saying what is wrong.
pub fn route_segments(pattern: &str) -> Result<Vec<Segment<'_>>, String> {
    if !pattern.starts_with('/') {
        return Err("a route starts with `/`, e.g. \"/chat/\"".into());
    }
    if pattern.contains(['?', '#']) {
        return Err("a route has no query or fragment".into());
    }
    let parts: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let mut segments: Vec<Segment<'_>> = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(inner) => {
                let (catch_all, name) = match inner.strip_prefix('*') {
                    Some(name) => (true, name),
                    None => (false, inner),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "segment `{part}`: a capture name is letters, digits and `_`"
                    ));
                }
                if segments.iter().any(|s| s.capture() == Some(name)) {
                    return Err(format!("capture `{name}` appears twice"));
                }
                if catch_all && i + 1 != parts.len() {
                    return Err(format!(
                        "segment `{part}`: a catch-all must be the last segment"
                    ));
                }
                if catch_all {
                    Segment::CatchAll(name)
                } else {
                    Segment::Param(name)
                }
            }
            None if part.contains(['{', '}']) => {
                return Err(format!(
                    "segment `{part}`: a capture is a whole segment, `{{name}}`"
                ));
            }
            None => Segment::Literal(part),
        };
        segments.push(segment);
    }
    Ok(segments)
}

/// How a route's instances are created, as written in `#[socket_route]`
/// or the config: `shared`, `per-connection` or `keyed:<param>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode<'a> {
    /// `shared`: one instance for the route.
    Shared,
    /// `per-connection`: one instance per connection.
    PerConnection,
    /// `keyed:<param>`: one instance per value of a route parameter.
    Keyed(&'a str),
}

/// Parses an instance mode. `Err` holds a sentence saying what is allowed.
pub fn instance_mode(text: &str) -> Result<Mode<'_>, String> {
    match text {
        "shared" => Ok(Mode::Shared),
        "per-connection" => Ok(Mode::PerConnection),
        _ => match text.strip_prefix("keyed:") {
            Some(param) if !param.is_empty() => Ok(Mode::Keyed(param)),
            _ => Err(format!(
                "`{text}` is not an instance mode: use \"shared\", \"per-connection\" or \
                 \"keyed:<route parameter>\""
            )),
        },
    }
}

/// Checks that `mode` fits a route of `segments`: a keyed mode must name a
/// parameter the route captures.
pub fn check_mode(mode: Mode<'_>, segments: &[Segment<'_>]) -> Result<(), String> {
    match mode {
        Mode::Keyed(param) if !segments.iter().any(|s| s.capture() == Some(param)) => Err(format!(
            "`keyed:{param}` needs the route to capture `{{{param}}}`"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_split_into_segments() {
        assert_eq!(route_segments("/").unwrap(), []);
        assert_eq!(
            route_segments("/rooms/{room}/").unwrap(),
            [Segment::Literal("rooms"), Segment::Param("room")]
        );
        assert_eq!(
            route_segments("//files//{*path}").unwrap(),
            [Segment::Literal("files"), Segment::CatchAll("path")]
        );
    }

    #[test]
    fn bad_patterns_say_why() {
        for (pattern, reason) in [
            ("chat", "starts with `/`"),
            ("/chat?x=1", "no query"),
            ("/a#b", "no query or fragment"),
            ("/a/{x}/{x}", "capture `x` appears twice"),
            ("/a/{x}/{*x}", "capture `x` appears twice"),
            ("/a/{*rest}/b", "catch-all must be the last"),
            ("/a/{}", "capture name is letters"),
            ("/a/{b-c}", "capture name is letters"),
            ("/a/x{b}", "a capture is a whole segment"),
            ("/a/{b", "a capture is a whole segment"),
        ] {
            let err = route_segments(pattern).unwrap_err();
            assert!(err.contains(reason), "{pattern}: {err}");
        }
    }

    #[test]
    fn instance_modes() {
        assert_eq!(instance_mode("shared"), Ok(Mode::Shared));
        assert_eq!(instance_mode("per-connection"), Ok(Mode::PerConnection));
        assert_eq!(instance_mode("keyed:room"), Ok(Mode::Keyed("room")));
        for bad in ["keyed:", "Shared", "keyed", ""] {
            assert!(
                instance_mode(bad)
                    .unwrap_err()
                    .contains("not an instance mode")
            );
        }
        let rooms = route_segments("/rooms/{room}").unwrap();
        assert_eq!(check_mode(Mode::Keyed("room"), &rooms), Ok(()));
        assert!(check_mode(Mode::Keyed("rooms"), &rooms).is_err());
        assert_eq!(check_mode(Mode::Shared, &rooms), Ok(()));
    }
}
