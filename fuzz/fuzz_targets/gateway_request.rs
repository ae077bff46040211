//! cargo fuzz target: the gateway's /ws JSON requests and their answers
//! (`fuzz/src/gateway_request.rs` says what is checked). Run with `cargo fuzz run gateway_request` (needs nightly).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(svc_infra_fuzz::runtime);

fuzz_target!(|data: &[u8]| {
    svc_infra_fuzz::gateway_request::run(&RT, data);
});
