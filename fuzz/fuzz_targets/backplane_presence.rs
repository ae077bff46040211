//! cargo fuzz target: the backplane's presence decoder, and a manager's cluster view fed
//! what it decodes (`fuzz/src/backplane.rs` says what is checked). Run with
//! `cargo fuzz run backplane_presence` (needs nightly).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    svc_infra_fuzz::backplane::presence(data);
});
