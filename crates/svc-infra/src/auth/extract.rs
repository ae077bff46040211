//! Finding the credentials in a handshake request.
//!
//! JWT precedence is the Python code's (reference §10.2): first `?token=`, then
//! `Authorization: Bearer`, then `Sec-WebSocket-Protocol: bearer, <jwt>`; the first source
//! found wins and there is no fallback to a later source when it turns out to be invalid.

use http::{HeaderMap, header};

use super::principal::TokenSource;

/// The API-key header.
pub const API_KEY_HEADER: &str = "x-api-key";
/// The API-key query parameter.
pub const API_KEY_QUERY: &str = "api_key";
/// The JWT query parameter.
pub const TOKEN_QUERY: &str = "token";

/// The JWT found in a request, if any. Its `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum JwtCandidate {
    /// No JWT anywhere.
    Absent,
    /// `?token=` was given with only whitespace: it still wins (no fallback to the header)
    /// and is rejected.
    Blank,
    /// A token and where it came from.
    Present { token: String, via: TokenSource },
}

impl std::fmt::Debug for JwtCandidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Absent => f.write_str("Absent"),
            Self::Blank => f.write_str("Blank"),
            Self::Present { token, via } => f
                .debug_struct("Present")
                .field("token", &format_args!("<{} bytes redacted>", token.len()))
                .field("via", via)
                .finish(),
        }
    }
}

/// Everything credential-like in a request. Its `Debug` hides the token and the key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) jwt: JwtCandidate,
    pub(crate) api_key: Option<String>,
    /// The spelling of the `bearer` item of a `bearer, <jwt>` pair the client offered in
    /// `Sec-WebSocket-Protocol`, to select it in the response exactly as offered (whichever
    /// source the winning token came from: a browser that offered the pair needs it).
    pub(crate) bearer_protocol: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("jwt", &self.jwt)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("bearer_protocol", &self.bearer_protocol)
            .finish()
    }
}

/// Reads the credentials of a request from its query string and headers. Never fails: bad
/// encodings count as absent.
pub(crate) fn extract(query: Option<&str>, headers: &HeaderMap) -> Credentials {
    let mut query_token: Option<String> = None;
    let mut query_key: Option<String> = None;
    if let Some(q) = query {
        // Starlette's `QueryParams.get`: the last value of a repeated parameter wins.
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if k == TOKEN_QUERY {
                query_token = Some(v.into_owned());
            } else if k == API_KEY_QUERY {
                query_key = Some(v.into_owned());
            }
        }
    }

    let subprotocol = subprotocol_token(headers);
    let bearer_protocol = subprotocol.as_ref().map(|(p, _)| p.to_owned());
    let jwt = jwt_candidate(query_token, headers, subprotocol);
    let api_key = query_key
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .or_else(|| {
            headers
                .get(API_KEY_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
        });
    Credentials {
        jwt,
        api_key,
        bearer_protocol,
    }
}

/// `(bearer item as spelled, token)` from the first `Sec-WebSocket-Protocol` header: the item
/// after the first `bearer` (any case) that has a non-empty follower.
fn subprotocol_token(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    let mut items = value.split(',').map(str::trim);
    while let Some(item) = items.next() {
        if item.eq_ignore_ascii_case("bearer") {
            return match items.next() {
                Some(token) if !token.is_empty() => Some((item.to_owned(), token.to_owned())),
                _ => None,
            };
        }
    }
    None
}

