//! [`JwtVerifier`]: which keys a token is checked against. Secrets for HS*, configured public
//! keys and the JWKS cache for the asymmetric families; only keys of the family the token's
//! `alg` needs are tried, so algorithm confusion is impossible by construction, and `none` is
//! not an algorithm here at all.

use std::{collections::HashSet, fmt, str::FromStr, sync::Once};

use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{
    jwks::Jwks,
    jwt::{TokenError, finish, precheck, try_key},
    keys::{self, Family, JwtAlgorithm, PublicKey},
};

/// The verifier: keys, rules, and the JWKS cache.
pub(crate) struct JwtVerifier {
    secrets: Vec<DecodingKey>,
    public_keys: Vec<PublicKey>,
    jwks: Option<Jwks>,
    allowed: Vec<JwtAlgorithm>,
    /// One `Validation` per allowed algorithm.
    validations: Vec<(JwtAlgorithm, Validation)>,
    leeway: u64,
    max_token_bytes: usize,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("secrets", &self.secrets.len())
            .field("public_keys", &self.public_keys)
            .field("jwks", &self.jwks.is_some())
            .field("allowed", &self.allowed)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

/// Selects the RustCrypto backend for `jsonwebtoken` once per process. If another crate in
/// the build also enables `aws_lc_rs`, jsonwebtoken cannot infer one and would fail at first
/// use; installing ours explicitly avoids that. If someone installed a provider before us,
/// theirs stays.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    });
}

pub(crate) struct VerifierParts {
    pub(crate) secrets: Vec<Vec<u8>>,
    pub(crate) public_keys: Vec<PublicKey>,
    pub(crate) jwks: Option<Jwks>,
    pub(crate) algorithms: Option<Vec<JwtAlgorithm>>,
    pub(crate) audience: Vec<String>,
    pub(crate) issuer: Vec<String>,
    pub(crate) leeway: u64,
    pub(crate) max_token_bytes: usize,
}

impl JwtVerifier {
    pub(crate) fn new(parts: VerifierParts) -> Self {
        install_crypto_provider();
        let allowed: Vec<JwtAlgorithm> = match parts.algorithms {
            Some(list) => list,
            None => keys::ALL.to_vec(),
        };
        let validations = allowed
            .iter()
            .map(|alg| {
                let mut v = Validation::new(alg.to_jwt());
                v.leeway = parts.leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                let mut required: HashSet<String> = HashSet::from(["exp".to_owned()]);
                if parts.audience.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&parts.audience);
                    required.insert("aud".to_owned());
                }
                if !parts.issuer.is_empty() {
                    v.set_issuer(&parts.issuer);
                    required.insert("iss".to_owned());
                }
                v.required_spec_claims = required;
                (*alg, v)
            })
            .collect();
        Self {
            secrets: parts
                .secrets
                .iter()
                .map(|s| DecodingKey::from_secret(s))
                .collect(),
            public_keys: parts.public_keys,
            jwks: parts.jwks,
            allowed,
            validations,
            leeway: parts.leeway,
            max_token_bytes: parts.max_token_bytes,
        }
    }

    /// Verifies `token` and returns its claims, already checked: signature, `exp`, `nbf`,
    /// `iat`, `aud`/`iss` when configured, `sub` a non-empty string, `jti` a string if present.
    pub(crate) async fn verify(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        let header = precheck(token, self.max_token_bytes)?;
        let alg = JwtAlgorithm::from_str(&header.alg)
            .ok()
            .filter(|a| self.allowed.contains(a))
            .ok_or(TokenError::Invalid(ALG_NOT_ALLOWED))?;
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(TokenError::Invalid(ALG_NOT_ALLOWED))?;

        let mut tried_any = false;
        if alg.family() == Family::Hmac {
            for key in &self.secrets {
                tried_any = true;
                if let Some(result) = try_key(token, key, validation) {
                    return finish(result, self.leeway);
                }
            }
        } else {
            for pk in self
                .public_keys
                .iter()
                .filter(|k| k.family == alg.family() && k.algorithms.contains(&alg))
            {
                tried_any = true;
                if let Some(result) = try_key(token, &pk.key, validation) {
                    return finish(result, self.leeway);
                }
            }
            if let Some(jwks) = &self.jwks {
                let keys = jwks
                    .keys_for(header.kid.as_deref(), alg)
                    .await
                    .ok_or(TokenError::KeysUnavailable)?;
                for pk in keys.iter() {
                    tried_any = true;
                    if let Some(result) = try_key(token, &pk.key, validation) {
                        return finish(result, self.leeway);
                    }
                }
                if !tried_any && header.kid.is_some() {
                    return Err(TokenError::Invalid("Unknown key id (kid)"));
                }
            }
        }
        if tried_any {
            Err(TokenError::Invalid("Signature verification failed"))
        } else {
            // No key of the family the token asks for: e.g. HS256 when only an RSA public
            // key is configured (the classic confusion attack) lands here.
            Err(TokenError::Invalid(ALG_NOT_ALLOWED))
        }
    }
}

const ALG_NOT_ALLOWED: &str = "The specified alg value is not allowed";
