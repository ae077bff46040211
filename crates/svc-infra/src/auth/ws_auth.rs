//! [`WsAuth`], the built authenticator, and [`AuthPolicy`], what a route requires.

use std::{fmt, sync::Arc};

use axum::http::HeaderMap;
use rand::RngCore;
use serde_json::Value;

use super::{
    api_key::{self, ApiKey},
    config::WsAuthConfig,
    error::AuthConfigError,
    extract::{JwtCandidate, extract},
    jwks::{Jwks, JwksSettings},
    jwt::TokenError,
    principal::{TokenSource, WsPrincipal},
    rejection::{
        InsufficientScope, InvalidApiKey, InvalidToken, KeysUnavailable, MissingCredentials,
        TokenExpired, WsAuthRejection,
    },
    verifier::{JwtVerifier, VerifierParts},
};

/// The authenticator for WebSocket handshakes: JWT verifier, API keys and limits, built once
/// from a [`WsAuthConfig`] and shared (cloning is cheap: an `Arc`).
///
/// Hand it to the router factories ([`ws_protected_router`](super::ws_protected_router), …),
/// to [`WsAuth::layer`], or put it into request extensions (`axum::Extension(auth)`) for the
/// extractors on plain routes.
#[derive(Clone)]
pub struct WsAuth {
    inner: Arc<Inner>,
}

struct Inner {
    verifier: JwtVerifier,
    api_keys: Vec<ApiKey>,
}

impl fmt::Debug for WsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsAuth")
            .field("verifier", &self.inner.verifier)
            .field("api_keys", &self.inner.api_keys)
            .finish()
    }
}

impl WsAuthConfig {
    /// Validates the configuration and builds the authenticator.
    ///
    /// With no JWT key at all (no secret, public key or JWKS URL): in a production-like
    /// environment ([`production`](Self::production)) this fails with
    /// [`AuthConfigError::MissingSecret`]; otherwise it logs a loud warning and uses a random
    /// per-process secret, so tokens minted elsewhere are refused (never a well-known default).
    pub fn build(self) -> Result<WsAuth, AuthConfigError> {
        self.validate()?;
        let mut secrets: Vec<Vec<u8>> = Vec::new();
        if !self.has_jwt_keys() {
            if self.production {
                return Err(AuthConfigError::MissingSecret {
                    environment: self
                        .environment
                        .clone()
                        .unwrap_or_else(|| "production".to_owned()),
                });
            }
            tracing::warn!(
                "NO JWT SECRET CONFIGURED (AUTH_JWT__SECRET / AUTH_JWT_SECRET / JWT_SECRET): using a \
                 random per-process secret; no externally minted token will be accepted. \
                 Set a secret before deploying."
            );
            let mut random = vec![0u8; 32];
            rand::rng().fill_bytes(&mut random);
            secrets.push(random);
        }
        if let Some(s) = &self.secret {
            if s.0.len() < 32 {
                tracing::warn!(
                    bytes = s.0.len(),
                    "the JWT secret is shorter than 32 bytes; use a longer random secret"
                );
            }
            secrets.push(s.0.clone());
        }
        secrets.extend(self.old_secrets.iter().map(|s| s.0.clone()));
        let jwks = match &self.jwks_url {
            Some(url) => Some({
                let plain_remote = url.strip_prefix("http://").is_some_and(|rest| {
                    !(rest.starts_with("127.")
                        || rest.starts_with("localhost")
                        || rest.starts_with("[::1]"))
                });
                if plain_remote {
                    tracing::warn!(
                        url = %crate::websocket::redact_url(url),
                        "the JWKS URL is plain http: keys can be tampered with in transit"
                    );
                }
                Jwks::new(JwksSettings {
                    url: url.clone(),
                    ttl: self.jwks_cache_ttl,
                    min_refresh: self.jwks_min_refresh_interval,
                    timeout: self.jwks_timeout,
                    max_bytes: self.jwks_max_bytes,
                    max_keys: self.jwks_max_keys,
                })?
            }),
            None => None,
        };
        let verifier = JwtVerifier::new(VerifierParts {
            secrets,
            public_keys: self.public_keys,
            jwks,
            algorithms: self.algorithms,
            audience: self.audience,
            issuer: self.issuer,
            leeway: self.leeway.as_secs(),
            max_token_bytes: self.max_token_bytes,
        });
        Ok(WsAuth {
            inner: Arc::new(Inner {
                verifier,
                api_keys: self.api_keys,
            }),
        })
    }
}

