//! Budget and rate-limit windows: calendar-aligned in UTC (a day from midnight, a week from
//! Monday, a month from the 1st, a quarter, a year from January 1) or rolling (fixed lengths
//! counted from an anchor). Times are Unix milliseconds from a [`Clock`], so tests can set them.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reset {
    /// Windows start on calendar boundaries in UTC.
    #[default]
    Calendar,
    /// Windows of the period's fixed length (a month is 30 days, a quarter 91, a year 365),
    /// counted from the anchor.
    Rolling,
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Quarter => "quarter",
            Period::Year => "year",
        }
    }

    /// The fixed length used by rolling windows.
    fn length_ms(self) -> i64 {
        match self {
            Period::Minute => MINUTE,
            Period::Hour => HOUR,
            Period::Day => DAY,
            Period::Week => 7 * DAY,
            Period::Month => 30 * DAY,
            Period::Quarter => 91 * DAY,
            Period::Year => 365 * DAY,
        }
    }

    /// The window `[start, end)` holding `now`.
    pub fn window(self, reset: Reset, anchor_ms: i64, now_ms: i64) -> (i64, i64) {
        if reset == Reset::Rolling {
            let len = self.length_ms();
            let start = anchor_ms + (now_ms - anchor_ms).div_euclid(len) * len;
            return (start, start + len);
        }
        let fixed = |len: i64| {
            let start = now_ms.div_euclid(len) * len;
            (start, start + len)
        };
        match self {
            Period::Minute => fixed(MINUTE),
            Period::Hour => fixed(HOUR),
            Period::Day => fixed(DAY),
            Period::Week => {
                // Day 0 (1970-01-01) was a Thursday; Monday is 3 days before it.
                let days = now_ms.div_euclid(DAY);
                let monday = days - (days + 3).rem_euclid(7);
                (monday * DAY, (monday + 7) * DAY)
            }
            Period::Month | Period::Quarter | Period::Year => {
                let (y, m, _) = civil_from_days(now_ms.div_euclid(DAY));
                let (first, months) = match self {
                    Period::Month => (m, 1),
                    Period::Quarter => (m - (m - 1) % 3, 3),
                    _ => (1, 12),
                };
                let next = first + months;
                let (ny, nm) = if next > 12 {
                    (y + 1, next - 12)
                } else {
                    (y, next)
                };
                (
                    days_from_civil(y, first, 1) * DAY,
                    days_from_civil(ny, nm, 1) * DAY,
                )
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// An RFC 3339 UTC time (`2026-12-01T00:00:00Z`, or a date alone) as Unix milliseconds.
pub fn parse_utc(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (
            d,
            Some(t.strip_suffix('Z').or_else(|| t.strip_suffix("+00:00"))?),
        ),
        None => (s, None),
    };
    let mut parts = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut ms = days_from_civil(y, m, d) * DAY;
    if let Some(t) = time {
        let mut hms = t.splitn(3, ':');
        let h = hms.next()?.parse::<i64>().ok()?;
        let mi = hms.next()?.parse::<i64>().ok()?;
        let sec = hms.next().unwrap_or("0").parse::<f64>().ok()?;
        if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0.0..61.0).contains(&sec) {
            return None;
        }
        ms += h * HOUR + mi * MINUTE + (sec * 1000.0) as i64;
    }
    Some(ms)
}

/// Unix milliseconds as `2026-12-01T00:00:00Z`.
pub fn format_utc(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY));
    let rest = ms.rem_euclid(DAY);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / HOUR,
        rest % HOUR / MINUTE,
        rest % MINUTE / 1000
    )
}

/// Where governance reads the time.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A clock that moves only when told; for tests.
#[derive(Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(ms))
    }

    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> i64 {
        parse_utc(s).unwrap()
    }

    fn w(p: Period, now: &str) -> (String, String) {
        let (a, b) = p.window(Reset::Calendar, 0, t(now));
        (format_utc(a), format_utc(b))
    }

    #[test]
    fn calendar_windows_start_on_utc_boundaries() {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        let now = "2026-12-04T10:17:33Z";
        // 2026-12-04 is a Friday; its week began on Monday the 30th of November.
        for (p, start, end) in [
            (
                Period::Minute,
                "2026-12-04T10:17:00Z",
                "2026-12-04T10:18:00Z",
            ),
            (Period::Hour, "2026-12-04T10:00:00Z", "2026-12-04T11:00:00Z"),
            (Period::Day, "2026-12-04T00:00:00Z", "2026-12-05T00:00:00Z"),
            (Period::Week, "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z"),
            (
                Period::Month,
                "2026-12-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            (
                Period::Quarter,
                "2026-10-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            (Period::Year, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"),
        ] {
            assert_eq!(w(p, now), s(start, end), "{p:?}");
        }
        // February of a leap year, and a Monday itself.
        let feb = w(Period::Month, "2028-02-29T23:59:59Z");
        assert_eq!(feb, s("2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"));
        let monday = w(Period::Week, "2026-11-30T00:00:00Z");
        assert_eq!(monday.0, "2026-11-30T00:00:00Z");
        assert_eq!(
            w(Period::Quarter, "2026-03-31T23:59:59Z").1,
            "2026-04-01T00:00:00Z"
        );
    }

    #[test]
    fn the_last_millisecond_is_in_the_old_window_and_the_boundary_in_the_new() {
        for p in [Period::Day, Period::Week, Period::Month, Period::Year] {
            let (_, end) = p.window(Reset::Calendar, 0, t("2026-12-04T10:00:00Z"));
            assert_eq!(p.window(Reset::Calendar, 0, end - 1).1, end, "{p:?}");
            assert_eq!(p.window(Reset::Calendar, 0, end).0, end, "{p:?}");
        }
    }

    #[test]
    fn rolling_windows_count_from_the_anchor() {
        let anchor = t("2026-11-15T12:00:00Z");
        let (a, b) = Period::Month.window(Reset::Rolling, anchor, t("2026-12-20T00:00:00Z"));
        assert_eq!(format_utc(a), "2026-12-15T12:00:00Z");
        assert_eq!(format_utc(b), "2027-01-14T12:00:00Z");
        let (a, _) = Period::Day.window(Reset::Rolling, anchor, anchor - 1);
        assert_eq!(format_utc(a), "2026-11-14T12:00:00Z");
    }

    #[test]
    fn dates_round_trip() {
        for days in [-800_000, -1, 0, 59, 10_957, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(t("2026-12-04"), t("2026-12-04T00:00:00Z"));
        assert_eq!(parse_utc("2026-13-01"), None);
        assert_eq!(parse_utc("2026-12-01T25:00:00Z"), None);
        assert_eq!(parse_utc("2026-12-01T10:00:00+02:00"), None);
    }
}
