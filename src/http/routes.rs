//! Routing: paths to [`Route`]s, and each route's handler over the
//! [`AdminApi`].

use super::json::{
    AccountList, AccountUpdate, DeviceList, DeviceRequest, ImportResult, NewAccountRequest,
    DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT,
};
use super::server::HttpServer;
use super::site::{Call, Response, Site, Target, JSON, METRICS};
use super::HttpError;
use super::{AdminApi, AdminConfig, ApiError, Liveness, OnConflict};
use crate::AccountId;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;

/// A resource of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Health,
    Live,
    Ready,
    Metrics,
    Accounts,
    Import,
    Account(AccountId),
    Devices(AccountId),
    Device(AccountId, String),
}

impl Route {
    /// The `Allow` header value.
    pub(crate) fn allow(&self) -> &'static str {
        match self {
            Route::Health | Route::Live | Route::Ready | Route::Metrics | Route::Devices(_) => {
                "GET"
            }
            Route::Accounts => "GET, POST",
            Route::Import => "POST",
            Route::Account(_) => "GET, PATCH, DELETE",
            Route::Device(..) => "PUT, DELETE",
        }
    }

    /// Everything but the health checks needs the token (they tell no
    /// secret: states and counts only).
    pub(crate) fn needs_auth(&self) -> bool {
        !matches!(self, Route::Health | Route::Live | Route::Ready)
    }

    /// The bulk import has its own (larger) body limit.
    pub(crate) fn is_import(&self) -> bool {
        *self == Route::Import
    }
}

/// Resolves a path (percent-escapes are decoded per segment, so `%2F` in
/// a device name stays inside it).
pub(crate) fn resolve(path: &str) -> Target<Route> {
    let Some(rest) = path.strip_prefix('/') else {
        return Target::NotFound;
    };
    let mut segs = Vec::with_capacity(4);
    for raw in rest.split('/') {
        match percent_decode(raw) {
            Some(s) => segs.push(s),
            None => return Target::BadPath,
        }
    }
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let id = |s: &str| -> Option<AccountId> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let route = match segs.as_slice() {
        ["health"] => Route::Health,
        ["health", "live"] => Route::Live,
        ["health", "ready"] => Route::Ready,
        ["metrics"] => Route::Metrics,
        ["accounts"] => Route::Accounts,
        ["accounts", "import"] => Route::Import,
        ["accounts", i] => match id(i) {
            Some(i) => Route::Account(i),
            None => return Target::NotFound,
        },
        ["accounts", i, "devices"] => match id(i) {
            Some(i) => Route::Devices(i),
            None => return Target::NotFound,
        },
        ["accounts", i, "devices", d] => match id(i) {
            Some(i) => Route::Device(i, d.to_string()),
            None => return Target::NotFound,
        },
        _ => return Target::NotFound,
    };
    Target::Found(route)
}

/// The admin API as a [`Site`] of the HTTP server.
pub(crate) struct AdminSite {
    pub(crate) api: std::sync::Arc<dyn AdminApi>,
}

impl Site for AdminSite {
    const NAME: &'static str = "admin";
    const DESCRIPTION: &'static str = "the admin API";
    type Route = Route;

    fn resolve(&self, path: &str) -> Target<Route> {
        resolve(path)
    }

    fn allow(&self, route: &Route) -> &'static str {
        route.allow()
    }

    fn needs_auth(&self, route: &Route) -> bool {
        route.needs_auth()
    }

    fn body_limit(&self, route: &Route, cfg: &AdminConfig) -> usize {
        if route.is_import() {
            cfg.max_import_bytes
        } else {
            cfg.max_body_bytes
        }
    }

    fn dispatch(
        &self,
        route: &Route,
        call: &Call<'_>,
        server_metrics: &dyn Fn(&mut String),
    ) -> Response {
        dispatch(&*self.api, route, call, server_metrics)
    }
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl From<ApiError> for Response {
    fn from(e: ApiError) -> Response {
        let status = if (400..=599).contains(&e.status) {
            e.status
        } else {
            500
        };
        Response::error(status, &e.message)
    }
}

/// Serves an allowed method on a route. `server_metrics` appends the
/// server's own metrics to `GET /metrics`.
pub(crate) fn dispatch(
    api: &dyn AdminApi,
    route: &Route,
    call: &Call<'_>,
    server_metrics: &dyn Fn(&mut String),
) -> Response {
    match handle(api, route, call, server_metrics) {
        Ok(r) => r,
        Err(e) => e.into(),
    }
}

