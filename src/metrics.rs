//! Metrics and health: one registry of atomics, rendered as Prometheus text, served on loopback.
//!
//! Workers, the maintenance thread and a backend record into the process-wide registry
//! ([`global`]) with relaxed atomic operations, so recording never blocks, never allocates and
//! never fails. [`serve`] answers `GET /metrics` and `GET /healthz` on one plain thread with a
//! small HTTP/1.1 responder over `std::net`: one request per connection, read within a
//! deadline and a size limit. A slow scraper can delay the next scrape, never a job; the
//! responder never writes anything but these two answers and never touches Redis itself.
//!
//! Outcomes are counted once their write to Redis has committed, so the counters of all hosts
//! add up to what the outcome lists received.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::thread;
use std::time::Duration;

use crate::backend::BackendState;
use crate::job::now_ms;
use crate::shutdown::Shutdown;
use crate::worker::{Pulses, Timing};

/// Kinds a failed job is counted under; anything else is counted as `other`.
pub const FAILED_KINDS: &[&str] = &[
    "invalid",
    "unsupported",
    "corrupt",
    "too_large",
    "exhausted",
    "poison",
];

/// Kinds of transient error a retry is counted under; anything else is counted as `other`.
pub const RETRY_KINDS: &[&str] = &["read", "backend", "encode", "output", "panic"];

/// Why a claimed job was processed again.
pub const RECOVERY_REASONS: &[&str] = &["restart", "reconnect"];

/// The stages whose time is measured, as in the done message's `timing_ms`.
pub const STAGES: &[&str] = &["read", "decode", "gpu", "encode", "write"];

