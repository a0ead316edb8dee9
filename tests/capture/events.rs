//! Capture over real HTTP to `MockPostHog`: the `/batch/` envelope, event fields, the person
//! and group helpers, gzip, batching (count, interval, bytes, concurrency), bad input,
//! `before_send`, and the stats that add it all up.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use posthog_tower::testing::MockResponse;
use posthog_tower::{CaptureError, DropReason, ErrorReport, Event, Timestamp, Uuid, VERSION};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::{sleep_until, Instant};

use crate::support::*;

/// `t` truncated to whole microseconds, the precision timestamps are sent with.
fn to_micros(t: Timestamp) -> Timestamp {
    Timestamp::from_unix_nanos(t.as_unix_nanos() / 1_000 * 1_000).expect("in range")
}

/// Parses a timestamp as sent, checking it is RFC 3339 in UTC.
fn sent_timestamp(value: &Value) -> Timestamp {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {value}"));
    assert!(text.ends_with('Z'), "not UTC: {text}");
    assert_eq!(text.as_bytes()[10], b'T', "not RFC 3339: {text}");
    Timestamp::parse(text).unwrap_or_else(|e| panic!("unparseable timestamp {text}: {e}"))
}

// ===== envelope and event fields =====

#[tokio::test(start_paused = true)]
async fn batch_envelope_body_and_headers() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();

    let before = to_micros(Timestamp::now());
    let uuid = ph.capture(Event::new("signed up", "user-1")).unwrap();
    let report = ph.flush().await;
    let after = Timestamp::now();
    assert_eq!((report.delivered, report.failed), (1, 0));

    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 1, "one request for one flushed event");
    let req = &reqs[0];
    assert_eq!(req.method, http::Method::POST);
    assert_eq!(req.path, "/batch/");
    assert_eq!(req.header("content-type"), Some("application/json"));
    let user_agent = format!("posthog-tower/{VERSION}");
    assert_eq!(req.header("user-agent"), Some(user_agent.as_str()));
    assert!(!req.gzip, "gzip is off by default");
    assert_eq!(req.header("content-encoding"), None);

    let body = body_json(req);
    let keys: BTreeSet<&str> = body
        .as_object()
        .expect("the body is a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["api_key", "batch", "historical_migration", "sent_at"])
    );
    assert_eq!(body["api_key"], KEY);
    assert_eq!(body["historical_migration"], false);
    let sent_at = sent_timestamp(&body["sent_at"]);
    assert!(
        before <= sent_at && sent_at <= after,
        "sent_at {sent_at:?} outside [{before:?}, {after:?}]"
    );
    let batch = batch_of(req);
    assert_eq!(batch.len(), 1);
    assert_eq!(uuid_of(&batch[0]), uuid);
}

#[tokio::test(start_paused = true)]
async fn historical_migration_is_flagged_in_the_body() {
    let mock = start_mock().await;
    let ph = builder(&mock).historical_migration(true).build().unwrap();
    ph.capture(Event::new("imported", "user-1")).unwrap();
    assert_eq!(ph.flush().await.delivered, 1);
    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 1);
    assert_eq!(body_json(&reqs[0])["historical_migration"], true);
}

#[tokio::test(start_paused = true)]
async fn event_fields_and_library_properties() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();

    let before = to_micros(Timestamp::now());
    let uuid = ph
        .capture(
            Event::new("checkout completed", "user-42")
                .property("amount", 49.9)
                .property("currency", "EUR")
                .property("items", vec!["book", "pen"])
                .property("gift", false),
        )
        .unwrap();
    let after = Timestamp::now();
    assert_eq!(ph.flush().await.delivered, 1);

    let events = mock.events();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e["event"], "checkout completed");
    assert_eq!(e["distinct_id"], "user-42");
    let p = &e["properties"];
    assert_eq!(p["amount"], 49.9);
    assert_eq!(p["currency"], "EUR");
    assert_eq!(p["items"], json!(["book", "pen"]));
    assert_eq!(p["gift"], false);
    assert_eq!(p["$lib"], "posthog-tower");
    assert_eq!(p["$lib_version"], VERSION);
    assert_eq!(p["$geoip_disable"], true, "geoip is disabled by default");

    // The uuid capture returned is the one sent, and it is a UUIDv7.
    assert_eq!(uuid_of(e), uuid);
    assert_eq!(uuid.get_version_num(), 7);

    // Stamped at capture time, in UTC.
    let ts = sent_timestamp(&e["timestamp"]);
    assert!(
        before <= ts && ts <= after,
        "timestamp {ts:?} outside [{before:?}, {after:?}]"
    );
}

#[tokio::test(start_paused = true)]
async fn explicit_uuid_and_offset_timestamp_are_sent_in_utc() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();

    let chosen = Uuid::parse_str("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap();
    let returned = ph
        .capture(
            Event::new("backfilled", "user-1")
                .uuid(chosen)
                .timestamp(Timestamp::parse("2025-01-02T08:34:05+05:30").unwrap()),
        )
        .unwrap();
    assert_eq!(returned, chosen, "capture returns the uuid that was set");
    let fractional = ph
        .capture(
            Event::new("backfilled", "user-2")
                .timestamp(Timestamp::parse("2025-01-01T20:04:05.123456-07:00").unwrap()),
        )
        .unwrap();
    assert_eq!(ph.flush().await.delivered, 2);

    let events = mock.events();
    let e = find_event(&events, chosen);
    let text = e["timestamp"].as_str().unwrap();
    assert!(
        text.starts_with("2025-01-02T03:04:05") && text.ends_with('Z'),
        "offset not converted to UTC: {text}"
    );
    assert_eq!(
        sent_timestamp(&e["timestamp"]),
        Timestamp::parse("2025-01-02T03:04:05Z").unwrap()
    );

    let e = find_event(&events, fractional);
    let text = e["timestamp"].as_str().unwrap();
    assert!(
        text.starts_with("2025-01-02T03:04:05.123456") && text.ends_with('Z'),
        "offset not converted to UTC: {text}"
    );
}

