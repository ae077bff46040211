//! A bounded, rate-limited JWKS cache.
//!
//! Keys are fetched on first use, reused for `ttl`, and fetched again early when a token names
//! an unknown `kid` (key rollover), but never more often than once per `min_refresh`, so a
//! stream of tokens with made-up `kid`s costs at most one fetch per interval. One fetch runs at
//! a time; concurrent callers wait for it. The response size, the number of keys and the fetch
//! time are all capped.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use serde_json::Value;

use super::{
    error::AuthConfigError,
    keys::{Family, JwtAlgorithm, PublicKey},
};
use crate::websocket::redact_url;

pub(crate) struct JwksSettings {
    pub(crate) url: String,
    pub(crate) ttl: Duration,
    pub(crate) min_refresh: Duration,
    pub(crate) timeout: Duration,
    pub(crate) max_bytes: usize,
    pub(crate) max_keys: usize,
}

struct Entry {
    kid: Option<String>,
    key: PublicKey,
}

#[derive(Default)]
struct State {
    keys: Arc<Vec<Entry>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
}

pub(crate) struct Jwks {
    settings: JwksSettings,
    client: reqwest::Client,
    state: RwLock<State>,
    fetching: tokio::sync::Mutex<()>,
}

/// The keys that may verify a token, shared with the cache.
pub(crate) struct Selected {
    all: Arc<Vec<Entry>>,
    picks: Vec<usize>,
}

impl Selected {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.picks
            .iter()
            .filter_map(|i| self.all.get(*i))
            .map(|e| &e.key)
    }
}

impl Jwks {
    pub(crate) fn new(settings: JwksSettings) -> Result<Self, AuthConfigError> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| AuthConfigError::HttpClient(e.to_string()))?;
        Ok(Self {
            settings,
            client,
            state: RwLock::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The cached keys that match `kid` (or all keys when the token has none) and can verify
    /// `alg`, refreshing first when the cache is stale or the `kid` is unknown and the rate
    /// limit allows. `None` when no key set has ever been fetched (the URL never answered).
    pub(crate) async fn keys_for(&self, kid: Option<&str>, alg: JwtAlgorithm) -> Option<Selected> {
        if self.needs_fetch(kid) {
            // Single flight: whoever gets the lock fetches; the others re-check after.
            let wait = self.settings.timeout.saturating_mul(2);
            if let Ok(_guard) = tokio::time::timeout(wait, self.fetching.lock()).await
                && self.needs_fetch(kid)
            {
                self.fetch().await;
            }
        }
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.fetched_at?;
        let all = Arc::clone(&state.keys);
        drop(state);
        let picks = all
            .iter()
            .enumerate()
            .filter(|(_, e)| match kid {
                Some(k) => e.kid.as_deref() == Some(k),
                None => true,
            })
            .filter(|(_, e)| e.key.family == alg.family() && e.key.algorithms.contains(&alg))
            .map(|(i, _)| i)
            .collect();
        Some(Selected { all, picks })
    }

    fn needs_fetch(&self, kid: Option<&str>) -> bool {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let stale = state
            .fetched_at
            .is_none_or(|t| t.elapsed() >= self.settings.ttl);
        let unknown_kid =
            kid.is_some_and(|k| !state.keys.iter().any(|e| e.kid.as_deref() == Some(k)));
        let allowed = state
            .last_attempt
            .is_none_or(|t| t.elapsed() >= self.settings.min_refresh);
        (stale || unknown_kid) && allowed
    }

    async fn fetch(&self) {
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            state.last_attempt = Some(Instant::now());
        }
        match tokio::time::timeout(self.settings.timeout, self.download()).await {
            Ok(Ok(body)) => match parse(&body, self.settings.max_keys) {
                Ok(keys) => {
                    tracing::debug!(
                        url = %redact_url(&self.settings.url),
                        keys = keys.len(),
                        "JWKS fetched"
                    );
                    let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                    state.keys = Arc::new(keys);
                    state.fetched_at = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(
                        url = %redact_url(&self.settings.url),
                        error = e,
                        "bad JWKS document"
                    )
                }
            },
            Ok(Err(e)) => {
                tracing::warn!(
                    url = %redact_url(&self.settings.url),
                    error = %e,
                    "JWKS fetch failed"
                )
            }
            Err(_) => tracing::warn!(url = %redact_url(&self.settings.url), "JWKS fetch timed out"),
        }
    }

    async fn download(&self) -> Result<Vec<u8>, String> {
        let mut resp = self
            .client
            .get(&self.settings.url)
            .header("accept", "application/json")
            .send()
            .await
            // reqwest's message would carry the URL, credentials and all.
            .map_err(|e| e.without_url().to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let max = self.settings.max_bytes;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(format!("response larger than {max} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| e.without_url().to_string())?
        {
            if body.len() + chunk.len() > max {
                return Err(format!("response larger than {max} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Parses a JWKS document, keeping at most `max_keys` usable signature keys. Symmetric (`oct`)
/// keys, encryption keys and unknown key types are skipped.
fn parse(body: &[u8], max_keys: usize) -> Result<Vec<Entry>, &'static str> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|_| "not a JSON object with \"keys\"")?;
    let mut out = Vec::new();
    for raw in doc.keys {
        if out.len() >= max_keys {
            tracing::warn!(
                max_keys,
                "JWKS has more keys than allowed; the rest are ignored"
            );
            break;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            continue;
        };
        if let Some(entry) = entry(&jwk) {
            out.push(entry);
        }
    }
    Ok(out)
}

fn entry(jwk: &Jwk) -> Option<Entry> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let family_algs: Vec<JwtAlgorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa.algorithms().collect(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![JwtAlgorithm::ES256],
            EllipticCurve::P384 => vec![JwtAlgorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![JwtAlgorithm::EdDSA]
        }
        // `oct` (shared secrets) never come from a JWKS here, nor unknown types.
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        None => family_algs,
        Some(ka) => {
            let alg = key_algorithm(ka)?;
            if !family_algs.contains(&alg) {
                return None;
            }
            vec![alg]
        }
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Entry {
        kid: jwk.common.key_id.clone(),
        key: PublicKey::new(key, algorithms),
    })
}

fn key_algorithm(ka: KeyAlgorithm) -> Option<JwtAlgorithm> {
    Some(match ka {
        KeyAlgorithm::RS256 => JwtAlgorithm::RS256,
        KeyAlgorithm::RS384 => JwtAlgorithm::RS384,
        KeyAlgorithm::RS512 => JwtAlgorithm::RS512,
        KeyAlgorithm::PS256 => JwtAlgorithm::PS256,
        KeyAlgorithm::PS384 => JwtAlgorithm::PS384,
        KeyAlgorithm::PS512 => JwtAlgorithm::PS512,
        KeyAlgorithm::ES256 => JwtAlgorithm::ES256,
        KeyAlgorithm::ES384 => JwtAlgorithm::ES384,
        KeyAlgorithm::EdDSA => JwtAlgorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_skips_what_it_cannot_use() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"sym"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ed"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"enc","use":"enc"},
            {"kty":"weird"},
            42
        ]}"#;
        let keys = parse(doc, 10).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ed"));
        assert_eq!(keys[0].key.algorithms, [JwtAlgorithm::EdDSA]);
        assert!(parse(b"[]", 10).is_err());
        assert!(parse(b"{\"keys\":[]}", 10).unwrap().is_empty());
    }

    #[test]
    fn parse_is_bounded() {
        let one =
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        let doc = format!("{{\"keys\":[{}]}}", [one; 10].join(","));
        assert_eq!(parse(doc.as_bytes(), 3).unwrap().len(), 3);
    }
}
