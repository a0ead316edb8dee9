//! A UTC instant with nanosecond precision, parsed from and printed as RFC 3339.
//!
//! [`Timestamp`] is what events carry in their `timestamp` field. It is a
//! plain `(seconds, nanoseconds)` pair since the Unix epoch, limited to the
//! years `0001..=9999` so that it always prints as a four-digit-year RFC 3339
//! string. No date library is involved: the calendar conversions are Howard
//! Hinnant's `days_from_civil` / `civil_from_days` algorithms.
//!
//! ```
//! use posthog_tower::Timestamp;
//!
//! let t: Timestamp = "2025-01-02T08:34:05.5+05:30".parse().unwrap();
//! assert_eq!(t.to_string(), "2025-01-02T03:04:05.500000Z");
//! assert_eq!(t.as_unix_millis(), 1_735_787_045_500);
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

const NANOS_PER_SEC: u32 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// Unix seconds of `0001-01-01T00:00:00Z`.
const MIN_SECS: i64 = days_from_civil(1, 1, 1) * SECS_PER_DAY;
/// Unix seconds of `9999-12-31T23:59:59Z`.
const MAX_SECS: i64 = days_from_civil(9999, 12, 31) * SECS_PER_DAY + (SECS_PER_DAY - 1);

/// Length of the text written by [`Timestamp::write_rfc3339`]:
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
const RFC3339_LEN: usize = 27;

/// An instant in UTC with nanosecond precision, between
/// `0001-01-01T00:00:00Z` and `9999-12-31T23:59:59.999999999Z` inclusive.
///
/// * Build one with [`Timestamp::now`], from a [`SystemTime`], from Unix
///   milliseconds or nanoseconds, or by parsing RFC 3339 / ISO 8601 text
///   ([`Timestamp::parse`], also available through [`FromStr`]).
/// * It prints ([`Display`](fmt::Display), [`Serialize`](serde::Serialize))
///   as RFC 3339 in UTC with exactly six fractional digits, e.g.
///   `2025-01-02T03:04:05.000000Z`; finer digits are truncated, not rounded.
/// * It deserializes from any string that [`Timestamp::parse`] accepts.
///
/// Ordering, equality and hashing follow the instant, whatever offset the
/// parsed text used.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    // Field order matters: the derived `Ord` compares `secs` first.
    /// Seconds since the Unix epoch, floored (negative before 1970).
    secs: i64,
    /// Nanoseconds past `secs`, always `< 1_000_000_000`.
    nanos: u32,
}

impl Timestamp {
    /// The earliest representable instant, `0001-01-01T00:00:00Z`.
    pub const MIN: Timestamp = Timestamp {
        secs: MIN_SECS,
        nanos: 0,
    };

    /// The latest representable instant, `9999-12-31T23:59:59.999999999Z`.
    pub const MAX: Timestamp = Timestamp {
        secs: MAX_SECS,
        nanos: NANOS_PER_SEC - 1,
    };

    /// The Unix epoch, `1970-01-01T00:00:00Z`.
    pub const UNIX_EPOCH: Timestamp = Timestamp { secs: 0, nanos: 0 };

    /// The current time, from [`SystemTime::now`].
    ///
    /// A system clock outside the supported range (years `0001..=9999`) is
    /// clamped to [`Timestamp::MIN`] or [`Timestamp::MAX`].
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    /// The instant `millis` milliseconds after the Unix epoch (before it if
    /// negative), or `None` if that falls outside years `0001..=9999`.
    pub const fn from_unix_millis(millis: i64) -> Option<Timestamp> {
        let secs = millis.div_euclid(1000);
        // `rem_euclid` is in 0..1000, so the cast and the product fit a u32.
        let nanos = millis.rem_euclid(1000) as u32 * 1_000_000;
        Timestamp::from_parts(secs, nanos)
    }

    /// Milliseconds since the Unix epoch, rounded towards the past (so
    /// instants before 1970 give negative values, floored).
    pub const fn as_unix_millis(&self) -> i64 {
        // In range: |secs| < 2.6e11, so secs * 1000 stays far below i64::MAX.
        self.secs * 1000 + (self.nanos / 1_000_000) as i64
    }

