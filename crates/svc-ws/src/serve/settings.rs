//! `svc-ws serve --print-config`: the settings in effect, one `NAME=value  # source` line
//! each, grouped (listener, logs, gateway, connections, authentication) and sorted by name
//! within a group.
//!
//! - The value is what the gateway will use: the parsed configuration (flags over the
//!   environment over the defaults), written the way the variable accepts it (seconds as
//!   numbers, `none`, comma-separated lists). An unset optional value is empty.
//! - The source is `flag` (the command line), `env` (the variable is set) or `default`; a
//!   note may follow (`# default, no limit`, `# env, not used: AUTH_JWT__SECRET comes first`).
//! - Secrets never appear: a JWT secret is `<redacted, 32 bytes>`, old secrets
//!   `<redacted, 2 secrets>`, an API key `name:<redacted>:scopes`, the password of a URL
//!   `redis://:****@host:6379`. Only their length or count is shown.
//!
//! The lines are not shell-quoted: they are for reading and grepping, not for `source`.

use std::{fmt::Write as _, path::Path, time::Duration};

use clap::{ArgMatches, parser::ValueSource};
use svc_infra::{auth::ApiKey, gateway::GatewayConfig, websocket::redact_url};

use super::Args;
use crate::logs::{LOG_FORMAT, LogFormat};

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The command line.
    Flag,
    /// An environment variable.
    Env,
    /// Neither: the documented default.
    Default,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Self::Flag => "flag",
            Self::Env => "env",
            Self::Default => "default",
        }
    }
}

/// One printed line: `NAME=value  # source, note`.
#[derive(Debug)]
pub(super) struct Setting {
    name: &'static str,
    value: String,
    source: Source,
    /// Said after the source: what a value means, why a variable is not used.
    note: Option<String>,
}

impl Setting {
    fn new(name: &'static str, value: impl ToString, source: Source) -> Self {
        Self {
            name,
            value: value.to_string(),
            source,
            note: None,
        }
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    fn note_if(self, cond: bool, note: &str) -> Self {
        if cond { self.note(note) } else { self }
    }
}

/// Settings under one heading.
#[derive(Debug)]
pub(super) struct Group {
    heading: &'static str,
    settings: Vec<Setting>,
}

/// The environment as the library reads it: names as given, values as lossy UTF-8.
#[derive(Debug, Default)]
pub(super) struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    pub(super) fn from_process() -> Self {
        Self {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into())))
                .collect(),
        }
    }

    #[cfg(test)]
    fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self {
            vars: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// A gateway or auth variable, as `GatewayConfig::from_env` reads them: the exact name,
    /// set only when not blank. The value is untrimmed (a secret's length counts it all).
    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .rev()
            .find(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// A variable as set, blank or not (`RUST_LOG`: an empty filter is a filter).
    fn raw(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The source of a gateway or auth variable.
    fn source(&self, name: &str) -> Source {
        if self.get(name).is_some() {
            Source::Env
        } else {
            Source::Default
        }
    }

    /// The source of a `WS_*` variable of `WebSocketConfig::from_env`: names match in any
    /// case, and a blank value counts too (it disables keepalive, or is refused).
    fn ws_source(&self, name: &str) -> Source {
        if self.vars.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)) {
            Source::Env
        } else {
            Source::Default
        }
    }
}

/// Where the value of the `serve` flag `id` came from (clap fills flags from their variables
/// too, and knows which it was).
fn flag_source(matches: Option<&ArgMatches>, id: &str) -> Source {
    match matches.and_then(|m| m.value_source(id)) {
        Some(ValueSource::CommandLine) => Source::Flag,
        Some(ValueSource::EnvVariable) => Source::Env,
        _ => Source::Default,
    }
}

/// Every setting `svc-ws serve` reads, with its value in effect and where it came from.
pub(super) fn collect(
    args: &Args,
    matches: Option<&ArgMatches>,
    config: &GatewayConfig,
    env: &Env,
) -> Vec<Group> {
    let mut groups = vec![
        Group {
            heading: "listener",
            settings: vec![
                Setting::new("HOST", args.host, flag_source(matches, "host")),
                Setting::new("PORT", args.port, flag_source(matches, "port"))
                    .note_if(args.port == 0, "any free port"),
                path_setting("WS_TLS_CERT", args.tls_cert.as_deref(), matches, "tls_cert")
                    .note_if(args.tls_cert.is_none(), "no TLS: ws:// and http://"),
                path_setting("WS_TLS_KEY", args.tls_key.as_deref(), matches, "tls_key"),
            ],
        },
        logs(env),
        gateway(matches, config, env),
        connections(config, env),
        authentication(config, env),
    ];
    for group in &mut groups {
        group.settings.sort_by_key(|s| s.name);
    }
    groups
}

