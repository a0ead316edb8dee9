//! The adapter PostHog's SDK compliance harness drives `posthog-tower` through.
//!
//! A tool for the harness, not an example to copy (the README lists the examples to start
//! from). Tools outside this repository start it with this command, so it stays as it is:
//!
//! ```text
//! cargo run --release --all-features --example sdk_adapter -- --port 8080
//! ```
//!
//! Listens on `127.0.0.1` at `--port PORT`, else the `PORT` environment variable, else 8080.
//! The protocol is described in `adapter.rs`; `tests/sdk_harness/capture_suite.rs` runs the
//! harness's `capture` suite against it, and `tests/sdk_harness/flags_suite.rs` its
//! `feature_flags` suite.

mod adapter;

use std::net::Ipv4Addr;

use tokio::net::TcpListener;

const DEFAULT_PORT: u16 = 8080;

/// `--port PORT` / `--port=PORT`, else `$PORT`, else 8080.
fn port() -> Result<u16, String> {
    let mut args = std::env::args().skip(1);
    let mut from_args = None;
    while let Some(arg) = args.next() {
        if arg == "--port" {
            from_args = Some(args.next().ok_or("--port needs a value")?);
        } else if let Some(value) = arg.strip_prefix("--port=") {
            from_args = Some(value.to_owned());
        } else {
            return Err(format!(
                "unknown argument {arg:?} (usage: sdk_adapter [--port PORT])"
            ));
        }
    }
    match from_args.or_else(|| std::env::var("PORT").ok()) {
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("invalid port {text:?}")),
        None => Ok(DEFAULT_PORT),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = port()?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    println!(
        "posthog-tower {} SDK adapter listening on http://{}",
        posthog_tower::VERSION,
        listener.local_addr()?
    );
    adapter::serve(listener).await;
    Ok(())
}
