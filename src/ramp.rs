//! Ramp schedules: a route's percent as a function of time.
//!
//! `"ramp": [{"at": "2026-12-01T09:00:00Z", "percent": 10}, ...]`, times
//! strictly increasing. Before the first step the route's own `percent`
//! applies; from a step's `at` on, that step's percent, until the next step.
//! Time comes in as milliseconds since the Unix epoch (injected clock; the
//! filter passes the host's clock). Since the decision only compares a
//! key's bucket with the percent in force, a ramp that goes up never moves a
//! key back to the monolith.

/// One step of a ramp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub basis_points: u16,
}

/// The basis points in force at `now_ms`: the last step at or before it,
/// else `initial`. `steps` is sorted by `at_ms` (config validation).
pub fn basis_points_at(initial: u16, steps: &[Step], now_ms: u64) -> u16 {
    let started = steps.partition_point(|s| s.at_ms <= now_ms);
    match started.checked_sub(1).and_then(|i| steps.get(i)) {
        Some(step) => step.basis_points,
        None => initial,
    }
}

/// Parses an RFC 3339 UTC timestamp, `YYYY-MM-DDTHH:MM:SS[.fraction]Z`
/// (also `+00:00`), into milliseconds since the Unix epoch. Other offsets
/// are refused: schedules are written in UTC.
///
/// A leap second, `23:59:60` (RFC 3339 seconds go to 60; accepted at the
/// end of any day, since future leap seconds are not known in advance), is
/// read as POSIX time reads it: the same instant as the next day's
/// `00:00:00` (`23:59:60.5` is `00:00:00.5`). Unix time, and so the host's
/// clock, has no second of its own for it.
pub fn parse_rfc3339_utc(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0u64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
        })
    };
    let sep = |at: usize, c: &[u8]| b.get(at).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let mut rest = b.get(19..)?;
    let mut millis = 0u64;
    if let [b'.', tail @ ..] = rest {
        let digits = tail.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for (i, d) in tail.iter().take(digits).enumerate() {
            if i < 3 {
                millis += u64::from(d - b'0') * [100, 10, 1].get(i).copied().unwrap_or(0);
            }
        }
        rest = tail.get(digits..)?;
    }
    if !(rest == b"Z" || rest == b"z" || rest == b"+00:00") {
        return None;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    let leap_second = hour == 23 && minute == 59 && second == 60;
    if year < 1970
        || day == 0
        || day > days_in_month
        || hour > 23
        || minute > 59
        || (second > 59 && !leap_second)
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Formats milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (for
/// messages and the check CLI).
pub fn format_rfc3339_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm), for years >= 1970.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: u64) -> (u64, u64, u64) {
    let z = z + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_instants() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_utc("2026-12-01T09:00:00Z"),
            Some(1_796_115_600_000)
        );
        assert_eq!(
            parse_rfc3339_utc("2026-12-01T09:00:00.250Z"),
            Some(1_796_115_600_250)
        );
        assert_eq!(
            parse_rfc3339_utc("2026-12-01T09:00:00+00:00"),
            Some(1_796_115_600_000)
        );
        assert_eq!(
            parse_rfc3339_utc("2024-02-29T23:59:59Z"),
            Some(1_709_251_199_000)
        );
        assert_eq!(
            parse_rfc3339_utc("2000-03-01T00:00:00Z"),
            Some(951_868_800_000)
        );
    }

    #[test]
    fn refuses_what_is_not_a_utc_rfc3339_time() {
        for bad in [
            "",
            "2026-12-01",
            "2026-12-01 09:00:00Z",
            "2026-12-01T09:00:00",
            "2026-12-01T09:00:00+01:00",
            "2026-13-01T09:00:00Z",
            "2026-02-29T09:00:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T09:60:00Z",
            "2026-12-01T09:00:60Z",
            "2026-12-01T23:58:60Z",
            "2026-12-01T22:59:60Z",
            "2026-12-01T23:59:61Z",
            "2026-12-01T09:00:00.Z",
            "1969-12-31T23:59:59Z",
            "２０２６-12-01T09:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_leap_second_is_the_next_day_s_midnight() {
        let midnight = parse_rfc3339_utc("2017-01-01T00:00:00Z");
        assert_eq!(midnight, Some(1_483_228_800_000));
        assert_eq!(parse_rfc3339_utc("2016-12-31T23:59:60Z"), midnight);
        assert_eq!(
            parse_rfc3339_utc("2016-12-31T23:59:60.500Z"),
            Some(1_483_228_800_500)
        );
        // End of a month and of a year, and any other day.
        assert_eq!(
            parse_rfc3339_utc("2015-06-30T23:59:60Z"),
            parse_rfc3339_utc("2015-07-01T00:00:00Z")
        );
        assert_eq!(
            parse_rfc3339_utc("2026-12-01T23:59:60+00:00"),
            parse_rfc3339_utc("2026-12-02T00:00:00Z")
        );
        assert_eq!(
            format_rfc3339_utc(1_483_228_800_000),
            "2017-01-01T00:00:00Z"
        );
    }

    #[test]
    fn formats_back() {
        for s in [
            "1970-01-01T00:00:00Z",
            "2026-12-01T09:00:00Z",
            "2024-02-29T23:59:59Z",
        ] {
            assert_eq!(format_rfc3339_utc(parse_rfc3339_utc(s).unwrap()), s);
        }
    }

    #[test]
    fn the_step_in_force() {
        let steps = [
            Step {
                at_ms: 1_000,
                basis_points: 1000,
            },
            Step {
                at_ms: 2_000,
                basis_points: 5000,
            },
            Step {
                at_ms: 3_000,
                basis_points: 10_000,
            },
        ];
        assert_eq!(basis_points_at(0, &steps, 0), 0);
        assert_eq!(basis_points_at(0, &steps, 999), 0);
        assert_eq!(basis_points_at(0, &steps, 1_000), 1000);
        assert_eq!(basis_points_at(0, &steps, 2_999), 5000);
        assert_eq!(basis_points_at(0, &steps, 3_000), 10_000);
        assert_eq!(basis_points_at(0, &steps, u64::MAX), 10_000);
        assert_eq!(basis_points_at(700, &[], 5), 700);
    }
}
