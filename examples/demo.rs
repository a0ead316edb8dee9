//! The demo: capture a realistic handful of events, then run an axum app behind
//! `PostHogLayer` (with tags, and the caller carried to a second service), then a serverless
//! function behind the flush layer, and show what PostHog received.
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! Offline by default: it starts the crate's mock PostHog on 127.0.0.1 and prints every event
//! the mock received. With `POSTHOG_API_KEY` set (and optionally `POSTHOG_HOST`, default
//! `https://us.i.posthog.com`) it sends the same events to that PostHog instead.

use std::{net::SocketAddr, time::Duration};

use axum::{
    routing::{get, post},
    Router,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use posthog_tower::{
    http::{PropagateContextLayer, RequestFlags},
    testing::{MockPostHog, MockResponse, V4Flag},
    Event, PostHog, Timestamp,
};
use serde_json::json;
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let real_key = std::env::var("POSTHOG_API_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty());
    let mock = match real_key {
        Some(_) => None,
        None => Some(MockPostHog::start().await?),
    };
    let (api_key, host) = match (&real_key, &mock) {
        (Some(key), _) => (
            key.clone(),
            std::env::var("POSTHOG_HOST").unwrap_or_else(|_| posthog_tower::DEFAULT_HOST.into()),
        ),
        (None, Some(mock)) => ("phc_demo_project_key".to_owned(), mock.url()),
        (None, None) => unreachable!("a mock is started when no key is set"),
    };
    println!("posthog-tower {} demo", posthog_tower::VERSION);
    match &mock {
        Some(mock) => println!("sending to the mock PostHog at {}\n", mock.url()),
        None => println!("sending to {host}\n"),
    }

    let cookie_name = format!("ph_{api_key}_posthog");
    let posthog = PostHog::builder(api_key)
        .host(host)
        .super_property("service", "checkout-api")
        .on_error(|error| eprintln!("posthog error: {error}"))
        .build()?;

    // A custom event with typed properties, a group, and person properties.
    posthog.capture(
        Event::new("order placed", "user-42")
            .property("order_id", "ord_9f1c")
            .property("amount", 49.90)
            .property("items", 3)
            .property("coupon", Option::<String>::None)
            .property("categories", ["books", "stationery"])
            .group("company", "acme")
            .set("last_order_at", "2026-11-25"),
    )?;
    // An event that happened earlier, in another time zone: sent in UTC.
    posthog.capture(
        Event::new("cart abandoned", "user-7")
            .timestamp(Timestamp::parse("2026-11-25T09:30:00+05:30")?)
            .property("cart_value", 12.5),
    )?;
    // People and groups, with posthog-python's event shapes.
    posthog.set(
        "user-42",
        json!({"email": "ada@example.com", "plan": "pro"}),
    )?;
    posthog.set_once("user-42", json!({"first_seen_via": "newsletter"}))?;
    posthog.alias("anon-3f2a", "user-42")?;
    posthog.group_identify(
        "company",
        "acme",
        json!({"name": "Acme Inc.", "employees": 40}),
    )?;
    posthog.pageview("user-42", "https://shop.example.com/checkout/done")?;
    // An anonymous event: no person profile is created for it.
    posthog.capture(Event::anonymous("health check passed").property("region", "eu-west-1"))?;

    // Bad input is an error you can see, never a panic or a silent drop.
    match posthog.capture(Event::new("broken", "user-42").property("ratio", f64::NAN)) {
        Err(e) => println!("rejected as expected: {e}"),
        Ok(_) => println!("unexpected: the NaN event was accepted"),
    }

    let report = posthog.flush().await;
    println!(
        "flush: {} delivered, {} failed, {} dropped\n",
        report.delivered, report.failed, report.dropped
    );

    if let Some(mock) = &mock {
        let requests = mock.requests_to("/batch/");
        println!("PostHog received {} request(s):", requests.len());
        for request in &requests {
            println!(
                "  POST {} ({} bytes, User-Agent: {})",
                request.path,
                request.raw_len,
                request.header("user-agent").unwrap_or("-")
            );
        }
        println!();
        for event in mock.events() {
            print_event(&event);
        }
    }

    web_app(&posthog, mock.as_ref(), &cookie_name).await?;
    serverless(&posthog, mock.as_ref()).await?;

    let stats = posthog.stats();
    println!(
        "stats: captured {}, delivered {}, failed {}, rejected {}, requests {}, retries {}",
        stats.captured,
        stats.delivered,
        stats.failed,
        stats.dropped.total(),
        stats.requests,
        stats.retries
    );
    posthog.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

type Headers<'a> = Vec<(&'a str, &'a str)>;

/// Part two: an axum app with `PostHogLayer`, called with and without identity.
async fn web_app(
    posthog: &PostHog,
    mock: Option<&MockPostHog>,
    cookie_name: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    println!("\n--- an axum app behind posthog.layer() ---\n");
    let already_received = mock.map_or(0, |m| m.events().len());
    if let Some(mock) = mock {
        // What PostHog's /flags?v=4 answers in this demo: `new-checkout` is an experiment
        // that assigned variant B (so reading it sends `$experiment_exposure` once per
        // person), `dark-mode` a release that is off for everyone.
        mock.set_default(
            "/flags/",
            MockResponse::flags_v4([
                V4Flag::experiment_split(
                    "new-checkout",
                    "B",
                    "0f8e6a52-5b8e-4f4c-9a39-5d3c2c8f6b21",
                ),
                V4Flag::new("dark-mode", false)
                    .reason("no_condition_match", "No matching condition set"),
            ]),
        );
    }

    // A second service of the same application (`inventory`), which the checkout calls: its
    // events are the caller's too, carried by `PropagateContextLayer`.
    let inventory = {
        let ph = posthog.clone();
        Router::new()
            .route(
                "/reserve",
                post(move || async move {
                    let _ = ph.capture(Event::named("stock reserved").property("items", 3));
                    "reserved"
                }),
            )
            .layer(posthog.layer())
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let inventory_addr: SocketAddr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, inventory).await });
    let outbound = tower::ServiceBuilder::new()
        .layer(PropagateContextLayer::new().allow_host("127.0.0.1"))
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());

    let ph = posthog.clone();
    let app = Router::new()
        .route(
            "/",
            get(|flags: RequestFlags| async move {
                let checkout = flags.get_flag("new-checkout").await;
                let dark = flags.is_enabled("dark-mode").await;
                format!(
                    "home for {:?}: new-checkout={checkout:?} dark-mode={dark}",
                    flags.distinct_id()
                )
            }),
        )
        .route(
            "/orders/{id}",
            get({
                let ph = posthog.clone();
                move |path| order(ph, path)
            }),
        )
        .route(
            "/checkout",
            post(move || async move {
                // Every later event of this request (and its exceptions) gets the tag.
                let _ = posthog_tower::tag("plan", "pro");
                // No distinct id here: the layer's request context provides it.
                let captured = ph
                    .capture(Event::named("checkout started").property("cart_value", 42))
                    .is_ok();
                // The inventory service sees the same caller.
                let reserve = http::Request::post(format!("http://{inventory_addr}/reserve"))
                    .body(Empty::new())
                    .map_err(|e| e.to_string());
                let reserved = match reserve {
                    Ok(request) => outbound.clone().oneshot(request).await.is_ok(),
                    Err(_) => false,
                };
                match (captured, reserved) {
                    (true, true) => "checkout started, stock reserved",
                    _ => "checkout not completed",
                }
            }),
        )
        .layer(posthog.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let cookie = format!(
        "{cookie_name}={}",
        "%7B%22distinct_id%22%3A%22user-7%22%2C%22%24sesid%22%3A%5B1764064800000%2C%22sess-7%22%2C1764064700000%5D%7D"
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let calls: [(&str, &str, Headers<'_>); 5] = [
        ("GET", "/", vec![]),
        ("GET", "/", vec![("x-posthog-distinct-id", "user-42")]),
        (
            "GET",
            "/?utm_source=newsletter",
            vec![
                ("cookie", cookie.as_str()),
                ("referer", "https://news.example/today"),
            ],
        ),
        (
            "POST",
            "/checkout",
            vec![("x-posthog-distinct-id", "user-42")],
        ),
        (
            "GET",
            "/orders/17",
            vec![("x-posthog-distinct-id", "user-42")],
        ),
    ];
    for (method, path, headers) in calls {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        let mut shown = String::new();
        for (name, value) in &headers {
            request = request.header(*name, *value);
            shown.push_str(&format!(" [{name}]"));
        }
        let response = client.request(request.body(Empty::new())?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "{method} {path}{shown} -> {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    posthog.flush().await;
    if let Some(mock) = mock {
        println!("\nPostHog received from the app:");
        for event in mock.events().iter().skip(already_received) {
            print_event(event);
        }
        println!("/flags requests: {}", mock.requests_to("/flags/").len());
    }
    Ok(())
}

/// Part three: a serverless function (AWS Lambda through `lambda_http`, any per-invocation
/// host) whose process may be frozen as soon as it answers: `posthog.flush_layer()` delivers
/// what the invocation captured before the answer is handed back, with no `flush()` call in
/// the handler.
async fn serverless(
    posthog: &PostHog,
    mock: Option<&MockPostHog>,
) -> Result<(), Box<dyn std::error::Error>> {
    println!("\n--- a serverless function behind posthog.flush_layer() ---\n");
    let ph = posthog.clone();
    let function = tower::ServiceBuilder::new()
        .layer(posthog.flush_layer().timeout(Duration::from_secs(2)))
        .layer(posthog.layer())
        .service(tower::service_fn(
            move |_request: http::Request<Empty<Bytes>>| {
                let ph = ph.clone();
                async move {
                    let _ = ph.capture(Event::named("invoice generated").property("pages", 2));
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        "invoice ready".to_owned(),
                    ))
                }
            },
        ));
    let received_before = mock.map_or(0, |m| m.events().len());
    let request = http::Request::post("https://billing.example/invoices")
        .header("x-posthog-distinct-id", "user-42")
        .body(Empty::new())?;
    let response = function.oneshot(request).await?;
    println!(
        "POST /invoices -> {}: {}",
        response.status(),
        response.body()
    );
    if let Some(mock) = mock {
        // Read as soon as the response is back: no flush() was called.
        let delivered = mock.events().len() - received_before;
        println!("delivered before the response was handed back: {delivered} event(s)");
        for event in mock.events().iter().skip(received_before) {
            print_event(event);
        }
    }
    Ok(())
}

/// Why an order could not be loaded: an error with a source, as applications have.
#[derive(Debug)]
struct OrderError {
    id: u32,
    source: std::io::Error,
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "could not load order {}", self.id)
    }
}

