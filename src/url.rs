//! HTTP URLs in settings: whether one is usable, and how to show one
//! without its password.

use std::net::Ipv6Addr;

/// A URL with its password, if any, replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let auth_start = scheme_end + 3;
    let auth_end = url[auth_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| auth_start + i);
    let authority = &url[auth_start..auth_end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..auth_start],
                &authority[..colon],
                &url[auth_start + at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Why `u` is not a usable `http://` / `https://` URL, if it is not:
/// scheme, a host name or IP (IPv6 in brackets), an optional port 1..=65535,
/// an optional path and query; no credentials, fragment or spaces.
pub fn http_url_problem(u: &str) -> Option<String> {
    let rest = match u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
    {
        Some(r) => r,
        None => return Some("expected an http:// or https:// URL".to_owned()),
    };
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("the URL must not contain spaces or control characters".to_owned());
    }
    if u.contains('#') {
        return Some("the URL must not have a #fragment".to_owned());
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains('@') {
        return Some(
            "the URL must not carry credentials (user@): tokens have their own keys".to_owned(),
        );
    }
    let port = if let Some(v6) = authority.strip_prefix('[') {
        let Some((ip, after)) = v6.split_once(']') else {
            return Some("unclosed '[' in the URL's host".to_owned());
        };
        if ip.parse::<Ipv6Addr>().is_err() {
            return Some(format!("{ip:?} is not an IPv6 address"));
        }
        match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Some("expected ':port' after the IPv6 address".to_owned()),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => {
                if !valid_hostname(h) {
                    return Some(format!("{h:?} is not a host name or IP address"));
                }
                Some(p)
            }
            None => {
                if !valid_hostname(authority) {
                    return Some(if authority.is_empty() {
                        "the URL has no host".to_owned()
                    } else {
                        format!("{authority:?} is not a host name or IP address")
                    });
                }
                None
            }
        }
    };
    if let Some(p) = port {
        if !matches!(p.parse::<u16>(), Ok(n) if n != 0) {
            return Some(format!("{p:?} is not a port 1..=65535"));
        }
    }
    None
}

pub(crate) fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