/// What a route requires. Build with [`required`](Self::required), [`jwt_only`](Self::jwt_only),
/// [`optional`](Self::optional), [`all_scopes`](Self::all_scopes) or
/// [`any_scope`](Self::any_scope).
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    optional: bool,
    api_keys: bool,
    scopes: ScopeRule,
}

#[derive(Debug, Clone)]
enum ScopeRule {
    None,
    All(Arc<[String]>),
    Any(Arc<[String]>),
}

impl AuthPolicy {
    /// A valid JWT or API key is required (`ws_protected_router`).
    pub fn required() -> Self {
        Self {
            optional: false,
            api_keys: true,
            scopes: ScopeRule::None,
        }
    }

    /// A valid JWT is required; API keys are refused (`ws_user_router`).
    pub fn jwt_only() -> Self {
        Self {
            api_keys: false,
            ..Self::required()
        }
    }

    /// Anonymous callers are let in; present credentials must be valid (`ws_optional_router`).
    pub fn optional() -> Self {
        Self {
            optional: true,
            ..Self::required()
        }
    }

    /// Authenticated and holding **every** one of `scopes` (`ws_scopes_router`). With no
    /// scopes this is [`required`](Self::required).
    pub fn all_scopes<I, T>(scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self {
            scopes: ScopeRule::All(scopes.into_iter().map(Into::into).collect()),
            ..Self::required()
        }
    }

    /// Authenticated and holding **at least one** of `scopes`. With no scopes, everyone is
    /// refused (403), as in the Python code.
    pub fn any_scope<I, T>(scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self {
            scopes: ScopeRule::Any(scopes.into_iter().map(Into::into).collect()),
            ..Self::required()
        }
    }

    /// Whether API keys are accepted (default true except for [`jwt_only`](Self::jwt_only)).
    pub fn with_api_keys(mut self, accept: bool) -> Self {
        self.api_keys = accept;
        self
    }

    fn check_scopes(&self, principal: &WsPrincipal) -> Result<(), InsufficientScope> {
        let ok = match &self.scopes {
            ScopeRule::None => true,
            ScopeRule::All(s) => principal.has_all_scopes(s),
            ScopeRule::Any(s) => principal.has_any_scope(s),
        };
        if ok { Ok(()) } else { Err(InsufficientScope) }
    }
}

/// The result of authenticating a request.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) principal: Option<WsPrincipal>,
    /// The `bearer` item to select in the handshake response (the client offered a
    /// `bearer, <jwt>` pair).
    pub(crate) bearer_protocol: Option<String>,
}

impl WsAuth {
    /// A builder-free shortcut: [`WsAuthConfig::from_env`] then [`WsAuthConfig::build`].
    pub fn from_env() -> Result<Self, AuthConfigError> {
        WsAuthConfig::from_env()?.build()
    }

    /// Authenticates a handshake request given its query string and headers, under `policy`.
    ///
    /// `Ok(None)` only for an [`optional`](AuthPolicy::optional) policy and a request without
    /// credentials. Never panics, whatever the input.
    pub async fn authenticate(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        policy: &AuthPolicy,
    ) -> Result<Option<WsPrincipal>, WsAuthRejection> {
        self.authenticate_inner(query, headers, policy)
            .await
            .map(|o| o.principal)
    }

