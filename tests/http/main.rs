//! The HTTP layer in real servers on loopback, one test binary: axum driven by raw HTTP/1.1
//! ([`axum_server`]) and tonic called by a real tonic client ([`tonic_server`]), with
//! `MockPostHog` recording what arrived.

#[path = "../support/mod.rs"]
mod support;

mod axum_server;
mod exceptions;
mod flag_inputs;
mod flush;
mod propagate;
mod request_properties;
mod tonic_server;
