//! The WebSocket frame opcodes (RFC 6455, section 5.2) the reader accepts
//! and the writer sends, and the close codes a close frame may carry.

pub const CONTINUE: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Close codes an endpoint may put in a close frame: those the IANA
/// registry lists for use on the wire (RFC 6455 §7.4.1 and later
/// registrations: 1012 service restart, 1013 try again later, 1014 bad
/// gateway) and the ranges for libraries and applications. 1004, 1005,
/// 1006 and 1015 are reserved; other codes below 3000 are unassigned.
pub fn close_code_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::close_code_valid;

    #[test]
    fn registered_close_codes_are_valid_and_reserved_ones_not() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1011, 1012, 1013, 1014, 3000, 4999,
        ] {
            assert!(close_code_valid(code), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000] {
            assert!(!close_code_valid(code), "{code}");
        }
    }
}
