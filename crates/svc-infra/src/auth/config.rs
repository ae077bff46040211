//! [`WsAuthConfig`]: where the keys come from, and what a token must look like.

use std::{fmt, time::Duration};

use super::{
    api_key::ApiKey,
    error::AuthConfigError,
    keys::{JwtAlgorithm, PublicKey},
};

/// A secret that never shows in `Debug` output or error messages.
#[derive(Clone)]
pub(crate) struct Secret(pub(crate) Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// The authentication settings for WebSocket routes: JWT keys and claim rules, API keys, and
/// limits. Build a [`WsAuth`](super::WsAuth) from it with [`build`](Self::build).
///
/// Start from [`from_env`](Self::from_env) (the usual way: see the table there), from
/// [`from_vars`](Self::from_vars) (tests), or from [`WsAuthConfig::default`] and the `with_*`
/// setters:
///
/// ```
/// use std::time::Duration;
/// use svc_infra::auth::{ApiKey, WsAuthConfig};
///
/// let auth = WsAuthConfig::default()
///     .with_secret("a-long-random-secret-of-at-least-32-bytes")
///     .with_old_secret("the-previous-secret-still-accepted-for-a-while")
///     .with_audience(["my-api"])
///     .with_leeway(Duration::from_secs(5))
///     .with_api_key(ApiKey::new("billing", "k3y-for-billing-service", ["publish"]))
///     .build()?;
/// # let _ = auth;
/// # Ok::<(), svc_infra::auth::AuthConfigError>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct WsAuthConfig {
    pub(crate) secret: Option<Secret>,
    pub(crate) old_secrets: Vec<Secret>,
    pub(crate) public_keys: Vec<PublicKey>,
    pub(crate) jwks_url: Option<String>,
    /// The accepted JWT algorithms, or `None` (the default) for every algorithm that fits a
    /// configured key: HS256/384/512 for secrets, RS*/PS* for RSA keys, ES256/ES384 for EC keys,
    /// EdDSA for Ed25519 keys. `none` is never accepted.
    pub algorithms: Option<Vec<JwtAlgorithm>>,
    /// Accepted `aud` values. Empty (the default): `aud` is not checked. Otherwise a token must
    /// carry one of them.
    pub audience: Vec<String>,
    /// Accepted `iss` values. Empty (the default): `iss` is not checked. Otherwise a token must
    /// carry one of them.
    pub issuer: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in whole seconds (fractions are dropped).
    /// Default 0 (as the Python code), at most one hour.
    pub leeway: Duration,
    pub(crate) api_keys: Vec<ApiKey>,
    /// Tokens longer than this are rejected (401) without being parsed. Default 8192 bytes.
    pub max_token_bytes: usize,
    /// Whether the environment is production-like (`APP_ENV`): then building without any key
    /// fails. Default `false`; [`from_env`](Self::from_env) sets it from the environment.
    pub production: bool,
    pub(crate) environment: Option<String>,
    /// How long fetched JWKS keys are used before they are fetched again. Default 5 minutes.
    pub jwks_cache_ttl: Duration,
    /// The least time between two JWKS fetches caused by an unknown `kid` (a token naming a key
    /// we do not have). Bounds how hard garbage `kid`s can make us hit the JWKS endpoint.
    /// Default 30 seconds.
    pub jwks_min_refresh_interval: Duration,
    /// Timeout for one JWKS fetch (connect plus body). Default 5 seconds.
    pub jwks_timeout: Duration,
    /// The largest JWKS response accepted. Default 256 KiB.
    pub jwks_max_bytes: usize,
    /// At most this many keys are kept from a JWKS; the rest are ignored with a warning.
    /// Default 64.
    pub jwks_max_keys: usize,
}

/// Secrets show by length, API keys by name, the JWKS URL without its credentials
/// ([`redact_url`](crate::websocket::redact_url)).
impl fmt::Debug for WsAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsAuthConfig")
            .field("secret", &self.secret)
            .field("old_secrets", &self.old_secrets)
            .field("public_keys", &self.public_keys)
            .field(
                "jwks_url",
                &self.jwks_url.as_deref().map(crate::websocket::redact_url),
            )
            .field("algorithms", &self.algorithms)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("api_keys", &self.api_keys)
            .field("max_token_bytes", &self.max_token_bytes)
            .field("production", &self.production)
            .field("environment", &self.environment)
            .field("jwks_cache_ttl", &self.jwks_cache_ttl)
            .field("jwks_min_refresh_interval", &self.jwks_min_refresh_interval)
            .field("jwks_timeout", &self.jwks_timeout)
            .field("jwks_max_bytes", &self.jwks_max_bytes)
            .field("jwks_max_keys", &self.jwks_max_keys)
            .finish()
    }
}