#[tokio::test(start_paused = true)]
async fn geoip_property_is_absent_when_geoip_is_enabled() {
    let mock = start_mock().await;
    let ph = builder(&mock).disable_geoip(false).build().unwrap();
    ph.capture(Event::new("e", "u")).unwrap();
    assert_eq!(ph.flush().await.delivered, 1);
    let events = mock.events();
    assert_eq!(events.len(), 1);
    let p = events[0]["properties"].as_object().unwrap();
    assert!(
        !p.contains_key("$geoip_disable"),
        "$geoip_disable sent with disable_geoip(false): {p:?}"
    );
    assert_eq!(p["$lib"], "posthog-tower");
}

#[tokio::test(start_paused = true)]
async fn groups_set_and_set_once_properties() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    ph.capture(
        Event::new("plan upgraded", "user-1")
            .group("company", "acme")
            .group("team", "core")
            .set("plan", "pro")
            .set("seats", 5)
            .set_once("first_plan", "free"),
    )
    .unwrap();
    assert_eq!(ph.flush().await.delivered, 1);

    let events = mock.events();
    assert_eq!(events.len(), 1);
    let p = &events[0]["properties"];
    assert_eq!(p["$groups"], json!({"company": "acme", "team": "core"}));
    assert_eq!(p["$set"], json!({"plan": "pro", "seats": 5}));
    assert_eq!(p["$set_once"], json!({"first_plan": "free"}));
}

#[tokio::test(start_paused = true)]
async fn anonymous_events_get_a_random_distinct_id_and_no_person_profile() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let a = ph.capture(Event::anonymous("page scrolled")).unwrap();
    let b = ph.capture(Event::anonymous("page scrolled")).unwrap();
    assert_eq!(ph.flush().await.delivered, 2);

    let events = mock.events();
    let (a, b) = (find_event(&events, a), find_event(&events, b));
    for e in [&a, &b] {
        assert_eq!(e["properties"]["$process_person_profile"], false);
        let id = e["distinct_id"].as_str().expect("a string distinct id");
        assert!(!id.trim().is_empty(), "empty distinct id for {e}");
    }
    assert_ne!(
        a["distinct_id"], b["distinct_id"],
        "anonymous events share a distinct id"
    );
}

