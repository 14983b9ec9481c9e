//! Runs the cargo-fuzz targets in `tests/fuzz` (issue 7): the HTTP request parser and each
//! dialect's JSON bodies, against a real `App` on a real SQLite file. The default run is a smoke
//! run (a few seconds per target, no sanitizer: the build stays short); `SESSIOND_SLOW_TESTS=1`
//! builds with AddressSanitizer and runs each target for `SESSIOND_FUZZ_SECS` (default 60).
//!
//! cargo-fuzz passes nightly-only flags to rustc; this machine has the stable toolchain only, so the
//! fuzz build (and only it) runs with `RUSTC_BOOTSTRAP=1`. cargo-fuzz itself is installed into
//! `target/tools` when it is not on the PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::crash::slow_suite;

const TARGETS: &[&str] = &[
    "http_request",
    "share_bodies",
    "workspace_bodies",
    "runtime_bodies",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A PATH on which `cargo fuzz` works, installing cargo-fuzz into `target/tools` if needed.
fn path_with_cargo_fuzz() -> String {
    let tools = root().join("target/tools");
    let path = format!(
        "{}:{}",
        tools.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let found = Command::new("cargo")
        .args(["fuzz", "--version"])
        .env("PATH", &path)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        let status = Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked", "--root"])
            .arg(&tools)
            .status()
            .expect("run cargo install");
        assert!(status.success(), "cannot install cargo-fuzz");
    }
    path
}

fn cargo_fuzz(path: &str, args: &[&str], dir: &Path) -> std::process::Output {
    Command::new("cargo")
        .arg("fuzz")
        .args(args)
        .current_dir(dir)
        .env("PATH", path)
        .env("RUSTC_BOOTSTRAP", "1")
        .output()
        .expect("run cargo fuzz")
}

#[test]
fn the_fuzz_targets_find_no_crash_in_their_budget() {
    let slow = slow_suite();
    let secs: u64 = std::env::var("SESSIOND_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if slow { 60 } else { 4 });
    let path = path_with_cargo_fuzz();
    let sanitizer = if slow { "address" } else { "none" };
    let common = ["--fuzz-dir", "tests/fuzz", "-O", "-s", sanitizer];
    let mut build = vec!["build"];
    build.extend(common);
    let out = cargo_fuzz(&path, &build, &root());
    assert!(
        out.status.success(),
        "fuzz build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for target in TARGETS {
        let max_time = format!("-max_total_time={secs}");
        let mut run = vec!["run"];
        run.extend(common);
        run.extend([
            target,
            "--",
            &max_time,
            "-max_len=4096",
            "-rss_limit_mb=4096",
        ]);
        let out = cargo_fuzz(&path, &run, &root());
        let log = String::from_utf8_lossy(&out.stderr);
        let last = log.lines().rev().find(|l| l.contains("DONE")).unwrap_or("");
        eprintln!("{target}: {last}");
        assert!(
            out.status.success(),
            "{target} found a crash (the input is in tests/fuzz/artifacts/{target}):\n{}",
            log.lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Each fuzzing process kept its database in a directory of its own.
    for entry in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("sessiond-fuzz-")
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
