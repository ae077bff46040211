//! cargo fuzz target: what the client reads from a server (handshake response, then frames), cut at the points the input chooses
//! (`fuzz/src/client_read.rs` says what is checked). Run with `cargo fuzz run client_read` (needs nightly).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(svc_infra_fuzz::runtime);

fuzz_target!(|data: &[u8]| {
    svc_infra_fuzz::client_read::run(&RT, data);
});
