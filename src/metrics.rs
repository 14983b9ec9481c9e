//! Counters for `/metrics`, kept in memory and rendered as Prometheus text (hand-written: the format
//! is a handful of lines, not worth a dependency).
//!
//! Requests are counted by route template and status with a latency histogram; the writer's batch
//! and commit figures come from its own counters; sessions by dialect and status, and live viewers,
//! are read at scrape time; the reaper and the scheduled backups count what they do.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::db::writer::WriterStats;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Request counters are sharded by answering thread so that threads rarely contend for a lock; a
/// scrape merges the shards.
const SHARDS: usize = 32; // arrays up to 32 implement Default

/// One shard of the request counters: counts by route and status, and the latency histogram.
#[derive(Default)]
struct Requests {
    by_route: BTreeMap<(&'static str, u16), u64>,
    /// Requests by the first bucket their latency fits in (the last: beyond every bound). The
    /// cumulative counts Prometheus wants are summed at scrape time: a request adds to one
    /// counter under its shard's lock, not to a dozen atomics every core shares.
    latency: [u64; BUCKETS.len() + 1],
    latency_micros: u64,
}

#[derive(Default)]
pub struct Metrics {
    requests: [Mutex<Requests>; SHARDS],
    reaped: Mutex<BTreeMap<&'static str, u64>>,
    pub backups_ok: AtomicU64,
    pub backups_failed: AtomicU64,
    pub last_backup_unix: AtomicU64,
    /// Responses the writer's answering thread wrote after their change's commit.
    pub responses_after_commit: AtomicU64,
    /// Of those, the ones the connection did not take at once, finished by a thread of their own.
    pub responses_finished_later: AtomicU64,
}

/// Figures read at scrape time.
pub struct Snapshot<'a> {
    pub sessions: Vec<(String, String, i64)>,
    pub live_viewers: usize,
    pub writer: &'a WriterStats,
    /// Access log lines dropped because their queue was full.
    pub access_log_dropped: u64,
}

