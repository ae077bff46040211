//! Typed rejections: one struct per failure, combined in [`WsAuthRejection`].
//!
//! Each answers the handshake **before** any upgrade, with a status, a
//! `WWW-Authenticate: Bearer …` header (RFC 6750) on 401/403, and a small JSON body
//! `{"error": "...", "reason": "..."}` whose reasons are the Python code's internal strings.

use std::net::SocketAddr;

use axum::{
    Json,
    extract::ConnectInfo,
    http::{Extensions, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tracing::field;

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    reason: &'a str,
}

fn respond(status: StatusCode, error: &str, reason: &str, www: Option<&'static str>) -> Response {
    let mut resp = (status, Json(Body { error, reason })).into_response();
    if let Some(www) = www {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(www));
    }
    resp
}

macro_rules! rejection {
    ($(#[$doc:meta])* $name:ident, $status:expr, $error:literal, $reason:literal, $www:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct $name;

        impl $name {
            /// The HTTP status.
            pub fn status(&self) -> StatusCode {
                $status
            }
            /// The `reason` text of the body.
            pub fn reason(&self) -> &'static str {
                $reason
            }
        }

        impl IntoResponse for $name {
            fn into_response(self) -> Response {
                respond($status, $error, $reason, $www)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($reason)
            }
        }

        impl std::error::Error for $name {}
    };
}

rejection!(
    /// No credentials where some are required, a blank `?token=`, or a JWT-only route given
    /// only an API key. 401, reason `"Missing or invalid authentication"`.
    MissingCredentials,
    StatusCode::UNAUTHORIZED,
    "unauthorized",
    "Missing or invalid authentication",
    Some("Bearer")
);

rejection!(
    /// A JWT whose `exp` has passed (its signature was valid). 401, reason `"Token expired"`.
    TokenExpired,
    StatusCode::UNAUTHORIZED,
    "unauthorized",
    "Token expired",
    Some("Bearer error=\"invalid_token\"")
);

rejection!(
    /// An API key that matches no configured key. 401, reason `"Invalid API key"`.
    InvalidApiKey,
    StatusCode::UNAUTHORIZED,
    "unauthorized",
    "Invalid API key",
    Some("Bearer")
);

rejection!(
    /// The caller is authenticated but lacks the required scope(s). 403, reason
    /// `"Insufficient scope"`.
    InsufficientScope,
    StatusCode::FORBIDDEN,
    "forbidden",
    "Insufficient scope",
    Some("Bearer error=\"insufficient_scope\"")
);

rejection!(
    /// The token names keys of the JWKS URL, which has not answered yet. 503 (retryable),
    /// reason `"Signing keys unavailable"`: the server's problem, not the caller's.
    KeysUnavailable,
    StatusCode::SERVICE_UNAVAILABLE,
    "unavailable",
    "Signing keys unavailable",
    None
);

rejection!(
    /// An auth extractor ran on a route with no [`WsAuth`](super::WsAuth) in its request
    /// extensions: a wiring bug. 500; add one of the `ws_*_router` factories, a
    /// [`WsAuthLayer`](super::WsAuthLayer), or `axum::Extension(auth)` to the route.
    AuthNotConfigured,
    StatusCode::INTERNAL_SERVER_ERROR,
    "internal",
    "WebSocket authentication is not configured for this route",
    None
);

/// A JWT that is malformed, badly signed, or whose claims fail a check. 401, reason
/// `"Invalid token: <why>"`, e.g. `"Invalid token: Signature verification failed"`.
///
/// `why` is one of a fixed set of messages and never echoes the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidToken {
    why: &'static str,
}

impl InvalidToken {
    pub(crate) fn new(why: &'static str) -> Self {
        Self { why }
    }

    /// 401.
    pub fn status(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    /// Why the token was refused, without the `"Invalid token: "` prefix.
    pub fn why(&self) -> &'static str {
        self.why
    }

    /// The `reason` text of the body, `"Invalid token: <why>"`.
    pub fn reason(&self) -> String {
        format!("Invalid token: {}", self.why)
    }
}

impl std::fmt::Display for InvalidToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Invalid token: {}", self.why)
    }
}

