//! JWT verification on top of `jsonwebtoken` (RustCrypto backend).
//!
//! Algorithm confusion is impossible by construction: every key is bound to its algorithm
//! family when it is loaded (an HMAC secret can only verify HS*, an RSA key only RS*/PS*, …),
//! the token's `alg` picks the family, and only keys of that family are tried. `none` is not an
//! algorithm here at all.

use std::{collections::HashSet, fmt, str::FromStr, sync::Once};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use super::{error::AuthConfigError, jwks::Jwks};

/// A JWT signature algorithm that may be accepted. There is deliberately no `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(clippy::upper_case_acronyms)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 (shared secret).
    HS256,
    /// HMAC with SHA-384 (shared secret).
    HS384,
    /// HMAC with SHA-512 (shared secret).
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA with P-256 and SHA-256.
    ES256,
    /// ECDSA with P-384 and SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

/// Every algorithm, in a stable order.
const ALL: [JwtAlgorithm; 12] = [
    JwtAlgorithm::HS256,
    JwtAlgorithm::HS384,
    JwtAlgorithm::HS512,
    JwtAlgorithm::RS256,
    JwtAlgorithm::RS384,
    JwtAlgorithm::RS512,
    JwtAlgorithm::PS256,
    JwtAlgorithm::PS384,
    JwtAlgorithm::PS512,
    JwtAlgorithm::ES256,
    JwtAlgorithm::ES384,
    JwtAlgorithm::EdDSA,
];

impl JwtAlgorithm {
    /// The name as in a JWT header (`"HS256"`, `"EdDSA"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }

    pub(crate) fn to_jwt(self) -> Algorithm {
        match self {
            Self::HS256 => Algorithm::HS256,
            Self::HS384 => Algorithm::HS384,
            Self::HS512 => Algorithm::HS512,
            Self::RS256 => Algorithm::RS256,
            Self::RS384 => Algorithm::RS384,
            Self::RS512 => Algorithm::RS512,
            Self::PS256 => Algorithm::PS256,
            Self::PS384 => Algorithm::PS384,
            Self::PS512 => Algorithm::PS512,
            Self::ES256 => Algorithm::ES256,
            Self::ES384 => Algorithm::ES384,
            Self::EdDSA => Algorithm::EdDSA,
        }
    }