/// `LOG_FORMAT` as `svc-ws` read it at start (a bad one stopped it then), and `RUST_LOG`.
fn logs(env: &Env) -> Group {
    let format = LogFormat::parse(env.get(LOG_FORMAT)).unwrap_or_default();
    let rust_log = match env.raw("RUST_LOG") {
        None => Setting::new("RUST_LOG", "info", Source::Default),
        Some(filter) if tracing_subscriber::EnvFilter::try_new(filter).is_ok() => {
            Setting::new("RUST_LOG", filter, Source::Env)
        }
        Some(_) => {
            Setting::new("RUST_LOG", "info", Source::Env).note("not a valid filter: info instead")
        }
    };
    Group {
        heading: "logs (LOG_FORMAT, RUST_LOG)",
        settings: vec![
            Setting::new(LOG_FORMAT, format.as_str(), env.source(LOG_FORMAT)),
            rust_log,
        ],
    }
}

/// A file given by a `serve` flag (or its variable): its path, empty when unset.
fn path_setting(
    name: &'static str,
    path: Option<&Path>,
    matches: Option<&ArgMatches>,
    id: &str,
) -> Setting {
    let value = path.map(|p| p.display().to_string()).unwrap_or_default();
    Setting::new(name, value, flag_source(matches, id))
}

fn gateway(matches: Option<&ArgMatches>, config: &GatewayConfig, env: &Env) -> Group {
    let anonymous_source = flag_source(matches, "anonymous");
    let anonymous_why = if config.auth.has_jwt_keys() {
        "a JWT key is configured"
    } else if config.auth.production {
        "APP_ENV is production-like"
    } else {
        "no JWT key, APP_ENV not production-like"
    };
    let redis_source = flag_source(matches, "redis_url");
    Group {
        heading: "gateway (WS_GATEWAY_*, REDIS_URL)",
        settings: vec![
            Setting::new(
                "REDIS_URL",
                config
                    .redis_url
                    .as_deref()
                    .map(redact_url)
                    .unwrap_or_default(),
                redis_source,
            )
            .note_if(config.redis_url.is_none(), "single node, in memory"),
            Setting::new(
                "WS_GATEWAY_ANONYMOUS",
                config.allows_anonymous(),
                anonymous_source,
            )
            .note_if(anonymous_source == Source::Default, anonymous_why),
            Setting::new(
                "WS_GATEWAY_BROADCAST_SCOPE",
                &config.broadcast_scope,
                flag_source(matches, "broadcast_scope"),
            ),
            Setting::new(
                "WS_GATEWAY_ADMIN_SCOPE",
                &config.admin_scope,
                flag_source(matches, "admin_scope"),
            ),
            Setting::new(
                "WS_GATEWAY_MAX_ROOMS_PER_USER",
                config.max_rooms_per_user,
                env.source("WS_GATEWAY_MAX_ROOMS_PER_USER"),
            )
            .note_if(config.max_rooms_per_user == 0, "no limit"),
            Setting::new(
                "WS_GATEWAY_REQUEST_RATE",
                config.request_rate,
                env.source("WS_GATEWAY_REQUEST_RATE"),
            ),
            Setting::new(
                "WS_GATEWAY_REQUEST_BURST",
                config.request_burst,
                env.source("WS_GATEWAY_REQUEST_BURST"),
            ),
            Setting::new(
                "WS_GATEWAY_READY_REQUIRES_BACKPLANE",
                config.ready_requires_backplane,
                env.source("WS_GATEWAY_READY_REQUIRES_BACKPLANE"),
            ),
            Setting::new(
                "WS_SHUTDOWN_GRACE",
                seconds(config.shutdown_grace),
                env.source("WS_SHUTDOWN_GRACE"),
            ),
            Setting::new(
                "WS_SHUTDOWN_SPREAD",
                seconds(config.shutdown_spread),
                env.source("WS_SHUTDOWN_SPREAD"),
            ),
        ],
    }
}

