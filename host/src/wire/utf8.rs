//! UTF-8 checked piece by piece, as a text message arrives: a fragment, or
//! part of a frame, is checked as soon as its bytes are in, so invalid text
//! is refused (1007) at the first bad byte rather than once the whole
//! message has arrived (RFC 6455 §8.1: "fail fast"). A character cut between
//! two pieces is carried over to the next.

/// The state of a text message's check between pieces.
#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8Check {
    /// The start of a character cut off at the end of the last piece.
    carry: [u8; 4],
    carry_len: u8,
}

/// The text is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// The length of the character a leading byte starts (0: not a leading
/// byte).
fn char_width(first: u8) -> usize {
    match first {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

impl Utf8Check {
    /// Checks the next piece of the message.
    pub fn feed(&mut self, mut piece: &[u8]) -> Result<(), Invalid> {
        if self.carry_len > 0 {
            let have = usize::from(self.carry_len);
            let width = char_width(self.carry[0]);
            let take = (width - have).min(piece.len());
            self.carry[have..have + take].copy_from_slice(&piece[..take]);
            piece = &piece[take..];
            let now = have + take;
            match std::str::from_utf8(&self.carry[..now]) {
                Ok(_) => self.carry_len = 0,
                Err(err) if err.error_len().is_none() => {
                    // Still incomplete: the piece was used up.
                    self.carry_len = now as u8;
                    return Ok(());
                }
                Err(_) => return Err(Invalid),
            }
        }
        match std::str::from_utf8(piece) {
            Ok(_) => Ok(()),
            Err(err) if err.error_len().is_none() => {
                let tail = &piece[err.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(Invalid),
        }
    }

    /// The message has ended: a character still cut off is invalid.
    pub fn finish(&mut self) -> Result<(), Invalid> {
        let cut = self.carry_len > 0;
        *self = Utf8Check::default();
        if cut { Err(Invalid) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_split(bytes: &[u8], cuts: &[usize]) -> Result<(), Invalid> {
        let mut check = Utf8Check::default();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            check.feed(&bytes[start..cut])?;
            start = cut;
        }
        check.finish()
    }

    #[test]
    fn every_split_agrees_with_a_whole_check() {
        let samples: [&[u8]; 8] = [
            "κόσμε".as_bytes(),
            "a€b𝄞c".as_bytes(),
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            b"\xf4\x90\x80\x80",
            b"abc\xc0\xaf",
            b"\xe2\x82",
            b"\xf0\x9d\x84",
            b"",
        ];
        for bytes in samples {
            let whole = std::str::from_utf8(bytes).is_ok();
            for a in 0..=bytes.len() {
                for b in a..=bytes.len() {
                    assert_eq!(
                        check_split(bytes, &[a, b]).is_ok(),
                        whole,
                        "{bytes:x?} cut at {a} and {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_bad_byte_fails_before_the_message_ends() {
        let mut check = Utf8Check::default();
        check.feed("κόσμε".as_bytes()).unwrap();
        // 0xED 0xA0 0x80 is a UTF-16 surrogate: invalid at its second byte.
        assert_eq!(check.feed(b"\xed\xa0"), Err(Invalid));
        let mut check = Utf8Check::default();
        check.feed(b"ok \xe2").unwrap();
        assert_eq!(check.feed(b"\x28"), Err(Invalid));
    }
}
