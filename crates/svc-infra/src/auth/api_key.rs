//! [`ApiKey`]: named service credentials, stored as SHA-256 hashes and compared in constant time.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::principal::{TokenSource, WsPrincipal};

/// An API key: a name (the principal's `id`), the SHA-256 hash of the key, and scopes.
///
/// The key itself is hashed as soon as the value is built and never kept. Checks hash the
/// presented key and compare it with **every** configured hash in constant time, so timing
/// tells nothing about which key (or how much of it) matched.
///
/// ```
/// use svc_infra::auth::ApiKey;
///
/// let k = ApiKey::new("billing", "s3cret-key-value", ["publish", "read"]);
/// assert_eq!(k.name(), "billing");
/// let keys = ApiKey::parse_list("svc-a:key-a:publish read, svc-b:key-b")?;
/// assert_eq!(keys.len(), 2);
/// assert_eq!(keys[0].scopes(), ["publish", "read"]);
/// # Ok::<(), svc_infra::auth::ApiKeyParseError>(())
/// ```
#[derive(Clone)]
pub struct ApiKey {
    name: String,
    hash: [u8; 32],
    scopes: Vec<String>,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("hash", &"<redacted>")
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// A malformed `WS_API_KEYS` entry (the message names the entry by position, never the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("API key entry #{index}: {problem} (expected name:key or name:key:scope1 scope2)")]
pub struct ApiKeyParseError {
    /// 1-based position of the bad entry.
    pub index: usize,
    /// What is wrong.
    pub problem: &'static str,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

impl ApiKey {
    /// A key named `name` (the principal id) with the given scopes; `key` is hashed at once.
    pub fn new<I, T>(name: impl Into<String>, key: impl AsRef<[u8]>, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self {
            name: name.into(),
            hash: sha256(key.as_ref()),
            scopes: scopes.into_iter().map(Into::into).collect(),
        }
    }

    /// A key given by the hex SHA-256 of its value (64 hex digits), for keys stored hashed.
    /// `None` if `sha256_hex` is not 64 hex digits.
    pub fn from_sha256_hex<I, T>(
        name: impl Into<String>,
        sha256_hex: &str,
        scopes: I,
    ) -> Option<Self>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let hex = sha256_hex.trim().as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut hash = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let s = std::str::from_utf8(pair).ok()?;
            hash[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some(Self {
            name: name.into(),
            hash,
            scopes: scopes.into_iter().map(Into::into).collect(),
        })
    }

    /// Parses `name:key:scope1 scope2,name2:key2` (the `WS_API_KEYS` format): entries are
    /// comma separated, scopes space separated and optional; the key may not contain `:` or
    /// `,`, scopes may contain `:`. Empty entries are skipped.
    pub fn parse_list(raw: &str) -> Result<Vec<Self>, ApiKeyParseError> {
        let mut keys = Vec::new();
        for (i, entry) in raw.split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let mut parts = entry.splitn(3, ':');
            let name = parts.next().unwrap_or_default().trim();
            let key = parts.next().map(str::trim).unwrap_or_default();
            let scopes = parts.next().unwrap_or_default();
            let err = |problem| ApiKeyParseError {
                index: i + 1,
                problem,
            };
            if name.is_empty() {
                return Err(err("empty name"));
            }
            if key.is_empty() {
                return Err(err("empty key"));
            }
            keys.push(Self::new(name, key, scopes.split_whitespace()));
        }
        Ok(keys)
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's scopes.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// The principal this key authenticates as.
    pub(crate) fn principal(&self) -> WsPrincipal {
        WsPrincipal::new(self.name.clone(), TokenSource::ApiKey).with_scopes(self.scopes.clone())
    }
}

/// Finds the key whose hash matches `presented`, comparing against every key in constant
/// time (no early exit).
pub(crate) fn find<'a>(keys: &'a [ApiKey], presented: &str) -> Option<&'a ApiKey> {
    let hash = sha256(presented.as_bytes());
    let mut found: Option<&ApiKey> = None;
    for key in keys {
        let matched: bool = key.hash.ct_eq(&hash).into();
        if matched && found.is_none() {
            found = Some(key);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_find() {
        let keys = ApiKey::parse_list(" a:ka:read write , b:kb:chat:write ,, c:kc").unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0].scopes(), ["read", "write"]);
        assert_eq!(keys[1].scopes(), ["chat:write"]);
        assert!(keys[2].scopes().is_empty());
        assert_eq!(find(&keys, "kb").map(ApiKey::name), Some("b"));
        assert!(find(&keys, "kx").is_none());
        assert!(find(&keys, "").is_none());
    }

    #[test]
    fn parse_errors_do_not_show_keys() {
        let e = ApiKey::parse_list("a:topsecret,:k2").unwrap_err();
        assert_eq!(e.index, 2);
        assert!(!e.to_string().contains("topsecret"));
        assert!(ApiKey::parse_list("nokey").is_err());
    }

    #[test]
    fn hex_form() {
        let plain = ApiKey::new("a", "abc", Vec::<String>::new());
        let hex: String = plain.hash.iter().map(|b| format!("{b:02x}")).collect();
        let hashed = ApiKey::from_sha256_hex("a", &hex, ["s"]).unwrap();
        assert_eq!(
            find(std::slice::from_ref(&hashed), "abc").unwrap().scopes(),
            ["s"]
        );
        assert!(ApiKey::from_sha256_hex("a", "zz", ["s"]).is_none());
        assert!(format!("{hashed:?}").contains("redacted"));
    }
}
