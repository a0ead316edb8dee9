//! PostHog's SDK compliance harness reimplemented in Rust, one test binary: the `capture`
//! suite ([`capture_suite`]), the `capture_ai` suite ([`capture_ai_suite`]), the
//! `feature_flags` suite ([`flags_suite`]), and the `capture_v1` suite run from its contract
//! once per encoding ([`capture_v1_suite`]), all driving our adapter
//! (`examples/sdk_adapter/adapter.rs`) in-process through [`harness`].

mod capture_ai_suite;
mod capture_suite;
mod capture_v1_suite;
mod flags_suite;
mod harness;
