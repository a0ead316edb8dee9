//! The on-disk spool (issue 19, points 3 and 5): real files in a temporary directory, real
//! HTTP to `MockPostHog`.
//!
//! `cargo test --features spool,test-util --test spool` runs them all; the SIGKILL drill's
//! child is this binary again, running `kill_drill_child` with `POSTHOG_SPOOL_CHILD` set.

#[path = "../support/mod.rs"]
mod support;

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use posthog_tower::{capture::SpoolError, testing::MockResponse, BuildError, Event, PostHog, Uuid};
use serde_json::Value;

use support::*;

/// Every event of every request to `/batch/` (answered or not), by uuid: what the client
/// first tried to send.
fn first_sent(mock: &posthog_tower::testing::MockPostHog) -> HashMap<Uuid, Value> {
    let mut out = HashMap::new();
    for request in mock.requests_to("/batch/") {
        for event in batch_of(&request) {
            out.entry(uuid_of(&event)).or_insert(event);
        }
    }
    out
}

/// The segment files of a spool, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the spool directory")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    out.sort();
    out
}

/// The uuids of the records in the spool's files, in order (a record starts with the magic
/// `PHS1`, 8 bytes of length and checksum, then the event's uuid).
fn uuids_on_disk(dir: &Path) -> Vec<Uuid> {
    let mut out = Vec::new();
    for path in segments(dir) {
        let bytes = std::fs::read(path).expect("a segment");
        let mut at = 0;
        while let Some(i) = bytes[at..].windows(4).position(|w| w == b"PHS1") {
            let start = at + i + 12;
            if let Some(uuid) = bytes.get(start..start + 16) {
                out.push(Uuid::from_slice(uuid).expect("16 bytes"));
            }
            at = at + i + 4;
        }
    }
    out
}

fn records_on_disk(dir: &Path) -> usize {
    uuids_on_disk(dir).len()
}

fn assert_identity(ph: &PostHog) {
    let s = ph.stats();
    assert_eq!(
        s.captured,
        s.delivered + s.failed + s.dropped.before_send + s.dropped.hook_panicked + s.spooled,
        "captured != delivered + failed + dropped + spooled: {s:?}"
    );
}

/// PostHog answers 503 throughout: every event goes to the spool, none is reported failed;
/// once PostHog answers again, the next batch it accepts makes the client send the spool,
/// with the events' original uuids and timestamps (the same JSON, byte for byte in value).
#[tokio::test(start_paused = true)]
async fn outage_spools_then_the_running_client_drains() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock().await;
    mock.set_default("/batch/", MockResponse::status(503));
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .spool(dir.path())
        .on_error(errors.callback())
        .build()
        .unwrap();
    let mut uuids = Vec::new();
    for i in 0..250 {
        uuids.push(
            ph.capture(Event::new("outage", "u").property("i", i))
                .unwrap(),
        );
    }
    let report = ph.flush().await;
    assert_eq!(
        (report.delivered, report.failed, report.spooled),
        (0, 0, 250)
    );
    assert!(
        errors.is_empty(),
        "nothing reported failed: {:?}",
        errors.all()
    );
    let s = ph.stats();
    assert_eq!((s.spooled, s.failed, s.spool_full), (250, 0, 0));
    assert_identity(&ph);
    assert_eq!(records_on_disk(dir.path()), 250);
    let originals = first_sent(&mock);
    assert_eq!(originals.len(), 250);
    for path in segments(dir.path()) {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
            "the project key is never written to the spool"
        );
    }

    // PostHog is back; one new event gets through, and the spool follows it.
    mock.set_default("/batch/", MockResponse::status(200));
    let fresh = ph.capture(Event::new("fresh", "u")).unwrap();
    assert_eq!(ph.flush().await.delivered, 1);
    let events = mock.wait_for_events(251, WAIT).await.unwrap();
    let mut expected = uuids.clone();
    expected.push(fresh);
    assert_delivered_once(&events, &expected);
    for event in &events {
        let uuid = uuid_of(event);
        if uuid != fresh {
            assert_eq!(
                event, &originals[&uuid],
                "the spooled event is sent as it was"
            );
        }
    }
    ph.shutdown(Duration::from_secs(5)).await;
    let s = ph.stats();
    assert_eq!((s.spool_replayed, s.spool_failed, s.delivered), (250, 0, 1));
    assert_identity(&ph);
    assert!(
        segments(dir.path()).is_empty(),
        "replayed segments are deleted"
    );
}

