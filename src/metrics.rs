//! Process-wide counters and histograms, rendered in the Prometheus text format.
//!
//! Plain atomics: recording is a relaxed add on the hot path, and rendering reads a
//! snapshot. Gauges that other parts already know (queue depth, live readers) are
//! asked for at render time instead of being kept twice.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::event::StreamStatus;

#[derive(Default)]
pub struct Metrics {
    streams_started: AtomicU64,
    streams_finished: [AtomicU64; 6],
    tokens_generated: AtomicU64,
    events_committed: AtomicU64,
    events_delivered: AtomicU64,
    readers_active: AtomicU64,
    reader_lags: AtomicU64,
    resumes: AtomicU64,
    rejected_busy: AtomicU64,
    commit_failures: AtomicU64,
    commit_errors: AtomicU64,
    /// Set while commits fail (the gauge shows its opposite, so the default is right).
    store_unavailable: std::sync::atomic::AtomicBool,
    ws_sockets: AtomicU64,
    connections: AtomicU64,
    ws_timeouts: AtomicU64,
    cluster_wakeups: AtomicU64,
    cluster_listen_lost: AtomicU64,
    cluster_takeovers: AtomicU64,
    batch_size: Histogram<BATCH_BUCKETS>,
    commit_seconds: Histogram<LATENCY_BUCKETS>,
    ttft_seconds: Histogram<LATENCY_BUCKETS>,
}

const BATCH_BUCKETS: usize = 10;
const BATCH_BOUNDS: [f64; BATCH_BUCKETS] =
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 256.0, 1024.0, 4096.0];
const LATENCY_BUCKETS: usize = 12;
const LATENCY_BOUNDS: [f64; LATENCY_BUCKETS] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A cumulative-on-render histogram with fixed bounds.
struct Histogram<const N: usize> {
    buckets: [AtomicU64; N],
    overflow: AtomicU64,
    count: AtomicU64,
    /// Sum in micro-units, so an integer atomic can hold it.
    sum_micros: AtomicU64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            overflow: AtomicU64::new(0),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Histogram<N> {
    fn observe(&self, bounds: &[f64; N], value: f64) {
        match bounds.iter().position(|&b| value <= b) {
            Some(i) => self.buckets[i].fetch_add(1, Relaxed),
            None => self.overflow.fetch_add(1, Relaxed),
        };
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str, bounds: &[f64; N]) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bucket, bound) in self.buckets.iter().zip(bounds) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.overflow.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {}", self.count.load(Relaxed));
    }
}

/// Values owned elsewhere, read when `/metrics` is rendered.
pub struct Gauges {
    pub running: usize,
    pub queued: usize,
    pub live_streams: usize,
    /// Readers following streams another node generates.
    pub remote_readers: usize,
}