    /// The instant `nanos` nanoseconds after the Unix epoch (before it if
    /// negative), or `None` if that falls outside years `0001..=9999`.
    pub const fn from_unix_nanos(nanos: i128) -> Option<Timestamp> {
        let secs = nanos.div_euclid(NANOS_PER_SEC as i128);
        if secs < MIN_SECS as i128 || secs > MAX_SECS as i128 {
            return None;
        }
        // `rem_euclid` is in 0..1e9 and `secs` was range-checked above.
        let sub = nanos.rem_euclid(NANOS_PER_SEC as i128) as u32;
        Timestamp::from_parts(secs as i64, sub)
    }

    /// Nanoseconds since the Unix epoch (negative before 1970).
    pub const fn as_unix_nanos(&self) -> i128 {
        self.secs as i128 * NANOS_PER_SEC as i128 + self.nanos as i128
    }

    /// Whole seconds since the Unix epoch, floored (negative before 1970).
    pub const fn unix_seconds(&self) -> i64 {
        self.secs
    }

    /// Nanoseconds past [`unix_seconds`](Timestamp::unix_seconds), in
    /// `0..1_000_000_000`.
    pub const fn subsec_nanos(&self) -> u32 {
        self.nanos
    }

    /// `None` when out of range; `nanos` must already be `< 1e9`.
    const fn from_parts(secs: i64, nanos: u32) -> Option<Timestamp> {
        if secs < MIN_SECS || secs > MAX_SECS || nanos >= NANOS_PER_SEC {
            None
        } else {
            Some(Timestamp { secs, nanos })
        }
    }

    /// Parses an RFC 3339 / ISO 8601 timestamp.
    ///
    /// Accepted forms (`T` may also be `t` or a single space):
    ///
    /// * `2025-01-02T08:34:05+05:30`, `2025-01-02T03:04:05Z` (or `z`);
    /// * seconds may be omitted: `2025-01-02T03:04Z`;
    /// * a fraction of 1 to 9 digits after `.` or `,`:
    ///   `2025-01-02T03:04:05.123456789Z`;
    /// * offsets `+hh:mm`, `+hhmm`, `+hh` and their `-` forms (hours
    ///   `00..=23`, minutes `00..=59`);
    /// * no offset at all (a "naive" time), which is taken as UTC;
    /// * a date alone, `2025-01-02`, meaning midnight UTC.
    ///
    /// Rejected: anything else, including surrounding whitespace, years
    /// outside `0001..=9999` (before or after applying the offset), month
    /// `13`, day `32`, `02-29` in a non-leap year, hour `24`, minute `60`,
    /// and the leap second `60`. The error's message says what was wrong.
    pub fn parse(s: &str) -> Result<Timestamp, TimestampError> {
        Parser { s, pos: 0 }.timestamp()
    }

    /// Appends the [`Display`](fmt::Display) form,
    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (27 bytes), to `out`.
    ///
    /// Nothing is allocated besides `out`'s own growth, which a caller that
    /// reserved room for it does not pay either.
    pub fn write_rfc3339(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.rfc3339_bytes());
    }

    /// The 27 ASCII bytes of the RFC 3339 form.
    fn rfc3339_bytes(&self) -> [u8; RFC3339_LEN] {
        // Seconds since 0001-01-01T00:00:00Z: in range, 0..=315_537_897_599,
        // so unsigned and non-negative.
        let since_min = self.secs.wrapping_sub(MIN_SECS) as u64;
        let sod = (since_min % SECS_PER_DAY as u64) as u32;
        let days = (since_min / SECS_PER_DAY as u64) as i64 + MIN_SECS / SECS_PER_DAY;
        let (year, month, day) = civil_from_days(days);
        // In range, the year is 1..=9999.
        let year = year as u32;
        let micros = self.nanos / 1000;
        let mut b = *b"0000-00-00T00:00:00.000000Z";
        put2(&mut b, 0, year / 100);
        put2(&mut b, 2, year % 100);
        put2(&mut b, 5, month);
        put2(&mut b, 8, day);
        put2(&mut b, 11, sod / 3600);
        put2(&mut b, 14, sod / 60 % 60);
        put2(&mut b, 17, sod % 60);
        put2(&mut b, 20, micros / 10_000);
        put2(&mut b, 22, micros / 100 % 100);
        put2(&mut b, 24, micros % 100);
        b
    }
}

