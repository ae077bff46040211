//! The closing handshake's rules: which codes, how long a reason.

use bytes::Bytes;

use super::frame::{OP_CLOSE, encode_frame};

/// The longest close reason, in bytes: a control frame's payload is at most 125 bytes, two
/// of which are the code.
pub const MAX_CLOSE_REASON: usize = 123;

/// Whether `code` may appear in a close frame, sent or received (RFC 6455 §7.4 and the IANA
/// registry: 1000–1003, 1007–1014; 3000–4999 for libraries and applications). 1004–1006
/// and 1015 are reserved for reporting and never go on the wire.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// `reason` as it goes on the wire: cut to [`MAX_CLOSE_REASON`] bytes on a character
/// boundary. Every role applies this one rule, so a long reason is never an error that
/// would leave the connection without its close frame.
pub fn close_reason(reason: &str) -> &str {
    utf8_prefix(reason, MAX_CLOSE_REASON)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary: the
/// crate's one way of cutting text to a byte limit (close reasons, error bodies, names on
/// the backplane).
pub(crate) fn utf8_prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An unmasked close frame with `code` and `reason` (cut by [`close_reason`]).
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let reason = close_reason(reason);
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    encode_frame(OP_CLOSE, &payload)
}

/// Why a close frame's payload is not acceptable; the connection is then failed with
/// [`code`](Self::code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseError {
    /// One byte: too short for a code.
    #[error("{}", self.reason())]
    OneByte,
    /// A code that may not be sent (see [`is_valid_close_code`]).
    #[error("{}", self.reason())]
    InvalidCode,
    /// The reason is not UTF-8.
    #[error("{}", self.reason())]
    ReasonNotUtf8,
}

impl CloseError {
    /// The close code that answers this error: 1007 for a reason that is not UTF-8, 1002
    /// (protocol error) otherwise.
    pub fn code(self) -> u16 {
        match self {
            Self::ReasonNotUtf8 => 1007,
            Self::OneByte | Self::InvalidCode => 1002,
        }
    }

    /// The close reason that answers this error (its message).
    pub fn reason(self) -> &'static str {
        match self {
            Self::OneByte => "close payload of one byte",
            Self::InvalidCode => "invalid close code",
            Self::ReasonNotUtf8 => "close reason is not UTF-8",
        }
    }
}

/// Reads a received close frame's payload: `None` when it carries no code.
pub fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, CloseError> {
    match payload {
        [] => Ok(None),
        [_] => Err(CloseError::OneByte),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(CloseError::InvalidCode);
            }
            let reason = std::str::from_utf8(reason).map_err(|_| CloseError::ReasonNotUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_on_a_character_boundary() {
        assert_eq!(close_reason("bye"), "bye");
        let long = "é".repeat(100); // 200 bytes
        let cut = close_reason(&long);
        assert_eq!(cut.len(), 122);
        assert!(encode_close(1000, &long).len() <= 127);
        assert_eq!(&encode_close(4001, "bye")[..], b"\x88\x05\x0f\xa1bye");
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close(b""), Ok(None));
        assert_eq!(parse_close(b"\x0f\xa1bye"), Ok(Some((4001, "bye"))));
        assert_eq!(parse_close(b"\x03"), Err(CloseError::OneByte));
        assert_eq!(parse_close(b"\x03\xec"), Err(CloseError::InvalidCode)); // 1004
        assert_eq!(parse_close(b"\x03\xed"), Err(CloseError::InvalidCode)); // 1005
        assert_eq!(parse_close(b"\x03\xe8\xff"), Err(CloseError::ReasonNotUtf8));
        assert_eq!(CloseError::ReasonNotUtf8.code(), 1007);
        for code in [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!is_valid_close_code(code), "{code}");
        }
        for code in [1000, 1003, 1007, 1014, 3000, 4999] {
            assert!(is_valid_close_code(code), "{code}");
        }
    }
}
