//! The HTTP layer in a real axum server on loopback, driven by raw HTTP/1.1 over TCP (so tests
//! can send bytes a well-behaved client library would refuse), with the crate's mock PostHog
//! recording what arrived.

use std::{net::SocketAddr, time::Duration};

use axum::{
    extract::Request,
    middleware::{self, Next},
    routing::{get, post},
    Router,
};
use posthog_tower::{
    context::RequestContext,
    http::{DefaultMakeDistinctId, MakeDistinctId, RequestFlags, RequestHead},
    testing::{MockPostHog, MockResponse},
    Event, PostHog,
};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const KEY: &str = "phc_http_test";
const COOKIE: &str = "ph_phc_http_test_posthog";
const WAIT: Duration = Duration::from_secs(30);

async fn mock() -> MockPostHog {
    MockPostHog::start().await.expect("mock binds")
}

fn client(mock: &MockPostHog) -> PostHog {
    PostHog::builder(KEY)
        .host(mock.url())
        .build()
        .expect("client builds")
}

/// Serves `app` on 127.0.0.1 (with the peer address available) and returns its address.
async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("server runs");
    });
    addr
}

/// Sends one request (`head` is the request line and headers, CRLF-separated, without the
/// final blank line) and returns the status and body.
async fn send_raw(addr: SocketAddr, head: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = head.to_vec();
    request.extend_from_slice(b"\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(&request).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: app.example");
    for (k, v) in headers {
        head.push_str(&format!("\r\n{k}: {v}"));
    }
    send_raw(addr, head.as_bytes()).await
}

/// posthog-js's cookie value for this JSON.
fn cookie(json: &Value) -> String {
    let text = json.to_string();
    let encoded: String = text
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{COOKIE}={encoded}")
}

/// Everything the mock received once everything captured so far is flushed.
async fn events(posthog: &PostHog, mock: &MockPostHog) -> Vec<Value> {
    posthog.flush().await;
    mock.events()
}

fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

fn one<'a>(events: &'a [Value], name: &str) -> &'a Value {
    let found = named(events, name);
    assert_eq!(found.len(), 1, "exactly one {name} in {events:#?}");
    found[0]
}