/// "00" to "99", two bytes each.
static DIGIT_PAIRS: [u8; 200] = {
    let mut table = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        table[2 * i] = b'0' + (i / 10) as u8;
        table[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    table
};

/// Writes `value % 100` as two digits at `out[at..at + 2]`.
#[inline]
fn put2(out: &mut [u8; RFC3339_LEN], at: usize, value: u32) {
    let i = (value % 100) as usize * 2;
    out[at] = DIGIT_PAIRS[i];
    out[at + 1] = DIGIT_PAIRS[i + 1];
}

// The one calendar of the crate (the printer and parser here, and the date operators of local
// evaluation use it): proleptic Gregorian, Howard Hinnant's `days_from_civil` /
// `civil_from_days` algorithms, which count years from March so that the leap day is the last
// day of a year.

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d` (negative before it).
/// `m` is 1..=12, `d` is 1..=31; any year whose day count fits an `i64` works.
pub(crate) const fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64; // March = 0
    let doy = (153 * mp + 2) / 5 + d as i64 - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian `(year, month, day)` of `days` since 1970-01-01 (negative before
/// it), for any `days` in `i64::MIN + 719_468..=i64::MAX - 719_468` (far beyond the
/// supported years).
pub(crate) const fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Days since 0000-03-01, split into 400-year eras (146 097 days each) and the day within
    // the era: only the era is signed, the rest is small unsigned arithmetic.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    // `rem_euclid` is in [0, 146096], so it fits a u32.
    let doe = z.rem_euclid(146_097) as u32;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = era * 400 + yoe as i64 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

/// Whether `y` has a February 29 in the proleptic Gregorian calendar.
pub(crate) const fn is_leap_year(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

/// The number of days in month `m` (1..=12) of year `y`.
pub(crate) const fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap_year(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl From<SystemTime> for Timestamp {
    /// Converts exactly; a time outside years `0001..=9999` is clamped to
    /// [`Timestamp::MIN`] or [`Timestamp::MAX`].
    fn from(time: SystemTime) -> Timestamp {
        match time.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(after) => match i64::try_from(after.as_secs()) {
                Ok(secs) if secs <= MAX_SECS => Timestamp {
                    secs,
                    nanos: after.subsec_nanos(),
                },
                _ => Timestamp::MAX,
            },
            Err(err) => {
                let before = err.duration();
                let (secs, nanos) = match before.subsec_nanos() {
                    0 => (before.as_secs(), 0),
                    n => (before.as_secs().saturating_add(1), NANOS_PER_SEC - n),
                };
                match i64::try_from(secs) {
                    Ok(secs) if -secs >= MIN_SECS => Timestamp { secs: -secs, nanos },
                    _ => Timestamp::MIN,
                }
            }
        }
    }
}

impl TryFrom<Timestamp> for SystemTime {
    type Error = TimestampError;

    /// Fails only where the platform's `SystemTime` cannot hold the instant
    /// (e.g. before 1601 on Windows); on Unix-like systems it always succeeds.
    fn try_from(t: Timestamp) -> Result<SystemTime, TimestampError> {
        let out_of_range = || TimestampError::new(ErrorKind::SystemTimeRange);
        if t.secs >= 0 {
            // `secs` is non-negative here, so `unsigned_abs` is the value itself.
            let after = Duration::new(t.secs.unsigned_abs(), t.nanos);
            SystemTime::UNIX_EPOCH
                .checked_add(after)
                .ok_or_else(out_of_range)
        } else {
            let before = Duration::from_secs(t.secs.unsigned_abs());
            SystemTime::UNIX_EPOCH
                .checked_sub(before)
                .and_then(|base| base.checked_add(Duration::new(0, t.nanos)))
                .ok_or_else(out_of_range)
        }
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    /// Same as [`Timestamp::parse`].
    fn from_str(s: &str) -> Result<Timestamp, TimestampError> {
        Timestamp::parse(s)
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with microseconds: `2025-01-02T03:04:05.000000Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.rfc3339_bytes();
        // Always ASCII, so this never fails; no unwrap needed all the same.
        let text = std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?;
        f.write_str(text)
    }
}

