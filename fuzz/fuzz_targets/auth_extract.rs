//! cargo fuzz target: token extraction, JWT parsing/verification and policy checks on
//! arbitrary handshake inputs. Run with `cargo fuzz run auth_extract` (needs nightly).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

#[path = "../src/harness.rs"]
mod harness;

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
});
static AUTH: LazyLock<svc_infra::auth::WsAuth> = LazyLock::new(harness::auth);

fuzz_target!(|data: &[u8]| {
    harness::run(&RT, &AUTH, data);
});
