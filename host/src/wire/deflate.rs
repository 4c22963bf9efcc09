//! permessage-deflate (RFC 7692): what a client's offer and a route's
//! settings agree on, and each message's compression on flate2 (zlib-rs).
//!
//! The handshake calls [`negotiate`] with the client's
//! `Sec-WebSocket-Extensions` offers; the [`Deflate`] it returns goes with
//! the connection to its reader (which inflates compressed messages) and
//! its writer (which compresses what it sends). Without context takeover,
//! the default in both directions, a message is compressed or inflated on
//! its own with a compressor or decompressor of the worker thread's
//! ([`with_compressor`], [`with_decompressor`]), so a connection holds no
//! zlib state between messages and a broadcast is compressed once for every
//! recipient ([`Shared`]). With context takeover, the connection keeps its
//! own ([`Own`]), allocated with its first compressed message.

use std::cell::RefCell;
use std::sync::OnceLock;

use bytes::Bytes;
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};

use crate::config::Compression;

/// What a sync flush ends with: the sender strips it from each message and
/// the receiver puts it back (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// The window every decompressor uses: zlib-rs allocates 32 KiB whatever it
/// is told, and the largest window reads what any smaller one wrote.
const INFLATE_WINDOW_BITS: u8 = 15;

/// The smallest window a raw deflate compressor takes. A client may ask for
/// 8 bits; a 9-bit compressor never refers further back than 250 bytes
/// (zlib's window less its lookahead), so its output fits a 256-byte
/// window (Chromium does the same).
const MIN_DEFLATE_WINDOW_BITS: u8 = 9;

/// What the server and one client agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// Messages the server sends that are shorter than this go uncompressed.
    pub min_bytes: usize,
    /// The deflate level the server compresses with.
    pub level: u32,
    /// The server keeps its compression context between messages (and so
    /// a compressor of the connection's own).
    pub server_takeover: bool,
    /// The client keeps its compression context: the decompressor for it
    /// must keep it too.
    pub client_takeover: bool,
    /// The window the server compresses with, 9 to 15 bits.
    pub server_window_bits: u8,
}

/// The window bits of an offer: 8 to 15, digits only, no leading zero
/// (RFC 7692 §7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    let value = value.trim_matches('"');
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// One offer's parameters, checked: `None` when the offer must be declined
/// (an unknown or repeated parameter, a bad value).
#[derive(Default)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    client_max_window_bits: bool,
}

impl Offer {
    fn parse<'a>(params: impl Iterator<Item = &'a str>) -> Option<Offer> {
        let mut offer = Offer::default();
        for param in params.map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = match param.split_once('=') {
                Some((name, value)) => (name.trim(), Some(value.trim())),
                None => (param, None),
            };
            let repeated = match name.to_ascii_lowercase().as_str() {
                "server_no_context_takeover" if value.is_none() => {
                    std::mem::replace(&mut offer.server_no_context_takeover, true)
                }
                "client_no_context_takeover" if value.is_none() => {
                    std::mem::replace(&mut offer.client_no_context_takeover, true)
                }
                "server_max_window_bits" => offer
                    .server_max_window_bits
                    .replace(window_bits(value?)?)
                    .is_some(),
                "client_max_window_bits" => {
                    if let Some(value) = value {
                        window_bits(value)?;
                    }
                    std::mem::replace(&mut offer.client_max_window_bits, true)
                }
                _ => return None,
            };
            if repeated {
                return None;
            }
        }
        Some(offer)
    }

    /// The agreement and the response's extension parameters.
    fn accept(&self, settings: &Compression) -> (Deflate, String) {
        let mut response = String::from("permessage-deflate");
        let server_takeover = settings.server_context_takeover && !self.server_no_context_takeover;
        if !server_takeover {
            response.push_str("; server_no_context_takeover");
        }
        // A server may always ask the client not to keep its context.
        let client_takeover = settings.client_context_takeover && !self.client_no_context_takeover;
        if !client_takeover {
            response.push_str("; client_no_context_takeover");
        }
        let bits = match self.server_max_window_bits {
            Some(asked) => asked.min(settings.server_max_window_bits),
            None => settings.server_max_window_bits,
        };
        if bits < 15 {
            response.push_str(&format!("; server_max_window_bits={bits}"));
        }
        // `client_max_window_bits` is left out: the client keeps the window
        // it chose, which our decompressor (always 15 bits) reads.
        let deflate = Deflate {
            min_bytes: settings.min_bytes,
            level: settings.level,
            server_takeover,
            client_takeover,
            server_window_bits: bits.max(MIN_DEFLATE_WINDOW_BITS),
        };
        (deflate, response)
    }
}