impl serde::Serialize for Timestamp {
    /// Serializes as the [`Display`](fmt::Display) string, without allocating.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = self.rfc3339_bytes();
        // Always ASCII, so this never fails.
        let text = std::str::from_utf8(&bytes).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(text)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    /// Deserializes from a string accepted by [`Timestamp::parse`].
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = Timestamp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp string")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Timestamp, E> {
                Timestamp::parse(s).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}

/// Why a [`Timestamp`] could not be parsed or converted.
///
/// Its [`Display`](fmt::Display) message names the problem, e.g.
/// `invalid timestamp: day 30 is out of range for 1900-02 (1..=28)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimestampError {
    kind: ErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ErrorKind {
    /// The input is empty.
    Empty,
    /// The input ended where `expected` should have come.
    UnexpectedEnd { expected: &'static str },
    /// Character `found` at byte `pos` where `expected` should have come.
    UnexpectedChar {
        pos: usize,
        found: char,
        expected: &'static str,
    },
    /// A field's value is outside `min..=max`.
    Field {
        field: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },
    /// The day does not exist in that month of that year.
    Day {
        year: u32,
        month: u32,
        day: u32,
        max: u32,
    },
    /// More than nine fractional digits.
    FractionTooLong,
    /// The instant, once the offset is applied, is outside years 0001..=9999.
    OutOfRange,
    /// The platform's `SystemTime` cannot hold the instant.
    SystemTimeRange,
}

impl TimestampError {
    fn new(kind: ErrorKind) -> TimestampError {
        TimestampError { kind }
    }
}

impl fmt::Display for TimestampError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Empty => f.write_str("invalid timestamp: the string is empty"),
            ErrorKind::UnexpectedEnd { expected } => {
                write!(
                    f,
                    "invalid timestamp: the string ends where {expected} was expected"
                )
            }
            ErrorKind::UnexpectedChar {
                pos,
                found,
                expected,
            } => write!(
                f,
                "invalid timestamp: unexpected {found:?} at byte {pos}, expected {expected}"
            ),
            ErrorKind::Field {
                field,
                value,
                min,
                max,
            } => write!(
                f,
                "invalid timestamp: {field} {value} is out of range ({min}..={max})"
            ),
            ErrorKind::Day {
                year,
                month,
                day,
                max,
            } => write!(
                f,
                "invalid timestamp: day {day} is out of range for {year:04}-{month:02} (1..={max})"
            ),
            ErrorKind::FractionTooLong => {
                f.write_str("invalid timestamp: fractional seconds have more than 9 digits")
            }
            ErrorKind::OutOfRange => f.write_str(
                "invalid timestamp: outside the supported range \
                 0001-01-01T00:00:00Z..=9999-12-31T23:59:59.999999999Z once converted to UTC",
            ),
            ErrorKind::SystemTimeRange => {
                f.write_str("timestamp cannot be represented as this platform's SystemTime")
            }
        }
    }
}

impl std::error::Error for TimestampError {}