fn connections(config: &GatewayConfig, env: &Env) -> Group {
    let ws = &config.websocket;
    let s = |name: &'static str, value: &dyn ToString| {
        Setting::new(name, value.to_string(), env.ws_source(name))
    };
    let client_only = |setting: Setting| setting.note("client only, not used by serve");
    Group {
        heading: "connections (WS_*)",
        settings: vec![
            s(
                "WS_ALLOWED_ORIGINS",
                &ws.allowed_origins
                    .as_ref()
                    .map_or_else(|| "*".to_owned(), |list| list.join(",")),
            ),
            s("WS_CLOSE_TIMEOUT", &seconds(ws.close_timeout)),
            s("WS_COMPRESSION", &ws.compression),
            s("WS_COMPRESSION_MIN_SIZE", &ws.compression_min_size),
            s("WS_COMPRESSION_WINDOW_BITS", &ws.compression_window_bits),
            s("WS_HANDSHAKE_TIMEOUT", &seconds(ws.handshake_timeout)),
            s("WS_HISTORY_RECOVERY_MAX", &ws.history_recovery_max),
            s("WS_HISTORY_SIZE", &ws.history_size).note_if(ws.history_size == 0, "no history"),
            s("WS_HISTORY_TTL", &seconds(ws.history_ttl)),
            s("WS_MAX_CONNECTIONS", &ws.max_connections)
                .note_if(ws.max_connections == 0, "no limit"),
            s("WS_MAX_CONNECTIONS_PER_USER", &ws.max_connections_per_user)
                .note_if(ws.max_connections_per_user == 0, "no limit"),
            s("WS_MAX_INCOMING_BURST", &ws.max_incoming_burst),
            s("WS_MAX_INCOMING_RATE", &ws.max_incoming_rate)
                .note_if(ws.max_incoming_rate == 0, "no limit"),
            s("WS_MAX_MESSAGE_SIZE", &ws.max_message_size),
            s("WS_MAX_QUEUE_SIZE", &ws.max_queue_size),
            s("WS_OPEN_TIMEOUT", &seconds(ws.open_timeout)),
            s("WS_PING_INTERVAL", &optional_seconds(ws.ping_interval))
                .note_if(ws.ping_interval.is_none(), "keepalive off"),
            s("WS_PING_TIMEOUT", &optional_seconds(ws.ping_timeout))
                .note_if(ws.ping_timeout.is_none(), "no pong deadline"),
            client_only(s(
                "WS_RECONNECT_BACKOFF_BASE",
                &seconds(ws.reconnect_backoff_base),
            )),
            client_only(s(
                "WS_RECONNECT_BACKOFF_MAX",
                &seconds(ws.reconnect_backoff_max),
            )),
            client_only(s("WS_RECONNECT_ENABLED", &ws.reconnect_enabled)),
            client_only(s("WS_RECONNECT_JITTER", &ws.reconnect_jitter)),
            client_only(s("WS_RECONNECT_MAX_ATTEMPTS", &ws.reconnect_max_attempts)),
        ],
    }
}

/// The variables that may hold the JWT secret, the first set one wins (as the library reads
/// them).
const SECRET_VARS: [&str; 3] = ["AUTH_JWT__SECRET", "AUTH_JWT_SECRET", "JWT_SECRET"];

