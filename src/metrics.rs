//! Prometheus text exposition (format 0.0.4) helpers.
//!
//! Each helper appends one sample to `out`, preceded by the family's
//! `# HELP` and `# TYPE` lines unless the family is the one `out` ended
//! with: consecutive calls with the same name (one per shard, per code...)
//! therefore build a single family, as the format requires.
//!
//! ```
//! let mut out = String::new();
//! sipis::metrics::counter(&mut out, "sipis_calls_total", "Calls.", &[("shard", "0")], 3u64);
//! sipis::metrics::counter(&mut out, "sipis_calls_total", "Calls.", &[("shard", "1")], 4u64);
//! assert_eq!(
//!     out,
//!     "# HELP sipis_calls_total Calls.\n# TYPE sipis_calls_total counter\n\
//!      sipis_calls_total{shard=\"0\"} 3\nsipis_calls_total{shard=\"1\"} 4\n"
//! );
//! ```
//!
//! Metric and label names are sanitised (any character outside
//! `[a-zA-Z0-9_:]`, resp. `[a-zA-Z0-9_]`, becomes `_`; a leading digit gets
//! a `_` in front); label values and help texts are escaped (`\\`, `\n`,
//! and `\"` in label values).

use hdrhistogram::Histogram;
use std::fmt::Write as _;