impl Default for WsAuthConfig {
    fn default() -> Self {
        Self {
            secret: None,
            old_secrets: Vec::new(),
            public_keys: Vec::new(),
            jwks_url: None,
            algorithms: None,
            audience: Vec::new(),
            issuer: Vec::new(),
            leeway: Duration::ZERO,
            api_keys: Vec::new(),
            max_token_bytes: 8192,
            production: false,
            environment: None,
            jwks_cache_ttl: Duration::from_secs(300),
            jwks_min_refresh_interval: Duration::from_secs(30),
            jwks_timeout: Duration::from_secs(5),
            jwks_max_bytes: 256 * 1024,
            jwks_max_keys: 64,
        }
    }
}

/// The largest accepted leeway.
const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// Values of `APP_ENV` / `RAILWAY_ENVIRONMENT_NAME` that count as production-like
/// (case-insensitive), as in the Python code: the prod and the test families.
const PRODUCTION_LIKE: &[&str] = &["prod", "production", "test", "staging", "preview", "uat"];

/// Whether an `APP_ENV` value is production-like (see [`WsAuthConfig::from_env`]).
pub fn is_production_like(app_env: &str) -> bool {
    let v = app_env.trim().to_ascii_lowercase();
    PRODUCTION_LIKE.contains(&v.as_str())
}

