//! The mediator's front: the unified push protocol over HTTP/1.1, served
//! by the admin API's server (`crate::http::server`) with the mediator's
//! routes, and the tokio runtime the pushes run on.
//!
//! | route | method | answer |
//! |---|---|---|
//! | `/push` | POST, body [`PushRequest`] | 200 [`PushAnswer`]; 400 `{"error"}` for bad JSON |
//! | `/health` (no token needed) | GET | 200 `{"ok":true,"apns":bool,"fcm":bool}` |
//! | `/metrics` | GET | 200 Prometheus text |
//!
//! A connection thread of the front blocks on its push while the runtime
//! drives the HTTP/2 side: HTTP/1.1 carries one request at a time per
//! connection anyway, so the push client's parallel keep-alive
//! connections are what gives the mediator its concurrency.

use super::{Mediator, MediatorConfig, MediatorError};
use crate::http::server::HttpServer;
use crate::http::site::{Call, Response, Site, Target, JSON, METRICS};
use crate::http::AdminConfig;
use crate::push::{PushAnswer, PushRequest};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Largest `POST /push` body: a push request is a few hundred bytes; the
/// payload limits of APNs and FCM are 4–5 KiB.
pub(crate) const MAX_PUSH_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Push,
    Health,
    Metrics,
}

#[derive(Serialize)]
struct HealthBody {
    ok: bool,
    apns: bool,
    fcm: bool,
}

struct MediatorSite {
    mediator: Arc<Mediator>,
    runtime: tokio::runtime::Handle,
}

impl Site for MediatorSite {
    const NAME: &'static str = "mediator";
    const DESCRIPTION: &'static str = "the push mediator";
    type Route = Route;

    fn resolve(&self, path: &str) -> Target<Route> {
        match path {
            "/push" => Target::Found(Route::Push),
            "/health" => Target::Found(Route::Health),
            "/metrics" => Target::Found(Route::Metrics),
            _ => Target::NotFound,
        }
    }

    fn allow(&self, route: &Route) -> &'static str {
        match route {
            Route::Push => "POST",
            Route::Health | Route::Metrics => "GET",
        }
    }

    fn needs_auth(&self, route: &Route) -> bool {
        *route != Route::Health
    }

    fn body_limit(&self, _: &Route, cfg: &AdminConfig) -> usize {
        cfg.max_body_bytes
    }

    fn dispatch(
        &self,
        route: &Route,
        call: &Call<'_>,
        server_metrics: &dyn Fn(&mut String),
    ) -> Response {
        match route {
            Route::Push => {
                if let Some(ct) = call.content_type {
                    let mime = ct.split(';').next().unwrap_or("").trim();
                    if !mime.eq_ignore_ascii_case(JSON) {
                        return Response::error(
                            415,
                            &format!("Content-Type {ct:?} not supported: send {JSON}"),
                        );
                    }
                }
                let req: PushRequest = match serde_json::from_slice(call.body) {
                    Ok(r) => r,
                    Err(e) => {
                        return Response::error(400, &format!("invalid push request JSON: {e}"))
                    }
                };
                let answer = self.runtime.block_on(self.mediator.send(&req));
                Response::json(200, &answer)
            }
            Route::Health => {
                let (apns, fcm) = self.mediator.platforms();
                Response::json(
                    200,
                    &HealthBody {
                        ok: true,
                        apns,
                        fcm,
                    },
                )
            }
            Route::Metrics => {
                let mut out = String::with_capacity(8192);
                self.mediator.render_metrics(&mut out);
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
        }
    }
}

/// A running mediator: its front, its runtime and the [`Mediator`].
/// Dropping it shuts it down too.
pub struct MediatorHandle {
    mediator: Arc<Mediator>,
    front: Option<HttpServer<MediatorSite>>,
    runtime: Option<tokio::runtime::Runtime>,
    local_addr: SocketAddr,
}

/// Loads the keys (errors name the setting and the file), starts a tokio
/// runtime for the HTTP/2 side, binds `cfg.listen` and serves `POST
/// /push`, `GET /health` and `GET /metrics`. Refuses a non-loopback
/// `listen` without `cfg.token`, like the admin API.
pub fn start(cfg: &MediatorConfig) -> Result<MediatorHandle, MediatorError> {
    let mediator = Arc::new(Mediator::new(cfg)?);
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("sipis-mediator-rt")
        .enable_all()
        .build()
        .map_err(|source| MediatorError::Io {
            what: "cannot start the runtime",
            source,
        })?;
    let mut front_cfg = AdminConfig::new(cfg.listen);
    front_cfg.token = cfg.token.clone();
    front_cfg.tls = cfg.tls.clone();
    front_cfg.max_body_bytes = MAX_PUSH_BODY;
    front_cfg.max_import_bytes = MAX_PUSH_BODY;
    front_cfg.max_connections = (cfg.concurrency as usize).clamp(1, 4096);
    let site = MediatorSite {
        mediator: mediator.clone(),
        runtime: runtime.handle().clone(),
    };
    let front = HttpServer::start(front_cfg, site).map_err(MediatorError::Listen)?;
    let local_addr = front.local_addr();
    tracing::info!(
        listen = %local_addr,
        apns = mediator.platforms().0,
        fcm = mediator.platforms().1,
        "push mediator listening"
    );
    Ok(MediatorHandle {
        mediator,
        front: Some(front),
        runtime: Some(runtime),
        local_addr,
    })
}

impl MediatorHandle {
    /// Where the front listens (the port chosen when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The mediator, for in-process use from async code.
    pub fn mediator(&self) -> &Arc<Mediator> {
        &self.mediator
    }

    /// The runtime the mediator's pushes run on, for in-process callers
    /// that spawn `Mediator::send` on it (`PushClient::in_process`).
    pub fn runtime(&self) -> tokio::runtime::Handle {
        match &self.runtime {
            Some(rt) => rt.handle().clone(),
            None => unreachable!("the runtime lives until the handle is dropped"),
        }
    }

    /// Sends one push in-process, blocking until its answer. Must not be
    /// called from inside a tokio runtime.
    pub fn send(&self, req: &PushRequest) -> PushAnswer {
        match &self.runtime {
            Some(rt) => rt.block_on(self.mediator.send(req)),
            None => unreachable!("the runtime lives until the handle is dropped"),
        }
    }

    /// Appends the mediator's metrics and its front's (Prometheus text),
    /// as `GET /metrics` serves them.
    pub fn render_metrics(&self, out: &mut String) {
        self.mediator.render_metrics(out);
        if let Some(front) = &self.front {
            front.render_metrics(out);
        }
    }

    /// Stops the front (pushes being handled finish first, bounded by
    /// `deadline`), then the runtime.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(front) = self.front.take() {
            front.shutdown();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for MediatorHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for MediatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediatorHandle")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}