#[tokio::test(start_paused = true)]
async fn super_properties_override_event_properties() {
    let mock = start_mock().await;
    let ph = builder(&mock)
        .super_property("env", "prod")
        .super_property("region", "eu")
        .build()
        .unwrap();
    ph.capture(
        Event::new("deployed", "ci")
            .property("env", "dev")
            .property("service", "api"),
    )
    .unwrap();
    assert_eq!(ph.flush().await.delivered, 1);

    let events = mock.events();
    assert_eq!(events.len(), 1);
    let p = &events[0]["properties"];
    assert_eq!(p["env"], "prod", "the super property wins");
    assert_eq!(p["region"], "eu");
    assert_eq!(p["service"], "api");
    // Once only: a duplicated key in the JSON object would be ambiguous for the server.
    let raw = String::from_utf8_lossy(&mock.requests_to("/batch")[0].body).into_owned();
    assert_eq!(raw.matches(r#""env":"#).count(), 1, "env sent twice: {raw}");
}

#[tokio::test(start_paused = true)]
async fn person_and_group_helpers_have_posthog_shapes() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();

    let set = ph
        .set("user-1", json!({"email": "ada@example.com", "plan": "pro"}))
        .unwrap();
    let set_once = ph
        .set_once("user-1", json!({"signup_source": "ads"}))
        .unwrap();
    let alias = ph.alias("anon-7", "user-1").unwrap();
    let group = ph
        .group_identify("company", "acme", json!({"employees": 40, "name": "Acme"}))
        .unwrap();
    let pageview = ph
        .pageview("user-1", "https://example.com/pricing?x=1")
        .unwrap();
    assert_eq!(ph.flush().await.delivered, 5);

    let events = mock.events();
    assert_eq!(events.len(), 5);

    let e = find_event(&events, set);
    assert_eq!(e["event"], "$set");
    assert_eq!(e["distinct_id"], "user-1");
    assert_eq!(
        e["$set"],
        json!({"email": "ada@example.com", "plan": "pro"}),
        "top-level $set: {e}"
    );

    let e = find_event(&events, set_once);
    assert_eq!(e["event"], "$set_once");
    assert_eq!(e["distinct_id"], "user-1");
    assert_eq!(
        e["$set_once"],
        json!({"signup_source": "ads"}),
        "top-level $set_once: {e}"
    );

    let e = find_event(&events, alias);
    assert_eq!(e["event"], "$create_alias");
    assert_eq!(e["distinct_id"], "anon-7");
    assert_eq!(e["properties"]["alias"], "user-1");
    assert_eq!(e["properties"]["distinct_id"], "anon-7");

    let e = find_event(&events, group);
    assert_eq!(e["event"], "$groupidentify");
    assert_eq!(e["properties"]["$group_type"], "company");
    assert_eq!(e["properties"]["$group_key"], "acme");
    assert_eq!(
        e["properties"]["$group_set"],
        json!({"employees": 40, "name": "Acme"})
    );
    assert!(
        !e["distinct_id"].as_str().unwrap_or_default().is_empty(),
        "a $groupidentify needs a distinct id: {e}"
    );

    let e = find_event(&events, pageview);
    assert_eq!(e["event"], "$pageview");
    assert_eq!(e["distinct_id"], "user-1");
    assert_eq!(
        e["properties"]["$current_url"],
        "https://example.com/pricing?x=1"
    );

    // The helpers' events carry the library properties like any other.
    for e in &events {
        assert_eq!(e["properties"]["$lib"], "posthog-tower", "{e}");
    }
}

#[tokio::test(start_paused = true)]
async fn helpers_reject_bad_arguments() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = builder(&mock).on_error(errors.callback()).build().unwrap();

    assert_eq!(
        ph.set(" ", json!({"a": 1})),
        Err(CaptureError::EmptyDistinctId)
    );
    assert_eq!(
        ph.set_once("", json!({"a": 1})),
        Err(CaptureError::EmptyDistinctId)
    );
    assert_eq!(ph.alias("anon", ""), Err(CaptureError::EmptyDistinctId));
    assert_eq!(ph.alias("", "user"), Err(CaptureError::EmptyDistinctId));
    assert!(matches!(
        ph.group_identify("", "acme", json!({})),
        Err(CaptureError::InvalidArgument(_))
    ));
    assert!(matches!(
        ph.group_identify("company", " ", json!({})),
        Err(CaptureError::InvalidArgument(_))
    ));
    assert_eq!(
        ph.pageview("", "https://example.com"),
        Err(CaptureError::EmptyDistinctId)
    );
    // Person properties must be an object.
    assert!(matches!(
        ph.set("user", json!([1, 2])),
        Err(CaptureError::InvalidProperty { .. })
    ));

    let stats = ph.stats();
    assert_eq!(stats.dropped.invalid, 8);
    assert_eq!(stats.captured, 0);
    assert_eq!(errors.len(), 8);
    assert!(errors
        .all()
        .iter()
        .all(|e| matches!(e, ErrorReport::Rejected(_))));
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed, report.dropped), (0, 0, 0));
    assert!(mock.requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn gzip_round_trip() {
    let mock = start_mock().await;
    let ph = builder(&mock).gzip(true).build().unwrap();
    let ids: Vec<Uuid> = (0..20)
        .map(|i| {
            ph.capture(
                Event::new("page viewed", "user-1")
                    .property("i", i)
                    .property("path", "/a/fairly/repetitive/path/that/compresses/well"),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(ph.flush().await.delivered, 20);

    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.header("content-encoding"), Some("gzip"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert!(req.gzip, "the mock saw a gzip body");
    assert!(!req.gzip_decode_failed, "the gzip body decodes");
    assert!(
        req.raw_len < req.body.len(),
        "compressed {} bytes, decoded {}",
        req.raw_len,
        req.body.len()
    );
    let body = body_json(req);
    assert_eq!(body["api_key"], KEY);
    let batch = batch_of(req);
    assert_eq!(uuids_of(&batch), ids, "same events, same order");
    for (i, e) in batch.iter().enumerate() {
        assert_eq!(e["properties"]["i"], i);
    }
}

// ===== batching =====

#[tokio::test(start_paused = true)]
async fn full_batches_go_out_at_flush_at_and_the_rest_after_the_interval() {
    let mock = start_mock().await;
    let interval = Duration::from_secs(5);
    let ph = builder(&mock)
        .flush_at(10)
        .flush_interval(interval)
        .build()
        .unwrap();

    let start = Instant::now();
    let ids: Vec<Uuid> = (0..25)
        .map(|i| {
            ph.capture(Event::new("tick", "worker").property("i", i))
                .unwrap()
        })
        .collect();

    // Two full batches leave without waiting for the interval.
    mock.wait_for_events(20, WAIT).await.unwrap();
    let reqs = mock.requests_to("/batch");
    assert_eq!(batch_sizes(&reqs), vec![10, 10]);
    for r in &reqs {
        assert!(
            r.received_at - start < interval,
            "a full batch waited for the interval: {:?}",
            r.received_at - start
        );
    }

    // The last 5 wait for the interval...
    sleep_until(start + interval - Duration::from_millis(100)).await;
    assert_eq!(
        mock.requests_to("/batch").len(),
        2,
        "the partial batch left before flush_interval"
    );

    // ...and go out when it passes, without a flush.
    let events = mock.wait_for_events(25, WAIT).await.unwrap();
    let reqs = mock.requests_to("/batch");
    assert_eq!(batch_sizes(&reqs), vec![10, 10, 5]);
    assert!(reqs[2].received_at - start >= interval);
    assert_eq!(uuids_of(&batch_of(&reqs[2])), ids[20..].to_vec());
    assert_delivered_once(&events, &ids);
    // The batches of 10 are the first and second tens, each in order.
    let mut full: Vec<Vec<Uuid>> = reqs[..2].iter().map(|r| uuids_of(&batch_of(r))).collect();
    full.sort();
    assert_eq!(full, vec![ids[..10].to_vec(), ids[10..20].to_vec()]);

    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (25, 0));
    assert_eq!(mock.requests_to("/batch").len(), 3, "nothing left to send");
}

#[tokio::test(start_paused = true)]
async fn flush_sends_a_partial_batch_at_once() {
    let mock = start_mock().await;
    let interval = Duration::from_secs(5);
    let ph = builder(&mock)
        .flush_at(10)
        .flush_interval(interval)
        .build()
        .unwrap();
    let start = Instant::now();
    let ids: Vec<Uuid> = (0..25)
        .map(|i| {
            ph.capture(Event::new("tick", "worker").property("i", i))
                .unwrap()
        })
        .collect();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (25, 0));
    assert!(
        Instant::now() - start < interval,
        "flush waited for the interval"
    );
    let reqs = mock.requests_to("/batch");
    let mut sizes = batch_sizes(&reqs);
    sizes.sort_unstable();
    assert_eq!(sizes, vec![5, 10, 10]);
    assert_delivered_once(&mock.events(), &ids);
}

#[tokio::test(start_paused = true)]
async fn partial_batches_are_sent_after_flush_interval_from_their_first_event() {
    let mock = start_mock().await;
    let interval = Duration::from_secs(5);
    let ph = builder(&mock)
        .flush_at(100)
        .flush_interval(interval)
        .build()
        .unwrap();

    let start = Instant::now();
    let first = ph.capture(Event::new("a", "u")).unwrap();
    sleep_until(start + Duration::from_secs(3)).await;
    assert!(mock.requests().is_empty(), "sent before flush_interval");
    // A later event does not push the deadline back.
    let second = ph.capture(Event::new("b", "u")).unwrap();
    sleep_until(start + interval - Duration::from_millis(100)).await;
    assert!(mock.requests().is_empty(), "sent before flush_interval");

    let events = mock.wait_for_events(2, WAIT).await.unwrap();
    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 1, "both events in one batch");
    let at = reqs[0].received_at - start;
    assert!(
        at >= interval && at < Duration::from_secs(8),
        "sent {at:?} after the first event"
    );
    assert_eq!(uuids_of(&events), vec![first, second]);

    // The next event starts a new interval.
    let restart = Instant::now();
    let third = ph.capture(Event::new("c", "u")).unwrap();
    let events = mock.wait_for_events(3, WAIT).await.unwrap();
    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 2);
    assert!(reqs[1].received_at - restart >= interval);
    assert_eq!(uuid_of(&events[2]), third);
}

#[tokio::test(start_paused = true)]
async fn batches_are_closed_at_max_batch_bytes() {
    let mock = start_mock().await;
    let limit = 2_000;
    let ph = builder(&mock)
        .flush_at(100)
        .max_batch_bytes(limit)
        .build()
        .unwrap();
    let padding = "p".repeat(300);
    let ids: Vec<Uuid> = (0..20)
        .map(|i| {
            ph.capture(
                Event::new("sized", "user-1")
                    .property("i", i)
                    .property("padding", padding.as_str()),
            )
            .unwrap()
        })
        .collect();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (20, 0));

    let reqs = mock.requests_to("/batch");
    assert!(
        reqs.len() >= 4,
        "20 events of ~500 bytes in batches of at most {limit} bytes: {:?}",
        batch_sizes(&reqs)
    );
    let mut seen = Vec::new();
    for r in &reqs {
        let raw = raw_events(r);
        assert!(
            raw.len() <= limit,
            "a batch holds {} bytes of events, over max_batch_bytes {limit}",
            raw.len()
        );
        let batch = batch_of(r);
        assert!(!batch.is_empty());
        // Within a batch, capture order is kept.
        let is: Vec<u64> = batch
            .iter()
            .map(|e| e["properties"]["i"].as_u64().unwrap())
            .collect();
        assert!(is.windows(2).all(|w| w[0] < w[1]), "out of order: {is:?}");
        seen.extend(uuids_of(&batch));
    }
    assert_delivered_once(&mock.events(), &ids);
    assert_eq!(seen.len(), 20);
}