impl std::error::Error for InvalidToken {}

impl IntoResponse for InvalidToken {
    fn into_response(self) -> Response {
        respond(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &self.reason(),
            Some("Bearer error=\"invalid_token\""),
        )
    }
}

/// Every way authentication can refuse a handshake. Implements [`IntoResponse`], so it can be
/// returned from a handler or used as an extractor rejection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsAuthRejection {
    /// See [`MissingCredentials`].
    #[error(transparent)]
    MissingCredentials(#[from] MissingCredentials),
    /// See [`TokenExpired`].
    #[error(transparent)]
    TokenExpired(#[from] TokenExpired),
    /// See [`InvalidToken`].
    #[error(transparent)]
    InvalidToken(#[from] InvalidToken),
    /// See [`InvalidApiKey`].
    #[error(transparent)]
    InvalidApiKey(#[from] InvalidApiKey),
    /// See [`InsufficientScope`].
    #[error(transparent)]
    InsufficientScope(#[from] InsufficientScope),
    /// See [`KeysUnavailable`].
    #[error(transparent)]
    KeysUnavailable(#[from] KeysUnavailable),
    /// See [`AuthNotConfigured`].
    #[error(transparent)]
    AuthNotConfigured(#[from] AuthNotConfigured),
}

impl WsAuthRejection {
    /// The HTTP status: 401, 403, 503 or 500.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingCredentials(r) => r.status(),
            Self::TokenExpired(r) => r.status(),
            Self::InvalidToken(r) => r.status(),
            Self::InvalidApiKey(r) => r.status(),
            Self::InsufficientScope(r) => r.status(),
            Self::KeysUnavailable(r) => r.status(),
            Self::AuthNotConfigured(r) => r.status(),
        }
    }

    /// The `reason` text of the body.
    pub fn reason(&self) -> String {
        match self {
            Self::InvalidToken(r) => r.reason(),
            other => other.to_string(),
        }
    }

    /// Counts this refusal of a WebSocket upgrade in
    /// `svc_ws_upgrades_refused_total{reason}` (`unauthorized`, `forbidden`,
    /// `keys_unavailable`; a route without auth configured is a bug, not a refusal) and logs
    /// it once: at debug, "websocket upgrade refused" with `status`, `reason` (the body's,
    /// which never holds a credential), `kind` (the label), `path` (without the query, where
    /// a `?token=` would be) and `peer`; a route without auth configured at error.
    pub(crate) fn refused(self, uri: &Uri, extensions: &Extensions) -> Self {
        let label = match self.status() {
            StatusCode::UNAUTHORIZED => Some("unauthorized"),
            StatusCode::FORBIDDEN => Some("forbidden"),
            StatusCode::SERVICE_UNAVAILABLE => Some("keys_unavailable"),
            _ => None,
        };
        let path = uri.path();
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| field::display(*peer));
        match label {
            Some(label) => {
                metrics::counter!("svc_ws_upgrades_refused_total", "reason" => label).increment(1);
                tracing::debug!(
                    status = self.status().as_u16(),
                    reason = self.reason(),
                    kind = label,
                    path,
                    peer,
                    "websocket upgrade refused"
                );
            }
            None => tracing::error!(path, peer, "{self}"),
        }
        self
    }

    /// The WebSocket close code the Python code used for the same failure (1008 policy
    /// violation; 1011 for server-side problems), for logs and for handlers that accept first
    /// and close later.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::KeysUnavailable(_) | Self::AuthNotConfigured(_) => 1011,
            _ => 1008,
        }
    }
}

impl IntoResponse for WsAuthRejection {
    fn into_response(self) -> Response {
        match self {
            Self::MissingCredentials(r) => r.into_response(),
            Self::TokenExpired(r) => r.into_response(),
            Self::InvalidToken(r) => r.into_response(),
            Self::InvalidApiKey(r) => r.into_response(),
            Self::InsufficientScope(r) => r.into_response(),
            Self::KeysUnavailable(r) => r.into_response(),
            Self::AuthNotConfigured(r) => r.into_response(),
        }
    }
}
