use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{MockPostHog, MockResponse};

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("answer is JSON")
    }
}

async fn try_send(
    client: &TestClient,
    method: Method,
    url: String,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Full::new(body.into()))?)
        .await?;
    let (parts, body) = response.into_parts();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

async fn post(client: &TestClient, url: String, body: impl Into<Bytes>) -> Answer {
    try_send(
        client,
        Method::POST,
        url,
        &[("content-type", "application/json")],
        body,
    )
    .await
    .expect("request succeeds")
}

fn batch_body(events: &[&str]) -> String {
    let batch: Vec<Value> = events
        .iter()
        .map(|e| json!({"event": e, "distinct_id": "u1", "properties": {}}))
        .collect();
    json!({"api_key": "phc_test", "batch": batch}).to_string()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

#[tokio::test]
async fn default_answers_per_path() {
    let mock = MockPostHog::start().await.unwrap();
    assert!(mock.url().starts_with("http://127.0.0.1:"));
    assert!(!mock.url().ends_with('/'));
    assert_eq!(mock.url(), format!("http://{}", mock.addr()));
    let c = client();

    let batch = post(&c, format!("{}/batch/", mock.url()), batch_body(&["a"])).await;
    assert_eq!(batch.status, 200);
    assert_eq!(batch.json(), json!({"status": 1}));
    assert_eq!(batch.headers["content-type"], "application/json");

    let batch = post(&c, format!("{}/batch", mock.url()), batch_body(&["b"])).await;
    assert_eq!(batch.status, 200);
    assert_eq!(batch.json(), json!({"status": 1}));

    let flags = post(&c, format!("{}/flags/?v=2", mock.url()), "{}").await;
    assert_eq!(flags.status, 200);
    assert_eq!(
        flags.json(),
        json!({"flags": {}, "errorsWhileComputingFlags": false, "requestId": "mock"})
    );

    let definitions = try_send(
        &c,
        Method::GET,
        format!("{}/flags/definitions?token=phc_test", mock.url()),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(definitions.status, 200);
    assert_eq!(
        definitions.json(),
        json!({"flags": [], "group_type_mapping": {}, "cohorts": {}})
    );

    let other = post(&c, format!("{}/capture/", mock.url()), "{}").await;
    assert_eq!(other.status, 404);
    assert_eq!(other.json(), json!({"error": "not found"}));

    let recorded = mock.requests();
    let paths: Vec<&str> = recorded.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/batch/",
            "/batch",
            "/flags/",
            "/flags/definitions",
            "/capture/"
        ]
    );
    let statuses: Vec<u16> = recorded.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 404]);
    assert_eq!(recorded[2].query.as_deref(), Some("v=2"));
    assert_eq!(recorded[3].method, Method::GET);
    assert_eq!(recorded[3].query.as_deref(), Some("token=phc_test"));
    assert_eq!(recorded[0].header("Content-Type"), Some("application/json"));
    assert!(!recorded[0].gzip && !recorded[0].reset);
    assert_eq!(recorded[0].raw_len, recorded[0].body.len());

    // Both spellings of the batch path count, in order.
    assert_eq!(mock.requests_to("/batch").len(), 2);
    assert_eq!(mock.requests_to("/batch/").len(), 2);
    assert_eq!(mock.batches().len(), 2);
    let names: Vec<Value> = mock.events().iter().map(|e| e["event"].clone()).collect();
    assert_eq!(names, [json!("a"), json!("b")]);
}

