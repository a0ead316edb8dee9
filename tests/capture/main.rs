//! Capture over real HTTP to `MockPostHog`, one test binary: the AI lane ([`ai`]) and `AiLayer` ([`ai_layer`]), what is sent and how it is
//! batched ([`events`]), `$exception` events ([`exceptions`]), the client's life from flush to shutdown ([`lifecycle`]), retries and
//! their timing ([`retry`]), and an axum server shut down gracefully under load
//! ([`shutdown_under_load`]), the system properties on every event ([`system`]), and capture
//! v1 ([`v1`]).

#[path = "../support/mod.rs"]
mod support;

mod ai;
mod ai_layer;
mod blocking;
mod events;
mod exceptions;
mod lifecycle;
mod retry;
mod shutdown_under_load;
mod system;
mod v1;