    pub(crate) async fn authenticate_inner(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        policy: &AuthPolicy,
    ) -> Result<Outcome, WsAuthRejection> {
        let creds = extract(query, headers);
        let bearer_protocol = creds.bearer_protocol;
        let principal = match creds.jwt {
            JwtCandidate::Blank => return Err(MissingCredentials.into()),
            JwtCandidate::Present { token, via } => self.verify_token(&token, via).await?,
            JwtCandidate::Absent => match creds.api_key {
                Some(_) if !policy.api_keys => return Err(MissingCredentials.into()),
                Some(presented) => {
                    let key =
                        api_key::find(&self.inner.api_keys, &presented).ok_or(InvalidApiKey)?;
                    key.principal()
                }
                None if policy.optional => {
                    return Ok(Outcome {
                        principal: None,
                        bearer_protocol,
                    });
                }
                None => return Err(MissingCredentials.into()),
            },
        };
        policy.check_scopes(&principal)?;
        Ok(Outcome {
            principal: Some(principal),
            bearer_protocol,
        })
    }

    /// Verifies one JWT and builds the principal, recording `via` as its source.
    pub async fn verify_token(
        &self,
        token: &str,
        via: TokenSource,
    ) -> Result<WsPrincipal, WsAuthRejection> {
        let claims = self
            .inner
            .verifier
            .verify(token)
            .await
            .map_err(|e| match e {
                TokenError::Expired => WsAuthRejection::from(TokenExpired),
                TokenError::Invalid(why) => InvalidToken::new(why).into(),
                TokenError::KeysUnavailable => KeysUnavailable.into(),
            })?;
        principal_from_claims(claims, via).map_err(|why| InvalidToken::new(why).into())
    }
}

/// Builds the principal; claims whose types are wrong are refused, never passed through.
fn principal_from_claims(
    claims: serde_json::Map<String, Value>,
    via: TokenSource,
) -> Result<WsPrincipal, &'static str> {
    let id = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("Subject must be a string"),
    };
    let email = claims
        .get("email")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut scopes: Vec<String> = Vec::new();
    let from_array = match claims.get("scopes") {
        None | Some(Value::Null) => false,
        Some(Value::Array(items)) if items.is_empty() => false,
        Some(Value::Array(items)) => {
            for item in items {
                let Value::String(s) = item else {
                    return Err("The scopes claim must be an array of strings");
                };
                scopes.push(s.clone());
            }
            true
        }
        Some(_) => return Err("The scopes claim must be an array of strings"),
    };
    if !from_array {
        match claims.get("scope") {
            None => {}
            Some(Value::String(s)) => scopes.extend(s.split_whitespace().map(str::to_owned)),
            Some(_) => return Err("The scope claim must be a space-separated string"),
        }
    }
    let mut seen = std::collections::HashSet::new();
    scopes.retain(|s| seen.insert(s.clone()));
    Ok(WsPrincipal {
        id,
        email,
        scopes,
        claims,
        via,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn scopes_from_claims() {
        let p = principal_from_claims(
            claims(json!({"sub":"u","scopes":["a","b","a"],"scope":"c"})),
            TokenSource::Query,
        )
        .unwrap();
        assert_eq!(p.scopes, ["a", "b"]);
        let p = principal_from_claims(
            claims(json!({"sub":"u","scopes":[],"scope":"a b  c"})),
            TokenSource::Query,
        )
        .unwrap();
        assert_eq!(p.scopes, ["a", "b", "c"]);
        let p = principal_from_claims(claims(json!({"sub":"u","email":5})), TokenSource::Query)
            .unwrap();
        assert_eq!(p.email, None);
        assert!(p.scopes.is_empty());
    }

    #[test]
    fn bad_scope_types_are_refused() {
        for bad in [
            json!({"sub":"u","scopes":"admin"}),
            json!({"sub":"u","scopes":[1]}),
            json!({"sub":"u","scope":["admin"]}),
            json!({"sub":"u","scope":null}),
            json!({"sub":7}),
            json!({"sub":""}),
        ] {
            assert!(
                principal_from_claims(claims(bad.clone()), TokenSource::Query).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn production_without_key_fails_to_build() {
        let e = WsAuthConfig::from_vars([("APP_ENV", "production")])
            .unwrap()
            .build()
            .unwrap_err();
        assert!(matches!(e, AuthConfigError::MissingSecret { .. }));
        assert!(e.to_string().contains("AUTH_JWT__SECRET"));
        assert!(e.to_string().contains("production"));
        assert!(
            WsAuthConfig::from_vars([("APP_ENV", "dev")])
                .unwrap()
                .build()
                .is_ok()
        );
    }
}
