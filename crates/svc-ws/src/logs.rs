//! Where `svc-ws` writes its logs and how: `LOG_FORMAT` (`text`, the default, or `json`) and
//! `RUST_LOG` (the filter: `info` when unset or not a valid filter), on stderr.
//!
//! - `text`: tracing's human-readable lines, as before.
//! - `json`: one JSON object per line (tracing-subscriber's JSON format, the event's fields
//!   flattened): `timestamp`, `level`, `target`, `message`, the event's fields beside them,
//!   and inside a span `span`: the innermost span's `name` and fields (on a connection,
//!   `connection` with `peer`, `conn_id` and `user`).
//!
//! What `svc-ws serve` prints for whoever runs it (where it listens, that it stops) is a plain
//! line in `text` and a log line at info with target [`STATUS_TARGET`] in `json`, shown
//! whatever `RUST_LOG` says, so that every line of a `json` run is JSON.

use std::ffi::OsString;

use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// The variable that chooses the format.
pub(crate) const LOG_FORMAT: &str = "LOG_FORMAT";

/// The target of the lines `svc-ws` writes for whoever runs it (listening, shutting down, a
/// failed start); enabled at info whatever `RUST_LOG` says.
pub(crate) const STATUS_TARGET: &str = "svc_ws::status";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum LogFormat {
    /// tracing's human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT` as given: `text` or `json` in any case, surrounding blanks ignored; unset
    /// or blank is `text`. Anything else is an error naming the variable and what it accepts.
    pub(crate) fn parse(value: Option<&str>) -> anyhow::Result<Self> {
        match value.map(str::trim) {
            None | Some("") => Ok(Self::Text),
            Some(v) if v.eq_ignore_ascii_case("text") => Ok(Self::Text),
            Some(v) if v.eq_ignore_ascii_case("json") => Ok(Self::Json),
            Some(_) => anyhow::bail!(
                "invalid {LOG_FORMAT}={:?}: expected text (the default) or json",
                value.unwrap_or_default()
            ),
        }
    }

    /// [`parse`](Self::parse) of the process's `LOG_FORMAT` (a value that is not UTF-8 is
    /// refused too).
    pub(crate) fn from_env() -> anyhow::Result<Self> {
        match std::env::var_os(LOG_FORMAT).map(OsString::into_string) {
            None => Self::parse(None),
            Some(Ok(value)) => Self::parse(Some(&value)),
            Some(Err(raw)) => Self::parse(Some(&raw.to_string_lossy())),
        }
    }

    /// The value as the variable takes it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// The filter of `RUST_LOG` as `svc-ws` uses it: the variable's directives, `info` when it is
/// unset or not a valid filter.
pub(crate) fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the process's subscriber: `RUST_LOG`'s filter (plus [`STATUS_TARGET`] at info in
/// `json`), lines in `format`, on stderr.
pub(crate) fn init(format: LogFormat) {
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Text => registry
            .with(env_filter())
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
        LogFormat::Json => {
            let mut filter = env_filter();
            if let Ok(status) = format!("{STATUS_TARGET}=info").parse() {
                filter = filter.add_directive(status);
            }
            registry
                .with(filter)
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_current_span(true)
                        .with_span_list(false)
                        .with_ansi(false)
                        .with_writer(std::io::stderr),
                )
                .init();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_values() {
        for (value, format) in [
            (None, LogFormat::Text),
            (Some(""), LogFormat::Text),
            (Some("  "), LogFormat::Text),
            (Some("text"), LogFormat::Text),
            (Some("JSON"), LogFormat::Json),
            (Some(" json\n"), LogFormat::Json),
        ] {
            assert_eq!(LogFormat::parse(value).unwrap(), format, "{value:?}");
        }
        let e = LogFormat::parse(Some("xml")).unwrap_err().to_string();
        assert_eq!(
            e,
            r#"invalid LOG_FORMAT="xml": expected text (the default) or json"#
        );
    }
}