/// The first permessage-deflate offer in `offers` (the values of every
/// `Sec-WebSocket-Extensions` header, in order) that these settings can
/// accept: what was agreed, and the value of the response's
/// `Sec-WebSocket-Extensions` header. `None`: no compression.
pub fn negotiate<'a>(
    offers: impl Iterator<Item = &'a str>,
    settings: &Compression,
) -> Option<(Deflate, String)> {
    if !settings.enabled {
        return None;
    }
    offers
        .flat_map(|value| value.split(','))
        .find_map(|element| {
            let mut parts = element.split(';');
            let name = parts.next()?.trim();
            if !name.eq_ignore_ascii_case("permessage-deflate") {
                return None;
            }
            Offer::parse(parts)
        })
        .map(|offer| offer.accept(settings))
}

/// Compresses one whole message with `compressor` (a sync flush, the tail
/// stripped) into `out`.
fn deflate_into(compressor: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
    let start = compressor.total_in();
    out.reserve(input.len() / 2 + 64);
    loop {
        let consumed = (compressor.total_in() - start) as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        compressor
            .compress_vec(&input[consumed..], out, FlushCompress::Sync)
            .expect("compressing into a buffer with room cannot fail");
        let consumed = (compressor.total_in() - start) as usize;
        // The flush is complete once the input is used up and the output
        // did not fill the room it had.
        if consumed == input.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    if out.is_empty() {
        // An empty message right after another flush compresses to
        // nothing; one empty stored block's first byte says the same.
        out.push(0);
    }
}

thread_local! {
    /// Compressors without context, by level and window bits (a route's
    /// settings and the rare client that asks for a smaller window).
    static COMPRESSORS: RefCell<Vec<(u32, u8, Compress)>> = const { RefCell::new(Vec::new()) };
    /// A decompressor without context.
    static DECOMPRESSOR: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

fn new_compressor(level: u32, bits: u8) -> Compress {
    Compress::new_with_window_bits(flate2::Compression::new(level), false, bits)
}

/// Compresses `input` as one message for a connection that agreed on
/// `deflate` without server context takeover, with the thread's compressor.
fn compress_alone(deflate: &Deflate, input: &[u8]) -> Bytes {
    COMPRESSORS.with_borrow_mut(|compressors| {
        let (level, bits) = (deflate.level, deflate.server_window_bits);
        let index = match compressors
            .iter()
            .position(|(l, b, _)| (*l, *b) == (level, bits))
        {
            Some(index) => index,
            None => {
                compressors.push((level, bits, new_compressor(level, bits)));
                compressors.len() - 1
            }
        };
        let compressor = &mut compressors[index].2;
        let mut out = Vec::new();
        deflate_into(compressor, input, &mut out);
        compressor.reset();
        Bytes::from(out)
    })
}

/// Why a compressed message could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the message limit.
    TooLarge,
    /// It is not a valid deflate stream.
    Corrupt(String),
}

/// Inflates one whole message (its frames' payloads, joined) into `out`,
/// stopping as soon as it holds more than `max` bytes: a small message that
/// inflates to gigabytes costs at most the limit. `Ok(true)` when the peer
/// ended its stream (a final block): the context starts over.
fn inflate_into(
    decompressor: &mut Decompress,
    input: &[u8],
    max: usize,
    out: &mut Vec<u8>,
) -> Result<bool, InflateError> {
    for part in [input, &TAIL[..]] {
        let start = decompressor.total_in();
        loop {
            let consumed = (decompressor.total_in() - start) as usize;
            if out.capacity() - out.len() < 1024 {
                // Double (so a large message is copied a bounded number of
                // times as it grows), but never past one byte over the limit.
                let want = (part.len() - consumed).saturating_mul(4).max(1024);
                let target = (out.capacity() * 2).max(out.len() + want).min(max + 1);
                out.reserve_exact(target.saturating_sub(out.len()));
            }
            let before = (decompressor.total_in(), decompressor.total_out());
            let status = decompressor
                .decompress_vec(&part[consumed..], out, FlushDecompress::Sync)
                .map_err(|err| InflateError::Corrupt(err.to_string()))?;
            if out.len() > max {
                return Err(InflateError::TooLarge);
            }
            if status == Status::StreamEnd {
                return Ok(true);
            }
            let consumed = (decompressor.total_in() - start) as usize;
            let stalled = before == (decompressor.total_in(), decompressor.total_out());
            if consumed == part.len() && (out.len() < out.capacity() || stalled) {
                break;
            }
        }
    }
    Ok(false)
}

/// Inflates one message from a client that does not keep its context, with
/// the thread's decompressor.
pub fn inflate_alone(input: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = slot
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, INFLATE_WINDOW_BITS));
        let mut out = Vec::new();
        let result = inflate_into(decompressor, input, max, &mut out);
        decompressor.reset(false);
        result.map(|_| out)
    })
}

