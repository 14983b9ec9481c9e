//! Bodies of the workspace dialect (NeoSC), on every route that takes one.
#![no_main]

use sessiond_fuzz::{Auth, Route, dispatch};

const ROUTES: &[Route] = &[
    Route {
        method: "POST",
        url: "/api/auth/login",
        auth: Auth::None,
    },
    Route {
        method: "POST",
        url: "/api/auth/register",
        auth: Auth::Login,
    },
    Route {
        method: "POST",
        url: "/api/auth/mfa/verify",
        auth: Auth::Login,
    },
    Route {
        method: "POST",
        url: "/api/workspaces",
        auth: Auth::Login,
    },
    Route {
        method: "PUT",
        url: "/api/workspaces/ws-sap-neogenesys",
        auth: Auth::Login,
    },
    Route {
        method: "POST",
        url: "/api/sessions/{ws_session}/action",
        auth: Auth::Login,
    },
    Route {
        method: "POST",
        url: "/api/admin/sessions/{ws_session}/action",
        auth: Auth::Login,
    },
    Route {
        method: "GET",
        url: "/api/audit-logs?limit=5&cursor=abc",
        auth: Auth::Login,
    },
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatch(ROUTES, data));