impl WsAuthConfig {
    /// The configuration from the process environment. Library code reads the environment
    /// here and nowhere else.
    ///
    /// | Variable | Meaning | Default |
    /// |---|---|---|
    /// | `AUTH_JWT__SECRET` | HMAC secret for HS256/384/512 (first of these three that is set and non-empty wins) | none |
    /// | `AUTH_JWT_SECRET` | fallback for the secret | none |
    /// | `JWT_SECRET` | second fallback for the secret | none |
    /// | `AUTH_JWT__OLD_SECRETS` | JSON list of previous secrets, still accepted (rotation), e.g. `["old1","old2"]` | `[]` |
    /// | `AUTH_JWT__PUBLIC_KEY` | PEM public key (RSA, EC P-256/P-384 or Ed25519) for RS*/PS*/ES*/EdDSA tokens; `\n` escapes are accepted | none |
    /// | `AUTH_JWT__JWKS_URL` | URL of a JWKS document; keys are picked by `kid`, cached, refetched on an unknown `kid` | none |
    /// | `AUTH_JWT__ALGORITHMS` | comma-separated allow-list, e.g. `HS256,RS256` | every algorithm that fits a key |
    /// | `AUTH_JWT__AUDIENCE` | comma-separated accepted `aud` values; when set, `aud` is required | not checked |
    /// | `AUTH_JWT__ISSUER` | comma-separated accepted `iss` values; when set, `iss` is required | not checked |
    /// | `AUTH_JWT__LEEWAY` | clock skew in seconds for `exp`/`nbf`/`iat` (0–3600) | `0` |
    /// | `AUTH_JWT__MAX_TOKEN_BYTES` | longer tokens are rejected unparsed | `8192` |
    /// | `AUTH_JWT__JWKS_CACHE_TTL` | seconds before JWKS keys are refetched | `300` |
    /// | `AUTH_JWT__JWKS_MIN_REFRESH` | least seconds between unknown-`kid` refetches | `30` |
    /// | `WS_API_KEYS` | API keys, `name:key:scope1 scope2`, comma separated (see [`ApiKey::parse_list`]) | none |
    /// | `APP_ENV` (else `RAILWAY_ENVIRONMENT_NAME`) | `prod`, `production`, `test`, `staging`, `preview` or `uat` (any case) is production-like: building without any key then fails | not production |
    ///
    /// Empty values count as unset. Errors name the variable (never a secret's value).
    pub fn from_env() -> Result<Self, AuthConfigError> {
        Self::from_vars(std::env::vars_os().filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            Some((k, v.to_string_lossy().into_owned()))
        }))
    }

    /// Like [`from_env`](Self::from_env), from the given `(name, value)` pairs instead of the
    /// process environment. Names are matched exactly (upper case).
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Self, AuthConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut found: std::collections::HashMap<String, String> = Default::default();
        for (k, v) in vars {
            let (k, v) = (k.as_ref(), v.as_ref());
            if !v.trim().is_empty()
                && (k.starts_with("AUTH_JWT")
                    || k.starts_with("JWT_")
                    || matches!(k, "APP_ENV" | "RAILWAY_ENVIRONMENT_NAME" | "WS_API_KEYS"))
            {
                found.insert(k.to_owned(), v.to_owned());
            }
        }
        let get = |name: &str| found.get(name).map(String::as_str);
        let mut config = Self::default();

        if let Some(secret) = ["AUTH_JWT__SECRET", "AUTH_JWT_SECRET", "JWT_SECRET"]
            .into_iter()
            .find_map(get)
        {
            config.secret = Some(Secret(secret.as_bytes().to_vec()));
        }
        if let Some(raw) = get("AUTH_JWT__OLD_SECRETS") {
            let list: Vec<String> = serde_json::from_str(raw).map_err(|_| {
                AuthConfigError::invalid(
                    "AUTH_JWT__OLD_SECRETS",
                    None,
                    "a JSON list of strings, e.g. [\"old1\",\"old2\"]",
                )
            })?;
            config.old_secrets = list
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(|s| Secret(s.into_bytes()))
                .collect();
        }
        if let Some(pem) = get("AUTH_JWT__PUBLIC_KEY") {
            let pem = if pem.contains('\n') {
                pem.to_owned()
            } else {
                pem.replace("\\n", "\n")
            };
            config
                .public_keys
                .push(PublicKey::from_pem("AUTH_JWT__PUBLIC_KEY", pem.as_bytes())?);
        }
        if let Some(url) = get("AUTH_JWT__JWKS_URL") {
            let url = url.trim();
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(AuthConfigError::invalid(
                    "AUTH_JWT__JWKS_URL",
                    Some(url),
                    "an http:// or https:// URL",
                ));
            }
            config.jwks_url = Some(url.to_owned());
        }
        if let Some(raw) = get("AUTH_JWT__ALGORITHMS") {
            let algs = comma_list(raw)
                .map(|a| {
                    a.parse::<JwtAlgorithm>().map_err(|_| {
                        AuthConfigError::invalid(
                            "AUTH_JWT__ALGORITHMS",
                            Some(raw),
                            "a comma-separated list of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA",
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            config.algorithms = Some(algs);
        }
        if let Some(raw) = get("AUTH_JWT__AUDIENCE") {
            config.audience = comma_list(raw).map(str::to_owned).collect();
        }
        if let Some(raw) = get("AUTH_JWT__ISSUER") {
            config.issuer = comma_list(raw).map(str::to_owned).collect();
        }
        if let Some(raw) = get("AUTH_JWT__LEEWAY") {
            config.leeway = parse_secs("AUTH_JWT__LEEWAY", raw, true)?;
        }
        if let Some(raw) = get("AUTH_JWT__MAX_TOKEN_BYTES") {
            config.max_token_bytes = raw
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    AuthConfigError::invalid(
                        "AUTH_JWT__MAX_TOKEN_BYTES",
                        Some(raw),
                        "an integer > 0",
                    )
                })?;
        }
        if let Some(raw) = get("AUTH_JWT__JWKS_CACHE_TTL") {
            config.jwks_cache_ttl = parse_secs("AUTH_JWT__JWKS_CACHE_TTL", raw, false)?;
        }
        if let Some(raw) = get("AUTH_JWT__JWKS_MIN_REFRESH") {
            config.jwks_min_refresh_interval = parse_secs("AUTH_JWT__JWKS_MIN_REFRESH", raw, true)?;
        }
        if let Some(raw) = get("WS_API_KEYS") {
            config.api_keys = ApiKey::parse_list(raw)
                .map_err(|e| AuthConfigError::invalid("WS_API_KEYS", None, e.to_string()))?;
        }
        if let Some(env) = get("APP_ENV").or_else(|| get("RAILWAY_ENVIRONMENT_NAME")) {
            config.production = is_production_like(env);
            config.environment = Some(env.to_owned());
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every invariant; the error names the field that breaks one. Called by
    /// [`build`](Self::build).
    pub fn validate(&self) -> Result<(), AuthConfigError> {
        if self.secret.as_ref().is_some_and(|s| s.0.is_empty())
            || self.old_secrets.iter().any(|s| s.0.is_empty())
        {
            return Err(AuthConfigError::invalid(
                "secret",
                None,
                "a non-empty secret (32 or more random bytes recommended)",
            ));
        }
        if self.leeway > MAX_LEEWAY {
            return Err(AuthConfigError::invalid(
                "leeway",
                Some(&format!("{:?}", self.leeway)),
                "at most 3600 seconds",
            ));
        }
        if self.max_token_bytes == 0 {
            return Err(AuthConfigError::invalid(
                "max_token_bytes",
                Some("0"),
                "> 0",
            ));
        }
        if matches!(&self.algorithms, Some(a) if a.is_empty()) {
            return Err(AuthConfigError::invalid(
                "algorithms",
                Some("[]"),
                "at least one algorithm, or None for all that fit the keys",
            ));
        }
        if let Some(url) = &self.jwks_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(AuthConfigError::invalid(
                "jwks_url",
                Some(url),
                "an http:// or https:// URL",
            ));
        }
        if self.jwks_timeout.is_zero() || self.jwks_max_bytes == 0 || self.jwks_max_keys == 0 {
            return Err(AuthConfigError::invalid(
                "jwks_timeout/jwks_max_bytes/jwks_max_keys",
                None,
                "values > 0",
            ));
        }
        Ok(())
    }

    /// Whether any JWT key (secret, public key or JWKS URL) is configured.
    pub fn has_jwt_keys(&self) -> bool {
        self.secret.is_some() || !self.public_keys.is_empty() || self.jwks_url.is_some()
    }

    /// Sets the HMAC secret (HS256/384/512). Use at least 32 random bytes.
    pub fn with_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Some(Secret(secret.as_ref().to_vec()));
        self
    }

    /// Adds a previous secret that is still accepted (key rotation). Tried after the current
    /// one, in the order added.
    pub fn with_old_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.old_secrets.push(Secret(secret.as_ref().to_vec()));
        self
    }

    /// Adds a PEM public key (RSA, EC P-256/P-384 or Ed25519) for asymmetric tokens.
    pub fn with_public_key_pem(mut self, pem: impl AsRef<[u8]>) -> Result<Self, AuthConfigError> {
        self.public_keys
            .push(PublicKey::from_pem("public_key", pem.as_ref())?);
        Ok(self)
    }

    /// Sets the JWKS URL: keys are fetched from it on first use, cached for
    /// [`jwks_cache_ttl`](Self::jwks_cache_ttl) and refetched when a token names an unknown
    /// `kid` (at most once per [`jwks_min_refresh_interval`](Self::jwks_min_refresh_interval)).
    pub fn with_jwks_url(mut self, url: impl Into<String>) -> Self {
        self.jwks_url = Some(url.into());
        self
    }

    /// Restricts the accepted algorithms (see [`algorithms`](Self::algorithms)).
    pub fn with_algorithms(mut self, algorithms: impl IntoIterator<Item = JwtAlgorithm>) -> Self {
        self.algorithms = Some(algorithms.into_iter().collect());
        self
    }

    /// Sets the accepted audiences (see [`audience`](Self::audience)).
    pub fn with_audience<I, T>(mut self, audience: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.audience = audience.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the accepted issuers (see [`issuer`](Self::issuer)).
    pub fn with_issuer<I, T>(mut self, issuer: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.issuer = issuer.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the clock-skew leeway (see [`leeway`](Self::leeway)).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Adds an API key (accepted by [`ws_protected_router`](super::ws_protected_router) and the
    /// other routers that accept API keys, never by [`ws_user_router`](super::ws_user_router)).
    pub fn with_api_key(mut self, key: ApiKey) -> Self {
        self.api_keys.push(key);
        self
    }

    /// Adds several API keys.
    pub fn with_api_keys(mut self, keys: impl IntoIterator<Item = ApiKey>) -> Self {
        self.api_keys.extend(keys);
        self
    }

    /// Sets the token size limit (see [`max_token_bytes`](Self::max_token_bytes)).
    pub fn with_max_token_bytes(mut self, bytes: usize) -> Self {
        self.max_token_bytes = bytes;
        self
    }

    /// Marks the environment as production-like (see [`production`](Self::production)).
    pub fn with_production(mut self, production: bool) -> Self {
        self.production = production;
        self
    }

    /// Sets the JWKS cache lifetime (see [`jwks_cache_ttl`](Self::jwks_cache_ttl)).
    pub fn with_jwks_cache_ttl(mut self, ttl: Duration) -> Self {
        self.jwks_cache_ttl = ttl;
        self
    }

    /// Sets the least time between unknown-`kid` refetches (see
    /// [`jwks_min_refresh_interval`](Self::jwks_min_refresh_interval)).
    pub fn with_jwks_min_refresh_interval(mut self, interval: Duration) -> Self {
        self.jwks_min_refresh_interval = interval;
        self
    }

    /// Sets the JWKS fetch timeout (see [`jwks_timeout`](Self::jwks_timeout)).
    pub fn with_jwks_timeout(mut self, timeout: Duration) -> Self {
        self.jwks_timeout = timeout;
        self
    }
}

fn comma_list(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_secs(var: &str, raw: &str, zero_ok: bool) -> Result<Duration, AuthConfigError> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (*s > 0.0 || (zero_ok && *s == 0.0)) && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            AuthConfigError::invalid(
                var,
                Some(raw),
                if zero_ok {
                    "a finite number ≥ 0 (seconds)"
                } else {
                    "a finite number > 0 (seconds)"
                },
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_precedence() {
        let c = WsAuthConfig::from_vars([("JWT_SECRET", "j"), ("AUTH_JWT_SECRET", "a")]).unwrap();
        assert_eq!(c.secret.unwrap().0, b"a");
        let c = WsAuthConfig::from_vars([
            ("JWT_SECRET", "j"),
            ("AUTH_JWT__SECRET", "n"),
            ("AUTH_JWT_SECRET", "a"),
        ])
        .unwrap();
        assert_eq!(c.secret.unwrap().0, b"n");
        let c = WsAuthConfig::from_vars([("AUTH_JWT__SECRET", "  "), ("JWT_SECRET", "j")]).unwrap();
        assert_eq!(c.secret.unwrap().0, b"j");
    }

    #[test]
    fn production_detection() {
        for v in [
            "prod",
            "Production",
            "STAGING",
            "test",
            "preview",
            "uat",
            " prod ",
        ] {
            assert!(is_production_like(v), "{v}");
        }
        for v in ["dev", "local", "development", ""] {
            assert!(!is_production_like(v), "{v}");
        }
        let c = WsAuthConfig::from_vars([("RAILWAY_ENVIRONMENT_NAME", "production")]).unwrap();
        assert!(c.production);
        let c = WsAuthConfig::from_vars([
            ("APP_ENV", "dev"),
            ("RAILWAY_ENVIRONMENT_NAME", "production"),
        ])
        .unwrap();
        assert!(!c.production, "APP_ENV wins over RAILWAY_ENVIRONMENT_NAME");
    }

    #[test]
    fn bad_values_name_the_variable_but_not_the_secret() {
        let e = WsAuthConfig::from_vars([("AUTH_JWT__OLD_SECRETS", "hunter2")]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("AUTH_JWT__OLD_SECRETS"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        let e = WsAuthConfig::from_vars([("AUTH_JWT__LEEWAY", "-1")]).unwrap_err();
        assert!(e.to_string().contains("AUTH_JWT__LEEWAY"));
        let e = WsAuthConfig::from_vars([("AUTH_JWT__ALGORITHMS", "none")]).unwrap_err();
        assert!(e.to_string().contains("AUTH_JWT__ALGORITHMS"));
        let e = WsAuthConfig::from_vars([("AUTH_JWT__LEEWAY", "7200")]).unwrap_err();
        assert!(e.to_string().contains("leeway"));
    }

    #[test]
    fn lists_are_parsed() {
        let c = WsAuthConfig::from_vars([
            ("AUTH_JWT__OLD_SECRETS", r#"["o1","o2"]"#),
            ("AUTH_JWT__AUDIENCE", "a, b"),
            ("AUTH_JWT__ISSUER", "https://issuer"),
            ("AUTH_JWT__ALGORITHMS", "HS256, RS256"),
            ("AUTH_JWT__LEEWAY", "2.5"),
        ])
        .unwrap();
        assert_eq!(c.old_secrets.len(), 2);
        assert_eq!(c.audience, ["a", "b"]);
        assert_eq!(c.issuer, ["https://issuer"]);
        assert_eq!(
            c.algorithms,
            Some(vec![JwtAlgorithm::HS256, JwtAlgorithm::RS256])
        );
        assert_eq!(c.leeway, Duration::from_millis(2500));
    }

    #[test]
    fn empty_secrets_are_refused() {
        assert!(WsAuthConfig::default().with_secret("").validate().is_err());
        assert!(
            WsAuthConfig::default()
                .with_secret("x")
                .with_old_secret("")
                .validate()
                .is_err()
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = WsAuthConfig::default().with_secret("super-secret-value");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("super-secret-value"), "{dbg}");
    }
}
