//! [`AuthConfigError`]: why a [`WsAuth`](super::WsAuth) could not be built.

use crate::websocket::ConfigError;

/// Why the authentication configuration could not be read or built. Raised at startup, never
/// while serving a request (request failures are [`WsAuthRejection`](super::WsAuthRejection)s).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthConfigError {
    /// The environment is production-like and no JWT key is configured.
    ///
    /// *What to do:* set `AUTH_JWT__SECRET` (or `AUTH_JWT_SECRET` / `JWT_SECRET`), or a public
    /// key or JWKS URL.
    #[error(
        "no JWT secret configured in a production-like environment (APP_ENV={environment:?}): \
         set AUTH_JWT__SECRET (or AUTH_JWT_SECRET / JWT_SECRET), AUTH_JWT__PUBLIC_KEY or AUTH_JWT__JWKS_URL"
    )]
    MissingSecret {
        /// The `APP_ENV` value, or `"production"` when set programmatically.
        environment: String,
    },

    /// A setting has a value that is not allowed: the variable (or field), the value when it
    /// is not secret, and what is accepted. The same [`ConfigError`] as the WebSocket
    /// configuration's.
    ///
    /// *What to do:* fix the named variable; the message says what is accepted.
    #[error(transparent)]
    Invalid(#[from] ConfigError),

    /// A key could not be loaded (bad PEM, unsupported key type).
    ///
    /// *What to do:* check the key material; PEM public keys must be `-----BEGIN PUBLIC KEY-----`
    /// (or `BEGIN RSA PUBLIC KEY`) blocks.
    #[error("invalid key in {variable}: {reason}")]
    InvalidKey {
        /// Where the key came from.
        variable: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The HTTP client for the JWKS URL could not be created (TLS setup).
    ///
    /// *What to do:* report it; this points at the platform's TLS support.
    #[error("cannot create the JWKS HTTP client: {0}")]
    HttpClient(String),
}

impl AuthConfigError {
    pub(crate) fn invalid(
        variable: &str,
        value: Option<&str>,
        expected: impl Into<String>,
    ) -> Self {
        Self::Invalid(match value {
            Some(value) => ConfigError::new(variable, value, expected),
            None => ConfigError::hidden(variable, expected),
        })
    }
}
