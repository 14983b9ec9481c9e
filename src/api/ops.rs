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

/// `GET /version`
pub fn version(_ctx: &Ctx, _req: &Req) -> Result<Resp> {
    Ok(Resp::json(
        200,
        &json!({ "name": "sessiond", "version": env!("CARGO_PKG_VERSION"), "schema": crate::db::migrate::LATEST }),
    ))
}
