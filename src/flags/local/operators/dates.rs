//! Dates for `is_date_before` / `is_date_after`, as posthog-python 7.91.1 reads them
//! (`parse_datetime`, `relative_date_parse_for_feature_flag_matching`), in microseconds since
//! the Unix epoch (Python's `datetime` resolution).
//!
//! `datetime.fromisoformat` accepts more in Python 3.11+ than in 3.10 (which posthog-python
//! still supports). We accept the formats every supported Python reads the same way; the
//! rest is left to the server, never guessed.

use super::text::python_strip;
use crate::time::{civil_from_days, days_from_civil, days_in_month};

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// A point in time: microseconds since 1970-01-01T00:00:00Z.
pub(super) type Micros = i64;

/// A parsed date string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Parsed {
    At(Micros),
    /// A bare `YYYY`: that year on today's month and day, at midnight.
    YearOnly(i64),
}

/// The date of a date filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DateFilter {
    Parsed(Parsed),
    /// `-?N[hdwmy]`: `amount` units before now.
    Relative {
        amount: i64,
        unit: Unit,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unit {
    Hours,
    Days,
    Weeks,
    Months,
    Years,
}

/// Whether a Python `datetime` holds `at` (years 1 to 9999).
fn in_python_range(at: Micros) -> bool {
    const MIN: Micros = days_from_civil(1, 1, 1) * MICROS_PER_DAY;
    const END: Micros = days_from_civil(10_000, 1, 1) * MICROS_PER_DAY;
    (MIN..END).contains(&at)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, width: usize) -> Option<i64> {
        let digits = self.bytes.get(self.at..self.at + width)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.at += width;
        Some(digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn done(&self) -> bool {
        self.at == self.bytes.len()
    }

    fn rest(&self) -> &[u8] {
        &self.bytes[self.at..]
    }
}

/// The clock of a time: `HH[:MM[:SS]]`, then either `.fff` / `.ffffff`, or (only before an
/// offset) any one stray character, which CPython's `fromisoformat` skips. As microseconds
/// into the day.
fn parse_time(part: &[u8], before_offset: bool) -> Option<i64> {
    let mut c = Cursor { bytes: part, at: 0 };
    let mut fields = [0i64; 3];
    let mut micros = 0;
    for (i, field) in fields.iter_mut().enumerate() {
        *field = c.digits(2)?;
        let Some(&next) = c.rest().first() else {
            break;
        };
        if c.rest().len() == 1 {
            // One character left before the offset: skipped (but `Z` means UTC in 3.11+).
            if before_offset && next.is_ascii() && !matches!(next, b'Z' | b'z' | 0) {
                break;
            }
            return None;
        }
        c.at += 1;
        match next {
            b':' if i < 2 => {}
            b'.' => {
                micros = match c.rest().len() {
                    3 => c.digits(3)? * 1000,
                    6 => c.digits(6)?,
                    _ => return None,
                };
                break;
            }
            _ => return None,
        }
    }
    let [hour, minute, second] = fields;
    if hour >= 24 || minute >= 60 || second >= 60 {
        return None;
    }
    Some(((hour * 60 + minute) * 60 + second) * MICROS_PER_SECOND + micros)
}

/// A UTC offset after its sign: `HH:MM`, `HH:MM:SS` or `HH:MM:SS.ffffff`, fields unchecked
/// but under a day in all, as microseconds.
fn parse_offset(part: &[u8]) -> Option<i64> {
    let mut c = Cursor { bytes: part, at: 0 };
    let hours = c.digits(2)?;
    let ok = c.eat(b':');
    let minutes = c.digits(2)?;
    let mut seconds = 0;
    let mut micros = 0;
    if ok && c.eat(b':') {
        seconds = c.digits(2)?;
        if c.eat(b'.') {
            micros = c.digits(6)?;
        }
    }
    if !ok || !c.done() {
        return None;
    }
    let offset = ((hours * 60 + minutes) * 60 + seconds) * MICROS_PER_SECOND + micros;
    (offset < MICROS_PER_DAY).then_some(offset)
}

/// `datetime.fromisoformat` on `body`, plus `+00:00` when `utc_suffix`; naive times are UTC.
/// The grammar: `YYYY-MM-DD`, then optionally any one separator character and
/// `HH[:MM[:SS[.fff|.ffffff]]]`, then optionally `+HH:MM`, `+HH:MM:SS` or `+HH:MM:SS.ffffff`
/// (or `-`), whose fields are not range checked, only its total (under a day).
fn from_iso_format(body: &str, utc_suffix: bool) -> Option<Micros> {
    let mut c = Cursor {
        bytes: body.as_bytes(),
        at: 0,
    };
    let year = c.digits(4)?;
    if !c.eat(b'-') {
        return None;
    }
    let month = c.digits(2)?;
    if !c.eat(b'-') {
        return None;
    }
    let day = c.digits(2)?;
    if year < 1 || !(1..=12).contains(&month) {
        return None;
    }
    let month = month as u32;
    if day < 1 || day > i64::from(days_in_month(year, month)) {
        return None;
    }
    let date = days_from_civil(year, month, day as u32) * MICROS_PER_DAY;

    let rest = &body[c.at..];
    let Some(separator) = rest.chars().next() else {
        // A bare date is midnight; with `+00:00` appended, Python reads `+` as the separator
        // and `00:00` as the time, which is midnight too.
        return Some(date);
    };
    let time = &rest.as_bytes()[separator.len_utf8()..];
    // The offset starts at the first sign after the separator.
    let (clock, offset) = match time.iter().position(|b| matches!(b, b'+' | b'-')) {
        None => (parse_time(time, utc_suffix)?, 0),
        Some(_) if utc_suffix => return None,
        Some(at) => {
            let offset = parse_offset(&time[at + 1..])?;
            let clock = parse_time(&time[..at], true)?;
            (clock, if time[at] == b'-' { -offset } else { offset })
        }
    };
    Some(date + clock - offset)
}

/// posthog-python's `parse_datetime`.
pub(super) fn parse_datetime(value: &str) -> Option<Parsed> {
    let text = python_strip(value);
    let n = text.len();
    let (body, utc_suffix) = if let Some(body) = text.strip_suffix('Z') {
        (body, true)
    } else if n >= 4 && text.is_char_boundary(n - 4) && text[n - 4..].eq_ignore_ascii_case(" utc") {
        (&text[..n - 4], true)
    } else if n == 4 && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Parsed::YearOnly);
    } else {
        (text, false)
    };
    // A space before a final `+HH:MM` offset is dropped (the `+00:00` added for `Z` and ` UTC`
    // counts).
    let body = if utc_suffix {
        body.strip_suffix(' ').unwrap_or(body)
    } else {
        let b = body.as_bytes();
        let spaced_offset = b.len() >= 7 && {
            let tail = &b[b.len() - 7..];
            tail[0] == b' '
                && matches!(tail[1], b'+' | b'-')
                && tail[2..4].iter().all(u8::is_ascii_digit)
                && tail[4] == b':'
                && tail[5..7].iter().all(u8::is_ascii_digit)
        };
        if spaced_offset {
            // Safe to slice: the 7 bytes are ASCII.
            return from_iso_format_joined(&body[..b.len() - 7], &body[b.len() - 6..]);
        }
        body
    };
    from_iso_format(body, utc_suffix).map(Parsed::At)
}

