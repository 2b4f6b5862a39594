//! Bulk provisioning from CSV.
//!
//! The first row is a header naming the columns, in any order:
//!
//! | column | required | meaning |
//! |---|---|---|
//! | `aor` | yes | `sip:` or `sips:` URI, unique in the file |
//! | `auth_user` | yes | digest user name |
//! | `password` | one of the two | plain password |
//! | `ha1` | one of the two | HA1 as 32 or 64 hex digits |
//! | `registrar` | no | `sip:`/`sips:` URI; empty = proxy mode |
//! | `outbound_proxy` | no | `sip:`/`sips:` URI |
//! | `expires` | no | seconds, 1..=4294967295; default 3600 |
//! | `enabled` | no | `true`/`false` (also `1`/`0`, `yes`/`no`); default true |
//!
//! Fields are trimmed; an empty field is "not set". Lines starting with `#`
//! and blank lines are skipped. Unknown columns are refused (a typo would
//! otherwise silently drop data). Each account gets a fresh token from the
//! caller's generator. The first bad row stops the parse with an error
//! naming its line, column and what is wrong.

use super::NewAccount;
use crate::AccountSecret;
use std::collections::HashMap;
use std::fmt;
use std::io;

/// Default `expires` when the column is absent or empty.
const DEFAULT_EXPIRES: u32 = 3600;

const COLUMNS: [&str; 8] = [
    "aor",
    "auth_user",
    "password",
    "ha1",
    "registrar",
    "outbound_proxy",
    "expires",
    "enabled",
];

/// A CSV import error: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvError {
    /// 1-based line of the input (the header is line 1); 0 if unknown.
    pub line: u64,
    /// The column concerned, if the error is about one field.
    pub column: Option<String>,
    pub message: String,
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(c) => write!(f, "line {}, column {c}: {}", self.line, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

impl std::error::Error for CsvError {}

fn err(line: u64, column: Option<&str>, message: impl Into<String>) -> CsvError {
    CsvError {
        line,
        column: column.map(str::to_string),
        message: message.into(),
    }
}

fn from_csv(e: ::csv::Error, fallback_line: u64) -> CsvError {
    let line = e.position().map_or(fallback_line, |p| p.line());
    let message = match e.kind() {
        ::csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("expected {expected_len} fields as in the header, found {len}"),
        ::csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
        ::csv::ErrorKind::Io(io) => format!("cannot read: {io}"),
        _ => e.to_string(),
    };
    err(line, None, message)
}

fn is_sip_uri(s: &str) -> bool {
    // The scheme is case-insensitive (RFC 3261 §19.1.1).
    let has = |scheme: &str| {
        s.get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
    };
    let rest = if has("sips:") {
        &s[5..]
    } else if has("sip:") {
        &s[4..]
    } else {
        return false;
    };
    !rest.is_empty() && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Parses accounts from CSV (see the module doc for the columns).
/// `token_gen` is called once per account (use [`super::new_token`]).
pub fn parse_accounts_csv<R: io::Read>(
    reader: R,
    mut token_gen: impl FnMut() -> String,
) -> Result<Vec<NewAccount>, CsvError> {
    let mut rdr = ::csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(::csv::Trim::All)
        .comment(Some(b'#'))
        .flexible(false)
        .from_reader(reader);

    let headers = rdr.headers().map_err(|e| from_csv(e, 1))?.clone();
    let header_line = headers.position().map_or(1, |p| p.line());
    let mut index: HashMap<&'static str, usize> = HashMap::new();
    for (i, h) in headers.iter().enumerate() {
        let name = h.trim_start_matches('\u{feff}').to_ascii_lowercase();
        let Some(known) = COLUMNS.iter().find(|c| **c == name) else {
            return Err(err(
                header_line,
                Some(h),
                format!("unknown column (expected some of: {})", COLUMNS.join(",")),
            ));
        };
        if index.insert(known, i).is_some() {
            return Err(err(header_line, Some(known), "column appears twice"));
        }
    }
    for required in ["aor", "auth_user"] {
        if !index.contains_key(required) {
            return Err(err(header_line, Some(required), "required column missing"));
        }
    }
    if !index.contains_key("password") && !index.contains_key("ha1") {
        return Err(err(
            header_line,
            None,
            "the header needs a password or an ha1 column",
        ));
    }

    let mut out = Vec::new();
    let mut seen_aor: HashMap<String, u64> = HashMap::new();
    let mut record = ::csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(from_csv(e, header_line + 1)),
        }
        let line = record.position().map_or(0, |p| p.line());
        let field = |name: &str| -> Option<&str> {
            let v = record.get(*index.get(name)?)?;
            (!v.is_empty()).then_some(v)
        };

        let aor = field("aor").ok_or_else(|| err(line, Some("aor"), "required"))?;
        if !is_sip_uri(aor) {
            return Err(err(
                line,
                Some("aor"),
                format!("{aor:?} is not a sip: or sips: URI"),
            ));
        }
        if let Some(first) = seen_aor.insert(aor.to_string(), line) {
            return Err(err(
                line,
                Some("aor"),
                format!("{aor:?} already appears on line {first}"),
            ));
        }
        let auth_user =
            field("auth_user").ok_or_else(|| err(line, Some("auth_user"), "required"))?;

        let secret = match (field("password"), field("ha1")) {
            (Some(_), Some(_)) => {
                return Err(err(
                    line,
                    Some("ha1"),
                    "set either password or ha1, not both",
                ))
            }
            (None, None) => {
                let col = if index.contains_key("password") {
                    "password"
                } else {
                    "ha1"
                };
                return Err(err(line, Some(col), "one of password and ha1 is required"));
            }
            (Some(p), None) => AccountSecret::Password(p.to_string()),
            (None, Some(h)) => {
                if !(h.len() == 32 || h.len() == 64) || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(err(
                        line,
                        Some("ha1"),
                        format!("{h:?} is not 32 or 64 hex digits"),
                    ));
                }
                AccountSecret::Ha1(h.to_ascii_lowercase())
            }
        };

        let uri = |name: &'static str| -> Result<Option<String>, CsvError> {
            match field(name) {
                None => Ok(None),
                Some(v) if is_sip_uri(v) => Ok(Some(v.to_string())),
                Some(v) => Err(err(
                    line,
                    Some(name),
                    format!("{v:?} is not a sip: or sips: URI"),
                )),
            }
        };
        let registrar = uri("registrar")?;
        let outbound_proxy = uri("outbound_proxy")?;

        let expires = match field("expires") {
            None => DEFAULT_EXPIRES,
            Some(v) => match v.parse::<u32>() {
                Ok(0) => {
                    return Err(err(
                        line,
                        Some("expires"),
                        "\"0\": expires must be at least 1 second",
                    ))
                }
                Ok(n) => n,
                Err(_) => {
                    return Err(err(
                        line,
                        Some("expires"),
                        format!("{v:?} is not a number of seconds"),
                    ))
                }
            },
        };

        let enabled = match field("enabled").map(str::to_ascii_lowercase).as_deref() {
            None => true,
            Some("true" | "1" | "yes" | "y" | "on") => true,
            Some("false" | "0" | "no" | "n" | "off") => false,
            Some(_) => {
                return Err(err(
                    line,
                    Some("enabled"),
                    format!(
                        "{:?} is not true or false",
                        field("enabled").unwrap_or_default()
                    ),
                ))
            }
        };

        out.push(NewAccount {
            aor: aor.to_string(),
            auth_user: auth_user.to_string(),
            secret,
            registrar,
            outbound_proxy,
            expires,
            token: token_gen(),
            enabled,
        });
    }
    Ok(out)
}