/// A cursor over the input. Only ASCII bytes are ever consumed, so `pos` is
/// always on a `char` boundary.
struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn timestamp(mut self) -> Result<Timestamp, TimestampError> {
        if self.s.is_empty() {
            return Err(TimestampError::new(ErrorKind::Empty));
        }
        let year = self.number(4, "a four-digit year")?;
        self.expect(b'-', "'-' after the year")?;
        let month = self.number(2, "a two-digit month")?;
        self.expect(b'-', "'-' after the month")?;
        let day = self.number(2, "a two-digit day")?;
        check_field("year", year, 1, 9999)?;
        check_field("month", month, 1, 12)?;
        let max_day = days_in_month(i64::from(year), month);
        if day < 1 || day > max_day {
            return Err(TimestampError::new(ErrorKind::Day {
                year,
                month,
                day,
                max: max_day,
            }));
        }

        let mut secs = days_from_civil(i64::from(year), month, day) * SECS_PER_DAY;
        let mut nanos = 0;
        let mut offset = 0;
        match self.peek() {
            None => {}
            Some(b'T' | b't' | b' ') => {
                self.pos += 1;
                let hour = self.number(2, "a two-digit hour")?;
                check_field("hour", hour, 0, 23)?;
                self.expect(b':', "':' after the hour")?;
                let minute = self.number(2, "two-digit minutes")?;
                check_field("minute", minute, 0, 59)?;
                let mut second = 0;
                if self.peek() == Some(b':') {
                    self.pos += 1;
                    second = self.number(2, "two-digit seconds")?;
                    check_field("second", second, 0, 59)?;
                    if let Some(b'.' | b',') = self.peek() {
                        self.pos += 1;
                        nanos = self.fraction()?;
                    }
                }
                secs += i64::from(hour * 3600 + minute * 60 + second);
                offset = self.offset()?;
            }
            Some(_) => {
                return Err(self.unexpected("'T', a space or the end after the date"));
            }
        }
        if self.pos != self.s.len() {
            return Err(self.unexpected("the end of the timestamp"));
        }
        Timestamp::from_parts(secs - offset, nanos)
            .ok_or_else(|| TimestampError::new(ErrorKind::OutOfRange))
    }

    /// An optional UTC offset, in seconds east of UTC.
    fn offset(&mut self) -> Result<i64, TimestampError> {
        let sign = match self.peek() {
            None => return Ok(0),
            Some(b'Z' | b'z') => {
                self.pos += 1;
                return Ok(0);
            }
            Some(b'+') => 1,
            Some(b'-') => -1,
            Some(_) => {
                return Err(self.unexpected("a fraction, 'Z', '+hh:mm', '-hh:mm' or the end"));
            }
        };
        self.pos += 1;
        let hours = self.number(2, "two-digit offset hours")?;
        check_field("offset hour", hours, 0, 23)?;
        let minutes = match self.peek() {
            None => 0,
            Some(b':') => {
                self.pos += 1;
                self.number(2, "two-digit offset minutes")?
            }
            Some(b'0'..=b'9') => self.number(2, "two-digit offset minutes")?,
            Some(_) => return Err(self.unexpected("offset minutes or the end")),
        };
        check_field("offset minute", minutes, 0, 59)?;
        Ok(sign * i64::from(hours * 3600 + minutes * 60))
    }

    /// 1 to 9 digits after the decimal mark, as nanoseconds.
    fn fraction(&mut self) -> Result<u32, TimestampError> {
        let start = self.pos;
        let mut value = 0u32;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            if self.pos - start == 9 {
                return Err(TimestampError::new(ErrorKind::FractionTooLong));
            }
            value = value * 10 + u32::from(c - b'0');
            self.pos += 1;
        }
        let digits = self.pos - start;
        if digits == 0 {
            return Err(self.unexpected_or_end("a digit after the decimal mark"));
        }
        // digits is 1..=9, so the scale is 10^0..=10^8 and the product < 1e9.
        Ok(value * 10u32.pow(9 - digits as u32))
    }

    /// Exactly `width` ASCII digits.
    fn number(&mut self, width: usize, what: &'static str) -> Result<u32, TimestampError> {
        let mut value = 0u32;
        for _ in 0..width {
            match self.peek() {
                Some(c @ b'0'..=b'9') => {
                    value = value * 10 + u32::from(c - b'0');
                    self.pos += 1;
                }
                _ => return Err(self.unexpected_or_end(what)),
            }
        }
        Ok(value)
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), TimestampError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected_or_end(what))
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn unexpected_or_end(&self, expected: &'static str) -> TimestampError {
        if self.pos >= self.s.len() {
            TimestampError::new(ErrorKind::UnexpectedEnd { expected })
        } else {
            self.unexpected(expected)
        }
    }

    /// Error for the character at `pos` (callers check there is one).
    fn unexpected(&self, expected: &'static str) -> TimestampError {
        match self.s.get(self.pos..).and_then(|rest| rest.chars().next()) {
            Some(found) => TimestampError::new(ErrorKind::UnexpectedChar {
                pos: self.pos,
                found,
                expected,
            }),
            None => TimestampError::new(ErrorKind::UnexpectedEnd { expected }),
        }
    }
}

fn check_field(field: &'static str, value: u32, min: u32, max: u32) -> Result<(), TimestampError> {
    if value < min || value > max {
        Err(TimestampError::new(ErrorKind::Field {
            field,
            value,
            min,
            max,
        }))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