#[tokio::test(start_paused = true)]
async fn order_is_preserved_within_a_batch() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();
    let ids: Vec<Uuid> = (0..50)
        .map(|i| {
            ph.capture(Event::new(format!("step {i}"), "user-1").property("i", i))
                .unwrap()
        })
        .collect();
    assert_eq!(ph.flush().await.delivered, 50);
    let reqs = mock.requests_to("/batch");
    assert_eq!(reqs.len(), 1);
    let batch = batch_of(&reqs[0]);
    assert_eq!(uuids_of(&batch), ids);
    for (i, e) in batch.iter().enumerate() {
        assert_eq!(e["event"], format!("step {i}"));
        assert_eq!(e["properties"]["i"], i);
    }
}

#[tokio::test(start_paused = true)]
async fn flushing_an_empty_queue_sends_nothing() {
    let mock = start_mock().await;
    let ph = builder(&mock).build().unwrap();

    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed, report.dropped), (0, 0, 0));
    assert!(mock.requests().is_empty());

    ph.capture(Event::new("e", "u")).unwrap();
    assert_eq!(ph.flush().await.delivered, 1);
    assert_eq!(mock.requests_to("/batch").len(), 1);

    // Everything was sent: flushing again sends nothing, now or later.
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed, report.dropped), (0, 0, 0));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(mock.requests_to("/batch").len(), 1);
    assert_eq!(ph.stats().requests, 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_batch_does_not_stall_the_next_one() {
    let mock = start_mock().await;
    let slow = Duration::from_secs(10);
    mock.enqueue("/batch/", MockResponse::status(200).delay(slow));
    let ph = builder(&mock).flush_at(2).build().unwrap();

    let start = Instant::now();
    let ids: Vec<Uuid> = (0..4)
        .map(|i| ph.capture(Event::new("e", "u").property("i", i)).unwrap())
        .collect();

    let reqs = mock.wait_for_requests("/batch", 2, WAIT).await.unwrap();
    assert_eq!(batch_sizes(&reqs), vec![2, 2]);
    let gap = reqs[1].received_at - reqs[0].received_at;
    assert!(
        gap < slow,
        "the second batch waited {gap:?} for the first one's answer"
    );
    assert!(Instant::now() - start < slow);

    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed), (4, 0));
    assert!(
        Instant::now() - start >= slow,
        "the slow answer was awaited"
    );
    assert_delivered_once(&mock.events(), &ids);
    assert_eq!(ph.stats().requests, 2);
}