fn jwt_candidate(
    query_token: Option<String>,
    headers: &HeaderMap,
    subprotocol: Option<(String, String)>,
) -> JwtCandidate {
    // 1. `?token=`: a non-empty raw value wins, even when it is only whitespace.
    if let Some(raw) = query_token
        && !raw.is_empty()
    {
        let token = raw.trim();
        return if token.is_empty() {
            JwtCandidate::Blank
        } else {
            JwtCandidate::Present {
                token: token.to_owned(),
                via: TokenSource::Query,
            }
        };
    }

    // 2. The first `Authorization` header, scheme `bearer` in any case.
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some((scheme, rest)) = value.split_once(' ')
        && scheme.eq_ignore_ascii_case("bearer")
    {
        let token = rest.trim();
        if !token.is_empty() {
            return JwtCandidate::Present {
                token: token.to_owned(),
                via: TokenSource::Header,
            };
        }
    }

    // 3. The item after the first `bearer` (any case) in the first `Sec-WebSocket-Protocol`.
    if let Some((_, token)) = subprotocol {
        return JwtCandidate::Present {
            token,
            via: TokenSource::Subprotocol,
        };
    }

    JwtCandidate::Absent
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn present(token: &str, via: TokenSource) -> JwtCandidate {
        JwtCandidate::Present {
            token: token.into(),
            via,
        }
    }

    #[test]
    fn precedence_query_header_subprotocol() {
        let all = headers(&[
            ("authorization", "Bearer h"),
            ("sec-websocket-protocol", "bearer, s"),
        ]);
        assert_eq!(
            extract(Some("token=q"), &all).jwt,
            present("q", TokenSource::Query)
        );
        assert_eq!(extract(None, &all).jwt, present("h", TokenSource::Header));
        let sub = headers(&[("sec-websocket-protocol", "bearer, s")]);
        assert_eq!(
            extract(None, &sub).jwt,
            present("s", TokenSource::Subprotocol)
        );
        assert_eq!(extract(None, &HeaderMap::new()).jwt, JwtCandidate::Absent);
    }

    #[test]
    fn query_details() {
        let h = headers(&[("authorization", "Bearer h")]);
        // last repeated value wins
        assert_eq!(
            extract(Some("token=a&token=b"), &h).jwt,
            present("b", TokenSource::Query)
        );
        // whitespace-only still wins and is blank
        assert_eq!(extract(Some("token=%20%20"), &h).jwt, JwtCandidate::Blank);
        assert_eq!(extract(Some("token=+"), &h).jwt, JwtCandidate::Blank);
        // empty falls through
        assert_eq!(
            extract(Some("token="), &h).jwt,
            present("h", TokenSource::Header)
        );
        // percent-decoding and trimming
        assert_eq!(
            extract(Some("x=1&token=%20abc%20"), &h).jwt,
            present("abc", TokenSource::Query)
        );
    }

    #[test]
    fn header_details() {
        for v in ["bearer t", "BEARER t", "Bearer   t  "] {
            let h = {
                let mut h = HeaderMap::new();
                h.insert("authorization", HeaderValue::from_str(v).unwrap());
                h
            };
            assert_eq!(
                extract(None, &h).jwt,
                present("t", TokenSource::Header),
                "{v}"
            );
        }
        for v in ["Token t", "Bearer", "Bearer ", "Bearert"] {
            let mut h = HeaderMap::new();
            h.insert("authorization", HeaderValue::from_str(v).unwrap());
            assert_eq!(extract(None, &h).jwt, JwtCandidate::Absent, "{v}");
        }
        // another scheme falls through to the subprotocol
        let h = headers(&[
            ("authorization", "Basic abc"),
            ("sec-websocket-protocol", "bearer, s"),
        ]);
        assert_eq!(
            extract(None, &h).jwt,
            present("s", TokenSource::Subprotocol)
        );
    }

    #[test]
    fn subprotocol_details() {
        let h = headers(&[("sec-websocket-protocol", "chat, Bearer, tok")]);
        let c = extract(None, &h);
        assert_eq!(c.jwt, present("tok", TokenSource::Subprotocol));
        assert_eq!(c.bearer_protocol.as_deref(), Some("Bearer"));
        // offered alongside a winning query token: still reported for the echo
        let c = extract(Some("token=q"), &h);
        assert_eq!(c.jwt, present("q", TokenSource::Query));
        assert_eq!(c.bearer_protocol.as_deref(), Some("Bearer"));
        for v in ["bearer", "chat", "bearer, ", "tok, bearer"] {
            let mut h = HeaderMap::new();
            h.insert("sec-websocket-protocol", HeaderValue::from_str(v).unwrap());
            let c = extract(None, &h);
            assert_eq!(c.jwt, JwtCandidate::Absent, "{v}");
            assert_eq!(c.bearer_protocol, None, "{v}");
        }
    }

    #[test]
    fn debug_hides_the_credentials() {
        let h = headers(&[
            ("x-api-key", "the-api-key"),
            ("authorization", "Bearer the.jwt.value"),
        ]);
        let shown = format!("{:?}", extract(None, &h));
        assert!(
            !shown.contains("the-api-key") && !shown.contains("the.jwt.value"),
            "{shown}"
        );
        assert!(shown.contains("<13 bytes redacted>"), "{shown}");
    }

    #[test]
    fn api_keys() {
        let h = headers(&[("x-api-key", " k1 ")]);
        assert_eq!(extract(None, &h).api_key.as_deref(), Some("k1"));
        assert_eq!(
            extract(Some("api_key=k2"), &h).api_key.as_deref(),
            Some("k2")
        );
        assert_eq!(extract(Some("api_key="), &HeaderMap::new()).api_key, None);
    }
}
