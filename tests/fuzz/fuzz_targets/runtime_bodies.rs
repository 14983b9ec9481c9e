//! Bodies of the runtime dialect (Chaser), on every route that takes one.
#![no_main]

use sessiond_fuzz::{Auth, Route, dispatch};

const ROUTES: &[Route] = &[
    Route {
        method: "POST",
        url: "/v1/sessions",
        auth: Auth::ApiKey,
    },
    Route {
        method: "POST",
        url: "/v1/sessions/bulk-terminate",
        auth: Auth::ApiKey,
    },
    Route {
        method: "POST",
        url: "/v1/workspaces",
        auth: Auth::ApiKey,
    },
    Route {
        method: "PUT",
        url: "/v1/workspaces/ws-none/name",
        auth: Auth::ApiKey,
    },
    Route {
        method: "POST",
        url: "/v1/keys",
        auth: Auth::ApiKey,
    },
    Route {
        method: "POST",
        url: "/v1/daemon/snapshots",
        auth: Auth::ApiKey,
    },
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatch(ROUTES, data));