fn handle(
    api: &dyn AdminApi,
    route: &Route,
    call: &Call<'_>,
    server_metrics: &dyn Fn(&mut String),
) -> Result<Response, ApiError> {
    Ok(match (route, call.method) {
        (Route::Health, _) => {
            let h = api.health();
            Response::json(if h.ok { 200 } else { 503 }, &h)
        }
        (Route::Metrics, _) => {
            let mut out = String::with_capacity(8192);
            api.render_metrics(&mut out);
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            server_metrics(&mut out);
            Response {
                status: 200,
                content_type: METRICS,
                body: out.into_bytes(),
                headers: Vec::new(),
                close: false,
                omit_body: false,
            }
        }
        (Route::Accounts, "GET") => {
            let (after, limit) = list_query(call.query)?;
            let accounts = api.list_accounts(after, limit)?;
            let next_after = if accounts.len() >= limit {
                accounts.last().map(|a| a.id)
            } else {
                None
            };
            Response::json(
                200,
                &AccountList {
                    accounts,
                    next_after,
                },
            )
        }
        (Route::Accounts, _) => {
            let new: NewAccountRequest = json_body(call)?;
            new.validate()?;
            let view = api.create_account(new)?;
            let location = format!("/accounts/{}", view.id);
            Response::json(201, &view).header("Location", location)
        }
        (Route::Live, _) => Response::json(
            200,
            &Liveness {
                status: "live".into(),
                version: crate::VERSION.into(),
            },
        ),
        (Route::Ready, _) => {
            let r = api.ready();
            Response::json(r.status.http_status(), &r)
        }
        (Route::Import, _) => {
            let on_conflict = import_query(call.query)?;
            expect_type(call.content_type, "text/csv")?;
            let result: ImportResult = api.import_accounts(call.body, on_conflict)?;
            Response::json(200, &result)
        }
        (Route::Account(id), "GET") => Response::json(200, &api.get_account(*id)?),
        (Route::Account(id), "PATCH") => {
            let update: AccountUpdate = json_body(call)?;
            update.validate()?;
            Response::json(200, &api.update_account(*id, update)?)
        }
        (Route::Account(id), _) => {
            api.delete_account(*id)?;
            Response::no_content()
        }
        (Route::Devices(id), _) => {
            let devices = api.list_devices(*id)?;
            Response::json(200, &DeviceList { devices })
        }
        (Route::Device(id, device), "PUT") => {
            DeviceRequest::validate_name(device)?;
            let req: DeviceRequest = json_body(call)?;
            req.validate()?;
            Response::json(200, &api.put_device(*id, device, req)?)
        }
        (Route::Device(id, device), _) => {
            DeviceRequest::validate_name(device)?;
            api.delete_device(*id, device)?;
            Response::no_content()
        }
    })
}

/// `after` (default 0) and `limit` (default 100, 1..=1000).
fn list_query(query: &str) -> Result<(AccountId, usize), ApiError> {
    let mut after = 0;
    let mut limit = DEFAULT_LIST_LIMIT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).unwrap_or_default();
        match k {
            "after" => {
                after = v.parse().map_err(|_| {
                    ApiError::bad_request(format!("query \"after\": {v:?} is not an account id"))
                })?;
            }
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIST_LIMIT).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "query \"limit\": {v:?} is not a number in 1..={MAX_LIST_LIMIT}"
                        ))
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (expected \"after\", \"limit\")"
                )))
            }
        }
    }
    Ok((after, limit))
}

/// `on_conflict` = `fail` (default), `skip` or `update`.
fn import_query(query: &str) -> Result<OnConflict, ApiError> {
    let mut mode = OnConflict::Fail;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).unwrap_or_default();
        match k {
            "on_conflict" => {
                mode = OnConflict::parse(&v).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "query \"on_conflict\": {v:?} is not one of fail, skip, update"
                    ))
                })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (expected \"on_conflict\")"
                )))
            }
        }
    }
    Ok(mode)
}

fn expect_type(content_type: Option<&str>, want: &str) -> Result<(), ApiError> {
    match content_type {
        None => Ok(()),
        Some(ct)
            if ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(want) =>
        {
            Ok(())
        }
        Some(ct) => Err(ApiError::new(
            415,
            format!("Content-Type {ct:?} not supported: send {want}"),
        )),
    }
}

