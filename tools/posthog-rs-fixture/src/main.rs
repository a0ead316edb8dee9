//! Writes the properties of the `$exception` event posthog-rs 0.30.0 builds for a three-error
//! chain (a concrete `ApiError` whose source is a `DbError` whose source is an `io::Error`;
//! the sources are seen as `dyn Error`) to `tests/fixtures/posthog_rs_exception.json`.
//!
//! Nothing is sent: a `before_send` hook (posthog-rs's public hook, run before serialization)
//! records the event and drops it, and the client points at a closed loopback port anyway.

use std::{
    error::Error as StdError,
    fmt,
    path::Path,
    sync::{Arc, Mutex},
};

use posthog_rs::ClientOptionsBuilder;
use serde_json::{Map, Value};

#[derive(Debug)]
struct ApiError(DbError);

#[derive(Debug)]
struct DbError(std::io::Error);

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request failed")
    }
}

impl StdError for ApiError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("database query failed")
    }
}

impl StdError for DbError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

#[inline(never)]
fn handle_request(client: &posthog_rs::Client) {
    let error = ApiError(DbError(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    )));
    client
        .capture_exception(&error)
        .expect("the event is built");
}

fn main() {
    let recorded: Arc<Mutex<Vec<Map<String, Value>>>> = Arc::default();
    let sink = recorded.clone();
    let options = ClientOptionsBuilder::default()
        .api_key("phc_fixture".to_string())
        .host("http://127.0.0.1:9")
        .before_send(move |event| {
            let properties = event.properties().clone().into_iter().collect();
            sink.lock().unwrap().push(properties);
            None
        })
        .build()
        .expect("valid options");
    let client = posthog_rs::client(options);
    handle_request(&client);
    client.flush();
    client.shutdown();

    let events = recorded.lock().unwrap();
    let properties = events
        .first()
        .expect("before_send saw the $exception event");
    let out = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/posthog_rs_exception.json");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let mut json = serde_json::to_string_pretty(properties).unwrap();
    json.push('\n');
    std::fs::write(&out, json).unwrap();
    eprintln!("wrote {}", out.display());
}