/// `from_iso_format` of `head` followed directly by `offset` (`+HH:MM`), without allocating.
fn from_iso_format_joined(head: &str, offset: &str) -> Option<Parsed> {
    let mut buf = super::text::StackBuf::<64>::new();
    use std::fmt::Write as _;
    buf.write_str(head).ok()?;
    buf.write_str(offset).ok()?;
    from_iso_format(buf.as_str(), false).map(Parsed::At)
}

/// The instant of a parsed date, given the current time.
pub(super) fn resolve(parsed: Parsed, now: Micros) -> Option<Micros> {
    match parsed {
        Parsed::At(at) => Some(at),
        Parsed::YearOnly(year) => {
            // `datetime(year, today.month, today.day)`: fails on February 29 of a common year.
            let (_, month, day) = civil_from_days(now.div_euclid(MICROS_PER_DAY));
            if year < 1 || day > days_in_month(year, month) {
                return None;
            }
            Some(days_from_civil(year, month, day) * MICROS_PER_DAY)
        }
    }
}

/// `^-?[0-9]+[a-z]$` (Python's `$` also matches before a final newline), under 10000, with a
/// unit in `hdwmy`; anything else is not a relative date.
fn parse_relative(text: &str) -> Option<DateFilter> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_prefix('-').unwrap_or(text);
    let (&unit, digits) = text.as_bytes().split_last()?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let significant = digits.iter().skip_while(|d| **d == b'0').count();
    if significant > 4 {
        return None;
    }
    let amount = digits
        .iter()
        .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    if amount >= 10_000 {
        return None;
    }
    let unit = match unit {
        b'h' => Unit::Hours,
        b'd' => Unit::Days,
        b'w' => Unit::Weeks,
        b'm' => Unit::Months,
        b'y' => Unit::Years,
        _ => return None,
    };
    Some(DateFilter::Relative { amount, unit })
}