/// With no new traffic after the outage, the client probes PostHog with backoff and sends
/// the spool on its own.
#[tokio::test(start_paused = true)]
async fn the_spool_is_sent_by_a_probe_without_new_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock().await;
    mock.set_default("/batch/", MockResponse::status(503));
    let ph = builder(&mock)
        .spool(dir.path())
        .max_retries(0)
        .build()
        .unwrap();
    for i in 0..30 {
        ph.capture(Event::new("outage", "u").property("i", i))
            .unwrap();
    }
    assert_eq!(ph.flush().await.spooled, 30);
    let spooled_at = tokio::time::Instant::now();
    mock.set_default("/batch/", MockResponse::status(200));
    let events = mock.wait_for_events(30, WAIT).await.unwrap();
    assert_eq!(events.len(), 30);
    // The first probe comes 1 s after the spill.
    let waited = spooled_at.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    ph.shutdown(Duration::from_secs(5)).await;
    assert_eq!(ph.stats().spool_replayed, 30);
}

/// PostHog's definitive refusals are failures, not outages: never spooled.
#[tokio::test(start_paused = true)]
async fn a_400_is_reported_failed_not_spooled() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock().await;
    mock.set_default("/batch/", MockResponse::status(400));
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .spool(dir.path())
        .on_error(errors.callback())
        .build()
        .unwrap();
    let mut uuids = HashSet::new();
    for i in 0..120 {
        uuids.insert(ph.capture(Event::new("bad", "u").property("i", i)).unwrap());
    }
    let report = ph.flush().await;
    assert_eq!((report.failed, report.spooled), (120, 0));
    let reported: HashSet<Uuid> = errors.delivery_uuids().into_iter().collect();
    assert_eq!(reported, uuids);
    assert_eq!(records_on_disk(dir.path()), 0);
    ph.shutdown(Duration::from_secs(5)).await;
    assert_identity(&ph);
}

/// Capture v1: a per-event `drop` is a definitive refusal (failed, not spooled); a whole
/// request answered 503 is an outage (spooled), and so is a per-event `retry` still pending
/// after the last attempt.
#[tokio::test(start_paused = true)]
async fn v1_drop_is_failed_and_a_v1_outage_is_spooled() {
    const PATH: &str = "/i/v1/analytics/events";
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock().await;
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .capture_protocol(posthog_tower::capture::CaptureProtocol::V1)
        .spool(dir.path())
        .max_retries(0)
        .on_error(errors.callback())
        .build()
        .unwrap();
    let dropped = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
    mock.enqueue_event_result(dropped, "drop");
    ph.capture(Event::new("v1", "u").uuid(dropped)).unwrap();
    for i in 0..9 {
        ph.capture(Event::new("v1", "u").property("i", i)).unwrap();
    }
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed, report.spooled), (9, 1, 0));
    assert_eq!(errors.delivery_uuids(), [dropped]);

    mock.set_default(PATH, MockResponse::status(503));
    for i in 0..10 {
        ph.capture(Event::new("v1", "u").property("i", i)).unwrap();
    }
    let report = ph.flush().await;
    assert_eq!(
        (report.delivered, report.failed, report.spooled),
        (0, 0, 10)
    );
    assert_eq!(errors.deliveries(), 1, "the outage is not reported failed");

    // A per-event `retry` left after the last attempt: PostHog asks for the event later.
    mock.set_default(PATH, MockResponse::status(200));
    let retried = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002);
    mock.enqueue_event_result(retried, "retry");
    ph.capture(Event::new("v1", "u").uuid(retried)).unwrap();
    ph.capture(Event::new("v1", "u")).unwrap();
    let report = ph.flush().await;
    assert_eq!((report.delivered, report.failed, report.spooled), (1, 0, 1));
    assert_eq!(errors.deliveries(), 1, "the retry is not reported failed");
    ph.shutdown(Duration::from_secs(1)).await;
    assert_identity(&ph);
}