/// Upper bounds of the per-stage histograms, in seconds.
const STAGE_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The Redis calls made for every job, each timed from the call to its reply: `claim` (counted
/// only when it returned a job), `recovery` (the poison check's read) and `settle` (the
/// outcome's transaction, with its WATCH).
pub const REDIS_CALLS: &[&str] = &["claim", "recovery", "settle"];

/// Upper bounds of the Redis call histograms, in seconds: a loopback round trip is tens of
/// microseconds.
const REDIS_BOUNDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// Upper bounds of the queue-wait histogram, in seconds: waits run from milliseconds to hours.
const WAIT_BOUNDS: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// How long the last answer from Redis may be old before `/healthz` says Redis is unreachable.
pub const REDIS_STALE_AFTER: Duration = Duration::from_secs(10);

/// A settled outcome, as counted.
pub enum Counted<'a> {
    Done(&'a Timing),
    Failed(&'a str),
    Retry(&'a str),
}

/// Counters indexed by a fixed list of label values, plus one for anything else.
struct Labelled {
    names: &'static [&'static str],
    counts: Vec<AtomicU64>,
}

impl Labelled {
    fn new(names: &'static [&'static str]) -> Labelled {
        Labelled {
            names,
            counts: (0..=names.len()).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn add(&self, name: &str) {
        let index = self
            .names
            .iter()
            .position(|n| *n == name)
            .unwrap_or(self.names.len());
        self.counts[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Every label value with its count; `other` only once it has counted something.
    fn values(&self) -> Vec<(&'static str, u64)> {
        let mut values: Vec<(&'static str, u64)> = self
            .names
            .iter()
            .zip(&self.counts)
            .map(|(name, count)| (*name, count.load(Ordering::Relaxed)))
            .collect();
        let other = self.counts[self.names.len()].load(Ordering::Relaxed);
        if other > 0 {
            values.push(("other", other));
        }
        values
    }
}

/// A cumulative histogram of seconds with fixed bounds.
struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus the `+Inf` bucket; not cumulative until rendered.
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe_ms(&self, ms: f64) {
        let seconds = (ms / 1e3).max(0.0);
        let index = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6).round() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let separator = if labels.is_empty() { "" } else { "," };
        for (index, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(index)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// The value of a gauge nobody has set yet.
const UNSET: u64 = u64::MAX;

/// Every metric of the process.
pub struct Metrics {
    done: AtomicU64,
    failed: Labelled,
    retries: Labelled,
    recoveries: Labelled,
    stages: Vec<Histogram>,
    queue_wait: Histogram,
    redis_calls: Vec<Histogram>,
    in_flight: AtomicU64,
    backend_waiting: AtomicU64,
    queue_depth: AtomicU64,
    retry_set_size: AtomicU64,
    /// When Redis last answered the maintenance thread's depth query (ms since the epoch).
    redis_answered_at_ms: AtomicU64,
    device_memory_bytes: AtomicU64,
    backend: OnceLock<String>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide registry.
pub fn global() -> &'static Metrics {
    &METRICS
}

/// Counts one job in flight until dropped.
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            done: AtomicU64::new(0),
            failed: Labelled::new(FAILED_KINDS),
            retries: Labelled::new(RETRY_KINDS),
            recoveries: Labelled::new(RECOVERY_REASONS),
            stages: STAGES
                .iter()
                .map(|_| Histogram::new(STAGE_BOUNDS))
                .collect(),
            queue_wait: Histogram::new(WAIT_BOUNDS),
            redis_calls: REDIS_CALLS
                .iter()
                .map(|_| Histogram::new(REDIS_BOUNDS))
                .collect(),
            in_flight: AtomicU64::new(0),
            backend_waiting: AtomicU64::new(0),
            queue_depth: AtomicU64::new(UNSET),
            retry_set_size: AtomicU64::new(UNSET),
            redis_answered_at_ms: AtomicU64::new(0),
            device_memory_bytes: AtomicU64::new(UNSET),
            backend: OnceLock::new(),
        }
    }

    /// Counts an outcome whose write to Redis committed.
    pub fn count(&self, outcome: &Counted<'_>) {
        match outcome {
            Counted::Done(timing) => {
                self.done.fetch_add(1, Ordering::Relaxed);
                let stage_ms = [
                    timing.read,
                    timing.decode,
                    timing.gpu,
                    timing.encode,
                    timing.write,
                ];
                for (histogram, ms) in self.stages.iter().zip(stage_ms) {
                    histogram.observe_ms(ms);
                }
                if let Some(wait) = timing.queue_wait {
                    self.queue_wait.observe_ms(wait);
                }
            }
            Counted::Failed(kind) => self.failed.add(kind),
            Counted::Retry(kind) => self.retries.add(kind),
        }
    }

    /// Records how long one of the per-job Redis calls ([`REDIS_CALLS`]) took.
    pub fn observe_redis(&self, call: &str, took: Duration) {
        if let Some(index) = REDIS_CALLS.iter().position(|known| *known == call) {
            self.redis_calls[index].observe_ms(took.as_secs_f64() * 1e3);
        }
    }

    /// Counts a claimed job processed again: `restart` (held when this consumer last
    /// stopped) or `reconnect` (found after a lost connection).
    pub fn count_recovery(&self, reason: &str) {
        self.recoveries.add(reason);
    }

    /// Marks one job in flight (claimed, not yet settled) for as long as the guard lives.
    pub fn job_in_flight(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// Marks one job waiting for or inside the backend for as long as the guard lives.
    pub fn backend_request(&self) -> InFlight<'_> {
        self.backend_waiting.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.backend_waiting)
    }

    /// Records the queue depths the maintenance thread read, and that Redis answered.
    pub fn set_redis_depths(&self, waiting: u64, retrying: u64) {
        self.queue_depth.store(waiting, Ordering::Relaxed);
        self.retry_set_size.store(retrying, Ordering::Relaxed);
        self.redis_answered_at_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Names the backend in use; the first name set stays.
    pub fn set_backend(&self, name: &str) {
        let _ = self.backend.set(name.to_owned());
    }

    /// The hook for a GPU backend: device memory in use, in bytes. Never set on the CPU
    /// backend, where the metric is absent.
    pub fn set_device_memory_used(&self, bytes: u64) {
        self.device_memory_bytes
            .store(bytes.min(UNSET - 1), Ordering::Relaxed);
    }

    /// How long ago Redis last answered, or `None` when it has not since start-up.
    pub fn redis_silence(&self) -> Option<Duration> {
        match self.redis_answered_at_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(now_ms().saturating_sub(at))),
        }
    }
}

/// What `/metrics` and `/healthz` read beside the registry: the daemon's live state.
#[derive(Clone)]
pub struct Probes {
    pub pulses: Arc<Pulses>,
    pub backend: Arc<BackendState>,
    pub shutdown: Shutdown,
    /// A worker silent for longer than this is wedged (the watchdog's threshold too).
    pub wedged_after: Duration,
}

impl Probes {
    /// `Ok` when the daemon can do its work, else the first reason it cannot.
    pub fn health(&self, metrics: &Metrics) -> Result<(), String> {
        if self.shutdown.requested() {
            return Err("stopping: finishing the jobs in hand".into());
        }
        match metrics.redis_silence() {
            None => return Err("redis has not answered since start-up".into()),
            Some(silence) if silence > REDIS_STALE_AFTER => {
                return Err(format!(
                    "redis has not answered for {:.1} s",
                    silence.as_secs_f64()
                ));
            }
            Some(_) => {}
        }
        let silence = self.pulses.longest_silence();
        if silence > self.wedged_after {
            return Err(format!(
                "a worker has shown no progress for {:.1} s",
                silence.as_secs_f64()
            ));
        }
        Ok(())
    }
}

/// Renders every metric in the Prometheus text exposition format (version 0.0.4).
pub fn render(metrics: &Metrics, probes: &Probes) -> String {
    let mut out = String::with_capacity(8192);
    render_counters(&mut out, metrics);
    render_histograms(&mut out, metrics);
    render_gauges(&mut out, metrics, probes);
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn render_counters(out: &mut String, metrics: &Metrics) {
    let name = "image_worker_jobs_total";
    header(
        out,
        name,
        "counter",
        "Jobs settled by this process, by final outcome and failure kind.",
    );
    let done = metrics.done.load(Ordering::Relaxed);
    let _ = writeln!(out, "{name}{{outcome=\"done\",kind=\"none\"}} {done}");
    for (kind, count) in metrics.failed.values() {
        let _ = writeln!(out, "{name}{{outcome=\"failed\",kind=\"{kind}\"}} {count}");
    }

    let name = "image_worker_retries_total";
    header(
        out,
        name,
        "counter",
        "Transient failures put in the retry set, by error kind.",
    );
    for (kind, count) in metrics.retries.values() {
        let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {count}");
    }

    let name = "image_worker_recoveries_total";
    header(
        out,
        name,
        "counter",
        "Claimed jobs processed again after a restart or a lost Redis connection.",
    );
    for (reason, count) in metrics.recoveries.values() {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {count}");
    }
}

fn render_histograms(out: &mut String, metrics: &Metrics) {
    let name = "image_worker_stage_seconds";
    header(
        out,
        name,
        "histogram",
        "Time per stage of jobs that ended done (gpu is the backend stage on any backend).",
    );
    for (stage, histogram) in STAGES.iter().zip(&metrics.stages) {
        histogram.render(out, name, &format!("stage=\"{stage}\""));
    }
    let name = "image_worker_queue_wait_seconds";
    header(
        out,
        name,
        "histogram",
        "Time from enqueued_at to the claim, for done jobs that carry enqueued_at.",
    );
    metrics.queue_wait.render(out, name, "");
    let name = "image_worker_redis_call_seconds";
    header(
        out,
        name,
        "histogram",
        "Time from call to reply of the Redis calls made for each job (claim: only claims that returned a job).",
    );
    for (call, histogram) in REDIS_CALLS.iter().zip(&metrics.redis_calls) {
        histogram.render(out, name, &format!("call=\"{call}\""));
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

fn render_gauges(out: &mut String, metrics: &Metrics, probes: &Probes) {
    render_pipeline_gauges(out, metrics, probes);
    render_sampled_gauges(out, metrics);
    render_process_gauges(out, metrics, probes);
}

/// What the workers and the backend thread are doing now.
fn render_pipeline_gauges(out: &mut String, metrics: &Metrics, probes: &Probes) {
    gauge(
        out,
        "image_worker_jobs_in_flight",
        "Jobs claimed by this process and not yet settled.",
        metrics.in_flight.load(Ordering::Relaxed),
    );
    // The channel belongs to the backend; its depth is what waits in the backend stage minus
    // the one request the backend thread is working on.
    let waiting = metrics.backend_waiting.load(Ordering::Relaxed);
    let busy = u64::from(probes.backend.busy_for().is_some());
    gauge(
        out,
        "image_worker_backend_channel_depth",
        "Render requests queued for the backend thread, not yet started.",
        waiting.saturating_sub(busy),
    );
    gauge(
        out,
        "image_worker_backend_busy",
        "1 while the backend thread is rendering a request.",
        busy,
    );
}

/// Values read from elsewhere (Redis, the GPU backend); each is absent until first set.
fn render_sampled_gauges(out: &mut String, metrics: &Metrics) {
    for (name, help, value) in [
        (
            "image_worker_queue_depth",
            "Jobs waiting in the job queue, as last read from Redis.",
            &metrics.queue_depth,
        ),
        (
            "image_worker_retry_set_size",
            "Jobs waiting in the retry set, as last read from Redis.",
            &metrics.retry_set_size,
        ),
        (
            "image_worker_device_memory_used_bytes",
            "Device memory in use by the GPU backend (absent on the CPU backend).",
            &metrics.device_memory_bytes,
        ),
    ] {
        let value = value.load(Ordering::Relaxed);
        if value != UNSET {
            gauge(out, name, help, value);
        }
    }
}

/// The process: its backend, its liveness and its memory.
fn render_process_gauges(out: &mut String, metrics: &Metrics, probes: &Probes) {
    if let Some(backend) = metrics.backend.get() {
        let name = "image_worker_backend_info";
        header(
            out,
            name,
            "gauge",
            "The image backend in use (value always 1).",
        );
        let _ = writeln!(out, "{name}{{backend=\"{backend}\"}} 1");
    }
    gauge(
        out,
        "image_worker_worker_silence_seconds",
        "Longest time any worker thread has gone without showing progress.",
        probes.pulses.longest_silence().as_secs_f64(),
    );
    gauge(
        out,
        "image_worker_healthy",
        "1 when /healthz answers 200.",
        u8::from(probes.health(metrics).is_ok()),
    );
    if let Some(rss) = resident_bytes() {
        gauge(
            out,
            "process_resident_memory_bytes",
            "Resident set size of this process.",
            rss,
        );
    }
}

/// Resident memory from `/proc/self/statm` (its second field, in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

/// The longest request head the responder reads; scrapers send a few hundred bytes.
const MAX_REQUEST: usize = 8192;

/// How long one connection may take to send its request or read the answer.
const IO_DEADLINE: Duration = Duration::from_secs(2);

/// Binds `addr` and answers requests on a thread of its own until the process exits. Returns
/// the bound address (useful with port 0).
pub fn serve(addr: SocketAddr, probes: Probes) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(err) = answer(stream, &probes) {
                    log::debug!("metrics request not answered: {err}");
                }
            }
        })?;
    Ok(bound)
}

fn answer(mut stream: TcpStream, probes: &Probes) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_DEADLINE))?;
    stream.set_write_timeout(Some(IO_DEADLINE))?;
    let head = read_head(&mut stream)?;
    let (status, content_type, body) = route(&head, probes);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    if !head.starts_with("HEAD ") {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

/// Reads up to the blank line that ends the request head.
fn read_head(stream: &mut TcpStream) -> io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() >= MAX_REQUEST {
            break;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The status line, content type and body for one request head.
fn route(head: &str, probes: &Probes) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", TEXT, "only GET and HEAD\n".into());
    }
    let metrics = global();
    match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(metrics, probes),
        ),
        "/healthz" => match probes.health(metrics) {
            Ok(()) => ("200 OK", TEXT, "ok\n".into()),
            Err(reason) => ("503 Service Unavailable", TEXT, format!("{reason}\n")),
        },
        _ => ("404 Not Found", TEXT, "try /metrics or /healthz\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let histogram = Histogram::new(&[0.01, 0.1]);
        for ms in [5.0, 50.0, 50.0, 500.0] {
            histogram.observe_ms(ms);
        }
        let mut out = String::new();
        histogram.render(&mut out, "h", "stage=\"read\"");
        assert!(
            out.contains("h_bucket{stage=\"read\",le=\"0.01\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("h_bucket{stage=\"read\",le=\"0.1\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("h_bucket{stage=\"read\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("h_count{stage=\"read\"} 4\n"), "{out}");
        assert!(out.contains("h_sum{stage=\"read\"} 0.605\n"), "{out}");
    }

    #[test]
    fn unknown_kinds_are_counted_as_other() {
        let failed = Labelled::new(FAILED_KINDS);
        failed.add("corrupt");
        failed.add("something new");
        let values = failed.values();
        assert!(values.contains(&("corrupt", 1)));
        assert!(values.contains(&("other", 1)));
        assert!(values.contains(&("invalid", 0)));
    }

    #[test]
    fn in_flight_guard_counts_down_when_dropped() {
        let metrics = Metrics::new();
        let first = metrics.job_in_flight();
        let second = metrics.job_in_flight();
        assert_eq!(metrics.in_flight.load(Ordering::Relaxed), 2);
        drop(first);
        drop(second);
        assert_eq!(metrics.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn resident_memory_is_read_from_proc() {
        assert!(resident_bytes().is_some_and(|bytes| bytes > 0));
    }
}