fn authentication(config: &GatewayConfig, env: &Env) -> Group {
    let auth = &config.auth;
    let mut settings = Vec::new();

    // Secrets and keys: read from the variables (the library keeps them to itself), shown
    // only by length or count.
    let winner = SECRET_VARS.into_iter().find(|name| env.get(name).is_some());
    for name in SECRET_VARS {
        settings.push(match env.get(name) {
            Some(secret) => Setting::new(name, redacted(secret.len(), "byte"), Source::Env)
                .note_if(
                    winner != Some(name),
                    &format!("not used: {} comes first", winner.unwrap_or_default()),
                ),
            None => Setting::new(name, "", Source::Default),
        });
    }
    let old = env.get("AUTH_JWT__OLD_SECRETS").map(|raw| {
        let count = serde_json::from_str::<Vec<String>>(raw)
            .map(|list| list.iter().filter(|s| !s.is_empty()).count())
            .unwrap_or_default();
        redacted(count, "secret")
    });
    settings.push(optional("AUTH_JWT__OLD_SECRETS", old, env));
    let pem = env
        .get("AUTH_JWT__PUBLIC_KEY")
        .map(|pem| format!("<PEM public key, {} bytes>", pem.len()));
    settings.push(optional("AUTH_JWT__PUBLIC_KEY", pem, env));
    let jwks = env.get("AUTH_JWT__JWKS_URL").map(|u| redact_url(u.trim()));
    settings.push(optional("AUTH_JWT__JWKS_URL", jwks, env));
    let keys = env
        .get("WS_API_KEYS")
        .map(|raw| match ApiKey::parse_list(raw) {
            Ok(keys) => keys
                .iter()
                .map(|k| match k.scopes() {
                    [] => format!("{}:<redacted>", k.name()),
                    scopes => format!("{}:<redacted>:{}", k.name(), scopes.join(" ")),
                })
                .collect::<Vec<_>>()
                .join(","),
            Err(_) => "<redacted>".to_owned(),
        });
    settings.push(optional("WS_API_KEYS", keys, env));

    // Where we run: APP_ENV, else RAILWAY_ENVIRONMENT_NAME, decides whether a key is needed.
    let production = if auth.production {
        "production-like: a JWT key is required"
    } else {
        "not production-like"
    };
    let app_env = env.get("APP_ENV").map(str::trim);
    settings.push(
        optional("APP_ENV", app_env.map(str::to_owned), env).note_if(app_env.is_some(), production),
    );
    let railway = env.get("RAILWAY_ENVIRONMENT_NAME").map(str::trim);
    let railway_note = if app_env.is_some() {
        "not used: APP_ENV comes first"
    } else {
        production
    };
    settings.push(
        optional("RAILWAY_ENVIRONMENT_NAME", railway.map(str::to_owned), env)
            .note_if(railway.is_some(), railway_note),
    );

    // The claim rules, from the parsed configuration.
    let list = |items: &[String]| items.join(",");
    settings.extend([
        Setting::new(
            "AUTH_JWT__ALGORITHMS",
            auth.algorithms
                .as_ref()
                .map(|algs| {
                    algs.iter()
                        .map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
            env.source("AUTH_JWT__ALGORITHMS"),
        )
        .note_if(auth.algorithms.is_none(), "every algorithm that fits a key"),
        Setting::new(
            "AUTH_JWT__AUDIENCE",
            list(&auth.audience),
            env.source("AUTH_JWT__AUDIENCE"),
        )
        .note_if(auth.audience.is_empty(), "not checked"),
        Setting::new(
            "AUTH_JWT__ISSUER",
            list(&auth.issuer),
            env.source("AUTH_JWT__ISSUER"),
        )
        .note_if(auth.issuer.is_empty(), "not checked"),
        Setting::new(
            "AUTH_JWT__LEEWAY",
            seconds(auth.leeway),
            env.source("AUTH_JWT__LEEWAY"),
        ),
        Setting::new(
            "AUTH_JWT__MAX_TOKEN_BYTES",
            auth.max_token_bytes,
            env.source("AUTH_JWT__MAX_TOKEN_BYTES"),
        ),
        Setting::new(
            "AUTH_JWT__JWKS_CACHE_TTL",
            seconds(auth.jwks_cache_ttl),
            env.source("AUTH_JWT__JWKS_CACHE_TTL"),
        ),
        Setting::new(
            "AUTH_JWT__JWKS_MIN_REFRESH",
            seconds(auth.jwks_min_refresh_interval),
            env.source("AUTH_JWT__JWKS_MIN_REFRESH"),
        ),
    ]);
    Group {
        heading: "authentication (AUTH_JWT_*, JWT_SECRET, WS_API_KEYS, APP_ENV)",
        settings,
    }
}

/// A variable shown as `value` when set (from the environment), empty otherwise.
fn optional(name: &'static str, value: Option<String>, env: &Env) -> Setting {
    Setting::new(name, value.unwrap_or_default(), env.source(name))
}

/// `<redacted, 32 bytes>`, `<redacted, 1 secret>`.
fn redacted(n: usize, unit: &str) -> String {
    let plural = if n == 1 { "" } else { "s" };
    format!("<redacted, {n} {unit}{plural}>")
}

/// A duration as the variables take it: seconds, `2.5`.
fn seconds(d: Duration) -> String {
    d.as_secs_f64().to_string()
}

/// An optional duration: seconds, or `none`.
fn optional_seconds(d: Option<Duration>) -> String {
    d.map_or_else(|| "none".to_owned(), seconds)
}

/// The lines to print: a heading comment, then each group under its own.
pub(super) fn render(groups: &[Group]) -> String {
    let mut out = String::from(
        "# svc-ws serve: the settings in effect (flag over env over default), secrets redacted\n",
    );
    for group in groups {
        let _ = writeln!(out, "\n# {}", group.heading);
        for s in &group.settings {
            // One line per setting, whatever a value holds.
            let value: String = s.value.chars().flat_map(char::escape_debug).collect();
            let value = if s.value.chars().any(char::is_control) {
                value
            } else {
                s.value.clone()
            };
            let _ = write!(out, "{}={value}  # {}", s.name, s.source.as_str());
            if let Some(note) = &s.note {
                let _ = write!(out, ", {note}");
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_lines(env: &[(&str, &str)]) -> String {
        let env = Env::from_pairs(env);
        let config = GatewayConfig::from_vars(env.vars.clone()).unwrap();
        render(&[authentication(&config, &env)])
    }

    #[test]
    fn secrets_show_only_their_size() {
        let out = auth_lines(&[
            ("JWT_SECRET", "fallback-secret-value"),
            ("AUTH_JWT__SECRET", "the-main-secret-of-32-bytes-long"),
            ("AUTH_JWT__OLD_SECRETS", r#"["old-one","old-two"]"#),
            ("WS_API_KEYS", "billing:k3y-value:publish read, ops:0ps-key"),
        ]);
        for line in [
            "AUTH_JWT__SECRET=<redacted, 32 bytes>  # env\n",
            "JWT_SECRET=<redacted, 21 bytes>  # env, not used: AUTH_JWT__SECRET comes first\n",
            "AUTH_JWT_SECRET=  # default\n",
            "AUTH_JWT__OLD_SECRETS=<redacted, 2 secrets>  # env\n",
            "WS_API_KEYS=billing:<redacted>:publish read,ops:<redacted>  # env\n",
            "AUTH_JWT__AUDIENCE=  # default, not checked\n",
        ] {
            assert!(out.contains(line), "{line:?} in\n{out}");
        }
        for secret in [
            "secret-value",
            "main-secret",
            "old-one",
            "k3y-value",
            "0ps-key",
        ] {
            assert!(!out.contains(secret), "{secret} in\n{out}");
        }
    }

    #[test]
    fn sources_follow_the_library_rules() {
        let env = Env::from_pairs(&[
            ("ws_ping_timeout", "5"),
            ("WS_PING_INTERVAL", ""),
            ("WS_GATEWAY_REQUEST_RATE", " "),
        ]);
        let config = GatewayConfig::from_vars(env.vars.clone()).unwrap();
        let out = render(&[connections(&config, &env)]);
        assert!(out.contains("\nWS_PING_TIMEOUT=5  # env\n"), "{out}");
        assert!(
            out.contains("\nWS_PING_INTERVAL=none  # env, keepalive off\n"),
            "{out}"
        );
        assert!(
            out.contains("\nWS_MAX_MESSAGE_SIZE=1048576  # default\n"),
            "{out}"
        );
        assert!(out.contains("\nWS_CLOSE_TIMEOUT=10  # default\n"), "{out}");
        assert_eq!(env.source("WS_GATEWAY_REQUEST_RATE"), Source::Default);
    }

    #[test]
    fn logs_show_the_format_and_the_filter() {
        let out = render(&[logs(&Env::default())]);
        assert!(out.contains("\nLOG_FORMAT=text  # default\n"), "{out}");
        assert!(out.contains("\nRUST_LOG=info  # default\n"), "{out}");
        let env = Env::from_pairs(&[("LOG_FORMAT", "JSON"), ("RUST_LOG", "svc_infra=debug")]);
        let out = render(&[logs(&env)]);
        assert!(out.contains("\nLOG_FORMAT=json  # env\n"), "{out}");
        assert!(out.contains("\nRUST_LOG=svc_infra=debug  # env\n"), "{out}");
        let out = render(&[logs(&Env::from_pairs(&[("RUST_LOG", "a=b=c")]))]);
        assert!(
            out.contains("\nRUST_LOG=info  # env, not a valid filter: info instead\n"),
            "{out}"
        );
    }

    #[test]
    fn a_value_stays_on_its_line() {
        let group = Group {
            heading: "h",
            settings: vec![Setting::new("X", "a\nB=1", Source::Env)],
        };
        assert_eq!(render(&[group]).lines().last(), Some(r"X=a\nB=1  # env"));
    }
}