/// A sample value: integers are written exactly, floats with Go's
/// spellings of the special values (`NaN`, `+Inf`, `-Inf`).
pub trait MetricValue {
    fn write_value(&self, out: &mut String);
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl MetricValue for $t {
            fn write_value(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
int_value!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl MetricValue for f64 {
    fn write_value(&self, out: &mut String) {
        write_f64(out, *self);
    }
}

impl MetricValue for f32 {
    fn write_value(&self, out: &mut String) {
        write_f64(out, f64::from(*self));
    }
}

impl MetricValue for bool {
    fn write_value(&self, out: &mut String) {
        out.push(if *self { '1' } else { '0' });
    }
}

fn write_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Appends a counter sample (`# TYPE name counter`). By convention the
/// name ends in `_total`.
pub fn counter<V: MetricValue>(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    value: V,
) {
    header(out, name, help, "counter");
    sample(out, name, "", labels, None, &value);
}

/// Appends a gauge sample (`# TYPE name gauge`).
pub fn gauge<V: MetricValue>(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    value: V,
) {
    header(out, name, help, "gauge");
    sample(out, name, "", labels, None, &value);
}

/// The quantiles [`summary_from_histogram`] reports.
pub const QUANTILES: [(f64, &str); 4] =
    [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999")];

/// Appends a summary built from an HDR histogram: quantiles 0.5, 0.9,
/// 0.99 and 0.999, then `_sum` and `_count`. Recorded values are multiplied
/// by `unit_scale` (e.g. `1e-6` for a histogram of microseconds exposed in
/// seconds, as Prometheus base units want). An empty histogram gives `NaN`
/// quantiles and a zero sum and count.
pub fn summary_from_histogram(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    h: &Histogram<u64>,
    unit_scale: f64,
) {
    header(out, name, help, "summary");
    let count = h.len();
    for (q, q_text) in QUANTILES {
        let v = if count == 0 {
            f64::NAN
        } else {
            scale(h.value_at_quantile(q) as f64, unit_scale)
        };
        sample(out, name, "", labels, Some(q_text), &v);
    }
    let sum = if count == 0 {
        0.0
    } else {
        scale(h.mean() * count as f64, unit_scale)
    };
    sample(out, name, "_sum", labels, None, &sum);
    sample(out, name, "_count", labels, None, &count);
}

/// `v * unit_scale`, dividing by the inverse when the scale is the inverse
/// of an integer (1e-3, 1e-6...) so that 1500 µs print as `0.0015`, not
/// `0.0014999999999999998`.
fn scale(v: f64, unit_scale: f64) -> f64 {
    if unit_scale > 0.0 && unit_scale < 1.0 {
        let inv = 1.0 / unit_scale;
        let r = inv.round();
        if (inv - r).abs() <= r * 1e-12 {
            return v / r;
        }
    }
    v * unit_scale
}

/// Writes `# HELP` / `# TYPE` unless the last family in `out` is already
/// `name` of the same type.
fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let mut type_line = String::with_capacity(name.len() + kind.len() + 8);
    type_line.push_str("# TYPE ");
    push_name(&mut type_line, name, true);
    type_line.push(' ');
    type_line.push_str(kind);
    if last_type_line(out) == Some(type_line.as_str()) {
        return;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("# HELP ");
    push_name(out, name, true);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('\n');
    out.push_str(&type_line);
    out.push('\n');
}

/// The last `# TYPE` line of `out` (a line start: label values and help
/// texts cannot hold a raw newline, so no sample line can fake one).
fn last_type_line(out: &str) -> Option<&str> {
    let mut end = out.len();
    while let Some(i) = out[..end].rfind("# TYPE ") {
        if i == 0 || out.as_bytes()[i - 1] == b'\n' {
            let line_end = out[i..].find('\n').map_or(out.len(), |n| i + n);
            return Some(&out[i..line_end]);
        }
        end = i;
    }
    None
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    quantile: Option<&str>,
    value: &dyn MetricValue,
) {
    push_name(out, name, true);
    out.push_str(suffix);
    if !labels.is_empty() || quantile.is_some() {
        out.push('{');
        let mut first = true;
        let extra = quantile.map(|q| ("quantile", q));
        for (k, v) in labels.iter().copied().chain(extra) {
            if !first {
                out.push(',');
            }
            first = false;
            push_name(out, k, false);
            out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    value.write_value(out);
    out.push('\n');
}

/// A metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`) or label name
/// (`[a-zA-Z_][a-zA-Z0-9_]*`); other characters become `_`.
fn push_name(out: &mut String, name: &str, metric: bool) {
    if name.is_empty() {
        out.push('_');
        return;
    }
    if name.as_bytes()[0].is_ascii_digit() {
        out.push('_');
    }
    for c in name.chars() {
        let ok = c.is_ascii_alphanumeric() || c == '_' || (metric && c == ':');
        out.push(if ok { c } else { '_' });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_without_labels() {
        let mut out = String::new();
        counter(&mut out, "sipis_x_total", "Things done.", &[], 42u64);
        assert_eq!(
            out,
            "# HELP sipis_x_total Things done.\n# TYPE sipis_x_total counter\nsipis_x_total 42\n"
        );
    }

    #[test]
    fn consecutive_samples_share_one_family() {
        let mut out = String::new();
        gauge(&mut out, "sipis_up", "Up.", &[("shard", "0")], 1u8);
        gauge(&mut out, "sipis_up", "Up.", &[("shard", "1")], 0u8);
        counter(&mut out, "sipis_n_total", "N.", &[], 5u64);
        gauge(&mut out, "sipis_up", "Up.", &[("shard", "2")], 1u8);
        assert_eq!(
            out,
            "# HELP sipis_up Up.\n# TYPE sipis_up gauge\n\
             sipis_up{shard=\"0\"} 1\nsipis_up{shard=\"1\"} 0\n\
             # HELP sipis_n_total N.\n# TYPE sipis_n_total counter\nsipis_n_total 5\n\
             # HELP sipis_up Up.\n# TYPE sipis_up gauge\nsipis_up{shard=\"2\"} 1\n"
        );
    }

    #[test]
    fn same_name_other_type_gets_its_own_header() {
        let mut out = String::new();
        gauge(&mut out, "a", "A.", &[], 1u8);
        counter(&mut out, "a", "A.", &[], 1u8);
        assert_eq!(out.matches("# TYPE").count(), 2);
    }

    #[test]
    fn escaping_and_sanitising() {
        let mut out = String::new();
        gauge(
            &mut out,
            "sipis-bad.name",
            "Help with \\ and\nnewline.",
            &[("la-bel", "q\"uote\\back\nnl"), ("9x", "# TYPE fake")],
            1.5f64,
        );
        assert_eq!(
            out,
            "# HELP sipis_bad_name Help with \\\\ and\\nnewline.\n\
             # TYPE sipis_bad_name gauge\n\
             sipis_bad_name{la_bel=\"q\\\"uote\\\\back\\nnl\",_9x=\"# TYPE fake\"} 1.5\n"
        );
        // A label value that looks like a TYPE line is not taken for one.
        gauge(&mut out, "other", "O.", &[], 2u8);
        assert!(out.ends_with("# TYPE other gauge\nother 2\n"));
    }

    #[test]
    fn leading_digit_and_colon() {
        let mut out = String::new();
        counter(&mut out, "1st:rule", "R.", &[("a:b", "v")], 1u32);
        assert_eq!(
            out,
            "# HELP _1st:rule R.\n# TYPE _1st:rule counter\n_1st:rule{a_b=\"v\"} 1\n"
        );
    }

    #[test]
    fn float_special_values() {
        let mut out = String::new();
        gauge(&mut out, "g", "G.", &[("k", "nan")], f64::NAN);
        gauge(&mut out, "g", "G.", &[("k", "inf")], f64::INFINITY);
        gauge(&mut out, "g", "G.", &[("k", "-inf")], f64::NEG_INFINITY);
        gauge(&mut out, "g", "G.", &[("k", "neg")], -0.25f64);
        gauge(&mut out, "g", "G.", &[("k", "int")], 3.0f64);
        gauge(&mut out, "g", "G.", &[("k", "bool")], true);
        assert_eq!(
            out,
            "# HELP g G.\n# TYPE g gauge\n\
             g{k=\"nan\"} NaN\ng{k=\"inf\"} +Inf\ng{k=\"-inf\"} -Inf\n\
             g{k=\"neg\"} -0.25\ng{k=\"int\"} 3\ng{k=\"bool\"} 1\n"
        );
    }

    #[test]
    fn summary_of_microseconds_in_seconds() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap(); // 10 µs .. 10 ms
        }
        let mut out = String::new();
        summary_from_histogram(
            &mut out,
            "sipis_register_seconds",
            "REGISTER round trip.",
            &[("shard", "0")],
            &h,
            1e-6,
        );
        let q = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
        let sum = h.mean() * 1000.0 / 1e6;
        let expected = format!(
            "# HELP sipis_register_seconds REGISTER round trip.\n\
             # TYPE sipis_register_seconds summary\n\
             sipis_register_seconds{{shard=\"0\",quantile=\"0.5\"}} {}\n\
             sipis_register_seconds{{shard=\"0\",quantile=\"0.9\"}} {}\n\
             sipis_register_seconds{{shard=\"0\",quantile=\"0.99\"}} {}\n\
             sipis_register_seconds{{shard=\"0\",quantile=\"0.999\"}} {}\n\
             sipis_register_seconds_sum{{shard=\"0\"}} {}\n\
             sipis_register_seconds_count{{shard=\"0\"}} 1000\n",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            sum
        );
        assert_eq!(out, expected);
        // The values are the histogram's, within its 3 significant digits.
        assert!((q(0.5) - 0.005).abs() < 0.00001, "{}", q(0.5));
        assert!((sum - 5.005).abs() < 0.01, "{sum}");
    }

    #[test]
    fn summary_exact_text_small() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        h.record(1500).unwrap();
        let mut out = String::new();
        summary_from_histogram(&mut out, "lat_seconds", "L.", &[], &h, 1e-6);
        assert_eq!(
            out,
            "# HELP lat_seconds L.\n# TYPE lat_seconds summary\n\
             lat_seconds{quantile=\"0.5\"} 0.0015\n\
             lat_seconds{quantile=\"0.9\"} 0.0015\n\
             lat_seconds{quantile=\"0.99\"} 0.0015\n\
             lat_seconds{quantile=\"0.999\"} 0.0015\n\
             lat_seconds_sum 0.0015\n\
             lat_seconds_count 1\n"
        );
    }

    #[test]
    fn summary_of_empty_histogram() {
        let h = Histogram::<u64>::new(3).unwrap();
        let mut out = String::new();
        summary_from_histogram(&mut out, "s", "S.", &[], &h, 1.0);
        assert_eq!(
            out,
            "# HELP s S.\n# TYPE s summary\n\
             s{quantile=\"0.5\"} NaN\ns{quantile=\"0.9\"} NaN\n\
             s{quantile=\"0.99\"} NaN\ns{quantile=\"0.999\"} NaN\n\
             s_sum 0\ns_count 0\n"
        );
    }

    #[test]
    fn unit_scale_above_one() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        h.record(2).unwrap();
        let mut out = String::new();
        summary_from_histogram(&mut out, "b", "B.", &[], &h, 1024.0);
        assert!(out.contains("b{quantile=\"0.5\"} 2048\n"), "{out}");
        assert!(out.contains("b_sum 2048\nb_count 1\n"), "{out}");
    }
}
