//! Bodies of the share dialect (Wormkey), on every route that takes one.
#![no_main]

use sessiond_fuzz::{Auth, Route, dispatch};

const ROUTES: &[Route] = &[
    Route {
        method: "POST",
        url: "/sessions",
        auth: Auth::None,
    },
    Route {
        method: "POST",
        url: "/sessions",
        auth: Auth::ApiKey,
    },
    Route {
        method: "POST",
        url: "/owner/sessions/by-slug/{slug}/policy",
        auth: Auth::Owner,
    },
    Route {
        method: "POST",
        url: "/owner/sessions/by-slug/{slug}/kick",
        auth: Auth::Owner,
    },
    Route {
        method: "POST",
        url: "/owner/sessions/{share}/tokens",
        auth: Auth::Owner,
    },
    Route {
        method: "POST",
        url: "/internal/sessions/validate",
        auth: Auth::Gateway,
    },
    Route {
        method: "POST",
        url: "/internal/sessions/by-slug/{slug}/admit",
        auth: Auth::Gateway,
    },
    Route {
        method: "POST",
        url: "/internal/sessions/by-slug/{slug}/viewers",
        auth: Auth::Gateway,
    },
    Route {
        method: "POST",
        url: "/internal/sessions/by-slug/{slug}/policy",
        auth: Auth::Gateway,
    },
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| dispatch(ROUTES, data));