// ===== bad input =====

#[tokio::test(start_paused = true)]
async fn empty_names_and_distinct_ids_are_rejected() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = builder(&mock).on_error(errors.callback()).build().unwrap();

    let cases = [
        (Event::new("", "user"), CaptureError::EmptyEventName),
        (Event::new(" \t\n", "user"), CaptureError::EmptyEventName),
        (Event::new("e", ""), CaptureError::EmptyDistinctId),
        (Event::new("e", "   "), CaptureError::EmptyDistinctId),
    ];
    let expected: Vec<CaptureError> = cases.iter().map(|(_, e)| e.clone()).collect();
    for (event, error) in cases {
        assert_eq!(ph.capture(event), Err(error));
    }

    let stats = ph.stats();
    assert_eq!(stats.dropped.invalid, 4);
    assert_eq!(stats.captured, 0);
    let reported: Vec<CaptureError> = errors
        .all()
        .into_iter()
        .map(|e| match e {
            ErrorReport::Rejected(c) => c,
            other => panic!("expected a rejection, got {other:?}"),
        })
        .collect();
    assert_eq!(reported, expected);

    // A good event still goes through, alone.
    let ok = ph.capture(Event::new("e", "user")).unwrap();
    assert_eq!(ph.flush().await.delivered, 1);
    assert_delivered_once(&mock.events(), &[ok]);
}

#[derive(Serialize)]
struct Reading {
    sensor: &'static str,
    value: f64,
}

#[tokio::test(start_paused = true)]
async fn non_finite_properties_are_rejected_wherever_they_are() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = builder(&mock).on_error(errors.callback()).build().unwrap();

    let cases: Vec<(&str, Event)> = vec![
        ("nan", Event::new("e", "u").property("nan", f64::NAN)),
        ("inf", Event::new("e", "u").property("inf", f64::INFINITY)),
        (
            "neg",
            Event::new("e", "u")
                .property("ok", 1)
                .property("neg", f32::NEG_INFINITY),
        ),
        (
            "list",
            Event::new("e", "u").property("list", vec![1.0, f64::NAN]),
        ),
        (
            "map",
            Event::new("e", "u").property(
                "map",
                HashMap::from([("outer", HashMap::from([("inner", f64::INFINITY)]))]),
            ),
        ),
        (
            "reading",
            Event::new("e", "u").property(
                "reading",
                Reading {
                    sensor: "t1",
                    value: f64::NAN,
                },
            ),
        ),
        ("score", Event::new("e", "u").set("score", f64::NAN)),
        (
            "first",
            Event::new("e", "u").set_once("first", Some(f64::INFINITY)),
        ),
    ];
    let n = cases.len() as u64;
    for (key, event) in cases {
        match ph.capture(event) {
            Err(CaptureError::InvalidProperty { key: k, reason }) => {
                assert_eq!(k, key);
                assert!(!reason.is_empty());
            }
            other => panic!("{key}: expected InvalidProperty, got {other:?}"),
        }
    }
    // Through the helpers too.
    assert!(matches!(
        ph.set("u", HashMap::from([("x", f64::NAN)])),
        Err(CaptureError::InvalidProperty { .. })
    ));
    assert!(matches!(
        ph.group_identify("company", "acme", HashMap::from([("x", f64::INFINITY)])),
        Err(CaptureError::InvalidProperty { .. })
    ));

    let stats = ph.stats();
    assert_eq!(stats.dropped.invalid, n + 2);
    assert_eq!(stats.captured, 0);
    assert_eq!(errors.len() as u64, n + 2);
    assert!(errors.all().iter().all(|e| matches!(
        e,
        ErrorReport::Rejected(CaptureError::InvalidProperty { .. })
    )));
    let report = ph.flush().await;
    assert_eq!(report.delivered, 0);
    assert!(mock.requests().is_empty(), "nothing invalid was sent");
}