    pub(crate) fn family(self) -> Family {
        match self {
            Self::HS256 | Self::HS384 | Self::HS512 => Family::Hmac,
            Self::RS256 | Self::RS384 | Self::RS512 | Self::PS256 | Self::PS384 | Self::PS512 => {
                Family::Rsa
            }
            Self::ES256 | Self::ES384 => Family::Ec,
            Self::EdDSA => Family::Ed,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown algorithm name (including `none`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown or unsupported JWT algorithm")]
pub struct UnknownAlgorithm;

impl FromStr for JwtAlgorithm {
    type Err = UnknownAlgorithm;

    /// Exact, case-sensitive names as in JWT headers.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL.into_iter()
            .find(|a| a.as_str() == s)
            .ok_or(UnknownAlgorithm)
    }
}

/// The key family an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

impl Family {
    pub(crate) fn algorithms(self) -> impl Iterator<Item = JwtAlgorithm> {
        ALL.into_iter().filter(move |a| a.family() == self)
    }

    fn from_jwt(f: AlgorithmFamily) -> Self {
        match f {
            AlgorithmFamily::Hmac => Self::Hmac,
            AlgorithmFamily::Rsa => Self::Rsa,
            AlgorithmFamily::Ec => Self::Ec,
            AlgorithmFamily::Ed => Self::Ed,
        }
    }
}

/// A verification key bound to the algorithms it may verify.
#[derive(Clone)]
pub(crate) struct PublicKey {
    pub(crate) key: DecodingKey,
    pub(crate) family: Family,
    /// A subset of `family`'s algorithms.
    pub(crate) algorithms: Vec<JwtAlgorithm>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("family", &self.family)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// Loads a PEM public key: RSA (PKCS#1 or SPKI), EC or Ed25519 (SPKI).
    pub(crate) fn from_pem(variable: &str, pem: &[u8]) -> Result<Self, AuthConfigError> {
        let key = DecodingKey::from_rsa_pem(pem)
            .or_else(|_| DecodingKey::from_ec_pem(pem))
            .or_else(|_| DecodingKey::from_ed_pem(pem))
            .map_err(|_| AuthConfigError::InvalidKey {
                variable: variable.to_owned(),
                reason: "not a PEM RSA, EC or Ed25519 public key".to_owned(),
            })?;
        let family = Family::from_jwt(key.family());
        Ok(Self {
            key,
            family,
            algorithms: family.algorithms().collect(),
        })
    }

    pub(crate) fn new(key: DecodingKey, algorithms: Vec<JwtAlgorithm>) -> Self {
        Self {
            family: Family::from_jwt(key.family()),
            key,
            algorithms,
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// `exp` has passed (after the signature verified).
    Expired,
    /// Anything else; the text follows `"Invalid token: "`.
    Invalid(&'static str),
    /// The token names JWKS keys that could not be fetched.
    KeysUnavailable,
}

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
            None => ALL.to_vec(),
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
                let keys = jwks.keys_for(header.kid.as_deref(), alg).await?;
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

/// `Some(result)` when this key decided the outcome (the signature verified, so any claim
/// error is final), `None` to try the next key.
fn try_key(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Option<Result<Map<String, Value>, TokenError>> {
    match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
        Ok(data) => Some(Ok(data.claims)),
        Err(e) => match e.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::Provider(_) => None,
            ErrorKind::ExpiredSignature => Some(Err(TokenError::Expired)),
            ErrorKind::ImmatureSignature => {
                Some(Err(TokenError::Invalid("The token is not yet valid (nbf)")))
            }
            // jsonwebtoken reports a claim of the wrong type as missing; tell them apart (the
            // signature has verified, so reading the payload is safe).
            ErrorKind::MissingRequiredClaim(c) => Some(Err(TokenError::Invalid(
                match (c.as_str(), claim_present(token, c)) {
                    ("exp", false) => "Token is missing the \"exp\" claim",
                    ("exp", true) => "Expiration Time claim (exp) must be a number",
                    ("aud", false) => "Token is missing the \"aud\" claim",
                    ("aud", true) => "Audience doesn't match",
                    ("iss", false) => "Token is missing the \"iss\" claim",
                    ("iss", true) => "Invalid issuer",
                    _ => "Token is missing a required claim",
                },
            ))),
            ErrorKind::InvalidClaimFormat(c) => Some(Err(TokenError::Invalid(match c.as_str() {
                "exp" => "Expiration Time claim (exp) must be a number",
                "nbf" => "Not Before claim (nbf) must be a number",
                _ => "Invalid claim format",
            }))),
            ErrorKind::InvalidAudience => Some(Err(TokenError::Invalid("Audience doesn't match"))),
            ErrorKind::InvalidIssuer => Some(Err(TokenError::Invalid("Invalid issuer"))),
            ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                Some(Err(TokenError::Invalid("Invalid header or payload JSON")))
            }
            ErrorKind::Base64(_) => Some(Err(TokenError::Invalid("Invalid crypto padding"))),
            _ => Some(Err(TokenError::Invalid("Malformed token"))),
        },
    }
}

/// Whether the (already verified) token's payload has a non-null `name` claim.
fn claim_present(token: &str, name: &str) -> bool {
    token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
        .is_some_and(|m| m.get(name).is_some_and(|v| !v.is_null()))
}

/// The claim checks `jsonwebtoken` does not do: `sub`, `iat`, `jti`.
fn finish(
    result: Result<Map<String, Value>, TokenError>,
    leeway: u64,
) -> Result<Map<String, Value>, TokenError> {
    let claims = result?;
    match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => {}
        None | Some(Value::Null) => {
            return Err(TokenError::Invalid("Token is missing the \"sub\" claim"));
        }
        Some(_) => return Err(TokenError::Invalid("Subject must be a string")),
    }
    if let Some(iat) = claims.get("iat") {
        let Some(iat) = iat.as_f64().filter(|v| v.is_finite()) else {
            return Err(TokenError::Invalid(
                "Issued At claim (iat) must be a number",
            ));
        };
        let now = jsonwebtoken::get_current_timestamp() as f64;
        if iat > now + leeway as f64 {
            return Err(TokenError::Invalid("The token is not yet valid (iat)"));
        }
    }
    if let Some(jti) = claims.get("jti")
        && !jti.is_string()
    {
        return Err(TokenError::Invalid("JWT ID must be a string"));
    }
    Ok(claims)
}

/// The header fields we look at.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Cheap checks before any crypto: size, alphabet, three segments, a decodable header with a
/// string `alg`.
pub(crate) fn precheck(token: &str, max_bytes: usize) -> Result<RawHeader, TokenError> {
    if token.len() > max_bytes {
        return Err(TokenError::Invalid("Token too large"));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(TokenError::Invalid("Invalid characters in token"));
    }
    let mut segments = token.split('.');
    let (Some(header), Some(_payload), Some(_sig), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(TokenError::Invalid(if token.matches('.').count() < 2 {
            "Not enough segments"
        } else {
            "Too many segments"
        }));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Invalid("Invalid header padding"))?;
    serde_json::from_slice::<RawHeader>(&bytes)
        .map_err(|_| TokenError::Invalid("Invalid header string"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names() {
        for a in ALL {
            assert_eq!(a.as_str().parse::<JwtAlgorithm>(), Ok(a));
        }
        assert!("none".parse::<JwtAlgorithm>().is_err());
        assert!("hs256".parse::<JwtAlgorithm>().is_err());
    }

    #[test]
    fn precheck_rejects_cheaply() {
        let big = "a".repeat(9000);
        assert_eq!(
            precheck(&big, 8192).unwrap_err(),
            TokenError::Invalid("Token too large")
        );
        assert_eq!(
            precheck("abc", 8192).unwrap_err(),
            TokenError::Invalid("Not enough segments")
        );
        assert_eq!(
            precheck("a.b.c.d", 8192).unwrap_err(),
            TokenError::Invalid("Too many segments")
        );
        assert!(precheck("a b.c.d", 8192).is_err());
        assert!(
            precheck("e30.e30.", 8192).is_err(),
            "header {{}} has no alg"
        );
        // {"alg":"HS256"}
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"k"}"#);
        let parsed = precheck(&format!("{h}.e30.sig"), 8192).unwrap();
        assert_eq!(parsed.alg, "HS256");
        assert_eq!(parsed.kid.as_deref(), Some("k"));
    }
}
