//! `svc-ws token`: mints an HS256 JWT for development, signed with the secret the server
//! reads (`AUTH_JWT__SECRET`, `AUTH_JWT_SECRET` or `JWT_SECRET`), and prints it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use serde_json::json;

/// Arguments of `svc-ws token`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Example: svc-ws token --sub alice --scope broadcast, then connect with \
ws://127.0.0.1:8000/ws?token=<printed token>. The secret comes from AUTH_JWT__SECRET, \
AUTH_JWT_SECRET or JWT_SECRET, the same variables the server reads.")]
pub(crate) struct Args {
    /// The subject (`sub`): the user id.
    #[arg(long)]
    sub: String,
    /// A scope to grant (repeatable); goes into the `scopes` claim.
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// An `email` claim.
    #[arg(long)]
    email: Option<String>,
    /// Lifetime, e.g. `1h`, `30m`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let secret = ["AUTH_JWT__SECRET", "AUTH_JWT_SECRET", "JWT_SECRET"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()));
    let Some(secret) = secret else {
        bail!(
            "no secret: set AUTH_JWT__SECRET (or AUTH_JWT_SECRET, JWT_SECRET), as for the server"
        );
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = json!({
        "sub": args.sub,
        "iat": now,
        "exp": now + args.ttl.as_secs().max(1),
        "scopes": args.scopes,
    });
    if let Some(email) = args.email {
        claims["email"] = json!(email);
    }
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("sign the token")?;
    println!("{token}");
    Ok(())
}
