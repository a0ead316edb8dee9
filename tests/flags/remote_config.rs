//! Remote config payloads over real HTTP to `MockPostHog`: the request (path, `token` query,
//! `Authorization: Bearer` with the secret key), the decrypted payload, `Ok(None)` for a flag
//! without one, and the errors (no secret key, an unknown flag, a refused key, PostHog
//! unreachable, a payload of the wrong type).

use posthog_tower::flags::RemoteConfigError;
use posthog_tower::testing::{remote_config_path, MockPostHog, MockResponse};
use posthog_tower::PostHog;
use serde::Deserialize;
use serde_json::json;

const KEY: &str = "phc_remote_config_test";
const SECRET: &str = "phs_project_secret_test";

async fn start_mock() -> MockPostHog {
    MockPostHog::start()
        .await
        .expect("the mock binds a port of 127.0.0.1")
}

fn client(mock: &MockPostHog) -> PostHog {
    PostHog::builder(KEY)
        .host(mock.url())
        .personal_api_key(SECRET)
        // No definitions are needed here; keep the poller quiet.
        .poll_interval(std::time::Duration::from_secs(3600))
        .build()
        .expect("client builds")
}

#[tokio::test]
async fn the_payload_is_fetched_with_the_secret_key_and_the_token_parameter() {
    let mock = start_mock().await;
    mock.set_remote_config("checkout", Some(json!({"max_items": 3, "theme": "dark"})));
    let ph = client(&mock);

    let payload = ph.get_remote_config_payload("checkout").await;
    assert_eq!(payload, Ok(Some(json!({"max_items": 3, "theme": "dark"}))));

    let requests = mock.requests_to(&remote_config_path("checkout"));
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, http::Method::GET);
    assert_eq!(
        request.query.as_deref(),
        Some(format!("token={KEY}").as_str())
    );
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert!(request.body.is_empty());
    // Nothing else travelled: no /flags call, no event.
    assert!(mock.requests_to("/flags").is_empty());
    ph.flush().await;
    assert!(mock.events().is_empty());
}

#[tokio::test]
async fn typed_payloads_and_plain_answers() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct Checkout {
        max_items: u32,
    }
    let mock = start_mock().await;
    mock.set_remote_config("checkout", Some(json!({"max_items": 3})));
    // An answer that is JSON itself, not JSON text.
    mock.set_default(
        &remote_config_path("raw"),
        MockResponse::json(200, json!([1, 2])),
    );
    let ph = client(&mock);

    let typed: Option<Checkout> = ph.get_remote_config_payload_as("checkout").await.unwrap();
    assert_eq!(typed, Some(Checkout { max_items: 3 }));
    assert_eq!(
        ph.get_remote_config_payload("raw").await,
        Ok(Some(json!([1, 2])))
    );
    let wrong = ph.get_remote_config_payload_as::<Checkout>("raw").await;
    assert!(
        matches!(wrong, Err(RemoteConfigError::InvalidPayload(_))),
        "{wrong:?}"
    );
}

#[tokio::test]
async fn a_flag_without_a_payload_is_none() {
    let mock = start_mock().await;
    mock.set_remote_config("empty", None);
    let ph = client(&mock);
    assert_eq!(ph.get_remote_config_payload("empty").await, Ok(None));
    assert_eq!(
        ph.get_remote_config_payload_as::<u32>("empty").await,
        Ok(None)
    );
    assert_eq!(mock.requests_to(&remote_config_path("empty")).len(), 2);
}

#[tokio::test]
async fn without_a_secret_key_nothing_is_sent() {
    let mock = start_mock().await;
    let ph = PostHog::builder(KEY).host(mock.url()).build().unwrap();
    let error = ph.get_remote_config_payload("checkout").await.unwrap_err();
    assert_eq!(error, RemoteConfigError::MissingSecretKey);
    assert!(error.to_string().contains("personal API key"), "{error}");
    assert!(mock.requests().is_empty());

    let disabled = PostHog::builder(KEY)
        .host(mock.url())
        .personal_api_key(SECRET)
        .disabled(true)
        .build()
        .unwrap();
    assert_eq!(
        disabled.get_remote_config_payload("checkout").await,
        Err(RemoteConfigError::Disabled)
    );
    assert_eq!(
        client(&mock).get_remote_config_payload(" ").await,
        Err(RemoteConfigError::EmptyKey)
    );
    assert!(mock.requests_to(&remote_config_path("checkout")).is_empty());
}

#[tokio::test]
async fn failed_requests_are_errors_with_the_status_and_detail() {
    let mock = start_mock().await;
    // An unknown flag: the mock's default 404.
    let ph = client(&mock);
    let unknown = ph.get_remote_config_payload("unknown").await.unwrap_err();
    assert!(
        matches!(unknown, RemoteConfigError::Status(404, _)),
        "{unknown:?}"
    );

    mock.enqueue(
        &remote_config_path("checkout"),
        MockResponse::json(401, json!({"detail": "Invalid personal API key."})),
    );
    let refused = ph.get_remote_config_payload("checkout").await.unwrap_err();
    assert_eq!(
        refused,
        RemoteConfigError::Status(401, Some("Invalid personal API key.".to_owned()))
    );
    assert!(refused.to_string().contains("401"), "{refused}");

    mock.enqueue(
        &remote_config_path("checkout"),
        MockResponse::status(200).with_raw_body("<html>"),
    );
    let garbled = ph.get_remote_config_payload("checkout").await.unwrap_err();
    assert!(
        matches!(garbled, RemoteConfigError::InvalidResponse(_)),
        "{garbled:?}"
    );
    // Not retried: one request per call.
    assert_eq!(mock.requests_to(&remote_config_path("checkout")).len(), 2);
}

#[tokio::test]
async fn an_unreachable_posthog_is_a_connection_error() {
    let mock = start_mock().await;
    let url = mock.url();
    mock.shutdown().await;
    let ph = PostHog::builder(KEY)
        .host(url)
        .personal_api_key(SECRET)
        .build()
        .unwrap();
    let error = ph.get_remote_config_payload("checkout").await.unwrap_err();
    assert!(
        matches!(error, RemoteConfigError::Connection(_)),
        "{error:?}"
    );
}