/// The size bound: what does not fit is reported failed (`on_error`, `failed`,
/// `spool_full`), never dropped silently.
#[tokio::test(start_paused = true)]
async fn beyond_the_size_bound_events_are_reported_failed() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock().await;
    mock.set_default("/batch/", MockResponse::status(503));
    let errors = ErrorLog::new();
    let ph = builder(&mock)
        .spool(dir.path())
        .spool_max_bytes(32 * 1024)
        .max_retries(0)
        .on_error(errors.callback())
        .build()
        .unwrap();
    let mut uuids = HashSet::new();
    let padding = "x".repeat(200);
    for i in 0..300 {
        let event = Event::new("big", "u")
            .property("i", i)
            .property("pad", padding.as_str());
        uuids.insert(ph.capture(event).unwrap());
    }
    let report = ph.flush().await;
    assert_eq!(report.delivered, 0);
    assert_eq!(report.spooled + report.failed, 300);
    assert!(report.spooled > 0 && report.failed > 0, "{report:?}");
    let s = ph.stats();
    assert_eq!(s.spool_full, report.failed);
    let bytes: u64 = segments(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(bytes <= 32 * 1024, "{bytes} bytes on disk");
    assert_eq!(records_on_disk(dir.path()) as u64, report.spooled);
    let reported: HashSet<Uuid> = errors.delivery_uuids().into_iter().collect();
    assert_eq!(reported.len() as u64, report.failed);
    assert!(reported.is_subset(&uuids));
    ph.shutdown(Duration::from_secs(1)).await;
    assert_identity(&ph);
}

/// Two clients on one spool: the second gets a clear error; once the first shut down, the
/// directory is free.
#[tokio::test]
async fn a_locked_spool_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock().await;
    let a = builder(&mock).spool(dir.path()).build().unwrap();
    let err = builder(&mock).spool(dir.path()).build().unwrap_err();
    match &err {
        BuildError::Spool(SpoolError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected a locked spool, got {other:?}"),
    }
    assert!(
        err.to_string().contains("in use by another client"),
        "{err}"
    );
    a.shutdown(Duration::from_secs(1)).await;
    let b = builder(&mock).spool(dir.path()).build().unwrap();
    b.shutdown(Duration::from_secs(1)).await;
}

/// The restart drill: client A captures 10 000 events while PostHog answers 503 and shuts
/// down with a short deadline; client B opens the same spool once PostHog is back and sends
/// everything: PostHog ends with all 10 000 distinct uuids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_drill_10_000_events() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock().await;
    mock.set_default("/batch/", MockResponse::status(503));
    let errors = ErrorLog::new();
    let a = builder(&mock)
        .spool(dir.path())
        .max_queue_size(20_000)
        .on_error(errors.callback())
        .build()
        .unwrap();
    let mut uuids = HashSet::new();
    for i in 0..10_000 {
        uuids.insert(
            a.capture(Event::new("drill", "u").property("i", i))
                .unwrap(),
        );
    }
    let report = a.shutdown(Duration::from_millis(300)).await;
    assert_eq!(
        (report.delivered, report.failed, report.spooled),
        (0, 0, 10_000)
    );
    assert!(errors.is_empty(), "{:?}", errors.all());
    assert_identity(&a);
    drop(a);
    assert_eq!(records_on_disk(dir.path()), 10_000);

    mock.clear();
    mock.set_default("/batch/", MockResponse::status(200));
    let b = builder(&mock).spool(dir.path()).build().unwrap();
    // B shuts down at once: the shutdown lets the replay finish while PostHog answers.
    b.shutdown(Duration::from_secs(120)).await;
    let events = mock.events();
    let delivered: HashSet<Uuid> = uuids_of(&events).into_iter().collect();
    assert_eq!(events.len(), 10_000, "no duplicates");
    assert_eq!(delivered, uuids);
    let s = b.stats();
    assert_eq!(
        (s.spool_replayed, s.spool_failed, s.captured),
        (10_000, 0, 0)
    );
    assert!(segments(dir.path()).is_empty());
}