#[tokio::test]
async fn scripted_answers_are_consumed_in_order() {
    let mock = MockPostHog::start().await.unwrap();
    mock.enqueue("/batch/", MockResponse::status(503));
    mock.enqueue("/batch", MockResponse::status(503));
    mock.enqueue("/batch/", MockResponse::status(200));
    // Scripts are per path: this one is not consumed by /batch/.
    mock.enqueue("/flags/", MockResponse::status(500));
    let c = client();

    let body = batch_body(&["retried"]);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let answer = post(&c, format!("{}/batch/", mock.url()), body.clone()).await;
        if answer.status == 503 {
            assert_eq!(answer.json(), json!({"error": "mock error"}));
        } else {
            // `status(200)` takes the path's default body.
            assert_eq!(answer.json(), json!({"status": 1}));
        }
        statuses.push(answer.status.as_u16());
    }
    assert_eq!(statuses, [503, 503, 200, 200]);

    let recorded: Vec<u16> = mock
        .requests_to("/batch")
        .iter()
        .map(|r| r.status.as_u16())
        .collect();
    assert_eq!(recorded, [503, 503, 200, 200]);
    // The refused attempts are not counted as delivered.
    assert_eq!(mock.batches().len(), 2);
    assert_eq!(mock.events().len(), 2);

    let flags = post(&c, format!("{}/flags/", mock.url()), "{}").await;
    assert_eq!(flags.status, 500);
    let flags = post(&c, format!("{}/flags/", mock.url()), "{}").await;
    assert_eq!(flags.status, 200);
}

