//! The token itself, on top of `jsonwebtoken` (RustCrypto backend): the cheap checks before
//! any crypto ([`precheck`]), one signature check against one key ([`try_key`]), the claim
//! checks `jsonwebtoken` does not do ([`finish`]), and why a token is refused
//! ([`TokenError`]). Which keys to try is the [`verifier`](super::verifier)'s business.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

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

/// `Some(result)` when this key decided the outcome (the signature verified, so any claim
/// error is final), `None` to try the next key.
pub(crate) fn try_key(
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
pub(crate) fn finish(
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
    pub(crate) alg: String,
    #[serde(default)]
    pub(crate) kid: Option<String>,
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