impl std::error::Error for OrderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn load_order(id: u32) -> Result<String, OrderError> {
    Err(OrderError {
        id,
        source: std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "the orders database refused the connection",
        ),
    })
}

/// A handler that fails and reports why: its `$exception` (the error chain and the stack) is
/// the request's, so the layer adds none for the 500, and the pageview links to it. Without
/// the `capture_exception` call, the layer would report the 500 itself.
async fn order(
    posthog: PostHog,
    axum::extract::Path(id): axum::extract::Path<u32>,
) -> Result<String, (http::StatusCode, String)> {
    load_order(id).map_err(|e| {
        let _ = posthog.capture_exception(&e);
        (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    })
}

fn print_event(event: &serde_json::Value) {
    if event["event"] == "$exception" {
        return print_exception(event);
    }
    println!(
        "{:<22} distinct_id={}  at {}",
        event["event"].as_str().unwrap_or("?"),
        event["distinct_id"],
        event["timestamp"].as_str().unwrap_or("?"),
    );
    let mut shown = serde_json::Map::new();
    if let Some(properties) = event["properties"].as_object() {
        for (key, value) in properties {
            // The library properties are on every event; show them once, below.
            if !matches!(key.as_str(), "$lib" | "$lib_version" | "$geoip_disable") {
                shown.insert(key.clone(), value.clone());
            }
        }
    }
    for key in ["$set", "$set_once"] {
        if let Some(value) = event.get(key) {
            shown.insert(format!("(top level) {key}"), value.clone());
        }
    }
    println!("    {}", serde_json::Value::Object(shown));
    if event["event"] == "order placed" {
        println!(
            "    + on every event: $lib={} $lib_version={} $geoip_disable={}",
            event["properties"]["$lib"],
            event["properties"]["$lib_version"],
            event["properties"]["$geoip_disable"]
        );
    }
}

/// An `$exception` in short: who, then each entry of `$exception_list`.
fn print_exception(event: &serde_json::Value) {
    let p = &event["properties"];
    println!(
        "{:<22} distinct_id={}  level={} route={} status={}",
        "$exception",
        event["distinct_id"],
        p["$exception_level"],
        p["$route"],
        p["$response_status"]
    );
    for entry in p["$exception_list"].as_array().into_iter().flatten() {
        let frames = entry["stacktrace"]["frames"].as_array().map_or(0, Vec::len);
        println!(
            "    $exception_list: type={} value={} mechanism={} frames={frames}",
            entry["type"], entry["value"], entry["mechanism"]
        );
    }
}