/// `levels` arrays (even levels) and objects (odd levels) around `1`, built without recursion.
fn nested(levels: usize) -> Value {
    let mut v = json!(1);
    for i in 0..levels {
        v = if i % 2 == 0 {
            Value::Array(vec![v])
        } else {
            Value::Object([("k".to_owned(), v)].into_iter().collect())
        };
    }
    v
}

/// `{"d": v}`, built without recursion (`json!` would convert `v` recursively).
fn object_of(v: Value) -> Value {
    Value::Object([("d".to_owned(), v)].into_iter().collect())
}

/// Drops `v` without recursing (`Value`'s own `Drop` recurses as deep as it nests).
fn dismantle(v: Value) {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

/// Runs `f` on a thread with a 2 MiB stack (a tokio worker's) inside a current-thread
/// runtime, as a debug build: recursion as deep as the input would overflow it.
fn on_a_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .expect("no panic, and no stack overflow (which would abort the whole test binary)");
}

/// A property nested 10 000 levels deep used to overflow a 2 MiB stack (the conversion
/// recursed through the whole value before checking its depth). It is refused at level 101,
/// by reference and by value, through the setters, the person and group helpers and the
/// `before_send` hook, and never recursed into further.
#[test]
fn properties_nested_10_000_deep_are_refused_on_a_small_stack() {
    on_a_small_stack(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mock = start_mock().await;
            let errors = ErrorLog::new();
            let ph = builder(&mock)
                .on_error(errors.callback())
                .before_send(|e| {
                    if e.name() == "deepen" {
                        // By value into the hook's output: refused there too.
                        Some(e.property("deep", nested(10_000)))
                    } else {
                        Some(e)
                    }
                })
                .build()
                .unwrap();
            let deep = nested(10_000);
            let invalid = |result: Result<Uuid, CaptureError>| match result {
                Err(CaptureError::InvalidProperty { reason, .. }) => {
                    assert!(reason.contains("nested more than 100 levels"), "{reason}")
                }
                other => panic!("expected InvalidProperty, got {other:?}"),
            };
            invalid(ph.capture(Event::new("e", "u").property("deep", &deep)));
            invalid(ph.capture(Event::new("e", "u").property("deep", nested(10_000))));
            invalid(ph.capture(Event::new("e", "u").set("deep", &deep)));
            invalid(ph.capture(Event::new("e", "u").properties_from(object_of(nested(10_000)))));
            invalid(ph.set("u", object_of(nested(10_000))));
            invalid(ph.set_once("u", HashMap::from([("d", &deep)])));
            invalid(ph.group_identify("company", "acme", object_of(nested(10_000))));
            let mut event = Event::new("e", "u");
            assert!(event.insert("deep", &deep).is_err());
            assert!(event.properties().is_empty());
            // 100 levels are fine, 101 are not.
            assert!(ph.capture(Event::new("e", "u").property("ok", nested(100))).is_ok());
            invalid(ph.capture(Event::new("e", "u").property("deep", nested(101))));

            let deepened = ph.capture(Event::new("deepen", "u")).unwrap();
            let report = ph.flush().await;
            assert_eq!((report.delivered, report.dropped), (1, 1), "{report:?}");
            assert!(errors.all().iter().any(|e| matches!(
                e,
                ErrorReport::Dropped { uuid, reason: DropReason::Invalid(CaptureError::InvalidProperty { .. }) }
                    if *uuid == deepened
            )));
            let s = ph.stats();
            assert_eq!((s.dropped.invalid, s.captured, s.delivered), (9, 2, 1), "{s:?}");
            dismantle(deep);
        });
    });
}

#[tokio::test(start_paused = true)]
async fn events_over_900_kib_are_rejected() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = builder(&mock).on_error(errors.callback()).build().unwrap();
    let limit = 900 * 1024;

    let result = ph.capture(Event::new("upload", "u").property("blob", "x".repeat(1024 * 1024)));
    match &result {
        Err(CaptureError::EventTooLarge { size, limit: l }) => {
            assert_eq!(*l, limit);
            assert!(*size > limit, "size {size}");
        }
        other => panic!("expected EventTooLarge, got {other:?}"),
    }
    let error = result.unwrap_err();
    assert!(error.to_string().contains(&limit.to_string()), "{error}");

    let stats = ph.stats();
    assert_eq!(stats.dropped.too_large, 1);
    assert_eq!(stats.dropped.invalid, 0);
    assert_eq!(stats.captured, 0);
    assert!(matches!(
        errors.all().as_slice(),
        [ErrorReport::Rejected(CaptureError::EventTooLarge { .. })]
    ));

    // A big event under the limit is accepted and arrives whole.
    let big = ph
        .capture(Event::new("upload", "u").property("blob", "y".repeat(800 * 1024)))
        .unwrap();
    assert_eq!(ph.flush().await.delivered, 1);
    let events = mock.events();
    assert_eq!(events.len(), 1);
    assert_eq!(uuid_of(&events[0]), big);
    assert_eq!(
        events[0]["properties"]["blob"].as_str().unwrap().len(),
        800 * 1024
    );
}