/// A connection's own compressor or decompressor, for a side that keeps its
/// context: allocated with the first message that needs it.
pub struct Own<T>(Option<Box<T>>);

impl<T> Default for Own<T> {
    fn default() -> Self {
        Own(None)
    }
}

impl Own<Decompress> {
    /// Inflates one message, keeping the context for the next.
    pub fn inflate(&mut self, input: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        let decompressor = self.0.get_or_insert_with(|| {
            Box::new(Decompress::new_with_window_bits(false, INFLATE_WINDOW_BITS))
        });
        let mut out = Vec::new();
        if inflate_into(decompressor, input, max, &mut out)? {
            decompressor.reset(false);
        }
        Ok(out)
    }
}

impl Own<Compress> {
    /// Compresses one message, keeping the context for the next.
    pub fn deflate(&mut self, deflate: &Deflate, input: &[u8]) -> Bytes {
        let compressor = self.0.get_or_insert_with(|| {
            Box::new(new_compressor(deflate.level, deflate.server_window_bits))
        });
        let mut out = Vec::new();
        deflate_into(compressor, input, &mut out);
        Bytes::from(out)
    }
}

/// One message for many recipients (a group's publish, a delivery from
/// another node): its compressed form is made at most once and shared by
/// every recipient whose agreement allows it (no server context takeover,
/// the same level and window), as its plain form is shared by the others.
pub struct Shared<'a> {
    plain: &'a [u8],
    cell: SharedCell,
}

