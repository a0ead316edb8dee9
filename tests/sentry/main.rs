//! The Sentry integration, with a real Sentry client (its test transport records the events it
//! would send) and `$exception` events over real HTTP to `MockPostHog`.

#[path = "../support/mod.rs"]
mod support;

use std::{
    error::Error as StdError,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use posthog_tower::{
    context::RequestContext,
    integrations::sentry::{PostHogIntegration, DISTINCT_ID_TAG, PERSON_URL_EXTRA},
    PostHog,
};
use sentry::{protocol::Event as SentryEvent, test::with_captured_events_options, Level};
use serde_json::Value;

use support::*;

#[derive(Debug)]
struct Outer(Inner);

#[derive(Debug)]
struct Inner;

impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("checkout failed")
    }
}

impl StdError for Outer {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

impl fmt::Display for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("database down")
    }
}

impl StdError for Inner {}

fn error() -> Outer {
    Outer(Inner)
}

/// Runs `f` with a Sentry client that has `integration`, and returns the events it sent.
fn sentry_events(integration: PostHogIntegration, f: impl FnOnce()) -> Vec<SentryEvent<'static>> {
    with_captured_events_options(f, sentry::ClientOptions::new().add_integration(integration))
}

fn tag<'a>(event: &'a SentryEvent<'_>) -> Option<&'a str> {
    event.tags.get(DISTINCT_ID_TAG).map(String::as_str)
}

fn person_url<'a>(event: &'a SentryEvent<'_>) -> Option<&'a str> {
    event.extra.get(PERSON_URL_EXTRA).and_then(Value::as_str)
}

/// The `$exception` events PostHog received, once everything captured was delivered.
async fn exceptions(posthog: &PostHog, mock: &posthog_tower::testing::MockPostHog) -> Vec<Value> {
    posthog.flush().await;
    mock.events()
        .into_iter()
        .filter(|e| e["event"] == "$exception")
        .collect()
}

