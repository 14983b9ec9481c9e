//! Wall-clock time as the store keeps it (milliseconds since the Unix epoch, UTC), its RFC 3339 form,
//! and the duration syntax of the configuration and of the share dialect.
//!
//! Hand-written rather than a date crate: the service needs one format out (`…T…:…:….mmmZ`), one
//! format in for query filters, and a handful of unit suffixes.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::text::push_padded;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

pub fn now_ms() -> Millis {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as Millis,
        Err(_) => 0,
    }
}

/// `2026-03-03T15:30:00.000Z`
pub fn rfc3339(ms: Millis) -> String {
    let mut out = String::with_capacity(24);
    push_rfc3339(&mut out, ms);
    out
}

/// Appends [`rfc3339`]'s text of `ms` to `out`.
pub fn push_rfc3339(out: &mut String, ms: Millis) {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        );
        return;
    }
    // Every response carries timestamps: written digit by digit, without the formatting machinery.
    push_padded(out, y, 4);
    out.push('-');
    push_padded(out, m, 2);
    out.push('-');
    push_padded(out, d, 2);
    out.push('T');
    push_padded(out, sod / 3600, 2);
    out.push(':');
    push_padded(out, (sod / 60) % 60, 2);
    out.push(':');
    push_padded(out, sod % 60, 2);
    out.push('.');
    push_padded(out, millis, 3);
    out.push('Z');
}

/// Parses RFC 3339 (`Z` or `±hh:mm` offset, optional fraction) into milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_secs = match s.get(i..)? {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if &rest[3..4] != ":" {
                return None;
            }
            let v = oh * 3600 + om * 60;
            if rest.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset_secs) * 1000 + millis)
}

/// Parses `500ms`, `30s`, `5m`, `2h`, `7d` into milliseconds. A bare number is seconds.
pub fn parse_duration(s: &str) -> Option<Millis> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    let n: i64 = digits.parse().ok()?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// Formats milliseconds back into the shortest exact duration string.
pub fn format_duration(ms: Millis) -> String {
    for (unit, factor) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms != 0 && ms % factor == 0 {
            return format!("{}{unit}", ms / factor);
        }
    }
    format!("{ms}ms")
}

// Howard Hinnant's days-from-civil algorithms (public domain), proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        let t = 1_772_551_800_123; // 2026-03-03T15:30:00.123Z
        assert_eq!(rfc3339(t), "2026-03-03T15:30:00.123Z");
        // The digit-by-digit writer agrees with the formatting machinery across the range.
        let mut ms: Millis = 0;
        while ms < 253_402_300_799_999 {
            let (secs, days) = (ms.div_euclid(1000), ms.div_euclid(86_400_000));
            let (y, m, d) = civil_from_days(days);
            let sod = secs.rem_euclid(86_400);
            let expected = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                sod / 3600,
                (sod / 60) % 60,
                sod % 60,
                ms % 1000
            );
            assert_eq!(rfc3339(ms), expected);
            ms = ms * 3 / 2 + 7_919;
        }
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
        assert_eq!(parse_rfc3339("2026-03-03T15:30:00.123Z"), Some(t));
        assert_eq!(parse_rfc3339("2026-03-03T16:30:00.123+01:00"), Some(t));
        assert_eq!(parse_rfc3339("2026-03-03T15:30:00Z"), Some(t - 123));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00.000Z")
                .map(rfc3339)
                .as_deref(),
            Some("2024-02-29T00:00:00.000Z")
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-13-03T15:30:00Z"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(30_000));
        assert_eq!(parse_duration("5m"), Some(300_000));
        assert_eq!(parse_duration("2h"), Some(7_200_000));
        assert_eq!(parse_duration("7d"), Some(604_800_000));
        assert_eq!(parse_duration("250ms"), Some(250));
        assert_eq!(parse_duration("12"), Some(12_000));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("-5m"), None);
        assert_eq!(format_duration(604_800_000), "7d");
        assert_eq!(format_duration(250), "250ms");
    }
}
