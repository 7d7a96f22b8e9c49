//! Counters, gauges and histograms, rendered in the Prometheus text format.
//!
//! Recorded through the `metrics` facade into a `metrics-exporter-prometheus` recorder
//! that belongs to this `Metrics` alone — never installed as the process-global
//! recorder, so several servers in one process (the API tests start many) each count
//! their own. Every handle is registered once, when `Metrics` is made: recording is a
//! call on a stored handle (an atomic add on the hot path), never a lookup by name.
//! Gauges that other parts already know (queue depth, live readers) are set from
//! [`Gauges`] just before rendering instead of being kept twice. `/metrics` is served
//! by our own axum handler, which calls [`Metrics::render`].
//!
//! Names, types, labels and histogram buckets are what dashboards read: keep them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::event::StreamStatus;

const BATCH_BOUNDS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 256.0, 1024.0, 4096.0];
const LATENCY_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

const BATCH_EVENTS: &str = "spool_store_batch_events";
const COMMIT_SECONDS: &str = "spool_store_commit_seconds";
const TTFT_SECONDS: &str = "spool_time_to_first_token_seconds";

/// Histogram samples wait in the recorder until they are folded into buckets; that
/// happens on every render, and also after this many samples, so a server nobody
/// scrapes does not hold them all.
const UPKEEP_EVERY: u64 = 1024;

const METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

pub struct Metrics {
    handle: PrometheusHandle,
    streams_started: Counter,
    /// By the index of the status in [`StreamStatus::ALL`]; no-op handles for the
    /// statuses that are not terminal.
    streams_finished: [Counter; StreamStatus::ALL.len()],
    tokens_generated: Counter,
    events_committed: Counter,
    events_delivered: Counter,
    readers_active: Gauge,
    reader_lags: Counter,
    resumes: Counter,
    rejected_busy: Counter,
    rejected_key_limit: Counter,
    streams_abandoned: Counter,
    commit_failures: Counter,
    commit_errors: Counter,
    store_available: Gauge,
    ws_sockets: Gauge,
    connections: Gauge,
    ws_timeouts: Counter,
    cluster_wakeups: Counter,
    cluster_listen_lost: Counter,
    cluster_takeovers: Counter,
    batch_size: Histogram,
    commit_seconds: Histogram,
    ttft_seconds: Histogram,
    streams_queued: Gauge,
    streams_running: Gauge,
    queue_depth: Gauge,
    live_streams: Gauge,
    remote_readers: Gauge,
    /// The two values [`Metrics::ws_sockets`] and [`Metrics::reader_lags`] read back
    /// (the exporter's handles are write-only).
    open_ws: AtomicU64,
    lags: AtomicU64,
    samples: AtomicU64,
}

/// Values owned elsewhere, read when `/metrics` is rendered.
pub struct Gauges {
    pub running: usize,
    pub queued: usize,
    pub live_streams: usize,
    /// Readers following streams another node generates.
    pub remote_readers: usize,
}

/// Registers this `Metrics`' handles on its own recorder, with their help texts.
struct Registrar<R>(R);

impl<R: Recorder> Registrar<R> {
    fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        self.0
            .describe_counter(KeyName::from_const_str(name), None, help.into());
        self.0
            .register_counter(&Key::from_static_name(name), &METADATA)
    }

    fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        self.0
            .describe_gauge(KeyName::from_const_str(name), None, help.into());
        self.0
            .register_gauge(&Key::from_static_name(name), &METADATA)
    }

    fn histogram(&self, name: &'static str, help: &'static str) -> Histogram {
        self.0
            .describe_histogram(KeyName::from_const_str(name), None, help.into());
        self.0
            .register_histogram(&Key::from_static_name(name), &METADATA)
    }

    fn labelled_gauge(
        &self,
        name: &'static str,
        label: &'static str,
        value: &'static str,
    ) -> Gauge {
        let key = Key::from_parts(name, vec![Label::new(label, value)]);
        self.0.register_gauge(&key, &METADATA)
    }
}