#[tokio::test(start_paused = true)]
async fn the_size_limit_counts_serialized_bytes() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = builder(&mock).on_error(errors.callback()).build().unwrap();

    // Fewer than 900 Ki characters, but more than 900 KiB once serialized: multi-byte
    // UTF-8, and control characters JSON escapes as six bytes each.
    let cases = [
        ("é".repeat(500 * 1024), "two-byte characters"),
        ("\u{1}".repeat(160 * 1024), "escaped control characters"),
        ("\"".repeat(470 * 1024), "escaped quotes"),
    ];
    for (text, what) in &cases {
        assert!(text.chars().count() < 900 * 1024);
        let result = ph.capture(Event::new("e", "u").property("text", text.as_str()));
        assert!(
            matches!(result, Err(CaptureError::EventTooLarge { .. })),
            "{what}: {result:?}"
        );
    }
    let s = ph.stats();
    assert_eq!(s.dropped.too_large, cases.len() as u64, "{s:?}");
    assert_eq!(s.captured, 0, "{s:?}");
    assert_eq!(ph.flush().await.delivered, 0);
    assert!(mock.requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_event_larger_than_max_batch_bytes_is_sent_alone() {
    let mock = start_mock().await;
    let limit = 1_000;
    let ph = builder(&mock).max_batch_bytes(limit).build().unwrap();
    let small = ph.capture(Event::new("small", "u")).unwrap();
    let big = ph
        .capture(Event::new("big", "u").property("blob", "b".repeat(5 * limit)))
        .unwrap();
    let after = ph.capture(Event::new("small", "u")).unwrap();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed, report.dropped), (3, 0, 0));
    let reqs = mock.requests_to("/batch");
    let mut batches: Vec<Vec<Uuid>> = reqs.iter().map(|r| uuids_of(&batch_of(r))).collect();
    batches.sort();
    let mut expected = vec![vec![small], vec![big], vec![after]];
    expected.sort();
    assert_eq!(batches, expected, "the big event travels alone");
}

// ===== before_send =====

#[tokio::test(start_paused = true)]
async fn before_send_returning_none_drops_the_event() {
    let mock = start_mock().await;
    let ph = builder(&mock)
        .before_send(|e| if e.name() == "secret" { None } else { Some(e) })
        .build()
        .unwrap();

    ph.capture(Event::new("secret", "u")).unwrap();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.dropped), (0, 1));
    assert!(mock.requests().is_empty(), "a dropped event was sent");

    ph.capture(Event::new("secret", "u")).unwrap();
    let public = ph.capture(Event::new("public", "u")).unwrap();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed, report.dropped), (1, 0, 1));
    assert_delivered_once(&mock.events(), &[public]);

    let stats = ph.stats();
    assert_eq!(stats.dropped.before_send, 2);
    assert_eq!(stats.captured, 3);
    assert_eq!(stats.delivered, 1);
}

#[tokio::test(start_paused = true)]
async fn before_send_changes_are_visible_on_the_wire() {
    let mock = start_mock().await;
    let ph = builder(&mock)
        .before_send(|mut e| {
            e.insert("plan", "enterprise").unwrap();
            e.remove("password");
            Some(e)
        })
        .build()
        .unwrap();
    ph.capture(
        Event::new("login", "u")
            .property("plan", "free")
            .property("password", "hunter2"),
    )
    .unwrap();
    assert_eq!(ph.flush().await.delivered, 1);
    let events = mock.events();
    assert_eq!(events.len(), 1);
    let p = events[0]["properties"].as_object().unwrap();
    assert_eq!(p["plan"], "enterprise");
    assert!(!p.contains_key("password"), "removed property sent: {p:?}");
    let raw = String::from_utf8_lossy(&mock.requests_to("/batch")[0].body).into_owned();
    assert!(!raw.contains("hunter2"));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_before_send_drops_only_that_event() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .on_error(errors.callback())
        .before_send(|e| {
            if e.name() == "boom" {
                panic!("before_send failed on purpose");
            }
            Some(e)
        })
        .build()
        .unwrap();

    let a = ph.capture(Event::new("a", "u")).unwrap();
    let boom = ph.capture(Event::new("boom", "u")).unwrap();
    let b = ph.capture(Event::new("b", "u")).unwrap();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed, report.dropped), (2, 0, 1));
    assert_delivered_once(&mock.events(), &[a, b]);
    match errors.all().as_slice() {
        [ErrorReport::Dropped { uuid, reason }] => {
            assert_eq!(*uuid, boom);
            assert_eq!(*reason, DropReason::HookPanicked);
        }
        other => panic!("expected one HookPanicked drop, got {other:?}"),
    }
    assert_eq!(ph.stats().dropped.hook_panicked, 1);

    // The worker survived and keeps sending.
    let c = ph.capture(Event::new("c", "u")).unwrap();
    assert_eq!(ph.flush().await.delivered, 1);
    assert_delivered_once(&mock.events(), &[a, b, c]);
}

#[tokio::test(start_paused = true)]
async fn an_event_before_send_makes_too_large_is_dropped_and_reported() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .on_error(errors.callback())
        .before_send(|e| {
            if e.name() == "inflate" {
                Some(e.property("blob", "i".repeat(1024 * 1024)))
            } else {
                Some(e)
            }
        })
        .build()
        .unwrap();
    let inflated = ph.capture(Event::new("inflate", "u")).unwrap();
    let ok = ph.capture(Event::new("fine", "u")).unwrap();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed, report.dropped), (1, 0, 1));
    assert_delivered_once(&mock.events(), &[ok]);
    match errors.all().as_slice() {
        [ErrorReport::Dropped {
            uuid,
            reason: DropReason::TooLarge { size, limit },
        }] => {
            assert_eq!(*uuid, inflated);
            assert_eq!(*limit, 900 * 1024);
            assert!(size > limit);
        }
        other => panic!("expected one TooLarge drop, got {other:?}"),
    }
    let s = ph.stats();
    assert_eq!(
        (s.captured, s.delivered, s.dropped.too_large),
        (2, 1, 1),
        "{s:?}"
    );
}