/// A replay cut short by the shutdown deadline (PostHog answering slowly) keeps what was not
/// acknowledged on disk, and the next client sends it: every event arrives, and the replay
/// counters of the two clients add up to the events spooled, exactly.
#[tokio::test(start_paused = true)]
async fn a_replay_cut_by_the_deadline_leaves_the_rest_for_the_next_client() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock().await;
    mock.set_default("/batch/", MockResponse::status(503));
    let a = builder(&mock)
        .spool(dir.path())
        .max_retries(0)
        .build()
        .unwrap();
    let mut uuids = HashSet::new();
    for i in 0..2_000 {
        uuids.insert(a.capture(Event::new("cut", "u").property("i", i)).unwrap());
    }
    assert_eq!(a.flush().await.spooled, 2_000);
    a.shutdown(Duration::from_secs(1)).await;
    drop(a);

    // Each answer takes 1 s; B gives up after 1.5 s, with 8 batches of 100 in flight.
    mock.set_default(
        "/batch/",
        MockResponse::status(200).delay(Duration::from_secs(1)),
    );
    let b = builder(&mock)
        .spool(dir.path())
        .max_retries(0)
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.shutdown(Duration::from_secs(1)).await;
    let first = b.stats().spool_replayed;
    // The first 8 batches answered at 1 s; the next 8 were cut in flight at 1.5 s.
    assert_eq!(first, 800, "B replayed {first}");
    drop(b);
    assert_eq!(records_on_disk(dir.path()) as u64, 2_000 - first);

    mock.set_default("/batch/", MockResponse::status(200));
    let c = builder(&mock).spool(dir.path()).build().unwrap();
    c.shutdown(Duration::from_secs(60)).await;
    let second = c.stats().spool_replayed;
    assert_eq!(first + second, 2_000, "each event counted replayed once");
    let delivered: HashSet<Uuid> = uuids_of(&mock.events()).into_iter().collect();
    assert_eq!(delivered, uuids);
    assert!(segments(dir.path()).is_empty());
}

/// A record damaged in the middle of a segment is skipped and reported (counted in
/// `spool_damaged`); the records after it are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_in_the_middle_is_skipped_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock().await;
    mock.set_default("/batch/", MockResponse::status(503));
    let a = builder(&mock)
        .spool(dir.path())
        .max_retries(0)
        .build()
        .unwrap();
    let mut uuids = Vec::new();
    for i in 0..300 {
        uuids.push(a.capture(Event::new("c", "u").property("i", i)).unwrap());
    }
    assert_eq!(a.flush().await.spooled, 300);
    a.shutdown(Duration::from_secs(1)).await;
    drop(a);

    // Flip a byte of event 150's JSON (just after its uuid in the record).
    let victim = uuids[150];
    let mut hit = false;
    for path in segments(dir.path()) {
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes
            .windows(16)
            .position(|w| w == victim.as_bytes().as_slice())
        {
            bytes[at + 20] ^= 0x55;
            std::fs::write(&path, &bytes).unwrap();
            hit = true;
        }
    }
    assert!(hit, "the victim's record is on disk");

    mock.clear();
    mock.set_default("/batch/", MockResponse::status(200));
    let b = builder(&mock).spool(dir.path()).build().unwrap();
    let events = mock
        .wait_for_events(299, Duration::from_secs(60))
        .await
        .unwrap();
    b.shutdown(Duration::from_secs(10)).await;
    let expected: Vec<Uuid> = uuids.iter().copied().filter(|u| *u != victim).collect();
    assert_delivered_once(&mock.events(), &expected);
    assert_eq!(events.len(), 299);
    let s = b.stats();
    assert_eq!((s.spool_replayed, s.spool_damaged), (299, 1));
}

const CHILD: &str = "POSTHOG_SPOOL_CHILD";

