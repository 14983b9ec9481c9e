//! Scheduled backups: with `backup_dir` set, a thread writes `sessiond-<time>.db` there every
//! `backup_every` (the same consistent online copy as `sessiond backup`) and keeps the newest
//! `backup_keep` of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::db::backup;
use crate::domain::time::{now_ms, rfc3339};
use crate::error::Result;
use crate::server::App;

pub struct Backups {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

pub fn start(app: Arc<App>) -> Result<Backups> {
    let stop = Arc::new(AtomicBool::new(false));
    let Some(dir) = app.cfg.backup_dir.clone() else {
        return Ok(Backups { stop, thread: None });
    };
    std::fs::create_dir_all(&dir)?;
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("backups".into())
        .spawn(move || {
            let every = Duration::from_millis(app.cfg.backup_every as u64);
            let mut last = Instant::now();
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                if last.elapsed() < every {
                    continue;
                }
                last = Instant::now();
                run_once(&app, &dir);
            }
        })?;
    Ok(Backups {
        stop,
        thread: Some(thread),
    })
}

impl Backups {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_once(app: &App, dir: &Path) {
    let stamp: String = rfc3339(now_ms())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let dest = dir.join(format!("sessiond-{stamp}.db"));
    match backup::backup(&app.cfg.db, &dest) {
        Ok(b) => {
            app.metrics.backups_ok.fetch_add(1, Ordering::Relaxed);
            app.metrics
                .last_backup_unix
                .store((now_ms() / 1000) as u64, Ordering::Relaxed);
            log::info!(
                "scheduled backup written to {} ({} bytes)",
                dest.display(),
                b.bytes
            );
            prune(dir, app.cfg.backup_keep);
        }
        Err(e) => {
            app.metrics.backups_failed.fetch_add(1, Ordering::Relaxed);
            log::error!("scheduled backup to {} failed: {e}", dest.display());
        }
    }
}

/// Keeps the newest `keep` scheduled backups (their names sort by time).
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("sessiond-") && n.ends_with(".db"))
        })
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for old in names.into_iter().take(excess) {
        if let Err(e) = std::fs::remove_file(&old) {
            log::warn!("could not remove old backup {}: {e}", old.display());
        }
    }
}
