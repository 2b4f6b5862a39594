//! Durations as people write them in the configuration and read them in
//! messages: `"500ms"`, `"32s"`, `"1m30s"`.

use std::time::Duration;

/// Parses `"500ms"`, `"32s"`, `"5m"`, `"1h"`, `"2d"` and sums of them
/// (`"1m30s"`, `"1h 30m"`). A unit is required.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs_per = match rest[..unit_end].trim() {
            "ms" => {
                total = total.checked_add(Duration::from_millis(n))?;
                rest = &rest[unit_end..];
                continue;
            }
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return None,
        };
        total = total.checked_add(Duration::from_secs(n.checked_mul(secs_per)?))?;
        rest = &rest[unit_end..];
    }
    Some(total)
}

/// The shortest of `"1500ms"`, `"32s"`, `"5m"`, `"1h"` that is exact.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() % 1_000_000 != 0 {
        return format!("{d:?}");
    }
    if d.subsec_millis() != 0 || d.is_zero() {
        return format!("{}ms", d.as_millis());
    }
    let s = d.as_secs();
    if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}
