//! `svc-ws`: the svc-infra-rs command line (gateway, client, dev tokens, load generator).

fn main() {
    eprintln!("svc-ws: subcommands are being built");
}