fn json_body<T: DeserializeOwned>(call: &Call<'_>) -> Result<T, ApiError> {
    expect_type(call.content_type, JSON)?;
    serde_json::from_slice(call.body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A running admin server. Dropping it shuts it down too.
pub struct AdminServer(HttpServer<AdminSite>);

impl AdminServer {
    /// Checks the configuration, loads the TLS files, binds and starts
    /// serving. Refuses a non-loopback `listen` without a token.
    pub fn start(cfg: AdminConfig, api: Arc<dyn AdminApi>) -> Result<AdminServer, HttpError> {
        HttpServer::start(cfg, AdminSite { api }).map(AdminServer)
    }

    /// The bound address (the port chosen when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    /// Stops accepting, closes every connection (requests being served
    /// finish first) and joins all threads.
    pub fn shutdown(self) {
        self.0.shutdown();
    }
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("local_addr", &self.0.local_addr())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_paths() {
        assert_eq!(resolve("/health"), Target::Found(Route::Health));
        assert_eq!(resolve("/health/live"), Target::Found(Route::Live));
        assert_eq!(resolve("/health/ready"), Target::Found(Route::Ready));
        assert_eq!(resolve("/health/other"), Target::NotFound);
        assert_eq!(resolve("/accounts/import"), Target::Found(Route::Import));
        assert_eq!(resolve("/accounts/42"), Target::Found(Route::Account(42)));
        assert_eq!(
            resolve("/accounts/42/devices"),
            Target::Found(Route::Devices(42))
        );
        assert_eq!(
            resolve("/accounts/42/devices/my%20phone"),
            Target::Found(Route::Device(42, "my phone".into()))
        );
        assert_eq!(
            resolve("/accounts/1/devices/a%2Fb"),
            Target::Found(Route::Device(1, "a/b".into()))
        );
        assert_eq!(resolve("/accounts/x"), Target::NotFound);
        assert_eq!(resolve("/accounts/+1"), Target::NotFound);
        assert_eq!(
            resolve("/accounts/99999999999999999999999"),
            Target::NotFound
        );
        assert_eq!(resolve("/accounts/"), Target::NotFound);
        assert_eq!(resolve("/"), Target::NotFound);
        assert_eq!(resolve("*"), Target::NotFound);
        assert_eq!(resolve("/accounts/1/devices/%zz"), Target::BadPath);
        assert_eq!(resolve("/accounts/1/devices/%ff"), Target::BadPath);
    }

    #[test]
    fn splits_targets() {
        use super::super::site::split_target;
        assert_eq!(split_target("/accounts?after=3"), ("/accounts", "after=3"));
        assert_eq!(split_target("http://h:1/accounts?x"), ("/accounts", "x"));
        assert_eq!(split_target("HTTP://h"), ("/", ""));
    }

    #[test]
    fn allow_lists() {
        use super::super::site::allows;
        assert!(allows(Route::Accounts.allow(), "POST"));
        assert!(!allows(Route::Accounts.allow(), "PUT"));
        assert!(!allows(Route::Accounts.allow(), "POS"));
        assert!(allows(Route::Device(1, "d".into()).allow(), "DELETE"));
    }

    #[test]
    fn import_queries() {
        assert_eq!(import_query("").unwrap(), OnConflict::Fail);
        assert_eq!(import_query("on_conflict=skip").unwrap(), OnConflict::Skip);
        assert_eq!(
            import_query("on_conflict=update").unwrap(),
            OnConflict::Update
        );
        assert!(import_query("on_conflict=merge")
            .unwrap_err()
            .message
            .contains("fail, skip, update"));
        assert!(import_query("mode=skip")
            .unwrap_err()
            .message
            .contains("mode"));
    }

    #[test]
    fn health_routes_need_no_token() {
        assert!(!Route::Live.needs_auth() && !Route::Ready.needs_auth());
        assert!(Route::Metrics.needs_auth());
    }

    #[test]
    fn list_queries() {
        assert_eq!(list_query("").unwrap(), (0, 100));
        assert_eq!(list_query("after=5&limit=1000").unwrap(), (5, 1000));
        assert!(list_query("limit=1001")
            .unwrap_err()
            .message
            .contains("\"limit\""));
        assert!(list_query("limit=0").is_err());
        assert!(list_query("after=-1")
            .unwrap_err()
            .message
            .contains("\"after\""));
        assert!(list_query("limt=5").unwrap_err().message.contains("limt"));
    }
}