/// The date of a filter: relative first, then an absolute date.
pub(super) fn parse_filter(text: &str) -> Option<DateFilter> {
    parse_relative(text).or_else(|| parse_datetime(text).map(DateFilter::Parsed))
}

/// `_subtract_months`: one month at a time, clamping the day at every step until it is at most
/// 28 (March 31 minus two months is January 28).
fn subtract_months(now: Micros, months: i64) -> Option<Micros> {
    let days = now.div_euclid(MICROS_PER_DAY);
    let time = now.rem_euclid(MICROS_PER_DAY);
    let (year, month, mut day) = civil_from_days(days);
    let current = year * 12 + i64::from(month) - 1;
    let target = current - months;
    let (target_year, target_month) = (target.div_euclid(12), (target.rem_euclid(12) + 1) as u32);
    if !(1..=9999).contains(&target_year) {
        return None;
    }
    let mut index = current - 1;
    while index >= target && day > 28 {
        day = day.min(days_in_month(
            index.div_euclid(12),
            (index.rem_euclid(12) + 1) as u32,
        ));
        index -= 1;
    }
    Some(days_from_civil(target_year, target_month, day) * MICROS_PER_DAY + time)
}

/// `_subtract_years`: February 29 becomes February 28 whenever years are subtracted.
fn subtract_years(now: Micros, years: i64) -> Option<Micros> {
    let days = now.div_euclid(MICROS_PER_DAY);
    let time = now.rem_euclid(MICROS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let target_year = year - years;
    if !(1..=9999).contains(&target_year) {
        return None;
    }
    let day = if years > 0 && month == 2 && day == 29 {
        28
    } else {
        day
    };
    Some(days_from_civil(target_year, month, day) * MICROS_PER_DAY + time)
}

/// The instant of a date filter at `now`; `None` when Python cannot compute it.
pub(super) fn resolve_filter(filter: DateFilter, now: Micros) -> Option<Micros> {
    let (amount, unit) = match filter {
        DateFilter::Parsed(parsed) => return resolve(parsed, now),
        DateFilter::Relative { amount, unit } => (amount, unit),
    };
    let at = match unit {
        Unit::Hours => now - amount * 3600 * MICROS_PER_SECOND,
        Unit::Days => now - amount * MICROS_PER_DAY,
        Unit::Weeks => now - amount * 7 * MICROS_PER_DAY,
        Unit::Months => return subtract_months(now, amount),
        Unit::Years => return subtract_years(now, amount),
    };
    in_python_range(at).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64) -> Micros {
        days_from_civil(y, mo, d) * MICROS_PER_DAY + ((h * 60 + mi) * 60 + s) * MICROS_PER_SECOND
    }

    #[test]
    fn parses_absolute_dates() {
        let utc = |s| parse_datetime(s).map(|p| resolve(p, 0).unwrap());
        assert_eq!(utc("2022-05-01"), Some(at(2022, 5, 1, 0, 0, 0)));
        assert_eq!(utc(" 2022-05-01\n"), Some(at(2022, 5, 1, 0, 0, 0)));
        assert_eq!(
            utc("2022-04-05T12:34:12Z"),
            Some(at(2022, 4, 5, 12, 34, 12))
        );
        assert_eq!(
            utc("2022-04-05 12:34:12 UTC"),
            Some(at(2022, 4, 5, 12, 34, 12))
        );
        assert_eq!(
            utc("2022-04-05 12:34:12 utc"),
            Some(at(2022, 4, 5, 12, 34, 12))
        );
        assert_eq!(
            utc("2022-04-05 12:34:12 Z"),
            Some(at(2022, 4, 5, 12, 34, 12))
        );
        assert_eq!(
            utc("2022-04-05 12:34:12 +01:00"),
            Some(at(2022, 4, 5, 11, 34, 12))
        );
        assert_eq!(
            utc("2022-04-05T12:34:12-01:30"),
            Some(at(2022, 4, 5, 14, 4, 12))
        );
        assert_eq!(utc("2022-04-05T12:34"), Some(at(2022, 4, 5, 12, 34, 0)));
        assert_eq!(utc("2022-04-05T12"), Some(at(2022, 4, 5, 12, 0, 0)));
        assert_eq!(utc("2022-04-05X12:00"), Some(at(2022, 4, 5, 12, 0, 0)));
        assert_eq!(
            utc("2022-04-05T12:34:12.123Z"),
            Some(at(2022, 4, 5, 12, 34, 12) + 123_000)
        );
        assert_eq!(
            utc("2022-04-05T12:34:12.123456+00:00"),
            Some(at(2022, 4, 5, 12, 34, 12) + 123_456)
        );
        assert_eq!(
            utc("2022-04-05T12:00+00:99"),
            Some(at(2022, 4, 5, 10, 21, 0))
        );
        assert_eq!(
            utc("2022-04-05T12:00+01:00:30"),
            Some(at(2022, 4, 5, 10, 59, 30))
        );
        // The separator is any character: `+05:00` after a bare date is a time, not an offset.
        assert_eq!(utc("2024-01-01+05:00"), Some(at(2024, 1, 1, 5, 0, 0)));
        assert_eq!(utc("2024-01-01 +05:00"), Some(at(2024, 1, 1, 5, 0, 0)));
        assert_eq!(utc("2024-01-01Z"), Some(at(2024, 1, 1, 0, 0, 0)));
        // CPython quirks every supported version shares: a fraction after the hour or minute,
        // and one stray character before an offset.
        assert_eq!(
            utc("2022-04-05T12.123"),
            Some(at(2022, 4, 5, 12, 0, 0) + 123_000)
        );
        assert_eq!(
            utc("2022-04-05T12:30.123456Z"),
            Some(at(2022, 4, 5, 12, 30, 0) + 123_456)
        );
        assert_eq!(
            utc("2022-04-05T12:30X+01:00"),
            Some(at(2022, 4, 5, 11, 30, 0))
        );
        assert_eq!(
            utc("2022-04-05T12:30:+01:00"),
            Some(at(2022, 4, 5, 11, 30, 0))
        );
        assert_eq!(
            utc("2022-04-05T12:305+01:00"),
            Some(at(2022, 4, 5, 11, 30, 0))
        );
        assert_eq!(utc("2022-04-05T12  +01:00"), Some(at(2022, 4, 5, 11, 0, 0)));
        assert_eq!(utc("2022-04-05T12:30 Z"), Some(at(2022, 4, 5, 12, 30, 0)));
        assert_eq!(utc("2022-04-05T12:30.Z"), Some(at(2022, 4, 5, 12, 30, 0)));
        assert_eq!(utc("2024-01-01 UTC"), Some(at(2024, 1, 1, 0, 0, 0)));
        assert_eq!(utc("0001-01-01T00:00+01:00"), Some(at(0, 12, 31, 23, 0, 0)));
        for bad in [
            "",
            "abcdef",
            "not-a-date",
            "2022-5-01",
            "2022-02-30",
            "0000-01-01",
            "2022-04-05T24:00",
            "2022-04-05T12:60",
            "2022-04-05T12:00:60",
            "2022-04-05T12:00:00.5",
            "2022-04-05T12:00.5",
            "2022-04-05T12:00:00:123",
            "2022-04-05T12:00X",
            "2022-04-05T12:00Z+01:00",
            "2022-04-05T12:00é+01:00",
            "2022-04-05T12:00:00.123X+01:00",
            "2022-04-05T12:00:00.1234567",
            "2022-04-05T12:00:00,123",
            "2022-04-05T12:00+0100",
            "2022-04-05T12:00+01",
            "2022-04-05T12:00-24:00",
            "2022-04-05T12:00+01:00Z",
            "2022-04-05T",
            "20220405",
            "2022-W01-1",
            "1234.0",
            "7d",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bare_year_is_today_in_that_year() {
        let now = at(2020, 4, 3, 15, 0, 0);
        assert_eq!(parse_datetime("1234"), Some(Parsed::YearOnly(1234)));
        assert_eq!(
            resolve(Parsed::YearOnly(1234), now),
            Some(at(1234, 4, 3, 0, 0, 0))
        );
        let leap_day = at(2024, 2, 29, 1, 0, 0);
        assert_eq!(resolve(Parsed::YearOnly(2023), leap_day), None);
        assert_eq!(
            resolve(Parsed::YearOnly(2020), leap_day),
            Some(at(2020, 2, 29, 0, 0, 0))
        );
        assert_eq!(resolve(Parsed::YearOnly(0), now), None);
        assert_eq!(parse_datetime("2024Z"), None);
    }

    #[test]
    fn relative_dates() {
        let rel = |s: &str, now| resolve_filter(parse_filter(s).unwrap(), now);
        let now = at(2020, 1, 1, 12, 1, 20) + 134_000;
        assert_eq!(rel("1h", now), Some(at(2020, 1, 1, 11, 1, 20) + 134_000));
        assert_eq!(rel("30h", now), Some(at(2019, 12, 31, 6, 1, 20) + 134_000));
        assert_eq!(rel("-1d", now), Some(at(2019, 12, 31, 12, 1, 20) + 134_000));
        assert_eq!(rel("8w", now), Some(at(2019, 11, 6, 12, 1, 20) + 134_000));
        assert_eq!(rel("1m", now), Some(at(2019, 12, 1, 12, 1, 20) + 134_000));
        assert_eq!(rel("8m", now), Some(at(2019, 5, 1, 12, 1, 20) + 134_000));
        assert_eq!(rel("12m", now), rel("1y", now));
        assert_eq!(rel("000h", now), Some(now));
        assert_eq!(
            rel("0009999h", now),
            Some(now - 9999 * 3600 * MICROS_PER_SECOND)
        );
        assert_eq!(rel("7d\n", now), rel("1w", now));
        for (now, value, want) in [
            (at(2025, 3, 31, 12, 0, 0), "2m", at(2025, 1, 28, 12, 0, 0)),
            (at(2024, 3, 31, 12, 0, 0), "2m", at(2024, 1, 29, 12, 0, 0)),
            (at(2025, 5, 31, 12, 0, 0), "2m", at(2025, 3, 30, 12, 0, 0)),
            (at(2025, 5, 31, 12, 0, 0), "4m", at(2025, 1, 28, 12, 0, 0)),
            (at(2025, 1, 31, 12, 0, 0), "11m", at(2024, 2, 29, 12, 0, 0)),
            (at(2025, 3, 30, 12, 0, 0), "13m", at(2024, 2, 28, 12, 0, 0)),
            (at(2020, 3, 31, 0, 0, 0), "1m", at(2020, 2, 29, 0, 0, 0)),
            (at(2021, 3, 31, 0, 0, 0), "1m", at(2021, 2, 28, 0, 0, 0)),
            (at(2024, 2, 29, 12, 0, 0), "4y", at(2020, 2, 28, 12, 0, 0)),
            (at(2024, 2, 29, 12, 0, 0), "2y", at(2022, 2, 28, 12, 0, 0)),
            (at(2024, 3, 31, 12, 0, 0), "4y", at(2020, 3, 31, 12, 0, 0)),
            (at(2024, 2, 29, 12, 0, 0), "0m", at(2024, 2, 29, 12, 0, 0)),
            (at(2024, 2, 29, 12, 0, 0), "0y", at(2024, 2, 29, 12, 0, 0)),
        ] {
            assert_eq!(rel(value, now), Some(want), "{value}");
        }
        // Out of Python's range (years 1 to 9999): no date.
        assert_eq!(rel("9999y", now), None);
        assert_eq!(rel("2020y", now), None);
        assert_eq!(rel("2019y", now), Some(at(1, 1, 1, 12, 1, 20) + 134_000));
        for not_relative in [
            "1",
            "1x",
            "1.2y",
            "1s",
            "10000h",
            "100000000000000000000y",
            "1H",
        ] {
            assert_eq!(parse_filter(not_relative), None, "{not_relative}");
        }
    }
}
