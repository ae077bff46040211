//! cargo fuzz target: the server's upgrade extractor, subprotocols and origin check on request parts built from the input
//! (`fuzz/src/upgrade_request.rs` says what is checked). Run with `cargo fuzz run upgrade_request` (needs nightly).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(svc_infra_fuzz::runtime);

fuzz_target!(|data: &[u8]| {
    svc_infra_fuzz::upgrade_request::run(&RT, data);
});
