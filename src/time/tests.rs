use super::*;

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn err(s: &str) -> String {
    match Timestamp::parse(s) {
        Ok(t) => panic!("{s:?} should not parse, got {t}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn offset_example_equals_utc() {
    assert_eq!(ts("2025-01-02T08:34:05+05:30"), ts("2025-01-02T03:04:05Z"));
    assert_eq!(ts("2025-01-02T08:34:05+0530"), ts("2025-01-02T03:04:05Z"));
    assert_eq!(ts("2025-01-02T08:04:05+05"), ts("2025-01-02T03:04:05Z"));
    assert_eq!(
        ts("2025-01-02T03:04:05Z").to_string(),
        "2025-01-02T03:04:05.000000Z"
    );
    assert_eq!(
        ts("2025-01-02T03:04:05Z").as_unix_millis(),
        1_735_787_045_000
    );
}

#[test]
fn accepted_spellings() {
    let want = ts("2025-01-02T03:04:05Z");
    for s in [
        "2025-01-02T03:04:05z",
        "2025-01-02t03:04:05Z",
        "2025-01-02 03:04:05Z",
        "2025-01-02T03:04:05",
        "2025-01-02 03:04:05",
        "2025-01-02T03:04:05+00:00",
        "2025-01-02T03:04:05-00:00",
        "2025-01-02T03:04:05+0000",
        "2025-01-02T03:04:05+00",
        "2025-01-02T03:04:05.0Z",
        "2025-01-02T03:04:05,000000000Z",
        "2025-01-01T22:04:05-05:00",
        "2025-01-01T21:34:05-0530",
    ] {
        assert_eq!(ts(s), want, "{s}");
    }
    assert_eq!(ts("2025-01-02T03:04Z"), ts("2025-01-02T03:04:00Z"));
    assert_eq!(ts("2025-01-02T03:04+01:00"), ts("2025-01-02T02:04:00Z"));
}

#[test]
fn date_only_is_midnight_utc() {
    assert_eq!(ts("2025-01-02"), ts("2025-01-02T00:00:00Z"));
    assert_eq!(ts("1970-01-01"), Timestamp::UNIX_EPOCH);
    assert_eq!(ts("2025-01-02").to_string(), "2025-01-02T00:00:00.000000Z");
}

#[test]
fn negative_offsets_cross_day_month_and_year() {
    assert_eq!(
        ts("2024-12-31T23:30:00-01:00").to_string(),
        "2025-01-01T00:30:00.000000Z"
    );
    assert_eq!(
        ts("2024-02-28T20:00:00-08:00").to_string(),
        "2024-02-29T04:00:00.000000Z"
    );
    assert_eq!(
        ts("2025-03-01T01:00:00+02:00").to_string(),
        "2025-02-28T23:00:00.000000Z"
    );
    assert_eq!(
        ts("2024-03-01T01:00:00+02:00").to_string(),
        "2024-02-29T23:00:00.000000Z"
    );
}

#[test]
fn leap_years() {
    assert_eq!(ts("2000-02-29").to_string(), "2000-02-29T00:00:00.000000Z");
    assert_eq!(ts("2024-02-29").to_string(), "2024-02-29T00:00:00.000000Z");
    assert_eq!(ts("1600-02-29").to_string(), "1600-02-29T00:00:00.000000Z");
    assert_eq!(
        err("1900-02-29"),
        "invalid timestamp: day 29 is out of range for 1900-02 (1..=28)"
    );
    assert!(err("2023-02-29T00:00:00Z").contains("day 29"));
    assert!(err("2100-02-29").contains("2100-02"));
    assert!(err("2024-02-30").contains("(1..=29)"));
    assert!(err("2024-04-31").contains("(1..=30)"));
    assert_eq!(ts("2024-12-31").to_string(), "2024-12-31T00:00:00.000000Z");
    // Day 366 of a leap year follows day 365 by exactly one day.
    assert_eq!(
        ts("2025-01-01").unix_seconds() - ts("2024-12-31").unix_seconds(),
        86_400
    );
    assert_eq!(
        ts("2025-01-01").unix_seconds() - ts("2024-01-01").unix_seconds(),
        366 * 86_400
    );
    assert_eq!(
        ts("1901-01-01").unix_seconds() - ts("1900-01-01").unix_seconds(),
        365 * 86_400
    );
}

#[test]
fn pre_1970_dates() {
    let t = ts("1969-12-31T23:59:59.999Z");
    assert_eq!(t.as_unix_millis(), -1);
    assert_eq!(t.as_unix_nanos(), -1_000_000);
    assert_eq!(t.unix_seconds(), -1);
    assert_eq!(t.subsec_nanos(), 999_000_000);
    assert_eq!(t.to_string(), "1969-12-31T23:59:59.999000Z");
    assert_eq!(ts("1900-01-01T00:00:00Z").unix_seconds(), -2_208_988_800);
    assert_eq!(ts("0001-01-01T00:00:00Z"), Timestamp::MIN);
    assert_eq!(Timestamp::MIN.unix_seconds(), -62_135_596_800);
    assert_eq!(Timestamp::MIN.to_string(), "0001-01-01T00:00:00.000000Z");
    assert_eq!(ts("9999-12-31T23:59:59.999999999Z"), Timestamp::MAX);
    assert_eq!(Timestamp::MAX.unix_seconds(), 253_402_300_799);
    assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999999Z");
    assert_eq!(
        Timestamp::from_unix_millis(-1).map(|t| t.to_string()),
        Some("1969-12-31T23:59:59.999000Z".to_owned())
    );
    assert_eq!(
        Timestamp::from_unix_nanos(-1).map(|t| t.to_string()),
        Some("1969-12-31T23:59:59.999999Z".to_owned())
    );
}

#[test]
fn fraction_digits() {
    let cases = [
        ("1", 100_000_000),
        ("12", 120_000_000),
        ("123", 123_000_000),
        ("1234", 123_400_000),
        ("12345", 123_450_000),
        ("123456", 123_456_000),
        ("1234567", 123_456_700),
        ("12345678", 123_456_780),
        ("123456789", 123_456_789),
        ("000000001", 1),
        ("999999999", 999_999_999),
    ];
    for (digits, nanos) in cases {
        let t = ts(&format!("2025-01-02T03:04:05.{digits}Z"));
        assert_eq!(t.subsec_nanos(), nanos, "{digits}");
        assert_eq!(t.unix_seconds(), 1_735_787_045);
        let t = ts(&format!("2025-01-02T03:04:05.{digits}"));
        assert_eq!(t.subsec_nanos(), nanos, "{digits} naive");
        let t = ts(&format!("2025-01-02T03:04:05.{digits}-07:00"));
        assert_eq!(t.subsec_nanos(), nanos, "{digits} offset");
    }
    // Display truncates to microseconds rather than rounding.
    assert_eq!(
        ts("2025-01-02T03:04:05.123456999Z").to_string(),
        "2025-01-02T03:04:05.123456Z"
    );
    assert_eq!(
        ts("2025-01-02T23:59:59.9999999Z").to_string(),
        "2025-01-02T23:59:59.999999Z"
    );
}

#[test]
fn error_messages() {
    let cases = [
        ("", "invalid timestamp: the string is empty"),
        (
            "2025-13-01",
            "invalid timestamp: month 13 is out of range (1..=12)",
        ),
        (
            "2025-00-01",
            "invalid timestamp: month 0 is out of range (1..=12)",
        ),
        (
            "2025-01-32",
            "invalid timestamp: day 32 is out of range for 2025-01 (1..=31)",
        ),
        (
            "2025-01-00",
            "invalid timestamp: day 0 is out of range for 2025-01 (1..=31)",
        ),
        (
            "0000-01-01",
            "invalid timestamp: year 0 is out of range (1..=9999)",
        ),
        (
            "2025-01-02T24:00:00Z",
            "invalid timestamp: hour 24 is out of range (0..=23)",
        ),
        (
            "2025-01-02T23:60:00Z",
            "invalid timestamp: minute 60 is out of range (0..=59)",
        ),
        (
            "2025-12-31T23:59:60Z",
            "invalid timestamp: second 60 is out of range (0..=59)",
        ),
        (
            "2025-01-02T03:04:05+24:00",
            "invalid timestamp: offset hour 24 is out of range (0..=23)",
        ),
        (
            "2025-01-02T03:04:05+01:60",
            "invalid timestamp: offset minute 60 is out of range (0..=59)",
        ),
        (
            "2025-01-02T03:04:05.1234567890Z",
            "invalid timestamp: fractional seconds have more than 9 digits",
        ),
        (
            "2025-01-02T03:04:05.Z",
            "invalid timestamp: unexpected 'Z' at byte 20, expected a digit after the decimal mark",
        ),
        (
            "2025-01-02T03:04:05.",
            "invalid timestamp: the string ends where a digit after the decimal mark was expected",
        ),
        (
            "2025-1-02",
            "invalid timestamp: unexpected '-' at byte 6, expected a two-digit month",
        ),
        (
            "25-01-02",
            "invalid timestamp: unexpected '-' at byte 2, expected a four-digit year",
        ),
        (
            "2025",
            "invalid timestamp: the string ends where '-' after the year was expected",
        ),
        (
            "2025-01-02T",
            "invalid timestamp: the string ends where a two-digit hour was expected",
        ),
        (
            "2025-01-02T03",
            "invalid timestamp: the string ends where ':' after the hour was expected",
        ),
        (
            "2025-01-02X03:04:05Z",
            "invalid timestamp: unexpected 'X' at byte 10, expected 'T', a space or the end after the date",
        ),
        (
            "2025-01-02T03:04:05Zjunk",
            "invalid timestamp: unexpected 'j' at byte 20, expected the end of the timestamp",
        ),
        (
            "2025-01-02T03:04:05 ",
            "invalid timestamp: unexpected ' ' at byte 19, expected a fraction, 'Z', '+hh:mm', '-hh:mm' or the end",
        ),
        (
            "2025-01-02T03:04:05+1",
            "invalid timestamp: the string ends where two-digit offset hours was expected",
        ),
        (
            "2025-01-02T03:04:05+01:",
            "invalid timestamp: the string ends where two-digit offset minutes was expected",
        ),
        (
            "2025-01-02T03:04:05+01:0",
            "invalid timestamp: the string ends where two-digit offset minutes was expected",
        ),
        (
            "2025-01-02T03:04:05+01;00",
            "invalid timestamp: unexpected ';' at byte 22, expected offset minutes or the end",
        ),
        (
            "2025-01-02é",
            "invalid timestamp: unexpected 'é' at byte 10, expected 'T', a space or the end after the date",
        ),
        (
            "0001-01-01T00:00:00+00:01",
            "invalid timestamp: outside the supported range \
             0001-01-01T00:00:00Z..=9999-12-31T23:59:59.999999999Z once converted to UTC",
        ),
    ];
    for (input, message) in cases {
        assert_eq!(err(input), message, "{input:?}");
    }
    assert!(err("9999-12-31T23:00:00-01:00").contains("outside the supported range"));
    assert!(err(" 2025-01-02").contains("four-digit year"));
    assert!(err("2025-01-02Z").contains("'T', a space or the end"));
    assert!(err("+2025-01-02").contains("four-digit year"));
    assert!(err("２０２５-01-02").contains("four-digit year"));
    let e = Timestamp::parse("2025-13-01").unwrap_err();
    let _: &dyn std::error::Error = &e;
    assert_eq!(
        "x".parse::<Timestamp>().unwrap_err(),
        Timestamp::parse("x").unwrap_err()
    );
}

#[test]
fn display_exact_strings() {
    assert_eq!(
        Timestamp::UNIX_EPOCH.to_string(),
        "1970-01-01T00:00:00.000000Z"
    );
    let t = Timestamp::from_unix_millis(1_735_787_045_678).unwrap();
    assert_eq!(t.to_string(), "2025-01-02T03:04:05.678000Z");
    let t = Timestamp::from_unix_nanos(1_735_787_045_678_901_234).unwrap();
    assert_eq!(t.to_string(), "2025-01-02T03:04:05.678901Z");
    assert_eq!(format!("{t:>30}"), "2025-01-02T03:04:05.678901Z"); // width ignored
    let t = ts("0999-09-09T09:09:09.000009Z");
    assert_eq!(t.to_string(), "0999-09-09T09:09:09.000009Z");

    let mut out = b"[".to_vec();
    t.write_rfc3339(&mut out);
    out.push(b']');
    assert_eq!(out, b"[0999-09-09T09:09:09.000009Z]");
}

#[test]
fn civil_round_trip() {
    // Also before year 1 (the date operators of local evaluation may ask).
    for days in [-719_468 - 366, -1, 0, 1, 11_016, 19_782, 2_932_896] {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    assert_eq!(civil_from_days(19_782), (2024, 2, 29));
}

#[test]
fn round_trips() {
    // Every day from 1 BC+1 to 9999 through civil/days conversions.
    let mut days = days_from_civil(1, 1, 1);
    for y in 1..=9999i64 {
        for m in 1..=12u32 {
            for d in 1..=days_in_month(y, m) {
                assert_eq!(days_from_civil(y, m, d), days);
                assert_eq!(civil_from_days(days), (y, m, d));
                days += 1;
            }
        }
    }
    assert_eq!(days - 1, days_from_civil(9999, 12, 31));

    // Text round trips at microsecond precision over a spread of instants.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let span = (MAX_SECS - MIN_SECS) as u64;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let secs = MIN_SECS + (x % (span + 1)) as i64;
        let nanos = (x >> 32) as u32 % NANOS_PER_SEC / 1000 * 1000;
        let t = Timestamp { secs, nanos };
        let text = t.to_string();
        assert_eq!(ts(&text), t, "{text}");
        let ms = t.as_unix_millis();
        let back = Timestamp::from_unix_millis(ms).unwrap();
        assert_eq!(back.as_unix_millis(), ms);
        assert_eq!(Timestamp::from_unix_nanos(t.as_unix_nanos()), Some(t));
        let sys = SystemTime::try_from(t).unwrap();
        assert_eq!(Timestamp::from(sys), t);
    }
}

#[test]
fn unix_conversions_and_range() {
    assert_eq!(Timestamp::from_unix_millis(0), Some(Timestamp::UNIX_EPOCH));
    assert_eq!(Timestamp::from_unix_millis(i64::MAX), None);
    assert_eq!(Timestamp::from_unix_millis(i64::MIN), None);
    assert_eq!(
        Timestamp::from_unix_millis(Timestamp::MAX.as_unix_millis()).map(|t| t.to_string()),
        Some("9999-12-31T23:59:59.999000Z".to_owned())
    );
    assert_eq!(
        Timestamp::from_unix_millis(Timestamp::MAX.as_unix_millis() + 1),
        None
    );
    assert_eq!(
        Timestamp::from_unix_millis(Timestamp::MIN.as_unix_millis()),
        Some(Timestamp::MIN)
    );
    assert_eq!(
        Timestamp::from_unix_millis(Timestamp::MIN.as_unix_millis() - 1),
        None
    );
    assert_eq!(
        Timestamp::from_unix_nanos(Timestamp::MAX.as_unix_nanos()),
        Some(Timestamp::MAX)
    );
    assert_eq!(
        Timestamp::from_unix_nanos(Timestamp::MAX.as_unix_nanos() + 1),
        None
    );
    assert_eq!(
        Timestamp::from_unix_nanos(Timestamp::MIN.as_unix_nanos()),
        Some(Timestamp::MIN)
    );
    assert_eq!(
        Timestamp::from_unix_nanos(Timestamp::MIN.as_unix_nanos() - 1),
        None
    );
    assert_eq!(Timestamp::from_unix_nanos(i128::MAX), None);
    assert_eq!(Timestamp::from_unix_nanos(i128::MIN), None);
    assert!(ts("1969-12-31T23:59:59.999Z") < Timestamp::UNIX_EPOCH);
    assert!(ts("2025-01-02T03:04:05.000000001Z") > ts("2025-01-02T03:04:05Z"));
}

#[test]
fn system_time_conversions() {
    let epoch = SystemTime::UNIX_EPOCH;
    assert_eq!(Timestamp::from(epoch), Timestamp::UNIX_EPOCH);
    let before = epoch - Duration::new(1, 250_000_000);
    let t = Timestamp::from(before);
    assert_eq!(t.as_unix_nanos(), -1_250_000_000);
    assert_eq!(t.to_string(), "1969-12-31T23:59:58.750000Z");
    assert_eq!(SystemTime::try_from(t).unwrap(), before);
    let before = epoch - Duration::from_secs(5);
    assert_eq!(Timestamp::from(before).as_unix_millis(), -5000);
    assert_eq!(
        SystemTime::try_from(Timestamp::from(before)).unwrap(),
        before
    );

    // Outside 0001..=9999 clamps (where the platform can even express it).
    if let Some(far) = epoch.checked_add(Duration::from_secs(300_000_000_000)) {
        assert_eq!(Timestamp::from(far), Timestamp::MAX);
    }
    if let Some(far) = epoch.checked_sub(Duration::from_secs(70_000_000_000)) {
        assert_eq!(Timestamp::from(far), Timestamp::MIN);
    }
    if let Some(exact) = epoch.checked_sub(Duration::from_secs(62_135_596_800)) {
        assert_eq!(Timestamp::from(exact), Timestamp::MIN);
    }
}

#[test]
fn now_matches_system_time() {
    let before = SystemTime::now();
    let t = Timestamp::now();
    let after = SystemTime::now();
    assert!(Timestamp::from(before) <= t && t <= Timestamp::from(after));
    let since = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let until = after
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let nanos = u128::try_from(t.as_unix_nanos()).unwrap();
    assert!(since <= nanos && nanos <= until);
    let sys = SystemTime::try_from(t).unwrap();
    assert!(before <= sys && sys <= after);
    assert!(t.to_string().ends_with('Z'));
    assert!(t > ts("2024-01-01"));
}

#[test]
fn serde_round_trip() {
    let t = ts("2025-01-02T08:34:05.123456789+05:30");
    let json = serde_json::to_string(&t).unwrap();
    assert_eq!(json, "\"2025-01-02T03:04:05.123456Z\"");
    let back: Timestamp = serde_json::from_str(&json).unwrap();
    assert_eq!(back, ts("2025-01-02T03:04:05.123456Z"));
    let other: Timestamp = serde_json::from_str("\"2025-01-02T08:34:05+05:30\"").unwrap();
    assert_eq!(other, ts("2025-01-02T03:04:05Z"));
    // Escaped strings arrive as an owned String and still parse.
    let escaped: Timestamp = serde_json::from_str("\"2025-01-02\\u005403:04:05Z\"").unwrap();
    assert_eq!(escaped, ts("2025-01-02T03:04:05Z"));
    let value = serde_json::to_value(t).unwrap();
    assert_eq!(value, serde_json::json!("2025-01-02T03:04:05.123456Z"));
    let e = serde_json::from_str::<Timestamp>("\"2025-02-30\"").unwrap_err();
    assert!(e.to_string().contains("day 30 is out of range"), "{e}");
    let e = serde_json::from_str::<Timestamp>("12").unwrap_err();
    assert!(
        e.to_string().contains("an RFC 3339 timestamp string"),
        "{e}"
    );
}