impl<'a> Shared<'a> {
    /// A message whose payload is `plain`.
    pub fn new(plain: &'a [u8]) -> Shared<'a> {
        Shared {
            plain,
            cell: SharedCell::default(),
        }
    }

    /// The compressed payload for a recipient that agreed on `deflate`, if
    /// it gets one that is shared: see [`SharedCell::compressed_for`].
    pub fn compressed_for(&mut self, deflate: &Deflate) -> Option<Bytes> {
        self.cell.compressed_for(deflate, self.plain)
    }
}

/// The shared compressed form of one message, made by the first recipient
/// that needs it; recipients on any thread may ask (a broadcast's, read
/// from the feed by each recipient's writer).
#[derive(Default)]
pub struct SharedCell(OnceLock<(u32, u8, Bytes)>);

impl SharedCell {
    /// The compressed `plain` for a recipient that agreed on `deflate`, if
    /// it gets one that is shared: `None` when the message goes plain or
    /// the recipient's writer compresses it with its own context. A
    /// recipient with another level or window than the first gets its own.
    pub fn compressed_for(&self, deflate: &Deflate, plain: &[u8]) -> Option<Bytes> {
        if deflate.server_takeover || plain.len() < deflate.min_bytes {
            return None;
        }
        let key = (deflate.level, deflate.server_window_bits);
        let (level, bits, bytes) = self
            .0
            .get_or_init(|| (key.0, key.1, compress_alone(deflate, plain)));
        if (*level, *bits) == key {
            Some(bytes.clone())
        } else {
            Some(compress_alone(deflate, plain))
        }
    }
}

/// Compresses one message for a connection that agreed on `deflate`: with
/// its own compressor when the server keeps its context, else with the
/// thread's.
pub fn compress(deflate: &Deflate, own: &mut Own<Compress>, input: &[u8]) -> Bytes {
    if deflate.server_takeover {
        own.deflate(deflate, input)
    } else {
        compress_alone(deflate, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Compression {
        Compression::default()
    }

    fn agree(offer: &str) -> Option<(Deflate, String)> {
        negotiate(std::iter::once(offer), &settings())
    }

    #[test]
    fn browsers_and_python_offers_are_accepted_without_context() {
        // Chromium's and Python websockets' default offer.
        let (deflate, response) = agree("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(
            response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert!(!deflate.server_takeover && !deflate.client_takeover);
        assert_eq!(deflate.server_window_bits, 15);
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_one_is_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; client_max_window_bits=1x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; unknown_param",
            "x-webkit-deflate-frame",
        ] {
            assert!(agree(bad).is_none(), "{bad}");
            let both = format!("{bad}, permessage-deflate; server_max_window_bits=10");
            let (deflate, response) = agree(&both).unwrap();
            assert_eq!(deflate.server_window_bits, 10, "{both}");
            assert!(
                response.ends_with("; server_max_window_bits=10"),
                "{response}"
            );
        }
        assert!(
            negotiate(
                ["permessage-deflate"].into_iter(),
                &Compression {
                    enabled: false,
                    ..settings()
                }
            )
            .is_none()
        );
    }

    #[test]
    fn windows_and_context_follow_the_offer_and_the_settings() {
        let (deflate, response) =
            agree("permessage-deflate; server_max_window_bits=\"8\"").unwrap();
        assert_eq!(deflate.server_window_bits, 9);
        assert!(
            response.ends_with("; server_max_window_bits=8"),
            "{response}"
        );

        let keep = Compression {
            server_context_takeover: true,
            client_context_takeover: true,
            server_max_window_bits: 12,
            ..settings()
        };
        let (deflate, response) = negotiate(["permessage-deflate"].into_iter(), &keep).unwrap();
        assert_eq!(response, "permessage-deflate; server_max_window_bits=12");
        assert!(deflate.server_takeover && deflate.client_takeover);
        let (deflate, response) = negotiate(
            ["permessage-deflate; server_no_context_takeover; client_no_context_takeover"]
                .into_iter(),
            &keep,
        )
        .unwrap();
        assert!(!deflate.server_takeover && !deflate.client_takeover);
        assert!(response.contains("server_no_context_takeover"));
        assert!(response.contains("client_no_context_takeover"));
    }

    fn roundtrip(
        deflate: &Deflate,
        own_c: &mut Own<Compress>,
        own_d: &mut Own<Decompress>,
        msg: &[u8],
    ) {
        let compressed = compress(deflate, own_c, msg);
        let back = if deflate.server_takeover {
            own_d.inflate(&compressed, 1 << 20)
        } else {
            inflate_alone(&compressed, 1 << 20)
        }
        .unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn messages_survive_compression_with_and_without_context() {
        let messages: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"hello".to_vec(),
            br#"{"type":"message","user":"alice","data":"hi"}"#.repeat(40),
            (0..200_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
            b"".to_vec(),
        ];
        for takeover in [false, true] {
            for bits in [9, 12, 15] {
                let deflate = Deflate {
                    min_bytes: 0,
                    level: 6,
                    server_takeover: takeover,
                    client_takeover: takeover,
                    server_window_bits: bits,
                };
                let (mut c, mut d) = (Own::default(), Own::default());
                for msg in &messages {
                    roundtrip(&deflate, &mut c, &mut d, msg);
                }
            }
        }
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let deflate = Deflate {
            min_bytes: 0,
            level: 9,
            server_takeover: false,
            client_takeover: false,
            server_window_bits: 15,
        };
        let bomb = compress(&deflate, &mut Own::default(), &zeros);
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        assert_eq!(inflate_alone(&bomb, 64 << 10), Err(InflateError::TooLarge));
        assert_eq!(inflate_alone(&bomb, 10 << 20).unwrap().len(), 10 << 20);
        assert!(matches!(
            inflate_alone(b"\xff\xff\xff", 1 << 20),
            Err(InflateError::Corrupt(_))
        ));
    }

    #[test]
    fn a_broadcast_is_compressed_once_for_recipients_that_can_share_it() {
        let text = br#"{"type":"message","data":"hi"}"#.repeat(20);
        let alone = Deflate {
            min_bytes: 64,
            level: 1,
            server_takeover: false,
            client_takeover: false,
            server_window_bits: 15,
        };
        let mut shared = Shared::new(&text);
        let a = shared.compressed_for(&alone).unwrap();
        let b = shared.compressed_for(&alone).unwrap();
        assert_eq!(
            a.as_ptr(),
            b.as_ptr(),
            "the same bytes, not a second compression"
        );
        let keeps = Deflate {
            server_takeover: true,
            ..alone
        };
        assert!(shared.compressed_for(&keeps).is_none());
        let small_window = Deflate {
            server_window_bits: 10,
            ..alone
        };
        let c = shared.compressed_for(&small_window).unwrap();
        assert_eq!(inflate_alone(&c, 1 << 20).unwrap(), text);
        assert!(Shared::new(b"short").compressed_for(&alone).is_none());
    }
}