#[tokio::test]
async fn retry_after_and_custom_headers_are_sent() {
    let mock = MockPostHog::start().await.unwrap();
    mock.enqueue(
        "/batch/",
        MockResponse::status(429)
            .retry_after("7")
            .with_header("x-mock", "one")
            .with_header("x-mock", "two")
            .with_header(http::header::CONTENT_TYPE, "text/plain"),
    );
    mock.enqueue(
        "/batch/",
        MockResponse::json(503, json!({"detail": "down"}))
            .retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    let c = client();

    let first = post(&c, format!("{}/batch/", mock.url()), batch_body(&["x"])).await;
    assert_eq!(first.status, 429);
    assert_eq!(first.headers["retry-after"], "7");
    let values: Vec<&str> = first
        .headers
        .get_all("x-mock")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(values, ["one", "two"]);
    assert_eq!(first.headers["content-type"], "text/plain");

    let second = post(&c, format!("{}/batch/", mock.url()), batch_body(&["x"])).await;
    assert_eq!(second.status, 503);
    assert_eq!(
        second.headers["retry-after"],
        "Wed, 21 Oct 2015 07:28:00 GMT"
    );
    assert_eq!(second.json(), json!({"detail": "down"}));
    assert!(mock.events().is_empty());
}

#[tokio::test(start_paused = true)]
async fn delay_is_measured_on_tokio_time() {
    let mock = MockPostHog::start().await.unwrap();
    mock.enqueue(
        "/batch/",
        MockResponse::status(200).delay(Duration::from_secs(30)),
    );
    let c = client();

    let start = Instant::now();
    let answer = post(&c, format!("{}/batch/", mock.url()), batch_body(&["slow"])).await;
    let elapsed = start.elapsed();
    assert_eq!(answer.status, 200);
    assert!(elapsed >= Duration::from_secs(30), "elapsed {elapsed:?}");
    assert!(elapsed < Duration::from_secs(31), "elapsed {elapsed:?}");

    // Recorded on arrival, before the delay.
    let recorded = mock.requests_to("/batch");
    assert!(recorded[0].received_at - start < Duration::from_secs(1));

    // A second request right after: the gap between arrivals shows the delay.
    let answer = post(&c, format!("{}/batch/", mock.url()), batch_body(&["fast"])).await;
    assert_eq!(answer.status, 200);
    let recorded = mock.requests_to("/batch");
    let gap = recorded[1].received_at - recorded[0].received_at;
    assert!(gap >= Duration::from_secs(30), "gap {gap:?}");
}

#[tokio::test(start_paused = true)]
async fn delay_lets_a_client_timeout_fire() {
    let mock = MockPostHog::start().await.unwrap();
    mock.enqueue(
        "/batch/",
        MockResponse::status(200).delay(Duration::from_secs(60)),
    );
    let c = client();

    let url = format!("{}/batch/", mock.url());
    let attempt = tokio::time::timeout(
        Duration::from_secs(10),
        post(&c, url.clone(), batch_body(&["slow"])),
    )
    .await;
    assert!(attempt.is_err(), "the client timeout fired first");
    assert_eq!(mock.requests_to("/batch").len(), 1);

    // A retry on a fresh client goes through at once.
    let retry = post(&client(), url, batch_body(&["slow"])).await;
    assert_eq!(retry.status, 200);
    let recorded = mock.requests_to("/batch");
    assert_eq!(recorded.len(), 2);
    let gap = recorded[1].received_at - recorded[0].received_at;
    assert!(
        gap >= Duration::from_secs(10) && gap < Duration::from_secs(11),
        "gap {gap:?}"
    );
}

#[tokio::test]
async fn gzip_bodies_are_decoded() {
    let mock = MockPostHog::start().await.unwrap();
    let c = client();
    let body = batch_body(&["zipped", "twice"]);
    let compressed = gzip(body.as_bytes());
    let compressed_len = compressed.len();

    let answer = try_send(
        &c,
        Method::POST,
        format!("{}/batch/", mock.url()),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        compressed,
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200);

    let recorded = &mock.requests()[0];
    assert!(recorded.gzip);
    assert!(!recorded.gzip_decode_failed);
    assert_eq!(recorded.raw_len, compressed_len);
    assert_eq!(recorded.body, body.as_bytes());
    let names: Vec<Value> = mock.events().iter().map(|e| e["event"].clone()).collect();
    assert_eq!(names, [json!("zipped"), json!("twice")]);

    // A body that claims gzip but is not: recorded raw, flagged, no panic.
    let answer = try_send(
        &c,
        Method::POST,
        format!("{}/batch/", mock.url()),
        &[("content-encoding", "gzip")],
        "not gzip at all",
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200);
    let recorded = &mock.requests()[1];
    assert!(recorded.gzip && recorded.gzip_decode_failed);
    assert_eq!(recorded.body, "not gzip at all");
    assert_eq!(mock.events().len(), 2);
}

#[tokio::test]
async fn malformed_bodies_do_not_break_the_server() {
    let mock = MockPostHog::start().await.unwrap();
    let c = client();
    for body in [
        &b"{\"batch\": ["[..],
        b"\xff\xfe\x00",
        b"",
        b"{\"batch\": 3}",
    ] {
        let answer = post(
            &c,
            format!("{}/batch/", mock.url()),
            Bytes::from_static(body),
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(mock.requests().len(), 4);
    assert!(mock.requests()[0].json().is_none());
    // Only the one JSON body counts as a batch, and it holds no events.
    assert_eq!(mock.batches(), [json!({"batch": 3})]);
    assert!(mock.events().is_empty());
    let ok = post(&c, format!("{}/batch/", mock.url()), batch_body(&["after"])).await;
    assert_eq!(ok.status, 200);
    assert_eq!(mock.events().len(), 1);
}

#[tokio::test]
async fn reset_connection_gives_a_client_error() {
    let mock = MockPostHog::start().await.unwrap();
    mock.enqueue("/batch/", MockResponse::reset_connection());
    let c = client();
    let url = format!("{}/batch/", mock.url());

    let result = try_send(&c, Method::POST, url.clone(), &[], batch_body(&["lost"])).await;
    assert!(result.is_err(), "expected a connection error");

    let recorded = mock.requests_to("/batch");
    assert_eq!(recorded.len(), 1);
    assert!(recorded[0].reset);
    assert_eq!(recorded[0].status, 499);
    assert_eq!(recorded[0].body, batch_body(&["lost"]).as_bytes());
    assert!(mock.events().is_empty());

    // The server keeps serving.
    let answer = post(&c, url, batch_body(&["kept"])).await;
    assert_eq!(answer.status, 200);
    assert_eq!(mock.events().len(), 1);
}

#[tokio::test]
async fn lose_response_counts_the_batch_but_the_client_sees_an_error() {
    let mock = MockPostHog::start().await.unwrap();
    mock.enqueue("/batch/", MockResponse::status(200).lose_response());
    mock.enqueue("/batch/", MockResponse::status(503).lose_response());
    let c = client();
    let url = format!("{}/batch/", mock.url());

    let result = try_send(
        &c,
        Method::POST,
        url.clone(),
        &[],
        batch_body(&["ingested"]),
    )
    .await;
    assert!(result.is_err(), "expected a connection error");
    let result = try_send(&c, Method::POST, url.clone(), &[], batch_body(&["refused"])).await;
    assert!(result.is_err(), "expected a connection error");

    let recorded = mock.requests_to("/batch");
    assert_eq!(recorded.len(), 2);
    assert!(recorded[0].reset && recorded[1].reset);
    assert_eq!(recorded[0].status, 200);
    assert_eq!(recorded[1].status, 503);
    // The lost 2xx counts as ingested, the lost 503 does not.
    let events = mock.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"], "ingested");
    assert_eq!(mock.batches().len(), 1);

    // The server keeps serving.
    let answer = post(&c, url, batch_body(&["kept"])).await;
    assert_eq!(answer.status, 200);
    assert_eq!(mock.events().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn lose_response_after_a_delay_under_paused_time() {
    let mock = MockPostHog::start().await.unwrap();
    mock.enqueue(
        "/batch/",
        MockResponse::status(200)
            .delay(Duration::from_secs(5))
            .lose_response(),
    );
    let start = Instant::now();
    let result = try_send(
        &client(),
        Method::POST,
        format!("{}/batch/", mock.url()),
        &[],
        batch_body(&["late"]),
    )
    .await;
    assert!(result.is_err());
    assert!(start.elapsed() >= Duration::from_secs(5));
    // Recorded on arrival, before the wait.
    assert_eq!(mock.requests_to("/batch")[0].received_at, start);
    assert_eq!(mock.events().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn delayed_reset_under_paused_time() {
    let mock = MockPostHog::start().await.unwrap();
    mock.enqueue(
        "/flags/",
        MockResponse::reset_connection().delay(Duration::from_secs(5)),
    );
    let start = Instant::now();
    let result = try_send(
        &client(),
        Method::POST,
        format!("{}/flags/", mock.url()),
        &[],
        "{}",
    )
    .await;
    assert!(result.is_err());
    assert!(start.elapsed() >= Duration::from_secs(5));
}

#[tokio::test]
async fn h2c_is_served_and_reset_is_an_error() {
    let mock = MockPostHog::start().await.unwrap();
    let c = h2c_client();
    let answer = post(&c, format!("{}/flags/", mock.url()), "{}").await;
    assert_eq!(answer.status, 200);

    mock.enqueue("/batch/", MockResponse::reset_connection());
    let result = try_send(
        &c,
        Method::POST,
        format!("{}/batch/", mock.url()),
        &[],
        batch_body(&["lost"]),
    )
    .await;
    assert!(result.is_err());
    assert_eq!(mock.requests().len(), 2);
}

#[tokio::test]
async fn wait_for_events_resolves_when_events_arrive() {
    let mock = MockPostHog::start().await.unwrap();
    let url = format!("{}/batch/", mock.url());
    let sender = tokio::spawn(async move {
        let c = client();
        for i in 0..3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let name = format!("e{i}");
            post(&c, url.clone(), batch_body(&[&name, &name])).await;
        }
    });
    let start = std::time::Instant::now();
    let events = mock
        .wait_for_events(5, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(events.len() >= 5);
    assert!(start.elapsed() < Duration::from_secs(10));
    sender.await.unwrap();
    assert_eq!(mock.events().len(), 6);
    // Already satisfied: resolves at once.
    let events = mock.wait_for_events(6, Duration::ZERO).await.unwrap();
    assert_eq!(events.len(), 6);
}

#[tokio::test(start_paused = true)]
async fn wait_for_events_times_out_with_a_clear_message() {
    let mock = MockPostHog::start().await.unwrap();
    // Refused batches do not count.
    mock.enqueue("/batch/", MockResponse::status(503));
    let c = client();
    post(
        &c,
        format!("{}/batch/", mock.url()),
        batch_body(&["refused"]),
    )
    .await;
    post(
        &c,
        format!("{}/batch/", mock.url()),
        batch_body(&["a", "b", "c"]),
    )
    .await;

    let start = Instant::now();
    let err = mock
        .wait_for_events(10, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "waited 5s for 10 events, 3 arrived");
    assert_eq!((err.expected(), err.arrived()), (10, 3));
    assert_eq!(err.waited(), Duration::from_secs(5));
    assert!(start.elapsed() >= Duration::from_secs(5));

    let err = mock
        .wait_for_requests("/flags/", 1, Duration::from_millis(1500))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "waited 1.5s for 1 requests to /flags/, 0 arrived"
    );
}

#[tokio::test]
async fn wait_for_requests_counts_every_answer() {
    let mock = MockPostHog::start().await.unwrap();
    mock.enqueue("/batch", MockResponse::status(500));
    let url = mock.url();
    tokio::spawn(async move {
        let c = client();
        post(&c, format!("{url}/batch/"), batch_body(&["x"])).await;
        post(&c, format!("{url}/batch"), batch_body(&["y"])).await;
    });
    let requests = mock
        .wait_for_requests("/batch/", 2, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].status, 500);
    assert_eq!(requests[1].status, 200);
}

#[tokio::test]
async fn flags_definitions_is_not_flags() {
    let mock = MockPostHog::start().await.unwrap();
    mock.set_default(
        "/flags",
        MockResponse::json(200, json!({"flags": {"beta": {"enabled": true}}})),
    );
    mock.enqueue("/flags/definitions/", MockResponse::status(401));
    let c = client();

    let definitions = post(&c, format!("{}/flags/definitions", mock.url()), "").await;
    assert_eq!(definitions.status, 401);
    let flags = post(&c, format!("{}/flags/", mock.url()), "{}").await;
    assert_eq!(flags.json(), json!({"flags": {"beta": {"enabled": true}}}));
    let definitions = post(&c, format!("{}/flags/definitions/", mock.url()), "").await;
    assert_eq!(definitions.status, 200);
    assert_eq!(definitions.json()["flags"], json!([]));
    // A 2xx without a body takes the path's (possibly replaced) default body.
    mock.enqueue("/flags/", MockResponse::status(200));
    let flags = post(&c, format!("{}/flags", mock.url()), "{}").await;
    assert_eq!(flags.json(), json!({"flags": {"beta": {"enabled": true}}}));
    // Unknown paths answer `{}` for a bodiless 2xx; 204 has no body at all.
    mock.enqueue("/e/", MockResponse::status(202));
    mock.enqueue("/e/", MockResponse::status(204));
    assert_eq!(
        post(&c, format!("{}/e/", mock.url()), "").await.json(),
        json!({})
    );
    let no_content = post(&c, format!("{}/e/", mock.url()), "").await;
    assert_eq!(no_content.status, 204);
    assert!(no_content.body.is_empty());
    // Raw bodies are sent as they are.
    mock.enqueue(
        "/flags",
        MockResponse::status(200).with_raw_body("{\"flags\": {"),
    );
    assert_eq!(
        post(&c, format!("{}/flags/", mock.url()), "{}").await.body,
        "{\"flags\": {"
    );

    assert_eq!(mock.requests_to("/flags/definitions").len(), 2);
    assert_eq!(mock.requests_to("/flags").len(), 3);
    assert_eq!(mock.requests_to("/flags/").len(), 3);
    assert!(mock.requests_to("/flag").is_empty());
}

#[tokio::test]
async fn clear_forgets_requests_and_scripts_but_keeps_defaults() {
    let mock = MockPostHog::start().await.unwrap();
    mock.set_default("/batch/", MockResponse::json(200, json!({"status": "ok"})));
    mock.enqueue("/batch/", MockResponse::status(500));
    let c = client();
    let first = post(&c, format!("{}/batch/", mock.url()), batch_body(&["a"])).await;
    assert_eq!(first.status, 500);
    mock.enqueue("/batch/", MockResponse::status(502));
    post(&c, format!("{}/batch/", mock.url()), batch_body(&["b"])).await;
    assert_eq!(mock.requests().len(), 2);
    mock.enqueue("/batch/", MockResponse::status(503));

    mock.clear();
    assert!(mock.requests().is_empty());
    assert!(mock.events().is_empty());
    assert!(mock.batches().is_empty());

    let answer = post(&c, format!("{}/batch/", mock.url()), batch_body(&["c"])).await;
    assert_eq!(answer.status, 200, "the queued 503 was forgotten");
    assert_eq!(answer.json(), json!({"status": "ok"}), "the default stayed");
    assert_eq!(mock.events().len(), 1);
    assert_eq!(mock.events()[0]["event"], "c");
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let mock = MockPostHog::start().await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    stream
        .write_all(b"POST /batch/ HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 40000000\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let recorded = mock.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].status, 413);
    assert!(recorded[0].body.is_empty());
    assert!(mock.events().is_empty());
}

#[tokio::test]
async fn garbage_on_the_wire_does_not_stop_the_server() {
    let mock = MockPostHog::start().await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    stream
        .write_all(b"\x00\x01 not http\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    // Truncated request: the client goes away mid-body.
    let mut stream = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    stream
        .write_all(b"POST /batch/ HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"ba")
        .await
        .unwrap();
    drop(stream);

    let answer = post(
        &client(),
        format!("{}/batch/", mock.url()),
        batch_body(&["ok"]),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(mock.events().len(), 1);

    // The truncated request is recorded too, as a 400 with what was read.
    let recorded = mock
        .wait_for_requests("/batch", 2, Duration::from_secs(10))
        .await
        .unwrap();
    let truncated = recorded.iter().find(|r| r.status == 400).expect("recorded");
    assert_eq!(truncated.body, "{\"ba");
    assert_eq!(truncated.raw_len, 4);
}

#[tokio::test]
async fn concurrent_requests_are_all_recorded() {
    let mock = MockPostHog::start().await.unwrap();
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        let url = format!("{}/batch/", mock.url());
        tasks.push(tokio::spawn(async move {
            post(&c, url, batch_body(&[&format!("e{i}")])).await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(mock.requests().len(), 20);
    let events = mock
        .wait_for_events(20, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(events.len(), 20);
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let mock = MockPostHog::start().await.unwrap();
    let other = mock.clone();
    let addr = mock.addr();
    post(
        &client(),
        format!("{}/batch/", mock.url()),
        batch_body(&["a"]),
    )
    .await;
    assert!(format!("{mock:?}").contains("requests: 1"));
    mock.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // Other handles still read what was recorded.
    assert_eq!(other.events().len(), 1);
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    let mock = MockPostHog::start().await.unwrap();
    let addr = mock.addr();
    drop(mock);
    // Let the accept task see the drop.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the listener is still open");
}

#[test]
#[should_panic(expected = "not a valid HTTP status code")]
fn invalid_status_panics_at_build_time() {
    let _ = MockResponse::status(42);
}

#[test]
fn debug_output_is_readable() {
    let response = MockResponse::status(429)
        .retry_after("3")
        .delay(Duration::from_secs(1));
    let text = format!("{response:?}");
    assert!(
        text.contains("429") && text.contains("retry-after") && text.contains("1s"),
        "{text}"
    );
    assert!(format!("{:?}", MockResponse::reset_connection()).contains("reset_connection"));
    let lost = format!("{:?}", MockResponse::status(200).lose_response());
    assert!(
        lost.contains("lose_response") && lost.contains("200"),
        "{lost}"
    );
    assert!(!lost.contains("reset_connection"), "{lost}");
}
