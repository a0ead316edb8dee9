//! The adapter PostHog's SDK compliance harness drives `posthog-tower` through.
//!
//! A tool for the harness, not an example to copy (the README lists the examples to start
//! from). Tools outside this repository start it with this command, so it stays as it is:
//!
//! ```text
//! cargo run --release --all-features --example sdk_adapter -- --port 8080
//! cargo run --release --all-features --example sdk_adapter -- --port 8080 --protocol v1 --compression zstd
//! ```
//!
//! Listens on `127.0.0.1` at `--port PORT`, else the `PORT` environment variable, else 8080.
//! Speaks capture v0 with gzip unless `--protocol v1` and `--compression
//! none|gzip|deflate|br|zstd` say otherwise (the encoding is used when `/init` sets
//! `enable_compression`).
//! The protocol is described in `adapter.rs`; `tests/sdk_harness/capture_suite.rs` runs the
//! harness's `capture` suite against it, and `tests/sdk_harness/flags_suite.rs` its
//! `feature_flags` suite.

mod adapter;

use std::net::Ipv4Addr;

use tokio::net::TcpListener;

const DEFAULT_PORT: u16 = 8080;

const USAGE: &str = "usage: sdk_adapter [--port PORT] [--protocol v0|v1] \
                     [--compression none|gzip|deflate|br|zstd]";

/// `--port PORT` / `--port=PORT`, else `$PORT`, else 8080; `--protocol` and `--compression`
/// (capture v0 with gzip by default).
fn arguments() -> Result<(u16, adapter::Options), String> {
    let mut args = std::env::args().skip(1);
    let mut from_args = None;
    let mut options = adapter::Options::default();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        if !matches!(flag.as_str(), "--port" | "--protocol" | "--compression") {
            return Err(format!("unknown argument {arg:?} ({USAGE})"));
        }
        let value = match inline {
            Some(value) => value,
            None => args
                .next()
                .ok_or(format!("{flag} needs a value ({USAGE})"))?,
        };
        if flag == "--port" {
            from_args = Some(value);
        } else {
            options.set(&flag, &value)?;
        }
    }
    let port = match from_args.or_else(|| std::env::var("PORT").ok()) {
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("invalid port {text:?}"))?,
        None => DEFAULT_PORT,
    };
    Ok((port, options))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (port, options) = arguments()?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    println!(
        "posthog-tower {} SDK adapter listening on http://{}",
        posthog_tower::VERSION,
        listener.local_addr()?
    );
    println!(
        "capabilities: {:?} {:?}",
        options.protocol, options.compression
    );
    adapter::serve_with(listener, options).await;
    Ok(())
}
