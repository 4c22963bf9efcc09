//! A parsed route pattern: which request paths it accepts, what it
//! captures, and whether two patterns accept the same paths.

use std::fmt;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Param(String),
    CatchAll(String),
}

impl Part {
    /// Higher is more specific; used to pick between overlapping routes.
    fn rank(&self) -> u8 {
        match self {
            Part::Literal(_) => 2,
            Part::Param(_) => 1,
            Part::CatchAll(_) => 0,
        }
    }
}

/// A parsed route pattern.
#[derive(Debug, Clone)]
pub struct RoutePattern {
    raw: String,
    segments: Vec<Part>,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
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
        let segments = crate::route_segments(pattern)
            .map_err(|reason| PatternError {
                pattern: pattern.to_owned(),
                reason,
            })?
            .into_iter()
            .map(|segment| match segment {
                crate::Segment::Literal(text) => Part::Literal(percent_decode(text, false)),
                crate::Segment::Param(name) => Part::Param(name.to_owned()),
                crate::Segment::CatchAll(name) => Part::CatchAll(name.to_owned()),
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
            matches!(segment, Part::Param(param) | Part::CatchAll(param) if param == name)
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
                    (Part::Literal(x), Part::Literal(y)) => x == y,
                    (Part::Param(_), Part::Param(_)) => true,
                    (Part::CatchAll(_), Part::CatchAll(_)) => true,
                    _ => false,
                })
    }

    /// Matches a request path (without query); returns the captures in
    /// pattern order, percent-decoded.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut rest = path.trim_start_matches('/');
        let mut params = Vec::new();
        for segment in &self.segments {
            if let Part::CatchAll(name) = segment {
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
                Part::Literal(literal) => {
                    if percent_decode(part, false) != *literal {
                        return None;
                    }
                }
                Part::Param(name) => params.push((name.clone(), percent_decode(part, false))),
                Part::CatchAll(_) => unreachable!("handled above"),
            }
            rest = tail.trim_start_matches('/');
        }
        rest.is_empty().then_some(params)
    }

    /// How specific each segment is, in order (a literal over a capture
    /// over a catch-all): the routing table prefers the pattern whose
    /// first differing segment ranks higher.
    pub fn ranks(&self) -> impl Iterator<Item = u8> + '_ {
        self.segments.iter().map(Part::rank)
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid route pattern `{}`: {}",
            self.pattern, self.reason
        )
    }
}

impl std::error::Error for PatternError {}

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