fn app(posthog: &PostHog) -> Router {
    let ph = posthog.clone();
    Router::new()
        .route("/", get(|| async { "home" }))
        .route("/users/{id}", get(|| async { "user" }))
        .route("/signup", post(|| async { "created" }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/app.js", get(|| async { "js" }))
        .route(
            "/work",
            get(move || {
                let ph = ph.clone();
                async move {
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    ph.capture(Event::named("handler event").property("step", 1))
                        .expect("queued");
                    "worked"
                }
            }),
        )
}

#[tokio::test]
async fn identity_precedence_header_then_cookie_then_anonymous() {
    let mock = mock().await;
    let posthog = client(&mock);
    let addr = serve(app(&posthog).layer(posthog.layer())).await;

    let c = cookie(&json!({"distinct_id": "from-cookie", "$sesid": [1, "sess-cookie", 0]}));
    get_with(
        addr,
        "/",
        &[("X-POSTHOG-DISTINCT-ID", "from-header"), ("Cookie", &c)],
    )
    .await;
    get_with(addr, "/users/1", &[("Cookie", &c)]).await;
    get_with(addr, "/users/2", &[]).await;

    let events = events(&posthog, &mock).await;
    let views = named(&events, "$pageview");
    assert_eq!(views.len(), 3);
    let by_path = |p: &str| {
        *views
            .iter()
            .find(|e| e["properties"]["$pathname"] == p)
            .expect("pageview for the path")
    };
    assert_eq!(by_path("/")["distinct_id"], "from-header");
    assert_eq!(by_path("/")["properties"]["$session_id"], "sess-cookie");
    assert_eq!(by_path("/users/1")["distinct_id"], "from-cookie");
    assert_eq!(
        by_path("/users/1")["properties"]["$session_id"],
        "sess-cookie"
    );
    let anon = by_path("/users/2");
    assert_eq!(anon["properties"]["$process_person_profile"], false);
    assert!(anon["distinct_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    assert!(anon["properties"].get("$session_id").is_none());
}

#[derive(Clone)]
struct User(&'static str);

#[tokio::test]
async fn a_closure_takes_the_id_from_the_apps_auth_then_falls_back() {
    let mock = mock().await;
    let posthog = client(&mock);
    let layer = posthog.layer().distinct_id(
        (|req: &RequestHead<'_>| req.extensions().get::<User>().map(|u| u.0.to_owned()))
            .or(DefaultMakeDistinctId),
    );
    let auth = middleware::from_fn(|mut req: Request, next: Next| async move {
        if req.headers().contains_key("authorization") {
            req.extensions_mut().insert(User("user-from-auth"));
        }
        next.run(req).await
    });
    // Layers added later run first: auth, then PostHog.
    let addr = serve(app(&posthog).layer(layer).layer(auth)).await;

    get_with(
        addr,
        "/users/1",
        &[
            ("Authorization", "Bearer x"),
            ("X-POSTHOG-DISTINCT-ID", "js-id"),
        ],
    )
    .await;
    get_with(addr, "/users/2", &[("X-POSTHOG-DISTINCT-ID", "js-id")]).await;

    let events = events(&posthog, &mock).await;
    let ids: Vec<(&str, &str)> = named(&events, "$pageview")
        .iter()
        .map(|e| {
            (
                e["properties"]["$pathname"].as_str().unwrap(),
                e["distinct_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(ids.contains(&("/users/1", "user-from-auth")), "{ids:?}");
    assert!(ids.contains(&("/users/2", "js-id")), "{ids:?}");
}

#[tokio::test]
async fn hostile_headers_and_cookies_are_sanitized_or_ignored() {
    let mock = mock().await;
    let posthog = client(&mock);
    let addr = serve(app(&posthog).layer(posthog.layer())).await;

    // 64 KiB id: cut to 1000 characters.
    let huge = "a".repeat(64 * 1024);
    let (status, body) = get_with(addr, "/users/huge", &[("X-POSTHOG-DISTINCT-ID", &huge)]).await;
    assert_eq!((status, body.as_str()), (200, "user"));

    // Invalid UTF-8 (obs-text bytes) in the header: ignored, the cookie is used instead.
    let c = cookie(&json!({"distinct_id": "cookie-id"}));
    let mut head = b"GET /users/utf8 HTTP/1.1\r\nHost: app.example\r\nX-POSTHOG-DISTINCT-ID: \xff\xfe\xfd\r\nCookie: ".to_vec();
    head.extend_from_slice(c.as_bytes());
    assert_eq!(send_raw(addr, &head).await.0, 200);

    // Control characters inside the cookie's JSON: stripped.
    let c =
        cookie(&json!({"distinct_id": "us\u{0}er\u{1b}[31m-7\n", "$sesid": [0, "s\u{7f}1", 0]}));
    assert_eq!(
        get_with(addr, "/users/ctrl", &[("Cookie", &c)]).await.0,
        200
    );

    // Broken JSON, a broken escape, a non-string id, a 64 KiB cookie: anonymous.
    for (i, bad) in [
        format!("{COOKIE}=%7B%22distinct_id%22%3A"),
        format!("{COOKIE}=%E0%A4%A"),
        format!("{COOKIE}=%7B%22distinct_id%22%3A%7B%7D%7D"),
        format!("{COOKIE}={}", "%7B".repeat(20_000)),
    ]
    .iter()
    .enumerate()
    {
        let (status, body) = get_with(addr, &format!("/users/bad{i}"), &[("Cookie", bad)]).await;
        assert_eq!((status, body.as_str()), (200, "user"), "{bad:.60}");
    }
    // Whitespace-only header: anonymous.
    get_with(addr, "/users/blank", &[("X-POSTHOG-DISTINCT-ID", " \t ")]).await;

    let events = events(&posthog, &mock).await;
    let views = named(&events, "$pageview");
    assert_eq!(views.len(), 8);
    let id_of = |p: &str| {
        let e = views
            .iter()
            .find(|e| e["properties"]["$pathname"] == p)
            .expect("pageview");
        (
            e["distinct_id"].as_str().unwrap().to_owned(),
            e["properties"].clone(),
        )
    };
    assert_eq!(id_of("/users/huge").0, "a".repeat(1000));
    assert_eq!(id_of("/users/utf8").0, "cookie-id");
    let (id, props) = id_of("/users/ctrl");
    assert_eq!(id, "user[31m-7");
    assert_eq!(props["$session_id"], "s1");
    for p in [
        "/users/bad0",
        "/users/bad1",
        "/users/bad2",
        "/users/bad3",
        "/users/blank",
    ] {
        assert_eq!(id_of(p).1["$process_person_profile"], false, "{p}");
    }
}

#[tokio::test]
async fn handler_events_inherit_the_request_context_across_awaits() {
    let mock = mock().await;
    let posthog = client(&mock);
    let addr = serve(app(&posthog).layer(posthog.layer())).await;

    get_with(
        addr,
        "/work?from=test",
        &[
            ("X-POSTHOG-DISTINCT-ID", "user-9"),
            ("X-POSTHOG-SESSION-ID", "sess-9"),
        ],
    )
    .await;
    get_with(addr, "/work", &[]).await;

    let events = events(&posthog, &mock).await;
    let handled = named(&events, "handler event");
    assert_eq!(handled.len(), 2);
    let known = handled
        .iter()
        .find(|e| e["distinct_id"] == "user-9")
        .expect("the identified caller's event");
    let p = &known["properties"];
    assert_eq!(p["$session_id"], "sess-9");
    assert_eq!(p["$current_url"], "http://app.example/work?from=test");
    assert_eq!(p["$request_method"], "GET");
    assert_eq!(p["$request_path"], "/work");
    assert_eq!(p["step"], 1);
    assert!(p.get("$process_person_profile").is_none());
    let anon = handled
        .iter()
        .find(|e| e["distinct_id"] != "user-9")
        .expect("the anonymous caller's event");
    assert_eq!(anon["properties"]["$process_person_profile"], false);
}

#[tokio::test]
async fn around_the_whole_router_the_layer_runs_before_routing_without_route_templates() {
    use axum::ServiceExt;
    use tower::Layer;

    let mock = mock().await;
    let posthog = client(&mock);
    let flags_seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = flags_seen.clone();
    let router = app(&posthog).route(
        "/flags",
        get(
            move |flags: Option<RequestFlags>, ctx: RequestContext| async move {
                if flags.is_some() {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                ctx.distinct_id().unwrap_or("anonymous").to_owned()
            },
        ),
    );
    let service = posthog.layer().layer(router);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(service),
        )
        .await
        .expect("server runs");
    });

    let caller = [("X-POSTHOG-DISTINCT-ID", "user-outer")];
    assert_eq!(get_with(addr, "/work", &caller).await.0, 200);
    assert_eq!(
        get_with(addr, "/flags", &caller).await,
        (200, "user-outer".to_owned())
    );
    assert_eq!(get_with(addr, "/users/7", &caller).await.0, 200);
    assert_eq!(get_with(addr, "/nowhere", &caller).await.0, 404);

    let events = events(&posthog, &mock).await;
    assert_eq!(flags_seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    let handled = one(&events, "handler event");
    assert_eq!(handled["distinct_id"], "user-outer");
    assert_eq!(
        handled["properties"]["$current_url"],
        "http://app.example/work"
    );
    let pageviews = named(&events, "$pageview");
    let paths: Vec<&str> = pageviews
        .iter()
        .map(|e| e["properties"]["$pathname"].as_str().expect("a path"))
        .collect();
    for path in ["/work", "/flags", "/users/7", "/nowhere"] {
        assert!(paths.contains(&path), "a pageview for {path}: {paths:?}");
    }
    for pageview in &pageviews {
        assert_eq!(pageview["distinct_id"], "user-outer");
        // Before routing there is no matched route to name.
        assert!(pageview["properties"].get("$route").is_none(), "{pageview}");
    }
    let unmatched = pageviews
        .iter()
        .find(|e| e["properties"]["$pathname"] == "/nowhere")
        .expect("the unmatched request's pageview");
    assert_eq!(unmatched["properties"]["$response_status"], 404);
}

#[tokio::test]
async fn spawned_tasks_get_the_context_only_when_handed_over() {
    let mock = mock().await;
    let posthog = client(&mock);
    let ph = posthog.clone();
    let app = Router::new().route(
        "/spawn",
        get(move |ctx: RequestContext| {
            let ph = ph.clone();
            async move {
                let a = ph.clone();
                tokio::spawn(async move { a.capture(Event::named("bare task")) })
                    .await
                    .unwrap()
                    .unwrap();
                let b = ph.clone();
                let current = RequestContext::current().expect("the handler runs in the context");
                assert_eq!(current.distinct_id(), ctx.distinct_id());
                tokio::spawn(current.scope(async move { b.capture(Event::named("scoped task")) }))
                    .await
                    .unwrap()
                    .unwrap();
                "spawned"
            }
        }),
    );
    let addr = serve(app.layer(posthog.layer())).await;
    assert_eq!(
        get_with(addr, "/spawn", &[("X-POSTHOG-DISTINCT-ID", "user-3")])
            .await
            .0,
        200
    );

    let events = events(&posthog, &mock).await;
    let bare = one(&events, "bare task");
    assert_ne!(bare["distinct_id"], "user-3");
    assert_eq!(bare["properties"]["$process_person_profile"], false);
    assert_eq!(one(&events, "scoped task")["distinct_id"], "user-3");
}

#[tokio::test]
async fn every_pageview_property() {
    let mock = mock().await;
    let posthog = client(&mock);
    let addr = serve(app(&posthog).layer(posthog.layer())).await;

    get_with(
        addr,
        "/users/42?tab=billing",
        &[
            ("X-POSTHOG-DISTINCT-ID", "user-42"),
            ("X-POSTHOG-SESSION-ID", "sess-42"),
            ("User-Agent", "Mozilla/5.0 (test)"),
            ("Referer", "https://www.google.com/search?q=posthog"),
            // Not trusted by default: ignored.
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-For", "203.0.113.9"),
        ],
    )
    .await;
    get_with(addr, "/", &[]).await;

    let events = events(&posthog, &mock).await;
    let views = named(&events, "$pageview");
    let view = views
        .iter()
        .find(|e| e["distinct_id"] == "user-42")
        .expect("pageview");
    let p = &view["properties"];
    assert_eq!(p["$current_url"], "http://app.example/users/42?tab=billing");
    assert_eq!(p["$host"], "app.example");
    assert_eq!(p["$pathname"], "/users/42");
    assert_eq!(p["$request_path"], "/users/42");
    assert_eq!(p["$request_method"], "GET");
    assert_eq!(p["$raw_user_agent"], "Mozilla/5.0 (test)");
    assert_eq!(p["$referrer"], "https://www.google.com/search?q=posthog");
    assert_eq!(p["$referring_domain"], "www.google.com");
    assert_eq!(p["$response_status"], 200);
    assert!(p["$duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    assert_eq!(p["$route"], "/users/{id}");
    assert_eq!(p["$session_id"], "sess-42");
    assert!(p.get("$ip").is_none(), "no $ip unless asked for");
    assert_eq!(p["$lib"], "posthog-tower");

    let direct = views
        .iter()
        .find(|e| e["properties"]["$pathname"] == "/")
        .expect("second pageview");
    assert_eq!(direct["properties"]["$referrer"], "$direct");
    assert_eq!(direct["properties"]["$referring_domain"], "$direct");
}

/// The pageviews one client delivers for the same requests: with `hook`, through a
/// `before_send` hook (every event is built as an `Event`), without it written straight to
/// JSON. Volatile fields (uuid, timestamp, duration, an anonymous caller's random id) are
/// replaced by placeholders.
async fn pageviews_via(hook: bool) -> Vec<Value> {
    let mock = mock().await;
    mock.set_default(
        "/flags/",
        MockResponse::json(
            200,
            json!({"flags": {
                "a": {"key": "a", "enabled": true, "variant": null},
                "b": {"key": "b", "enabled": false, "variant": null},
                "c": {"key": "c", "enabled": true, "variant": "blue"},
            }}),
        ),
    );
    let mut builder = PostHog::builder(KEY)
        .host(mock.url())
        .super_property("$host", "super.example")
        .super_property("tier", "gold");
    if hook {
        builder = builder.before_send(Some);
    }
    let posthog = builder.build().expect("client builds");
    let app = Router::new()
        .route(
            "/page/{n}",
            get(|flags: RequestFlags| async move {
                format!(
                    "{} {}",
                    flags.is_enabled("a").await,
                    flags.is_enabled("b").await
                )
            }),
        )
        .layer(posthog.layer().eager_flags(["a"]));
    let addr = serve(app).await;
    let identified = [
        ("X-POSTHOG-DISTINCT-ID", "user-9"),
        ("X-POSTHOG-SESSION-ID", "sess-9"),
        ("User-Agent", "Mozilla/5.0 (\"quoted\" \u{e9})"),
        ("Referer", "https://news.example/a?b=c"),
    ];
    assert_eq!(
        get_with(addr, "/page/1?x=%22y%22", &identified).await.0,
        200
    );
    assert_eq!(get_with(addr, "/page/2", &[]).await.0, 200);
    let mut views: Vec<Value> = named(&events(&posthog, &mock).await, "$pageview")
        .into_iter()
        .cloned()
        .collect();
    for view in &mut views {
        assert!(view["uuid"].is_string() && view["timestamp"].is_string());
        view["uuid"] = json!("<uuid>");
        view["timestamp"] = json!("<timestamp>");
        assert!(view["properties"]["$duration_ms"].as_f64().is_some());
        view["properties"]["$duration_ms"] = json!("<duration>");
        if view["properties"]["$process_person_profile"] == false {
            let id = view["distinct_id"].as_str().expect("an id");
            assert_eq!(id.len(), 36, "a random uuid: {id}");
            view["distinct_id"] = json!("<random>");
        }
    }
    views.sort_by_key(|v| v["properties"]["$pathname"].to_string());
    views
}

#[tokio::test]
async fn pageviews_are_the_same_with_or_without_a_before_send_hook() {
    let direct = pageviews_via(false).await;
    let built = pageviews_via(true).await;
    assert_eq!(direct, built);
    assert_eq!(direct.len(), 2);

    let p = &direct[0]["properties"];
    assert_eq!(direct[0]["distinct_id"], "user-9");
    assert_eq!(p["$host"], "super.example", "super properties win");
    assert_eq!(p["tier"], "gold");
    assert_eq!(p["$raw_user_agent"], "Mozilla/5.0 (\"quoted\" \u{e9})");
    assert_eq!(p["$current_url"], "http://app.example/page/1?x=%22y%22");
    assert_eq!(p["$referring_domain"], "news.example");
    assert_eq!(p["$session_id"], "sess-9");
    assert_eq!(p["$route"], "/page/{n}");
    // The eager snapshot and the full one overlap on `a`: each flag once, every enabled one
    // listed.
    assert_eq!(p["$feature/a"], true);
    assert_eq!(p["$feature/b"], false);
    assert_eq!(p["$feature/c"], "blue");
    assert_eq!(p["$active_feature_flags"], json!(["a", "c"]));
    assert_eq!(p["$lib"], "posthog-tower");

    let anonymous = &direct[1];
    assert_eq!(anonymous["distinct_id"], "<random>");
    assert_eq!(anonymous["properties"]["$process_person_profile"], false);
    assert_eq!(anonymous["properties"]["$referrer"], "$direct");
    assert!(anonymous["properties"].get("$feature/a").is_none());
}

#[tokio::test]
async fn ip_and_forwarded_headers_when_the_user_opts_in() {
    let mock = mock().await;
    let posthog = client(&mock);
    let peer = serve(app(&posthog).layer(posthog.layer().capture_ip(true))).await;
    let proxied =
        serve(app(&posthog).layer(posthog.layer().capture_ip(true).trust_proxy_headers(true)))
            .await;

    get_with(peer, "/users/peer", &[("X-Forwarded-For", "203.0.113.9")]).await;
    get_with(
        proxied,
        "/users/proxied",
        &[
            ("X-Forwarded-For", "203.0.113.9, 10.0.0.1"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "shop.example"),
        ],
    )
    .await;

    let events = events(&posthog, &mock).await;
    let views = named(&events, "$pageview");
    let by_path = |p: &str| {
        &views
            .iter()
            .find(|e| e["properties"]["$pathname"] == p)
            .expect("pageview")["properties"]
    };
    assert_eq!(by_path("/users/peer")["$ip"], "127.0.0.1");
    assert_eq!(
        by_path("/users/peer")["$current_url"],
        "http://app.example/users/peer"
    );
    assert_eq!(by_path("/users/proxied")["$ip"], "203.0.113.9");
    assert_eq!(
        by_path("/users/proxied")["$current_url"],
        "https://shop.example/users/proxied"
    );
    assert_eq!(by_path("/users/proxied")["$host"], "shop.example");
}

#[tokio::test]
async fn the_predicate_decides_which_requests_are_pageviews() {
    let mock = mock().await;
    let posthog = client(&mock);
    let default = serve(app(&posthog).layer(posthog.layer())).await;
    let api = serve(
        app(&posthog).layer(
            posthog
                .layer()
                .event_name("$http_request")
                .should_capture(|r: &RequestHead<'_>| r.uri().path() != "/healthz"),
        ),
    )
    .await;
    let off = serve(app(&posthog).layer(posthog.layer().capture_pageviews(false))).await;

    for addr in [default, api, off] {
        get_with(addr, "/", &[]).await;
        get_with(addr, "/healthz", &[]).await;
        get_with(addr, "/app.js", &[]).await;
        let (status, _) = send_raw(addr, b"POST /signup HTTP/1.1\r\nHost: app.example").await;
        assert_eq!(status, 200);
    }
    get_with(default, "/users/1", &[]).await;

    let events = events(&posthog, &mock).await;
    let mut pageviews: Vec<&str> = named(&events, "$pageview")
        .iter()
        .map(|e| e["properties"]["$pathname"].as_str().unwrap())
        .collect();
    pageviews.sort_unstable();
    assert_eq!(pageviews, ["/", "/users/1"]);
    let mut api_calls: Vec<(&str, &str)> = named(&events, "$http_request")
        .iter()
        .map(|e| {
            (
                e["properties"]["$request_method"].as_str().unwrap(),
                e["properties"]["$pathname"].as_str().unwrap(),
            )
        })
        .collect();
    api_calls.sort_unstable();
    assert_eq!(
        api_calls,
        [("GET", "/"), ("GET", "/app.js"), ("POST", "/signup")]
    );
    assert_eq!(events.len(), 5, "nothing from the layer without pageviews");
}

/// A `/flags` v2 answer.
fn flags_body(flags: &[(&str, bool)]) -> Value {
    let map: serde_json::Map<String, Value> = flags
        .iter()
        .map(|(k, on)| {
            (
                (*k).to_owned(),
                json!({"key": k, "enabled": on, "variant": null}),
            )
        })
        .collect();
    json!({"flags": map, "requestId": "r-1"})
}

fn flag_app(posthog: &PostHog, reads: &'static [&'static str]) -> Router {
    Router::new()
        .route(
            "/page",
            get(move |flags: RequestFlags| async move {
                let mut on = Vec::new();
                for key in reads {
                    if flags.is_enabled(key).await {
                        on.push(*key);
                    }
                }
                on.join(",")
            }),
        )
        .route("/quiet", get(|| async { "quiet" }))
        .layer(posthog.layer())
        // Not behind the layer: the extractor's rejection.
        .route("/bare", get(|_flags: RequestFlags| async { "unreachable" }))
        .route(
            "/optional",
            get(|flags: Option<RequestFlags>| async move { format!("{}", flags.is_some()) }),
        )
}

#[tokio::test]
async fn lazy_flags_cost_nothing_unread_and_one_request_when_read() {
    let mock = mock().await;
    mock.set_default(
        "/flags/",
        MockResponse::json(200, flags_body(&[("a", true), ("b", false), ("c", true)])),
    );
    let posthog = client(&mock);
    let addr = serve(flag_app(&posthog, &["a", "b", "c"])).await;
    let id = [("X-POSTHOG-DISTINCT-ID", "user-5")];

    assert_eq!(get_with(addr, "/quiet", &id).await.1, "quiet");
    posthog.flush().await;
    assert!(
        mock.requests_to("/flags/").is_empty(),
        "unread flags make no request"
    );

    assert_eq!(get_with(addr, "/page", &id).await.1, "a,c");
    assert_eq!(
        mock.requests_to("/flags/").len(),
        1,
        "three reads, one /flags request"
    );
    let body = mock.requests_to("/flags/")[0].json().expect("json body");
    assert_eq!(body["distinct_id"], "user-5");

    // Anonymous callers: every flag off, no request.
    assert_eq!(get_with(addr, "/page", &[]).await.1, "");
    assert_eq!(mock.requests_to("/flags/").len(), 1);

    let events = events(&posthog, &mock).await;
    let view = named(&events, "$pageview")
        .into_iter()
        .find(|e| e["distinct_id"] == "user-5" && e["properties"]["$pathname"] == "/page")
        .expect("pageview");
    assert_eq!(view["properties"]["$feature/a"], true);
    assert_eq!(view["properties"]["$feature/b"], false);
    assert_eq!(
        view["properties"]["$active_feature_flags"],
        json!(["a", "c"])
    );
    assert_eq!(named(&events, "$feature_flag_called").len(), 3);

    // The extractor without the layer: a 500 that names the layer; the Option form is None.
    let (status, body) = get_with(addr, "/bare", &[]).await;
    assert_eq!(status, 500);
    assert!(body.contains("PostHogLayer"), "{body}");
    assert_eq!(get_with(addr, "/optional", &[]).await.1, "false");
}

#[tokio::test]
async fn eager_flags_are_fetched_once_when_the_request_arrives() {
    let mock = mock().await;
    mock.set_default(
        "/flags/",
        MockResponse::json(200, flags_body(&[("a", true)])),
    );
    let posthog = client(&mock);
    let app = Router::new()
        .route(
            "/page",
            get(|flags: RequestFlags| async move {
                let first = flags.is_enabled("a").await;
                let second = flags.get_flag("a").await;
                format!("{first} {second:?}")
            }),
        )
        .route("/quiet", get(|| async { "quiet" }))
        .layer(posthog.layer().eager_flags(["a"]));
    let addr = serve(app).await;
    let id = [("X-POSTHOG-DISTINCT-ID", "user-6")];

    // Not read: fetched anyway, with only the eager keys.
    assert_eq!(get_with(addr, "/quiet", &id).await.1, "quiet");
    let requests = mock
        .wait_for_requests("/flags/", 1, WAIT)
        .await
        .expect("the eager request");
    let body = requests[0].json().expect("json");
    assert_eq!(body["flag_keys_to_evaluate"], json!(["a"]));

    // Read twice: still one request for this request.
    assert_eq!(
        get_with(addr, "/page", &id).await.1,
        "true Some(Bool(true))"
    );
    assert_eq!(mock.requests_to("/flags/").len(), 2);
}

#[tokio::test]
async fn a_flags_failure_leaves_the_response_untouched() {
    let mock = mock().await;
    mock.set_default("/flags/", MockResponse::status(500));
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .feature_flags_max_retries(0)
        .build()
        .expect("client");
    let eager = serve(flag_app(&posthog, &["a"]).layer(posthog.layer().eager_flags(["a"]))).await;
    let lazy = serve(flag_app(&posthog, &["a", "b"])).await;

    for addr in [eager, lazy] {
        let (status, body) = get_with(addr, "/page", &[("X-POSTHOG-DISTINCT-ID", "user-7")]).await;
        assert_eq!((status, body.as_str()), (200, ""));
    }
    mock.set_default("/flags/", MockResponse::reset_connection());
    let (status, body) = get_with(lazy, "/page", &[("X-POSTHOG-DISTINCT-ID", "user-8")]).await;
    assert_eq!((status, body.as_str()), (200, ""));

    let events = events(&posthog, &mock).await;
    assert_eq!(named(&events, "$pageview").len(), 3);
    assert!(posthog.stats().flag_errors >= 3, "{:?}", posthog.stats());
}

#[tokio::test]
async fn local_definitions_answer_without_a_flags_request() {
    let mock = mock().await;
    mock.set_default(
        "/flags/definitions",
        MockResponse::json(
            200,
            json!({"flags": [{"id": 1, "key": "a", "active": true,
                "filters": {"groups": [{"properties": [], "rollout_percentage": 100}]}}],
                "group_type_mapping": {}, "cohorts": {}}),
        ),
    );
    let posthog = PostHog::builder(KEY)
        .host(mock.url())
        .personal_api_key("phx_personal")
        .build()
        .expect("client");
    assert!(posthog.wait_for_flag_definitions(WAIT).await);
    let lazy = serve(flag_app(&posthog, &["a"])).await;
    let eager = serve(flag_app(&posthog, &["a"]).layer(posthog.layer().eager_flags(["a"]))).await;
    for addr in [lazy, eager] {
        assert_eq!(
            get_with(addr, "/page", &[("X-POSTHOG-DISTINCT-ID", "u")])
                .await
                .1,
            "a"
        );
    }
    posthog.flush().await;
    assert!(mock.requests_to("/flags/").is_empty());
}

#[tokio::test]
async fn the_parts_work_alone_and_stacked_by_hand() {
    use posthog_tower::http::{CapturePageviewsLayer, InjectFlagsLayer, SetRequestContextLayer};

    let mock = mock().await;
    mock.set_default(
        "/flags/",
        MockResponse::json(200, flags_body(&[("a", true)])),
    );
    let posthog = client(&mock);
    let handler = {
        let ph = posthog.clone();
        move |flags: Option<RequestFlags>| {
            let ph = ph.clone();
            async move {
                let _ = ph.capture(Event::named("inside"));
                match flags {
                    Some(flags) => format!("{}", flags.is_enabled("a").await),
                    None => "no flags".to_owned(),
                }
            }
        }
    };
    let stacked = Router::new()
        .route("/stacked", get(handler.clone()))
        .layer(CapturePageviewsLayer::new(&posthog))
        .layer(InjectFlagsLayer::new(&posthog))
        .layer(SetRequestContextLayer::new(&posthog));
    let pageviews_only = Router::new()
        .route("/alone", get(handler))
        .layer(CapturePageviewsLayer::new(&posthog));
    let stacked = serve(stacked).await;
    let alone = serve(pageviews_only).await;
    let id = [("X-POSTHOG-DISTINCT-ID", "user-11")];

    assert_eq!(get_with(stacked, "/stacked", &id).await.1, "true");
    assert_eq!(get_with(alone, "/alone", &id).await.1, "no flags");

    let events = events(&posthog, &mock).await;
    let views = named(&events, "$pageview");
    assert_eq!(views.len(), 2);
    for view in &views {
        assert_eq!(view["distinct_id"], "user-11");
    }
    let stacked_view = views
        .iter()
        .find(|e| e["properties"]["$pathname"] == "/stacked")
        .expect("stacked pageview");
    assert_eq!(stacked_view["properties"]["$feature/a"], true);
    // Without `SetRequestContext` nothing makes the context current: the handler's
    // `Event::named` is personless there, and the caller's with it.
    let inside = named(&events, "inside");
    assert_eq!(inside.len(), 2);
    assert!(inside.iter().any(|e| e["distinct_id"] == "user-11"));
    assert!(inside
        .iter()
        .any(|e| e["properties"]["$process_person_profile"] == false));
}

#[tokio::test]
async fn stacked_layers_share_one_context_and_capture_one_pageview_per_request() {
    use axum::ServiceExt;
    use posthog_tower::http::{CapturePageviewsLayer, InjectFlagsLayer};
    use tower::Layer;

    let mock = mock().await;
    let posthog = client(&mock);
    // What the handler finds in the extensions: the caller through `from_extensions`, the
    // flags' caller, and whether the `RequestContext` entry (the one the flags hang off) exists.
    let report = |req: Request| async move {
        let ext = req.extensions();
        let ctx = RequestContext::from_extensions(ext).and_then(RequestContext::distinct_id);
        let flags = RequestFlags::from_extensions(ext);
        let flags = flags.as_ref().and_then(RequestFlags::distinct_id);
        format!(
            "{} {} {}",
            ctx.unwrap_or("-"),
            flags.unwrap_or("-"),
            ext.get::<RequestContext>().is_some()
        )
    };
    let router = Router::new()
        // The full layer twice (per route and around the router), and a third pageview layer.
        .route(
            "/twice",
            get(report).layer(CapturePageviewsLayer::new(&posthog)),
        )
        .layer(posthog.layer());
    let service = posthog.layer().layer(router);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, ServiceExt::<Request>::into_make_service(service))
            .await
            .expect("server runs");
    });

    let caller = [("X-POSTHOG-DISTINCT-ID", "user-twice")];
    assert_eq!(
        get_with(addr, "/twice", &caller).await,
        (200, "user-twice user-twice true".to_owned())
    );
    assert_eq!(get_with(addr, "/twice", &caller).await.0, 200);

    // Flags alone: they insert the context, and the extractor finds it.
    let direct = Router::new()
        .route(
            "/flags-only",
            get(|ctx: RequestContext| async move { ctx.distinct_id().unwrap_or("-").to_owned() }),
        )
        .layer(InjectFlagsLayer::new(&posthog));
    let direct = serve(direct).await;
    assert_eq!(
        get_with(direct, "/flags-only", &caller).await,
        (200, "user-twice".to_owned())
    );

    let events = events(&posthog, &mock).await;
    let views = named(&events, "$pageview");
    // Two requests through three pageview layers: two pageviews (the outermost layer's, so
    // without `$route`); `InjectFlags` alone captures none.
    assert_eq!(views.len(), 2, "{views:#?}");
    for view in &views {
        assert_eq!(view["distinct_id"], "user-twice");
        assert_eq!(view["properties"]["$pathname"], "/twice");
        assert!(view["properties"].get("$route").is_none(), "{view}");
    }
}

/// `RequestFlags` behind the layer: reading an experiment flag (a `/flags?v=4` split) sends
/// `$feature_flag_called` with its attribution and one `$experiment_exposure`, deduplicated
/// across reads and requests of the same person; another person gets their own.
#[tokio::test]
async fn request_flags_send_the_experiment_exposure_once_per_person() {
    use posthog_tower::testing::V4Flag;
    const RULE: &str = "0f8e6a52-5b8e-4f4c-9a39-5d3c2c8f6b21";
    let mock = mock().await;
    mock.set_default(
        "/flags/",
        MockResponse::flags_v4([
            V4Flag::experiment_split("checkout", "test", RULE),
            V4Flag::targeting_match("a", true, RULE, "targeted_release"),
        ]),
    );
    let posthog = client(&mock);
    let addr = serve(flag_app(&posthog, &["checkout", "a", "checkout"])).await;
    for user in ["user-1", "user-1", "user-2"] {
        let id = [("X-POSTHOG-DISTINCT-ID", user)];
        assert_eq!(get_with(addr, "/page", &id).await.1, "checkout,a,checkout");
    }
    assert_eq!(mock.requests_to("/flags/")[0].query.as_deref(), Some("v=4"));
    let events = events(&posthog, &mock).await;
    let exposures = named(&events, "$experiment_exposure");
    let who: Vec<_> = exposures.iter().map(|e| e["distinct_id"].clone()).collect();
    assert_eq!(who, [json!("user-1"), json!("user-2")]);
    let p = &exposures[0]["properties"];
    assert_eq!(p["$feature_flag"], "checkout");
    assert_eq!(p["$feature_flag_response"], "test");
    assert_eq!(p["$feature_flag_variant_key"], "test");
    assert_eq!(p["$feature_flag_rule_id"], RULE);
    assert_eq!(p["$feature_flag_request_id"], "mock-v4");
    assert!(p.get("$feature_flag_rule_type").is_none());

    let called = named(&events, "$feature_flag_called");
    assert_eq!(called.len(), 4, "two flags, two people: {called:#?}");
    let checkout = called
        .iter()
        .find(|e| e["properties"]["$feature_flag"] == "checkout")
        .expect("checkout was reported");
    assert_eq!(
        checkout["properties"]["$feature_flag_reason_code"],
        "experiment_split"
    );
    assert_eq!(
        checkout["properties"]["$feature_flag_rule_type"],
        "experiment"
    );
    let a = called
        .iter()
        .find(|e| e["properties"]["$feature_flag"] == "a")
        .expect("a was reported");
    assert_eq!(
        a["properties"]["$feature_flag_rule_type"],
        "targeted_release"
    );
    assert!(a["properties"].get("$feature_flag_variant_key").is_none());
    // The pageview carries the values, not the attribution.
    let view = named(&events, "$pageview")[0];
    assert_eq!(view["properties"]["$feature/checkout"], "test");
}
