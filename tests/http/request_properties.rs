//! What a request gives every event captured while it is handled: tags set in the handler,
//! properties from the layer, the request's own properties (user agent, window, device), and
//! the pageview's campaign parameters, in a real axum server on loopback with `MockPostHog`
//! recording what arrived.

use std::net::SocketAddr;

use axum::{routing::get, Router};
use posthog_tower::{context::RequestContext, http::RequestHead, Event, PostHog};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::support::{start_mock, KEY};

const COOKIE: &str = "ph_phc_integration_test_posthog";

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("server runs") });
    addr
}

async fn fetch(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: shop.example");
    for (name, value) in headers {
        head.push_str(&format!("\r\n{name}: {value}"));
    }
    head.push_str("\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

fn app(posthog: &PostHog) -> Router {
    let ph = posthog.clone();
    let ph2 = posthog.clone();
    Router::new()
        .route(
            "/checkout",
            get(move || {
                let ph = ph.clone();
                async move {
                    ph.capture(Event::named("before the tag")).expect("queued");
                    posthog_tower::tag("plan", "pro").expect("valid");
                    RequestContext::current()
                        .expect("a context")
                        .tag("seats", 12)
                        .expect("valid");
                    ph.capture(Event::named("after the tag").property("plan", "own value"))
                        .expect("queued");
                    // A nested context inherits the tags; its own stay its own.
                    let job = RequestContext::current().expect("a context").nested();
                    job.tag("job", "receipt").expect("valid");
                    let ph_job = ph.clone();
                    job.scope(async move {
                        ph_job.capture(Event::named("in the job")).expect("queued");
                    })
                    .await;
                    // A fresh one inherits nothing.
                    RequestContext::new(Some("system".into()))
                        .scope(async {
                            ph.capture(Event::named("fresh")).expect("queued");
                        })
                        .await;
                    "ok"
                }
            }),
        )
        .route(
            "/other",
            get(move || {
                let ph = ph2.clone();
                async move {
                    ph.capture(Event::named("other request")).expect("queued");
                    "ok"
                }
            }),
        )
}

fn find<'a>(events: &'a [Value], name: &str) -> &'a Value {
    let found: Vec<&Value> = events.iter().filter(|e| e["event"] == name).collect();
    assert_eq!(found.len(), 1, "one {name} in {events:#?}");
    found[0]
}

#[tokio::test]
async fn tags_reach_the_requests_later_events_and_its_pageview_only() {
    let mock = start_mock().await;
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .build()
        .expect("client");
    let addr = serve(app(&posthog).layer(posthog.layer())).await;
    let caller = [("x-posthog-distinct-id", "user-1")];
    assert!(fetch(addr, "/checkout", &caller).await.ends_with("ok"));
    assert!(fetch(addr, "/other", &caller).await.ends_with("ok"));
    posthog.flush().await;
    let events = mock.events();

    let before = &find(&events, "before the tag")["properties"];
    assert!(before.get("plan").is_none(), "{before}");
    let after = &find(&events, "after the tag")["properties"];
    assert_eq!(after["plan"], "own value", "the event's own value wins");
    assert_eq!(after["seats"], 12);
    let job = &find(&events, "in the job")["properties"];
    assert_eq!(
        (&job["plan"], &job["job"]),
        (&Value::from("pro"), &Value::from("receipt"))
    );
    let fresh = &find(&events, "fresh");
    assert_eq!(fresh["distinct_id"], "system");
    assert!(fresh["properties"].get("plan").is_none(), "{fresh}");
    let other = &find(&events, "other request")["properties"];
    assert!(
        other.get("plan").is_none(),
        "another request's tags: {other}"
    );

    let pageviews: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "$pageview")
        .collect();
    let checkout = pageviews
        .iter()
        .find(|e| e["properties"]["$pathname"] == "/checkout")
        .expect("the checkout pageview");
    assert_eq!(checkout["properties"]["plan"], "pro");
    assert_eq!(checkout["properties"]["seats"], 12);
    assert!(
        checkout["properties"].get("job").is_none(),
        "the job's tag stayed in the job"
    );
    let other = pageviews
        .iter()
        .find(|e| e["properties"]["$pathname"] == "/other")
        .expect("the other pageview");
    assert!(other["properties"].get("plan").is_none());
}

#[tokio::test]
async fn every_event_of_the_request_has_the_requests_properties() {
    let mock = start_mock().await;
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .build()
        .expect("client");
    let layer = posthog.layer().properties(|req: &RequestHead<'_>| {
        [("tenant", req.header("x-tenant").unwrap_or_default())]
    });
    let addr = serve(app(&posthog).layer(layer)).await;
    let cookie_json =
        r#"{"distinct_id":"anon-9","$sesid":[1,"session-9",0],"$device_id":"device-9"}"#;
    let cookie: String = cookie_json
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let cookie = format!("{COOKIE}={cookie}");
    let headers = [
        ("cookie", cookie.as_str()),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
        ),
        ("x-posthog-window-id", "window-9"),
        ("x-tenant", "acme"),
    ];
    assert!(fetch(
        addr,
        "/other?utm_source=news%20letter&utm_medium=email&gclid=abc+def&utm_term=&foo=bar",
        &headers
    )
    .await
    .ends_with("ok"));
    posthog.flush().await;
    let events = mock.events();

    let event = find(&events, "other request");
    assert_eq!(event["distinct_id"], "anon-9");
    let p = &event["properties"];
    let ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0";
    assert_eq!(p["$user_agent"], ua);
    assert_eq!(p["$raw_user_agent"], ua);
    assert_eq!(p["$host"], "shop.example");
    assert_eq!(p["$pathname"], "/other");
    assert_eq!(p["$request_method"], "GET");
    assert_eq!(p["$session_id"], "session-9");
    assert_eq!(p["$window_id"], "window-9");
    assert_eq!(p["$device_id"], "device-9");
    assert_eq!(p["tenant"], "acme");
    assert!(p["$current_url"]
        .as_str()
        .is_some_and(|u| u.starts_with("http://shop.example/other?utm_source=")));
    assert!(
        p.get("utm_source").is_none(),
        "campaign parameters are the pageview's"
    );

    let pageview = &find(&events, "$pageview")["properties"];
    assert_eq!(pageview["utm_source"], "news letter");
    assert_eq!(pageview["utm_medium"], "email");
    assert_eq!(pageview["gclid"], "abc def");
    for absent in ["utm_term", "utm_campaign", "fbclid", "foo"] {
        assert!(
            pageview.get(absent).is_none(),
            "{absent} invented: {pageview}"
        );
    }
    assert_eq!(pageview["$user_agent"], ua);
    assert_eq!(pageview["$window_id"], "window-9");
    assert_eq!(pageview["$device_id"], "device-9");
    assert_eq!(pageview["tenant"], "acme");
}