/// The SIGKILL drill's child (does nothing unless `POSTHOG_SPOOL_CHILD` is set): spools
/// batches of 50 events against a PostHog answering 503, printing each spooled uuid, until
/// it is killed.
#[test]
fn kill_drill_child() {
    let Ok(config) = std::env::var(CHILD) else {
        return;
    };
    let (url, dir) = config.split_once('|').expect("url|dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ph = PostHog::builder(KEY)
            .host(url)
            .spool(dir)
            .max_retries(0)
            .flush_at(50)
            .build()
            .unwrap();
        let mut out = std::io::stdout();
        for round in 0u64.. {
            let mut batch = Vec::new();
            for i in 0..50 {
                batch.push(
                    ph.capture(Event::new("killed", "u").property("i", round * 50 + i))
                        .unwrap(),
                );
            }
            let report = ph.flush().await;
            assert_eq!(report.spooled, 50);
            for uuid in batch {
                writeln!(out, "spooled {uuid}").unwrap();
            }
            out.flush().unwrap();
        }
    });
}

/// The SIGKILL drill: a child process spooling events is killed (SIGKILL) part-way; its last
/// record is then torn (a kill during `write` leaves a partial record; the kernel finishes a
/// `write` to a regular file before delivering the signal, so the test cuts the file). The
/// next client recovers every fully written record, skips and reports the torn one, loses
/// nothing written after it, and sends it all once PostHog is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_drill_every_written_record_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let mock = start_mock().await;
    mock.set_default("/batch/", MockResponse::status(503));

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_drill_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, format!("{}|{}", mock.url(), dir.path().display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let printed = tokio::task::spawn_blocking(move || {
        let mut printed = Vec::new();
        let mut lines = BufReader::new(stdout).lines();
        while printed.len() < 500 {
            let line = lines.next().expect("the child prints").unwrap();
            if let Some(uuid) = line.strip_prefix("spooled ") {
                printed.push(Uuid::parse_str(uuid).unwrap());
            }
        }
        (printed, lines)
    });
    let (printed, lines) = printed.await.unwrap();
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    drop(lines);
    assert!(!status.success());

    let on_disk = uuids_on_disk(dir.path());
    let torn = *on_disk.last().expect("records");
    let expected: HashSet<Uuid> = on_disk.iter().copied().filter(|u| *u != torn).collect();
    assert!(
        on_disk.len() >= printed.len(),
        "{} records, {} printed",
        on_disk.len(),
        printed.len()
    );
    // Tear the last record of the newest segment.
    let last = segments(dir.path()).pop().expect("a segment");
    let len = std::fs::metadata(&last).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(len - 7).unwrap();
    drop(file);

    // A new client, PostHog still down: it reads the spool (skipping the torn record) and
    // spools 10 events of its own after it.
    let b = builder(&mock)
        .spool(dir.path())
        .max_retries(0)
        .build()
        .unwrap();
    let mut own = Vec::new();
    for i in 0..10 {
        own.push(
            b.capture(Event::new("after", "u").property("i", i))
                .unwrap(),
        );
    }
    assert_eq!(b.flush().await.spooled, 10);

    // PostHog is back: one event gets through and the spool follows.
    mock.clear();
    mock.set_default("/batch/", MockResponse::status(200));
    own.push(b.capture(Event::new("back", "u")).unwrap());
    assert_eq!(b.flush().await.delivered, 1);
    let events = mock
        .wait_for_events(expected.len() + 11, Duration::from_secs(60))
        .await
        .unwrap();
    b.shutdown(Duration::from_secs(10)).await;
    let events_now = mock.events();
    assert_eq!(events_now.len(), events.len(), "nothing more arrived");
    let delivered: HashSet<Uuid> = uuids_of(&events_now).into_iter().collect();
    assert_eq!(delivered.len(), events_now.len(), "no duplicates");
    let mut all = expected.clone();
    all.extend(own.iter().copied());
    assert_eq!(delivered, all, "every fully written record, and B's events");
    let missing: Vec<&Uuid> = printed.iter().filter(|u| !delivered.contains(u)).collect();
    assert!(
        missing.len() <= 1,
        "only the torn record is missing: {missing:?}"
    );
    let s = b.stats();
    assert_eq!(s.spool_damaged, 1, "the torn record is reported");
    assert_eq!(s.spool_replayed as usize, expected.len() + 10);
}
