//! The harnesses of the fuzz targets, one module per target: `fuzz_targets/<name>.rs` calls
//! `<name>::run` under libFuzzer (`cargo fuzz run <name>`, nightly), and
//! `crates/svc-infra/tests/fuzz.rs` calls the same functions on stable Rust with a seeded
//! generator, in every `cargo test`. A run panics only when a property is violated.
//! `docs/fuzzing.md` says what each target checks. (`auth_extract`'s harness is
//! `harness.rs`, included by its target and by `tests/auth_fuzz.rs`.)

pub mod backplane;
pub mod client_read;
pub mod gateway_request;
pub mod server_frames;
pub mod split;
pub mod upgrade_request;

/// A current-thread tokio runtime for the harnesses that run async code.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