fn shape(event: &Value) -> Vec<(String, String)> {
    event["properties"]["$exception_list"]
        .as_array()
        .expect("an exception list")
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_error_in_a_request_is_tagged_linked_and_captured_for_the_caller() {
    let mock = start_mock().await;
    let posthog = builder(&mock).build().unwrap();
    let integration = PostHogIntegration::new(posthog.clone())
        .project_id(7)
        .sentry_organization("acme")
        .sentry_project_id(42);

    let ctx = RequestContext::new(Some("user-1".into())).with_session_id("s-1");
    let events = ctx
        .scope(async {
            sentry_events(integration, || {
                sentry::capture_error(&error());
            })
        })
        .await;

    assert_eq!(events.len(), 1);
    let sentry_event = &events[0];
    assert_eq!(tag(sentry_event), Some("user-1"));
    assert_eq!(
        person_url(sentry_event),
        Some(format!("{}/project/7/person/user-1", mock.url()).as_str()),
        "the mock's host is not PostHog Cloud's: kept as it is"
    );

    let exceptions = exceptions(&posthog, &mock).await;
    assert_eq!(exceptions.len(), 1, "{exceptions:?}");
    let exception = &exceptions[0];
    assert_eq!(exception["distinct_id"], "user-1");
    let p = &exception["properties"];
    let event_id = sentry_event.event_id.simple().to_string();
    assert_eq!(p["$sentry_event_id"], event_id.as_str());
    assert_eq!(
        p["$sentry_url"],
        format!("https://sentry.io/organizations/acme/issues/?project=42&query={event_id}")
            .as_str()
    );
    assert_eq!(p["$exception_level"], "error");
    assert_eq!(p["$session_id"], "s-1", "the request context's properties");
    assert_ne!(p["$process_person_profile"], false);
    // Outermost first, as PostHog expects; Sentry sends the innermost first.
    assert_eq!(
        shape(exception),
        [
            ("Outer".to_owned(), "checkout failed".to_owned()),
            ("Inner".to_owned(), "database down".to_owned()),
        ]
    );
    assert_eq!(p["$exception_list"][0]["mechanism"]["handled"], true);
    assert_eq!(p["$exception_list"][1]["mechanism"]["type"], "chained");
}

#[tokio::test]
async fn without_a_caller_there_is_no_tag_and_the_exception_is_personless() {
    let mock = start_mock().await;
    let posthog = builder(&mock).build().unwrap();
    let integration = PostHogIntegration::new(posthog.clone()).sentry_organization("acme");

    let events = sentry_events(integration, || {
        sentry::capture_error(&error());
    });

    assert_eq!(events.len(), 1);
    assert_eq!(tag(&events[0]), None);
    assert_eq!(person_url(&events[0]), None);

    let exceptions = exceptions(&posthog, &mock).await;
    assert_eq!(exceptions.len(), 1, "{exceptions:?}");
    let p = &exceptions[0]["properties"];
    assert_eq!(p["$process_person_profile"], false);
    let event_id = events[0].event_id.simple().to_string();
    assert_eq!(p["$sentry_event_id"], event_id.as_str());
    // No Sentry project id given: the DSN's (the test client's is project 1).
    assert_eq!(
        p["$sentry_url"],
        format!("https://sentry.io/organizations/acme/issues/?project=1&query={event_id}").as_str()
    );
}

#[tokio::test]
async fn capture_exceptions_false_tags_sentry_and_sends_nothing_to_posthog() {
    let mock = start_mock().await;
    let posthog = builder(&mock).build().unwrap();
    let integration = PostHogIntegration::new(posthog.clone()).capture_exceptions(false);

    let events = RequestContext::new(Some("user-1".into())).sync_scope(|| {
        sentry_events(integration, || {
            sentry::capture_error(&error());
        })
    });

    assert_eq!(tag(&events[0]), Some("user-1"));
    assert_eq!(
        person_url(&events[0]),
        Some(format!("{}/person/user-1", mock.url()).as_str()),
        "without a PostHog project id: the unscoped person path"
    );
    let report = posthog.flush().await;
    assert_eq!(report.delivered, 0);
    assert!(mock.events().is_empty(), "{:?}", mock.events());
}

#[tokio::test]
async fn a_message_event_is_tagged_and_only_an_error_level_one_is_captured() {
    let mock = start_mock().await;
    let posthog = builder(&mock).build().unwrap();
    let integration = PostHogIntegration::new(posthog.clone());

    let events = RequestContext::new(Some("user-1".into())).sync_scope(|| {
        sentry_events(integration, || {
            sentry::capture_message("cache warming slow", Level::Warning);
            sentry::capture_message("payment provider unreachable", Level::Error);
        })
    });

    assert_eq!(events.len(), 2);
    for event in &events {
        assert_eq!(tag(event), Some("user-1"));
        assert!(person_url(event).is_some());
    }
    let exceptions = exceptions(&posthog, &mock).await;
    assert_eq!(exceptions.len(), 1, "only the error: {exceptions:?}");
    assert_eq!(
        shape(&exceptions[0]),
        [(
            "Error".to_owned(),
            "payment provider unreachable".to_owned()
        )]
    );
    assert_eq!(
        exceptions[0]["properties"]["$sentry_event_id"],
        events[1].event_id.simple().to_string().as_str()
    );
    assert!(
        exceptions[0]["properties"].get("$sentry_url").is_none(),
        "no Sentry organization, no link"
    );
}

#[tokio::test]
async fn min_level_and_fatal_levels_reach_posthog() {
    let mock = start_mock().await;
    let posthog = builder(&mock).build().unwrap();
    let integration = PostHogIntegration::new(posthog.clone()).min_level(Level::Warning);

    let _ = sentry_events(integration, || {
        sentry::capture_message("disk almost full", Level::Warning);
        sentry::capture_message("debugging", Level::Info);
        sentry::capture_event(SentryEvent {
            level: Level::Fatal,
            message: Some("out of memory".into()),
            ..Default::default()
        });
    });

    let exceptions = exceptions(&posthog, &mock).await;
    let mut levels: Vec<&str> = exceptions
        .iter()
        .map(|e| e["properties"]["$exception_level"].as_str().unwrap())
        .collect();
    levels.sort_unstable();
    assert_eq!(levels, ["fatal", "warning"]);
}

#[tokio::test]
async fn the_scope_tag_then_the_closure_then_the_request_context_name_the_person() {
    let mock = start_mock().await;
    let posthog = builder(&mock).build().unwrap();
    let integration = PostHogIntegration::new(posthog.clone())
        .ui_host("https://eu.posthog.com/")
        .project_id(3)
        .distinct_id(|event| {
            let id = event.user.as_ref()?.id.clone()?;
            assert_ne!(id, "explode", "a closure that panics");
            Some(id)
        });

    let events = RequestContext::new(Some("from context".into())).sync_scope(|| {
        sentry_events(integration, || {
            // 1. Nothing but the request context.
            sentry::capture_error(&error());
            // 2. The closure (Sentry's user) over the request context.
            sentry::configure_scope(|scope| {
                scope.set_user(Some(sentry::User {
                    id: Some("sentry-user".into()),
                    ..Default::default()
                }))
            });
            sentry::capture_error(&error());
            // 3. A tag on the scope over both.
            sentry::with_scope(
                |scope| scope.set_tag(DISTINCT_ID_TAG, "tagged"),
                || sentry::capture_error(&error()),
            );
            // 4. A closure that panics counts as `None`.
            sentry::configure_scope(|scope| {
                scope.set_user(Some(sentry::User {
                    id: Some("explode".into()),
                    ..Default::default()
                }))
            });
            sentry::capture_error(&error());
        })
    });

    let tags: Vec<Option<&str>> = events.iter().map(tag).collect();
    assert_eq!(
        tags,
        [
            Some("from context"),
            Some("sentry-user"),
            Some("tagged"),
            Some("from context")
        ]
    );
    assert_eq!(
        person_url(&events[0]),
        Some("https://eu.posthog.com/project/3/person/from%20context")
    );

    let exceptions = exceptions(&posthog, &mock).await;
    let mut ids: Vec<&str> = exceptions
        .iter()
        .map(|e| e["distinct_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["from context", "from context", "sentry-user", "tagged"]
    );
}

#[tokio::test]
async fn cloud_ingestion_hosts_link_to_the_app() {
    let posthog = PostHog::builder(KEY)
        .host("https://eu.i.posthog.com")
        .disabled(true)
        .build()
        .unwrap();
    let integration = PostHogIntegration::new(posthog).project_id(9);
    let events = RequestContext::new(Some("a/b".into())).sync_scope(|| {
        sentry_events(integration, || {
            sentry::capture_message("hello", Level::Info);
        })
    });
    assert_eq!(
        person_url(&events[0]),
        Some("https://eu.posthog.com/project/9/person/a%2Fb")
    );
}

#[tokio::test]
async fn exceptions_go_through_the_rate_limit_and_a_report_to_sentry_from_on_error_does_not_loop() {
    let mock = start_mock().await;
    let refused = Arc::new(Mutex::new(0));
    let counted = refused.clone();
    let posthog = builder(&mock)
        .exception_rate_limit(1, Duration::from_secs(3600))
        .on_error(move |report| {
            *counted.lock().unwrap() += 1;
            // An application that reports PostHog's errors to Sentry: this event reaches the
            // integration while it runs, and passes through untouched.
            sentry::capture_message(&format!("posthog: {report}"), Level::Error);
        })
        .build()
        .unwrap();
    let integration = PostHogIntegration::new(posthog.clone());

    let events = RequestContext::new(Some("user-1".into())).sync_scope(|| {
        sentry_events(integration, || {
            for _ in 0..3 {
                sentry::capture_error(&error());
            }
        })
    });

    assert_eq!(*refused.lock().unwrap(), 2, "two refused by the rate limit");
    // Three errors, each tagged, and the two reports from `on_error`, untouched.
    assert_eq!(events.len(), 5);
    let tagged = events.iter().filter(|e| tag(e) == Some("user-1")).count();
    assert_eq!(tagged, 3);
    assert_eq!(exceptions(&posthog, &mock).await.len(), 1);
}
