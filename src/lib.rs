//! sessiond as a library: everything the `sessiond` binary (`main.rs`, the command line) runs, and
//! what the fuzz targets under `tests/fuzz` drive directly. The modules are listed in
//! ARCHITECTURE.md; nothing here is a stable API for other crates.

pub mod access_log;
pub mod api;
pub mod auth;
pub mod backups;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod metrics;
pub mod oneshot;
pub mod reaper;
pub mod routes;
pub mod server;
pub mod text;
pub mod viewers;