fn builder() -> PrometheusBuilder {
    let with_buckets = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(BATCH_EVENTS.into()), &BATCH_BOUNDS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(COMMIT_SECONDS.into()), &LATENCY_BOUNDS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(TTFT_SECONDS.into()), &LATENCY_BOUNDS)
        });
    // Setting buckets fails only for an empty list of bounds, which these are not.
    with_buckets.unwrap_or_else(|_| PrometheusBuilder::new())
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        let r = Registrar(recorder);

        let streams_started = r.counter("spool_streams_started_total", "Streams accepted.");
        let finished = "spool_streams_finished_total";
        r.0.describe_counter(
            KeyName::from_const_str(finished),
            None,
            "Streams ended, by final status.".into(),
        );
        let streams_finished = StreamStatus::ALL.map(|status| {
            if status.is_terminal() {
                let key = Key::from_parts(finished, vec![Label::new("status", status.as_str())]);
                r.0.register_counter(&key, &METADATA)
            } else {
                Counter::noop()
            }
        });
        let streams = "spool_streams";
        r.0.describe_gauge(
            KeyName::from_const_str(streams),
            None,
            "Streams in this process, by state.".into(),
        );
        let streams_queued = r.labelled_gauge(streams, "state", "queued");
        let streams_running = r.labelled_gauge(streams, "state", "running");

        Metrics {
            streams_started,
            streams_finished,
            streams_queued,
            streams_running,
            queue_depth: r.gauge("spool_queue_depth", "Generations waiting for a slot."),
            live_streams: r.gauge("spool_live_streams", "Streams with a live fan-out channel."),
            remote_readers: r.gauge(
                "spool_remote_readers",
                "Readers following a stream another node generates (PostgreSQL).",
            ),
            cluster_wakeups: r.counter(
                "spool_cluster_notifications_total",
                "Stream wake-ups received from commits (PostgreSQL NOTIFY).",
            ),
            cluster_listen_lost: r.counter(
                "spool_cluster_listen_lost_total",
                "Times the LISTEN connection was lost and re-established.",
            ),
            cluster_takeovers: r.counter(
                "spool_cluster_takeovers_total",
                "Streams of dead nodes this node ended or continued.",
            ),
            ws_sockets: r.gauge("spool_ws_sockets", "Open WebSocket connections."),
            connections: r.gauge(
                "spool_connections",
                "Open client connections (an upgraded WebSocket counts in spool_ws_sockets).",
            ),
            ws_timeouts: r.counter(
                "spool_ws_pong_timeouts_total",
                "WebSocket peers closed for missing pongs.",
            ),
            tokens_generated: r.counter(
                "spool_tokens_generated_total",
                "Tokens produced by backends.",
            ),
            events_committed: r.counter(
                "spool_events_committed_total",
                "Events committed to the store.",
            ),
            events_delivered: r
                .counter("spool_events_delivered_total", "Events written to readers."),
            readers_active: r.gauge("spool_readers_active", "Open event readers."),
            reader_lags: r.counter(
                "spool_reader_lags_total",
                "Times a slow reader caught up from the store.",
            ),
            resumes: r.counter("spool_resumes_total", "Reads that resumed after a cursor."),
            rejected_busy: r.counter(
                "spool_rejected_busy_total",
                "Requests refused with 429 because the queue was full.",
            ),
            rejected_key_limit: r.counter(
                "spool_rejected_key_limit_total",
                "Requests refused with 429 because their key held its share of generations.",
            ),
            streams_abandoned: r.counter(
                "spool_streams_abandoned_total",
                "Streams cancelled because no one read them for SPOOL_ABANDON_AFTER.",
            ),
            commit_failures: r.counter(
                "spool_store_commit_failures_total",
                "Batches the store refused after retries.",
            ),
            commit_errors: r.counter(
                "spool_store_commit_errors_total",
                "Commit attempts that failed (each retry counts).",
            ),
            store_available: {
                let g = r.gauge(
                    "spool_store_available",
                    "1 while commits succeed; 0 while they fail and are retried, or this node is fenced.",
                );
                g.set(1.0);
                g
            },
            batch_size: r.histogram(BATCH_EVENTS, "Events per group commit."),
            commit_seconds: r.histogram(COMMIT_SECONDS, "Group commit latency."),
            ttft_seconds: r.histogram(TTFT_SECONDS, "From acceptance to the first token."),
            handle,
            open_ws: AtomicU64::new(0),
            lags: AtomicU64::new(0),
            samples: AtomicU64::new(0),
        }
    }

    pub fn stream_started(&self) {
        self.streams_started.increment(1);
    }
    pub fn stream_finished(&self, status: StreamStatus) {
        if let Some(i) = StreamStatus::ALL.iter().position(|&s| s == status) {
            self.streams_finished[i].increment(1);
        }
    }
    pub fn token_generated(&self) {
        self.tokens_generated.increment(1);
    }
    pub fn events_committed(&self, n: usize) {
        self.events_committed.increment(n as u64);
    }
    pub fn events_delivered(&self, n: usize) {
        self.events_delivered.increment(n as u64);
    }
    pub fn reader_opened(&self) {
        self.readers_active.increment(1.0);
    }
    pub fn reader_closed(&self) {
        self.readers_active.decrement(1.0);
    }
    pub fn reader_lagged(&self) {
        self.lags.fetch_add(1, Relaxed);
        self.reader_lags.increment(1);
    }
    pub fn resumed(&self) {
        self.resumes.increment(1);
    }
    pub fn rejected_busy(&self) {
        self.rejected_busy.increment(1);
    }
    pub fn rejected_key_limit(&self) {
        self.rejected_key_limit.increment(1);
    }
    pub fn stream_abandoned(&self) {
        self.streams_abandoned.increment(1);
    }
    pub fn ws_opened(&self) {
        self.open_ws.fetch_add(1, Relaxed);
        self.ws_sockets.increment(1.0);
    }
    pub fn ws_closed(&self) {
        self.open_ws.fetch_sub(1, Relaxed);
        self.ws_sockets.decrement(1.0);
    }
    pub fn connection_opened(&self) {
        self.connections.increment(1.0);
    }
    pub fn connection_closed(&self) {
        self.connections.decrement(1.0);
    }
    pub fn ws_timed_out(&self) {
        self.ws_timeouts.increment(1);
    }
    /// Open WebSocket connections.
    pub fn ws_sockets(&self) -> u64 {
        self.open_ws.load(Relaxed)
    }
    /// Several nodes: another node's commit named `n` streams with readers here.
    pub fn cluster_woken(&self, n: usize) {
        self.cluster_wakeups.increment(n as u64);
    }
    pub fn cluster_listen_lost(&self) {
        self.cluster_listen_lost.increment(1);
    }
    /// Streams of dead nodes this node ended or continued.
    pub fn cluster_took_over(&self, n: usize) {
        self.cluster_takeovers.increment(n as u64);
    }
    /// A batch given up on (it breaks a constraint, or the retry window passed).
    pub fn commit_failed(&self) {
        self.commit_failures.increment(1);
    }
    /// One attempt at a commit failed (it may be retried).
    pub fn commit_error(&self) {
        self.commit_errors.increment(1);
    }
    pub fn store_available(&self, available: bool) {
        self.store_available.set(if available { 1.0 } else { 0.0 });
    }
    pub fn observe_commit(&self, events: usize, took: Duration) {
        self.batch_size.record(events as f64);
        self.commit_seconds.record(took.as_secs_f64());
        self.sampled(2);
    }
    pub fn observe_ttft(&self, took: Duration) {
        self.ttft_seconds.record(took.as_secs_f64());
        self.sampled(1);
    }

    /// Folds waiting histogram samples into their buckets every [`UPKEEP_EVERY`].
    fn sampled(&self, n: u64) {
        let before = self.samples.fetch_add(n, Relaxed);
        if before / UPKEEP_EVERY != (before + n) / UPKEEP_EVERY {
            self.handle.run_upkeep();
        }
    }

    /// Times a reader had to catch up from the store after falling behind.
    pub fn reader_lags(&self) -> u64 {
        self.lags.load(Relaxed)
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        self.streams_queued.set(gauges.queued as f64);
        self.streams_running.set(gauges.running as f64);
        self.queue_depth.set(gauges.queued as f64);
        self.live_streams.set(gauges.live_streams as f64);
        self.remote_readers.set(gauges.remote_readers as f64);
        self.handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            running: 1,
            queued: 2,
            live_streams: 0,
            remote_readers: 0,
        }
    }

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let m = Metrics::default();
        m.observe_commit(3, Duration::from_millis(2));
        m.observe_commit(5000, Duration::from_secs(9));
        let text = m.render(&gauges());
        assert!(
            text.contains("spool_store_batch_events_bucket{le=\"4\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("spool_store_batch_events_bucket{le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("spool_store_commit_seconds_bucket{le=\"0.0025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("spool_store_batch_events_sum 5003\n"),
            "{text}"
        );
        assert!(text.contains("spool_queue_depth 2\n"), "{text}");
        assert!(
            text.contains("spool_streams{state=\"running\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn every_metric_is_there_from_the_start_with_its_type() {
        let text = Metrics::default().render(&gauges());
        for (name, kind) in [
            ("spool_streams_started_total", "counter"),
            ("spool_streams_finished_total", "counter"),
            ("spool_streams", "gauge"),
            ("spool_connections", "gauge"),
            ("spool_store_commit_failures_total", "counter"),
            ("spool_rejected_key_limit_total", "counter"),
            ("spool_streams_abandoned_total", "counter"),
            ("spool_store_commit_errors_total", "counter"),
            ("spool_store_available", "gauge"),
            ("spool_time_to_first_token_seconds", "histogram"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
        }
        assert!(text.contains("spool_streams_started_total 0\n"), "{text}");
        assert!(
            text.contains("spool_streams_finished_total{status=\"interrupted\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("status=\"running\""), "{text}");
        assert!(
            text.contains("spool_time_to_first_token_seconds_bucket{le=\"0.0005\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn each_instance_counts_its_own() {
        let (a, b) = (Metrics::default(), Metrics::default());
        a.token_generated();
        a.ws_opened();
        assert!(
            a.render(&gauges())
                .contains("spool_tokens_generated_total 1\n")
        );
        assert!(
            b.render(&gauges())
                .contains("spool_tokens_generated_total 0\n")
        );
        assert_eq!((a.ws_sockets(), b.ws_sockets()), (1, 0));
    }
}
