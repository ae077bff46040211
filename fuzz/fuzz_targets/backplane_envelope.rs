//! cargo fuzz target: the backplane's envelope decoder, and a manager handed what it
//! decodes (`fuzz/src/backplane.rs` says what is checked). Run with
//! `cargo fuzz run backplane_envelope` (needs nightly).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use svc_infra::websocket::{ConnectionManager, backplane::Inbox};

static NODE: LazyLock<(ConnectionManager, Inbox)> = LazyLock::new(svc_infra_fuzz::backplane::node);

fuzz_target!(|data: &[u8]| {
    svc_infra_fuzz::backplane::envelope(&NODE, data);
});
