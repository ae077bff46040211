//! [`redact_url`]: a URL as it may be written to a log or an error message.

/// Query parameters whose values are credentials (compared in any case).
const SECRET_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "pass",
    "password",
    "secret",
    "auth",
];

/// `url` with its credentials hidden, for logs and error messages:
///
/// - the password of its user info becomes `****` (`redis://:****@host:6379/0`,
///   `redis://user:****@host`); a user info without `:` is all hidden (some put the password
///   there);
/// - so are the values of query parameters that carry credentials (`token`,
///   `access_token`, `api_key`, `apikey`, `key`, `pass`, `password`, `secret`, `auth`, in any
///   case): `wss://api.example.com/ws?token=****&room=lobby`;
/// - and a fragment (`#****`), where OAuth puts tokens.
///
/// A string without `://` is `<redacted>`: nothing tells a password apart in it. Hiding too
/// much is the safe side: the last `@` ends the user info, since a password may hold `/`, `?`
/// or `#`.
///
/// ```
/// use svc_infra::websocket::redact_url;
///
/// assert_eq!(redact_url("redis://:hunter2@cache:6379/0"), "redis://:****@cache:6379/0");
/// assert_eq!(
///     redact_url("ws://127.0.0.1:8000/ws?token=eyJ.x.y&user=al"),
///     "ws://127.0.0.1:8000/ws?token=****&user=al"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "<redacted>".to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let mut out = scheme.to_owned();
    let rest = match rest.rfind('@') {
        Some(at) => {
            match rest[..at].split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":****@");
                }
                None => out.push_str("****@"),
            }
            &rest[at + 1..]
        }
        None => rest,
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((before, _)) => (before, true),
        None => (rest, false),
    };
    match rest.split_once('?') {
        Some((before, query)) => {
            out.push_str(before);
            out.push('?');
            for (i, param) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match param.split_once('=') {
                    Some((key, _)) if SECRET_PARAMS.iter().any(|s| key.eq_ignore_ascii_case(s)) => {
                        out.push_str(key);
                        out.push_str("=****");
                    }
                    _ => out.push_str(param),
                }
            }
        }
        None => out.push_str(rest),
    }
    if fragment {
        out.push_str("#****");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        for (url, shown) in [
            (
                "redis://:hunter2@cache.internal:6379/0",
                "redis://:****@cache.internal:6379/0",
            ),
            ("redis://user:pw@host", "redis://user:****@host"),
            ("redis://pw-without-user@host", "redis://****@host"),
            ("redis://:p@ss/w?rd@host:1/2", "redis://:****@host:1/2"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=hunter2",
                "redis+unix:///run/redis.sock?db=1&pass=****",
            ),
            (
                "wss://h/ws?user=a&token=eyJ.x.y&API_KEY=k&room=",
                "wss://h/ws?user=a&token=****&API_KEY=****&room=",
            ),
            ("https://h/cb#access_token=eyJ&x=1", "https://h/cb#****"),
            ("not a url hunter2", "<redacted>"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
