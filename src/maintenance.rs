//! The maintenance thread: liveness and due retries, for the whole process.
//!
//! Every tick (250 ms, or a third of the liveness TTL when that is shorter) it:
//! - refreshes `image_worker:alive:{hostname}` with a TTL, every third of the TTL, so that
//!   `requeue-stuck` leaves this host's processing lists alone while the process lives;
//! - moves due members of the retry set back to the job queue;
//! - reads the depth of the job queue and the retry set for the metrics, every second; that
//!   answer is also what `/healthz` takes as proof that Redis is reachable.
//!
//! It runs until the workers have drained (not merely until the stop signal), so that the
//! liveness key stays fresh during a long drain; then it removes the liveness key.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::config::Config;
use crate::job;
use crate::metrics;
use crate::queue::{self, Queue};

const TICK: Duration = Duration::from_millis(250);

/// How often the queue depths are read for the metrics.
const DEPTHS_EVERY: Duration = Duration::from_secs(1);

pub struct Maintenance {
    pub queue: Queue,
    pub config: Arc<Config>,
    pub workers: usize,
    pub stop: Arc<AtomicBool>,
    /// The backend's description (device, capability, memory), shown by `status`.
    pub backend: String,
}

impl Maintenance {
    pub fn run(mut self) {
        let stop = Arc::clone(&self.stop);
        let stopping = move || stop.load(Ordering::SeqCst);
        self.warn_about_eviction();
        let heartbeat_every = self.config.alive_ttl / 3;
        let tick = TICK.min(heartbeat_every);
        let alive = self.alive_value();
        let mut last_heartbeat: Option<Instant> = None;
        let mut last_depths: Option<Instant> = None;

        while !stopping() {
            if last_heartbeat.is_none_or(|at| at.elapsed() >= heartbeat_every) {
                let ttl = self.config.alive_ttl;
                if self
                    .queue
                    .refresh_alive(&self.config.hostname, &alive, ttl, &stopping)
                    .is_ok()
                {
                    last_heartbeat = Some(Instant::now());
                }
            }
            if last_depths.is_none_or(|at| at.elapsed() >= DEPTHS_EVERY)
                && let Ok((waiting, retrying)) = self.queue.depths(&stopping)
            {
                metrics::global().set_redis_depths(waiting, retrying);
                last_depths = Some(Instant::now());
            }
            match self.queue.promote_due(job::now_ms(), 100, &stopping) {
                Ok(0) | Err(_) => thread::sleep(tick),
                Ok(n) => log::debug!("promoted {n} due retries"),
            }
        }
        if let Err(err) = self.queue.clear_alive(&self.config.hostname) {
            log::debug!("liveness key not removed: {err}");
        }
    }

    fn consumers(&self) -> Vec<String> {
        (0..self.workers)
            .map(|i| queue::consumer_id(&self.config.hostname, i))
            .collect()
    }

    fn alive_value(&self) -> String {
        json!({
            "pid": std::process::id(),
            "started_at": job::now_ms(),
            "consumers": self.consumers(),
            "version": env!("CARGO_PKG_VERSION"),
            "backend": self.backend,
        })
        .to_string()
    }

    fn warn_about_eviction(&mut self) {
        match self.queue.eviction_policy() {
            Some(policy) if policy != "noeviction" => log::warn!(
                "redis maxmemory-policy is {policy}: under memory pressure Redis may evict queue \
                 keys and lose jobs; set it to noeviction"
            ),
            _ => {}
        }
    }
}
