//! The contract between the HTTP/1.1 server and what it serves: a
//! [`Site`] resolves targets to routes and answers [`Call`]s with
//! [`Response`]s. The admin API (`routes`) and the push mediator's front
//! are sites; the server (`server`) knows only this module.

use super::json::ErrorBody;
use super::AdminConfig;
use serde::Serialize;

/// What a request target designates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target<R> {
    Found(R),
    NotFound,
    /// Undecodable path (bad `%` escape, not UTF-8).
    BadPath,
}

/// Splits a request target into its path and query (without `?`).
/// Absolute-form targets (`http://host/path`) are accepted.
pub(crate) fn split_target(target: &str) -> (&str, &str) {
    let mut t = target;
    for scheme in ["http://", "https://"] {
        if t.len() >= scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &t[scheme.len()..];
            t = rest.find('/').map_or("/", |i| &rest[i..]);
            break;
        }
    }
    match t.find('?') {
        Some(i) => (&t[..i], &t[i + 1..]),
        None => (t, ""),
    }
}

/// A response to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    /// Close the connection after this response.
    pub close: bool,
    /// Answer to HEAD: headers only, without `Content-Length`.
    pub omit_body: bool,
}

pub(crate) const JSON: &str = "application/json";
pub(crate) const METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Response {
    pub(crate) fn json<T: Serialize>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response {
                status,
                content_type: JSON,
                body,
                headers: Vec::new(),
                close: false,
                omit_body: false,
            },
            Err(e) => Response::error(500, &format!("cannot encode response: {e}")),
        }
    }

    pub(crate) fn error(status: u16, message: &str) -> Response {
        Response::json(
            status,
            &ErrorBody {
                error: message.to_string(),
            },
        )
    }

    pub(crate) fn no_content() -> Response {
        Response {
            status: 204,
            content_type: "",
            body: Vec::new(),
            headers: Vec::new(),
            close: false,
            omit_body: false,
        }
    }

    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub(crate) fn closing(mut self) -> Response {
        self.close = true;
        self
    }
}

/// The request as the handlers see it.
pub(crate) struct Call<'a> {
    pub method: &'a str,
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// What the HTTP server serves: its routes and their handlers.
pub(crate) trait Site: Send + Sync + 'static {
    /// Names the server in configuration errors (`<NAME>.token`), thread
    /// names (`sipis-<NAME>-conn`) and metrics (`sipis_<NAME>_connections`).
    const NAME: &'static str;
    /// What listens, for error messages ("the admin API").
    const DESCRIPTION: &'static str;
    type Route: Send;
    /// Resolves a request path (without its query).
    fn resolve(&self, path: &str) -> Target<Self::Route>;
    /// The `Allow` header value of a route: methods separated by `", "`.
    fn allow(&self, route: &Self::Route) -> &'static str;
    fn needs_auth(&self, route: &Self::Route) -> bool;
    /// The largest request body the route accepts (413 above).
    fn body_limit(&self, route: &Self::Route, cfg: &AdminConfig) -> usize;
    /// Serves an allowed, authorised method on a route. `server_metrics`
    /// appends the server's own metrics (for a `/metrics` route).
    fn dispatch(
        &self,
        route: &Self::Route,
        call: &Call<'_>,
        server_metrics: &dyn Fn(&mut String),
    ) -> Response;
}

/// Whether `method` is in an `Allow` list ([`Site::allow`]).
pub(crate) fn allows(allow: &str, method: &str) -> bool {
    allow.split(", ").any(|m| m == method)
}
