//! Data types shared by the client and the server side: [`ConnectionState`],
//! [`WebSocketMessage`] and [`ConnectionInfo`].

use std::{collections::HashMap, fmt, time::SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};
use tungstenite::Utf8Bytes;

/// Where a connection is in its life.
///
/// There is no `Connecting`: a `WebSocketClient` exists only once its opening handshake has
/// succeeded, so it starts [`Open`](Self::Open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ConnectionState {
    /// Messages can flow both ways.
    Open,
    /// A close frame was sent or received; waiting for the other side.
    Closing,
    /// The connection is gone.
    Closed,
}

impl ConnectionState {
    /// The lowercase name, as the Python enum's value (`"open"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closing => "closing",
            Self::Closed => "closed",
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One WebSocket data message: text (valid UTF-8) or binary, and when it arrived.
///
/// Cheap to clone: the payload is reference-counted. Build one to send with
/// [`WebSocketMessage::text`], [`WebSocketMessage::binary`] or `From`:
///
/// ```
/// use svc_infra::websocket::WebSocketMessage;
///
/// let hello: WebSocketMessage = "hello".into();
/// assert_eq!(hello.as_text(), Some("hello"));
/// let raw = WebSocketMessage::binary(vec![1, 2, 3]);
/// assert!(raw.is_binary());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct WebSocketMessage {
    payload: Payload,
    received_at: Option<SystemTime>,
}

#[derive(Clone, PartialEq, Eq)]
enum Payload {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl WebSocketMessage {
    /// A text message.
    pub fn text(text: impl Into<String>) -> Self {
        Self::from_payload(Payload::Text(Utf8Bytes::from(text.into())))
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Self::from_payload(Payload::Binary(data.into()))
    }

    /// A text message from bytes, if they are valid UTF-8.
    pub fn text_from_bytes(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        Ok(Self::from_payload(Payload::Text(Utf8Bytes::try_from(
            bytes,
        )?)))
    }

    fn from_payload(payload: Payload) -> Self {
        Self {
            payload,
            received_at: None,
        }
    }

    /// Stamps the message with the time it was received.
    #[cfg_attr(not(feature = "client"), allow(dead_code))] // only the client receives, so far
    pub(crate) fn received_now(mut self) -> Self {
        self.received_at = Some(SystemTime::now());
        self
    }

    /// Whether this is a text message.
    pub fn is_text(&self) -> bool {
        matches!(self.payload, Payload::Text(_))
    }

    /// Whether this is a binary message.
    pub fn is_binary(&self) -> bool {
        matches!(self.payload, Payload::Binary(_))
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match &self.payload {
            Payload::Text(t) => Some(t.as_str()),
            Payload::Binary(_) => None,
        }
    }

    /// The payload bytes (UTF-8 for text).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.payload {
            Payload::Text(t) => t.as_ref(),
            Payload::Binary(b) => b,
        }
    }

    /// The payload as `Bytes` (UTF-8 for text), without copying.
    pub fn into_bytes(self) -> Bytes {
        match self.payload {
            Payload::Text(t) => t.into(),
            Payload::Binary(b) => b,
        }
    }

    /// The text as an owned `String` (copies), if this is a text message.
    pub fn into_text(self) -> Option<String> {
        self.as_text().map(str::to_owned)
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When the message was received; `None` for a message built locally.
    pub fn received_at(&self) -> Option<SystemTime> {
        self.received_at
    }

    /// Parses the payload (text or binary) as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.as_bytes())
    }
}

impl fmt::Debug for WebSocketMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("WebSocketMessage");
        match &self.payload {
            Payload::Text(t) => d.field("text", &t.as_str()),
            Payload::Binary(b) => d.field("binary", b),
        };
        d.field("received_at", &self.received_at).finish()
    }
}

impl fmt::Display for WebSocketMessage {
    /// Text as is; binary as `<N bytes>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.payload {
            Payload::Text(t) => f.write_str(t.as_str()),
            Payload::Binary(b) => write!(f, "<{} bytes>", b.len()),
        }
    }
}

impl From<&str> for WebSocketMessage {
    fn from(s: &str) -> Self {
        Self::text(s)
    }
}
impl From<String> for WebSocketMessage {
    fn from(s: String) -> Self {
        Self::text(s)
    }
}
impl From<&String> for WebSocketMessage {
    fn from(s: &String) -> Self {
        Self::text(s.as_str())
    }
}
impl From<Vec<u8>> for WebSocketMessage {
    fn from(b: Vec<u8>) -> Self {
        Self::binary(b)
    }
}
impl From<&[u8]> for WebSocketMessage {
    fn from(b: &[u8]) -> Self {
        Self::binary(Bytes::copy_from_slice(b))
    }
}
impl<const N: usize> From<&[u8; N]> for WebSocketMessage {
    fn from(b: &[u8; N]) -> Self {
        Self::binary(Bytes::copy_from_slice(b))
    }
}
impl From<Bytes> for WebSocketMessage {
    fn from(b: Bytes) -> Self {
        Self::binary(b)
    }
}

/// What the manager knows about one server-side connection.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    /// The user the connection belongs to.
    pub user_id: String,
    /// Unique id of the connection, as returned by `ConnectionManager::connect`.
    pub connection_id: String,
    /// When the connection was registered (UTC).
    #[serde(serialize_with = "rfc3339")]
    pub connected_at: SystemTime,
    /// Last time a message went to or came from this connection (UTC).
    #[serde(serialize_with = "rfc3339")]
    pub last_activity: SystemTime,
    /// Whatever the application attached at `connect` time.
    pub metadata: HashMap<String, serde_json::Value>,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*t))
}

/// Where a publication sits in its stream: its offset (1 for the first) and the stream's
/// epoch. Offset 0 is the position of a stream with nothing published yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The publication's number in its stream, from 1, without gaps.
    pub offset: u64,
    /// The stream's identity: a new epoch means the past before it was lost.
    pub epoch: String,
}

impl std::fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.offset, self.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_binary() {
        let t = WebSocketMessage::from("héllo");
        assert!(t.is_text() && !t.is_binary());
        assert_eq!(t.as_text(), Some("héllo"));
        assert_eq!(t.len(), 6);
        assert_eq!(t.received_at(), None);
        let b = WebSocketMessage::from(&b"\x00\xff"[..]);
        assert!(b.is_binary());
        assert_eq!(b.as_text(), None);
        assert_eq!(b.to_string(), "<2 bytes>");
        assert!(WebSocketMessage::text_from_bytes(Bytes::from_static(b"\xff")).is_err());
    }

    #[test]
    fn json_of_text() {
        let m = WebSocketMessage::text(r#"{"type":"hello"}"#).received_now();
        let v: serde_json::Value = m.json().unwrap();
        assert_eq!(v["type"], "hello");
        assert!(m.received_at().is_some());
    }

    #[test]
    fn state_names() {
        assert_eq!(ConnectionState::Open.to_string(), "open");
        assert_eq!(
            serde_json::to_string(&ConnectionState::Closing).unwrap(),
            "\"closing\""
        );
    }

    #[test]
    fn connection_info_serializes_utc() {
        let info = ConnectionInfo {
            user_id: "u1".into(),
            connection_id: "c1".into(),
            connected_at: SystemTime::UNIX_EPOCH,
            last_activity: SystemTime::UNIX_EPOCH,
            metadata: HashMap::new(),
        };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["connected_at"], "1970-01-01T00:00:00.000000Z");
    }
}
