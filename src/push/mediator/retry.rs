//! Retrying inside a push's deadline: exponential back-off with jitter,
//! or the server's `Retry-After` when it sends one.
//!
//! Apple ("Handling notification responses from APNs") answers 429 when a
//! device gets too many pushes and 500/503 when it is unwell; Google
//! ("Best practices when sending FCM messages at scale", "Retry") asks for
//! exponential back-off on 429 and 5xx and to honour `Retry-After`.

use http::HeaderMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The first wait; each retry doubles it up to [`MAX_DELAY`].
pub(crate) const FIRST_DELAY: Duration = Duration::from_millis(100);
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(2);

/// Back-off state of one push.
#[derive(Debug)]
pub(crate) struct Backoff {
    deadline: Instant,
    delay: Duration,
    /// Retries granted so far.
    pub(crate) retries: u32,
}

impl Backoff {
    pub(crate) fn new(deadline: Instant) -> Backoff {
        Backoff {
            deadline,
            delay: FIRST_DELAY,
            retries: 0,
        }
    }

    /// How long to wait before the next attempt: the server's
    /// `retry_after` if it gave one, else the next back-off step with
    /// "equal jitter" (half fixed, half random), so that pushes failing
    /// together do not retry together. `None` when the attempt would start
    /// after the deadline: give up now rather than sleep for nothing.
    pub(crate) fn next(&mut self, now: Instant, retry_after: Option<Duration>) -> Option<Duration> {
        let wait = match retry_after {
            Some(w) => w,
            None => {
                let half = self.delay / 2;
                let jitter = half.mul_f64(random_unit());
                self.delay = (self.delay * 2).min(MAX_DELAY);
                half + jitter
            }
        };
        if now + wait >= self.deadline {
            return None;
        }
        self.retries += 1;
        Some(wait)
    }
}

/// A uniform number in [0, 1).
fn random_unit() -> f64 {
    let r = getrandom::u32().unwrap_or(0x8000_0000);
    f64::from(r) / (f64::from(u32::MAX) + 1.0)
}

/// The `Retry-After` of an answer (RFC 9110 §10.2.3): delay-seconds or an
/// HTTP-date, as a wait from `now`. A date in the past is no wait.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX / 2)));
    }
    let at = UNIX_EPOCH + Duration::from_secs(parse_imf_fixdate(v)?);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7, IMF-fixdate, the form
/// senders must use) as Unix seconds.
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 29 || &b[3..5] != b", " || &b[25..] != b" GMT" {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let day = num(5..7)?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| s.get(8..11) == Some(*m))? as u64 + 1;
    let year = num(12..16)?;
    let (h, m, sec) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if b[7] != b' ' || b[11] != b' ' || b[16] != b' ' || b[19] != b':' || b[22] != b':' {
        return None;
    }
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || year < 1970 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (year ≥ 1970).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    // Shift the year to start in March, so the leap day is the year's last.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_imf_fixdate("Tue, 29 Feb 2028 12:00:00 GMT"),
            Some(1_835_438_400)
        );
        assert_eq!(parse_imf_fixdate("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_imf_fixdate("Sun, 06 Xyz 1994 08:49:37 GMT"), None);
        assert_eq!(parse_imf_fixdate("Sun, 06 Nov 1994 24:49:37 GMT"), None);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        let now = UNIX_EPOCH + Duration::from_secs(784_111_700);
        assert_eq!(retry_after(&h, now), None);
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(77)));
        let later = now + Duration::from_secs(1000);
        assert_eq!(retry_after(&h, later), Some(Duration::ZERO));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_deadline() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0 + Duration::from_secs(10));
        let mut expected = FIRST_DELAY;
        for _ in 0..8 {
            let w = b.next(t0, None).unwrap();
            assert!(w >= expected / 2 && w <= expected, "{w:?} vs {expected:?}");
            expected = (expected * 2).min(MAX_DELAY);
        }
        assert_eq!(b.retries, 8);
        // Retry-After is taken as given...
        assert_eq!(
            b.next(t0, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        // ...unless it ends past the deadline.
        assert_eq!(b.next(t0, Some(Duration::from_secs(10))), None);
        assert_eq!(b.next(t0 + Duration::from_millis(9_999), None), None);
        assert_eq!(b.retries, 9);
    }
}