impl Metrics {
    pub fn stream_started(&self) {
        self.streams_started.fetch_add(1, Relaxed);
    }
    pub fn stream_finished(&self, status: StreamStatus) {
        if let Some(i) = StreamStatus::ALL.iter().position(|&s| s == status) {
            self.streams_finished[i].fetch_add(1, Relaxed);
        }
    }
    pub fn token_generated(&self) {
        self.tokens_generated.fetch_add(1, Relaxed);
    }
    pub fn events_committed(&self, n: usize) {
        self.events_committed.fetch_add(n as u64, Relaxed);
    }
    pub fn events_delivered(&self, n: usize) {
        self.events_delivered.fetch_add(n as u64, Relaxed);
    }
    pub fn reader_opened(&self) {
        self.readers_active.fetch_add(1, Relaxed);
    }
    pub fn reader_closed(&self) {
        self.readers_active.fetch_sub(1, Relaxed);
    }
    pub fn reader_lagged(&self) {
        self.reader_lags.fetch_add(1, Relaxed);
    }
    pub fn resumed(&self) {
        self.resumes.fetch_add(1, Relaxed);
    }
    pub fn rejected_busy(&self) {
        self.rejected_busy.fetch_add(1, Relaxed);
    }
    pub fn ws_opened(&self) {
        self.ws_sockets.fetch_add(1, Relaxed);
    }
    pub fn ws_closed(&self) {
        self.ws_sockets.fetch_sub(1, Relaxed);
    }
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Relaxed);
    }
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }
    pub fn ws_timed_out(&self) {
        self.ws_timeouts.fetch_add(1, Relaxed);
    }
    /// Open WebSocket connections.
    pub fn ws_sockets(&self) -> u64 {
        self.ws_sockets.load(Relaxed)
    }
    /// Several nodes: another node's commit named `n` streams with readers here.
    pub fn cluster_woken(&self, n: usize) {
        self.cluster_wakeups.fetch_add(n as u64, Relaxed);
    }
    pub fn cluster_listen_lost(&self) {
        self.cluster_listen_lost.fetch_add(1, Relaxed);
    }
    /// Streams of dead nodes this node ended or continued.
    pub fn cluster_took_over(&self, n: usize) {
        self.cluster_takeovers.fetch_add(n as u64, Relaxed);
    }
    /// A batch given up on (it breaks a constraint, or the retry window passed).
    pub fn commit_failed(&self) {
        self.commit_failures.fetch_add(1, Relaxed);
    }
    /// One attempt at a commit failed (it may be retried).
    pub fn commit_error(&self) {
        self.commit_errors.fetch_add(1, Relaxed);
    }
    pub fn store_available(&self, available: bool) {
        self.store_unavailable.store(!available, Relaxed);
    }
    pub fn observe_commit(&self, events: usize, took: Duration) {
        self.batch_size.observe(&BATCH_BOUNDS, events as f64);
        self.commit_seconds
            .observe(&LATENCY_BOUNDS, took.as_secs_f64());
    }
    pub fn observe_ttft(&self, took: Duration) {
        self.ttft_seconds
            .observe(&LATENCY_BOUNDS, took.as_secs_f64());
    }

    /// Times a reader had to catch up from the store after falling behind.
    pub fn reader_lags(&self) -> u64 {
        self.reader_lags.load(Relaxed)
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "spool_streams_started_total",
            "Streams accepted.",
            self.streams_started.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP spool_streams_finished_total Streams ended, by final status.\n\
             # TYPE spool_streams_finished_total counter"
        );
        for (status, n) in StreamStatus::ALL.iter().zip(&self.streams_finished) {
            if status.is_terminal() {
                let _ = writeln!(
                    out,
                    "spool_streams_finished_total{{status=\"{}\"}} {}",
                    status.as_str(),
                    n.load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP spool_streams Streams in this process, by state.\n# TYPE spool_streams gauge\n\
             spool_streams{{state=\"queued\"}} {}\nspool_streams{{state=\"running\"}} {}",
            gauges.queued, gauges.running
        );
        gauge(
            &mut out,
            "spool_queue_depth",
            "Generations waiting for a slot.",
            gauges.queued as u64,
        );
        gauge(
            &mut out,
            "spool_live_streams",
            "Streams with a live fan-out channel.",
            gauges.live_streams as u64,
        );
        gauge(
            &mut out,
            "spool_remote_readers",
            "Readers following a stream another node generates (PostgreSQL).",
            gauges.remote_readers as u64,
        );
        counter(
            &mut out,
            "spool_cluster_notifications_total",
            "Stream wake-ups received from commits (PostgreSQL NOTIFY).",
            self.cluster_wakeups.load(Relaxed),
        );
        counter(
            &mut out,
            "spool_cluster_listen_lost_total",
            "Times the LISTEN connection was lost and re-established.",
            self.cluster_listen_lost.load(Relaxed),
        );
        counter(
            &mut out,
            "spool_cluster_takeovers_total",
            "Streams of dead nodes this node ended or continued.",
            self.cluster_takeovers.load(Relaxed),
        );
        gauge(
            &mut out,
            "spool_ws_sockets",
            "Open WebSocket connections.",
            self.ws_sockets.load(Relaxed),
        );
        gauge(
            &mut out,
            "spool_connections",
            "Open client connections (an upgraded WebSocket counts in spool_ws_sockets).",
            self.connections.load(Relaxed),
        );
        counter(
            &mut out,
            "spool_ws_pong_timeouts_total",
            "WebSocket peers closed for missing pongs.",
            self.ws_timeouts.load(Relaxed),
        );
        counter(
            &mut out,
            "spool_tokens_generated_total",
            "Tokens produced by backends.",
            self.tokens_generated.load(Relaxed),
        );
        counter(
            &mut out,
            "spool_events_committed_total",
            "Events committed to the store.",
            self.events_committed.load(Relaxed),
        );
        counter(
            &mut out,
            "spool_events_delivered_total",
            "Events written to readers.",
            self.events_delivered.load(Relaxed),
        );
        gauge(
            &mut out,
            "spool_readers_active",
            "Open event readers.",
            self.readers_active.load(Relaxed),
        );
        counter(
            &mut out,
            "spool_reader_lags_total",
            "Times a slow reader caught up from the store.",
            self.reader_lags.load(Relaxed),
        );
        counter(
            &mut out,
            "spool_resumes_total",
            "Reads that resumed after a cursor.",
            self.resumes.load(Relaxed),
        );
        counter(
            &mut out,
            "spool_rejected_busy_total",
            "Requests refused with 429 because the queue was full.",
            self.rejected_busy.load(Relaxed),
        );
        counter(
            &mut out,
            "spool_store_commit_failures_total",
            "Batches the store refused after retries.",
            self.commit_failures.load(Relaxed),
        );
        counter(
            &mut out,
            "spool_store_commit_errors_total",
            "Commit attempts that failed (each retry counts).",
            self.commit_errors.load(Relaxed),
        );
        gauge(
            &mut out,
            "spool_store_available",
            "1 while commits succeed; 0 while they fail and are retried, or this node is fenced.",
            u64::from(!self.store_unavailable.load(Relaxed)),
        );
        self.batch_size.render(
            &mut out,
            "spool_store_batch_events",
            "Events per group commit.",
            &BATCH_BOUNDS,
        );
        self.commit_seconds.render(
            &mut out,
            "spool_store_commit_seconds",
            "Group commit latency.",
            &LATENCY_BOUNDS,
        );
        self.ttft_seconds.render(
            &mut out,
            "spool_time_to_first_token_seconds",
            "From acceptance to the first token.",
            &LATENCY_BOUNDS,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let m = Metrics::default();
        m.observe_commit(3, Duration::from_millis(2));
        m.observe_commit(5000, Duration::from_secs(9));
        let text = m.render(&Gauges {
            running: 1,
            queued: 2,
            live_streams: 0,
            remote_readers: 0,
        });
        assert!(
            text.contains("spool_store_batch_events_bucket{le=\"4\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("spool_store_batch_events_bucket{le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(text.contains("spool_queue_depth 2"), "{text}");
    }
}
