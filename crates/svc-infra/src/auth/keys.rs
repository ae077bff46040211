//! The key model shared by token verification ([`jwt`](super::jwt)) and the JWKS cache
//! ([`jwks`](super::jwks)): [`JwtAlgorithm`], the key [`Family`] each algorithm needs, and
//! [`PublicKey`], a verification key bound to the algorithms it may verify.
//!
//! Binding every key to its family when it is loaded is what makes algorithm confusion
//! impossible: an HMAC secret can only verify HS*, an RSA key only RS*/PS*, and so on.

use std::{fmt, str::FromStr};

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::error::AuthConfigError;

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
pub(crate) const ALL: [JwtAlgorithm; 12] = [
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
    fn families_partition_the_algorithms() {
        let mut seen: Vec<JwtAlgorithm> = [Family::Hmac, Family::Rsa, Family::Ec, Family::Ed]
            .into_iter()
            .flat_map(Family::algorithms)
            .collect();
        seen.sort_by_key(|a| a.as_str());
        let mut all = ALL.to_vec();
        all.sort_by_key(|a| a.as_str());
        assert_eq!(seen, all);
    }
}
