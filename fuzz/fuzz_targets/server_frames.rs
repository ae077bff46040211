//! cargo fuzz target: the server's incremental frame parser on a client byte stream cut
//! at the points the input chooses (`fuzz/src/server_frames.rs` says what is checked).
//! Run with `cargo fuzz run server_frames` (needs nightly).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    svc_infra_fuzz::server_frames::run(data);
});
