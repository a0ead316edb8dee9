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
mod tests {
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
}
