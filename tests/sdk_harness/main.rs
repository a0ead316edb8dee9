//! PostHog's SDK compliance harness reimplemented in Rust, one test binary: the `capture`
//! suite ([`capture_suite`]) and the `feature_flags` suite ([`flags_suite`]), both driving our
//! adapter (`examples/sdk_adapter/adapter.rs`) in-process through [`harness`].

mod capture_suite;
mod flags_suite;
mod harness;