impl Metrics {
    /// Counts one request; `worker` (the answering thread's number) picks the counter shard.
    pub fn observe_request(&self, worker: usize, route: &'static str, status: u16, seconds: f64) {
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        let mut shard = self.requests[worker % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *shard.by_route.entry((route, status)).or_default() += 1;
        shard.latency[bucket] += 1;
        shard.latency_micros += (seconds * 1e6) as u64;
    }

    /// Counts reaper work of one kind (`session.expired`, `viewer.aged_out`, …).
    pub fn reaped(&self, kind: &'static str, n: usize) {
        if n > 0 {
            *self
                .reaped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(kind)
                .or_default() += n as u64;
        }
    }

    pub fn render(&self, snap: &Snapshot) -> String {
        let mut t = Text::default();
        let n = t.family(
            "sessiond_http_requests_total",
            "counter",
            "HTTP requests by route template and status.",
        );
        let mut requests: BTreeMap<(&'static str, u16), u64> = BTreeMap::new();
        let mut latency = [0u64; BUCKETS.len() + 1];
        let mut latency_micros = 0;
        for shard in &self.requests {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (key, count) in &shard.by_route {
                *requests.entry(*key).or_default() += count;
            }
            for (sum, count) in latency.iter_mut().zip(shard.latency) {
                *sum += count;
            }
            latency_micros += shard.latency_micros;
        }
        for ((route, status), count) in &requests {
            t.line(format!(
                "{n}{{route=\"{}\",status=\"{status}\"}} {count}",
                escape(route)
            ));
        }
        let n = t.family(
            "sessiond_http_request_duration_seconds",
            "histogram",
            "Time to answer a request.",
        );
        let mut count = 0;
        for (bound, in_bucket) in BUCKETS.iter().zip(latency) {
            count += in_bucket;
            t.line(format!("{n}_bucket{{le=\"{bound}\"}} {count}"));
        }
        count += latency[BUCKETS.len()];
        t.line(format!("{n}_bucket{{le=\"+Inf\"}} {count}"));
        t.line(format!("{n}_sum {}", latency_micros as f64 / 1e6));
        t.line(format!("{n}_count {count}"));

        let w = snap.writer;
        for (name, kind, help, value) in [
            (
                "sessiond_writer_commits_total",
                "counter",
                "Group commits of the writer thread.",
                w.batches.load(Ordering::Relaxed) as f64,
            ),
            (
                "sessiond_writer_changes_total",
                "counter",
                "Changes (jobs) committed by the writer thread.",
                w.jobs.load(Ordering::Relaxed) as f64,
            ),
            (
                "sessiond_writer_failed_commits_total",
                "counter",
                "Group commits that failed.",
                w.failed_commits.load(Ordering::Relaxed) as f64,
            ),
            (
                "sessiond_writer_redone_batches_total",
                "counter",
                "Group commits run again with a savepoint per change, because a change failed after writing.",
                w.redone_batches.load(Ordering::Relaxed) as f64,
            ),
            (
                "sessiond_writer_idle_checkpoints_total",
                "counter",
                "WAL checkpoints the writer ran because it had no change to commit for a second.",
                w.idle_checkpoints.load(Ordering::Relaxed) as f64,
            ),
            (
                "sessiond_writer_idle_checkpoints_complete_total",
                "counter",
                "Idle WAL checkpoints that copied the whole WAL into the database file.",
                w.idle_checkpoints_complete.load(Ordering::Relaxed) as f64,
            ),
            (
                "sessiond_writer_background_checkpoints_total",
                "counter",
                "WAL checkpoint passes of the checkpointer thread, beside the writer.",
                w.background_checkpoints.load(Ordering::Relaxed) as f64,
            ),
            (
                "sessiond_writer_handoff_checkpoints_total",
                "counter",
                "WAL checkpoints the writer ran after a commit to copy what the checkpointer left.",
                w.handoff_checkpoints.load(Ordering::Relaxed) as f64,
            ),
            (
                "sessiond_writer_forced_checkpoints_total",
                "counter",
                "WAL checkpoints run inside a commit because the WAL had reached its bound.",
                w.forced_checkpoints.load(Ordering::Relaxed) as f64,
            ),
            (
                "sessiond_wal_frames",
                "gauge",
                "Pages (frames) in the write-ahead log after the last commit: 64 MiB is 16,000.",
                w.wal_frames.load(Ordering::Relaxed) as f64,
            ),
            (
                "sessiond_writer_commit_seconds_total",
                "counter",
                "Time spent in group commits.",
                w.commit_micros_total.load(Ordering::Relaxed) as f64 / 1e6,
            ),
            (
                "sessiond_writer_batch_size_max",
                "gauge",
                "The largest group commit so far.",
                w.largest_batch.load(Ordering::Relaxed) as f64,
            ),
            (
                "sessiond_http_responses_after_commit_total",
                "counter",
                "Responses written after their change's commit by the writer's answering thread, with no request thread waiting for the commit.",
                self.responses_after_commit.load(Ordering::Relaxed) as f64,
            ),
            (
                "sessiond_http_responses_finished_later_total",
                "counter",
                "Responses written after a commit that the connection did not take at once (a client not reading, or an earlier response of the connection not yet written), finished by a thread of their own.",
                self.responses_finished_later.load(Ordering::Relaxed) as f64,
            ),
            (
                "sessiond_access_log_dropped_total",
                "counter",
                "Access log lines dropped because the log could not keep up.",
                snap.access_log_dropped as f64,
            ),
        ] {
            let n = t.family(name, kind, help);
            t.line(format!("{n} {value}"));
        }

        let n = t.family(
            "sessiond_sessions",
            "gauge",
            "Stored sessions by dialect and status.",
        );
        for (dialect, status, count) in &snap.sessions {
            t.line(format!(
                "{n}{{dialect=\"{}\",status=\"{}\"}} {count}",
                escape(dialect),
                escape(status)
            ));
        }
        let n = t.family(
            "sessiond_live_viewers",
            "gauge",
            "Share-session viewers seen within viewer_idle_timeout.",
        );
        t.line(format!("{n} {}", snap.live_viewers));
        let n = t.family(
            "sessiond_reaper_actions_total",
            "counter",
            "What the reaper did, by kind.",
        );
        for (kind, count) in self.reaped.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            t.line(format!("{n}{{kind=\"{kind}\"}} {count}"));
        }
        let n = t.family(
            "sessiond_backups_total",
            "counter",
            "Scheduled backups by outcome.",
        );
        t.line(format!(
            "{n}{{outcome=\"ok\"}} {}",
            self.backups_ok.load(Ordering::Relaxed)
        ));
        t.line(format!(
            "{n}{{outcome=\"failed\"}} {}",
            self.backups_failed.load(Ordering::Relaxed)
        ));
        let n = t.family(
            "sessiond_last_backup_timestamp_seconds",
            "gauge",
            "Unix time of the last successful scheduled backup (0: none).",
        );
        t.line(format!(
            "{n} {}",
            self.last_backup_unix.load(Ordering::Relaxed)
        ));
        t.0
    }
}

/// Prometheus exposition text being written.
#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &'static str, kind: &str, help: &str) -> &'static str {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        name
    }

    fn line(&mut self, line: String) {
        self.0.push_str(&line);
        self.0.push('\n');
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.observe_request(0, "/sessions", 201, 0.002);
        m.observe_request(1, "/sessions", 201, 0.2);
        m.observe_request(1, "/sessions", 201, 0.0025);
        m.observe_request(2, "/healthz", 200, 30.0);
        m.reaped("session.expired", 3);
        let stats = WriterStats::default();
        let text = m.render(&Snapshot {
            sessions: vec![("share".into(), "active".into(), 2)],
            live_viewers: 4,
            writer: &stats,
            access_log_dropped: 0,
        });
        assert!(
            text.contains("sessiond_http_requests_total{route=\"/sessions\",status=\"201\"} 3\n")
        );
        // Cumulative over every shard; a bound holds the requests that took that long exactly.
        let buckets: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sessiond_http_request_duration_seconds_bucket"))
            .collect();
        assert_eq!(buckets.len(), BUCKETS.len() + 1);
        assert!(text.contains("sessiond_http_request_duration_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("sessiond_http_request_duration_seconds_bucket{le=\"0.0025\"} 2\n"));
        assert!(text.contains("sessiond_http_request_duration_seconds_bucket{le=\"0.25\"} 3\n"));
        assert!(text.contains("sessiond_http_request_duration_seconds_bucket{le=\"2.5\"} 3\n"));
        assert!(text.contains("sessiond_http_request_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("sessiond_http_request_duration_seconds_count 4\n"));
        assert!(text.contains("sessiond_http_request_duration_seconds_sum 30.2045\n"));
        assert!(text.contains("sessiond_sessions{dialect=\"share\",status=\"active\"} 2\n"));
        assert!(text.contains("sessiond_reaper_actions_total{kind=\"session.expired\"} 3\n"));
        assert!(text.contains("sessiond_live_viewers 4\n"));
    }
}
