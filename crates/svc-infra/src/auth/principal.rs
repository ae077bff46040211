//! [`WsPrincipal`]: who is on the other end of an authenticated WebSocket.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

/// How the credentials came with the handshake request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TokenSource {
    /// The `?token=` query parameter.
    Query,
    /// The `Authorization: Bearer <jwt>` header.
    Header,
    /// The `Sec-WebSocket-Protocol: bearer, <jwt>` pair (browsers).
    Subprotocol,
    /// An API key (`X-API-Key` header or `?api_key=`).
    ApiKey,
}

impl TokenSource {
    /// `"query"`, `"header"`, `"subprotocol"` or `"api_key"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Header => "header",
            Self::Subprotocol => "subprotocol",
            Self::ApiKey => "api_key",
        }
    }
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller: the seed's `WSPrincipal`.
///
/// For a JWT: `id` is the `sub` claim, `email` the `email` claim (when it is a string),
/// `scopes` the `scopes` array claim or else the space-separated `scope` string, and `claims`
/// the whole payload. For an API key: `id` is the key's name, `scopes` its scopes, `claims`
/// empty.
///
/// Serializes as `{"id":..,"email":..,"scopes":[..],"via":..}` (the claims are left out, as
/// they may hold data not meant for the client).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct WsPrincipal {
    /// The subject (`sub`) or the API key's name. Never empty.
    pub id: String,
    /// The `email` claim, unvalidated.
    pub email: Option<String>,
    /// Granted scopes, in token order, without duplicates.
    pub scopes: Vec<String>,
    /// The full decoded JWT payload (empty for API keys).
    #[serde(skip)]
    pub claims: Map<String, Value>,
    /// How the credentials came.
    pub via: TokenSource,
}

impl WsPrincipal {
    /// A principal for tests or custom authentication.
    pub fn new(id: impl Into<String>, via: TokenSource) -> Self {
        Self {
            id: id.into(),
            email: None,
            scopes: Vec::new(),
            claims: Map::new(),
            via,
        }
    }

    /// Sets the email.
    pub fn with_email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(email.into());
        self
    }

    /// Sets the scopes.
    pub fn with_scopes<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Whether the principal holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Whether the principal holds every one of `scopes` (true for an empty list), the
    /// `RequireWSScopes` rule.
    pub fn has_all_scopes<T: AsRef<str>>(&self, scopes: &[T]) -> bool {
        scopes.iter().all(|s| self.has_scope(s.as_ref()))
    }

    /// Whether the principal holds at least one of `scopes` (false for an empty list), the
    /// `RequireWSAnyScope` rule.
    pub fn has_any_scope<T: AsRef<str>>(&self, scopes: &[T]) -> bool {
        scopes.iter().any(|s| self.has_scope(s.as_ref()))
    }

    /// A claim of the JWT payload.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_rules() {
        let p = WsPrincipal::new("u", TokenSource::Header).with_scopes(["a", "b"]);
        assert!(p.has_all_scopes(&["a", "b"]));
        assert!(!p.has_all_scopes(&["a", "c"]));
        assert!(p.has_all_scopes::<&str>(&[]));
        assert!(p.has_any_scope(&["c", "b"]));
        assert!(!p.has_any_scope::<&str>(&[]));
    }

    #[test]
    fn serializes_without_claims() {
        let mut p = WsPrincipal::new("u1", TokenSource::ApiKey).with_scopes(["x"]);
        p.claims.insert("secret".into(), Value::from(1));
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"id":"u1","email":null,"scopes":["x"],"via":"api_key"}"#
        );
    }
}
