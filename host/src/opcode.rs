//! The WebSocket frame opcodes (RFC 6455, section 5.2) the reader accepts
//! and the writer sends.

pub const CONTINUE: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;
