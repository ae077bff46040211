//! `svc-ws bench` (being built).

/// Arguments of `svc-ws bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Server base URL, e.g. ws://127.0.0.1:3000.
    url: String,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("svc-ws bench {}: not built yet", args.url)
}
