//! `svc-ws connect` (being built).

/// Arguments of `svc-ws connect`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The ws:// or wss:// URL.
    url: String,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("svc-ws connect {}: not built yet", args.url)
}
