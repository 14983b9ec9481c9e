//! Operations endpoints: liveness, readiness and version. They use the runtime error shape.

use serde_json::json;

use crate::error::{Error, Result};
use crate::server::{Ctx, Req, Resp};

/// `GET /healthz` — the process answers; touches no database.
pub fn healthz(_ctx: &Ctx, _req: &Req) -> Result<Resp> {
    Ok(Resp::json(200, &json!({ "status": "ok" })))
}

/// `GET /readyz` — the database answers and the writer thread is alive.
pub fn readyz(ctx: &Ctx, _req: &Req) -> Result<Resp> {
    if !ctx.app.writer.is_alive() {
        return Err(Error::Unavailable(
            "The writer thread is not running".into(),
        ));
    }
    if !ctx.db.ping() {
        return Err(Error::Unavailable("The database does not answer".into()));
    }
    Ok(Resp::json(200, &json!({ "status": "ready" })))
}

/// `GET /metrics` — Prometheus text; loopback only unless `metrics_allow` says otherwise.
pub fn metrics(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let allowed = match (&ctx.cfg().metrics_allow, req.peer) {
        (None, _) => true,
        (Some(list), Some(peer)) => peer.is_loopback() || list.contains(&peer),
        (Some(_), None) => false,
    };
    if !allowed {
        return Err(Error::Forbidden(
            "Metrics are served to loopback and metrics_allow only".into(),
        ));
    }
    let snap = crate::metrics::Snapshot {
        sessions: ctx.db.session_counts()?,
        live_viewers: ctx.app.viewers.live_count(ctx.now),
        writer: &ctx.app.writer.stats,
        access_log_dropped: ctx
            .app
            .access_log
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
    };
    Ok(Resp::text(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        ctx.app.metrics.render(&snap),
    ))
}

/// `GET /version`
pub fn version(_ctx: &Ctx, _req: &Req) -> Result<Resp> {
    Ok(Resp::json(
        200,
        &json!({ "name": "sessiond", "version": env!("CARGO_PKG_VERSION"), "schema": crate::db::migrate::LATEST }),
    ))
}