/// A hook that returns an event PostHog would refuse (an empty name or distinct id, a NaN)
/// used to send it, and PostHog answers 400 to the whole batch for one such event. Its output
/// is now checked as `capture` checks its input: the bad events are dropped and reported, the
/// rest of the batch is delivered.
#[tokio::test(start_paused = true)]
async fn before_send_output_is_validated_like_capture_input() {
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .on_error(errors.callback())
        .before_send(|e| match e.name() {
            "blank" => Some(Event::new("", "")),
            "blank-id" => Some(Event::new("renamed", " ")),
            "nan" => Some(e.property("ratio", f64::NAN)),
            _ => Some(e),
        })
        .build()
        .unwrap();
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for i in 0..100 {
        let name = match i {
            10 => "blank",
            50 => "blank-id",
            90 => "nan",
            _ => "fine",
        };
        let uuid = ph.capture(Event::new(name, "u").property("i", i)).unwrap();
        if name == "fine" {
            good.push(uuid)
        } else {
            bad.push(uuid)
        }
    }
    let report = ph.flush().await;
    assert_eq!(
        (report.delivered, report.failed, report.dropped),
        (97, 0, 3),
        "{report:?}"
    );
    assert_delivered_once(&mock.events(), &good);
    let reasons: Vec<(Uuid, CaptureError)> = errors
        .all()
        .into_iter()
        .filter_map(|e| match e {
            ErrorReport::Dropped {
                uuid,
                reason: DropReason::Invalid(e),
            } => Some((uuid, e)),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 3, "{:?}", errors.all());
    assert_eq!(reasons[0], (bad[0], CaptureError::EmptyEventName));
    assert_eq!(reasons[1], (bad[1], CaptureError::EmptyDistinctId));
    assert!(
        matches!(&reasons[2], (u, CaptureError::InvalidProperty { key, .. }) if *u == bad[2] && key == "ratio")
    );
    let s = ph.stats();
    assert_eq!(
        (s.captured, s.delivered, s.dropped.invalid),
        (100, 97, 3),
        "{s:?}"
    );
}

// ===== stats =====

#[tokio::test(start_paused = true)]
async fn stats_add_up() {
    let mock = start_mock().await;
    mock.enqueue("/batch/", MockResponse::status(503));
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .on_error(errors.callback())
        .before_send(|e| if e.name() == "skip" { None } else { Some(e) })
        .build()
        .unwrap();

    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(ph.capture(Event::new("ok", "u").property("i", i)).unwrap());
    }
    ph.capture(Event::new("skip", "u")).unwrap();
    ph.capture(Event::new("", "u")).unwrap_err();
    ph.capture(Event::new("big", "u").property("blob", "z".repeat(1024 * 1024)))
        .unwrap_err();

    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed, report.dropped), (5, 0, 1));
    let s = ph.stats();
    assert_eq!(s.captured, 6, "{s:?}");
    assert_eq!(s.delivered, 5, "{s:?}");
    assert_eq!(s.failed, 0, "{s:?}");
    assert_eq!(s.retries, 1, "{s:?}");
    assert_eq!(s.requests, 2, "{s:?}");
    assert_eq!(s.dropped.invalid, 1, "{s:?}");
    assert_eq!(s.dropped.too_large, 1, "{s:?}");
    assert_eq!(s.dropped.before_send, 1, "{s:?}");
    assert_eq!(s.batches_in_flight, 0, "{s:?}");
    assert_eq!(s.queue_depth, 0, "{s:?}");
    assert_eq!(mock.requests_to("/batch").len() as u64, s.requests);
    assert_delivered_once(&mock.events(), &ids);

    // A batch PostHog refuses for good.
    mock.enqueue("/batch/", MockResponse::status(400));
    let refused: Vec<Uuid> = (0..2)
        .map(|_| ph.capture(Event::new("ok", "u")).unwrap())
        .collect();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed, report.dropped), (0, 2, 0));
    let s = ph.stats();
    assert_eq!(s.captured, 8, "{s:?}");
    assert_eq!(s.delivered, 5, "{s:?}");
    assert_eq!(s.failed, 2, "{s:?}");
    assert_eq!(s.retries, 1, "{s:?}");
    assert_eq!(s.requests, 3, "{s:?}");
    assert_eq!(mock.requests_to("/batch").len() as u64, s.requests);
    // Every accepted event is accounted for.
    assert_eq!(
        s.captured,
        s.delivered + s.failed + s.dropped.before_send + s.dropped.hook_panicked
    );
    // Every refusal and failure reached on_error.
    assert_eq!(errors.delivery_uuids(), refused);
    assert_eq!(
        errors
            .all()
            .iter()
            .filter(|e| matches!(e, ErrorReport::Rejected(_)))
            .count(),
        2
    );
}
