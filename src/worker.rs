//! Workers: the pipeline for one job, and the loop that feeds it from the queue.
//!
//! [`Pipeline::run`] is the whole job minus Redis: resolve and read the input, decode, render on
//! the backend thread, encode, write atomically. `image-worker process` calls it directly; the
//! daemon's [`Worker`] wraps it with a claim before and an outcome after. Each job's outcome is
//! exactly one of done, retry (transient error, attempts left) or failed, written in the same
//! transaction that removes the claim. A panic inside a job is caught and treated as a transient
//! error; the worker goes on with the next job.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::backend::{BackendHandle, RenderedImage};
use crate::config::Config;
use crate::decode::{self, SourceInfo};
use crate::encode;
use crate::failpoint;
use crate::job::{self, Disposition, Job, JobError};
use crate::metrics::{self, Counted};
use crate::ops;
use crate::output;
use crate::queue::{self, Outcome, Queue, QueueError, Settled};
use crate::shutdown::Shutdown;

/// One written rendition.
#[derive(Clone, Debug)]
pub struct OutputRecord {
    pub rendition: &'static str,
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
}

/// Milliseconds spent in each stage of one job.
#[derive(Clone, Debug, Default)]
pub struct Timing {
    pub queue_wait: Option<f64>,
    pub read: f64,
    pub decode: f64,
    pub gpu: f64,
    pub encode: f64,
    pub write: f64,
    pub total: f64,
}

/// What a successful job produced.
#[derive(Clone, Debug)]
pub struct DoneReport {
    pub outputs: Vec<OutputRecord>,
    pub source: SourceInfo,
    pub timing: Timing,
}

/// How far a job has got, recorded in Redis as it goes so that a job whose worker died can be
/// failed as `poison` naming the stage that killed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Idle,
    Claimed,
    Read,
    Decode,
    Render,
    Encode,
    Write,
    Settle,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Idle => "idle",
            Stage::Claimed => "claimed",
            Stage::Read => "read",
            Stage::Decode => "decode",
            Stage::Render => "render",
            Stage::Encode => "encode",
            Stage::Write => "write",
            Stage::Settle => "settle",
        }
    }
}

/// When each worker last showed it is alive, for the systemd watchdog.
#[derive(Debug)]
pub struct Pulses {
    last_ms: Vec<AtomicU64>,
}

impl Pulses {
    pub fn new(workers: usize) -> Pulses {
        Pulses {
            last_ms: (0..workers)
                .map(|_| AtomicU64::new(job::now_ms()))
                .collect(),
        }
    }

    pub fn beat(&self, worker: usize) {
        self.last_ms[worker].store(job::now_ms(), Ordering::Relaxed);
    }

    /// How long the quietest worker has been quiet.
    pub fn longest_silence(&self) -> Duration {
        let oldest = self.last_ms.iter().map(|t| t.load(Ordering::Relaxed)).min();
        Duration::from_millis(oldest.map_or(0, |t| job::now_ms().saturating_sub(t)))
    }
}

/// The pipeline shared by the daemon's workers and by `process`.
pub struct Pipeline {
    config: Arc<Config>,
    backend: BackendHandle,
    /// Canonical input roots, or `None` when any readable file may be used (`process`, where
    /// the operator names the file).
    input_roots: Option<Vec<PathBuf>>,
}

fn ms_since(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

impl Pipeline {
    pub fn new(
        config: Arc<Config>,
        backend: BackendHandle,
        input_roots: Option<Vec<PathBuf>>,
    ) -> Pipeline {
        Pipeline {
            config,
            backend,
            input_roots,
        }
    }

    /// Runs one job to its written outputs, telling `mark` each stage as it begins.
    pub fn run(&self, job: &Job, mark: &mut dyn FnMut(Stage)) -> Result<DoneReport, JobError> {
        let started = Instant::now();
        let mut timing = Timing::default();
        let limits = &self.config.limits;
        let plan = ops::plan_from_ops(job.ops(), &self.config.renditions)
            .map_err(|reason| JobError::Invalid(format!("job {}: {reason}", job.id)))?;
        let (path, _) = job::resolve_input(
            &job.input,
            self.input_roots.as_deref(),
            limits.max_input_bytes,
        )?;

        mark(Stage::Read);
        let stage = Instant::now();
        let bytes = job::read_input(&path, limits.max_input_bytes)?;
        timing.read = ms_since(stage);

        mark(Stage::Decode);
        failpoint::hit("during-decode");
        let stage = Instant::now();
        let need = |width, height| ops::largest_fit(width, height, &plan);
        let (image, source) = decode::decode_at_least(&bytes, limits, &need)?;
        drop(bytes);
        timing.decode = ms_since(stage);

        mark(Stage::Render);
        let stage = Instant::now();
        let waiting = metrics::global().backend_request();
        let rendered = self.backend.render(image, plan)?;
        drop(waiting);
        timing.gpu = ms_since(stage);

        mark(Stage::Encode);
        failpoint::hit("during-encode");
        let stage = Instant::now();
        let encoded = rendered
            .iter()
            .map(encode::encode_webp)
            .collect::<Result<Vec<_>, _>>()?;
        timing.encode = ms_since(stage);

        mark(Stage::Write);
        let stage = Instant::now();
        let outputs = self.write_outputs(&job.id, &rendered, encoded)?;
        timing.write = ms_since(stage);
        failpoint::hit("after-rename");

        timing.total = ms_since(started);
        Ok(DoneReport {
            outputs,
            source,
            timing,
        })
    }

    /// Writes each rendition's WebP bytes atomically to its final path.
    fn write_outputs(
        &self,
        id: &str,
        rendered: &[RenderedImage],
        encoded: Vec<Vec<u8>>,
    ) -> Result<Vec<OutputRecord>, JobError> {
        let root = &self.config.output_root;
        let files: Vec<(PathBuf, Vec<u8>)> = rendered
            .iter()
            .zip(encoded)
            .map(|(r, bytes)| {
                (
                    output::rendition_path(root, id, r.spec.rendition.name()),
                    bytes,
                )
            })
            .collect();
        output::write_all_atomic(&output::job_dir(root, id), &files)?;
        let records = rendered
            .iter()
            .zip(files)
            .map(|(r, (path, bytes))| OutputRecord {
                rendition: r.spec.rendition.name(),
                path,
                width: r.width,
                height: r.height,
                bytes: bytes.len() as u64,
            })
            .collect();
        Ok(records)
    }

    /// Runs a job, turning a panic into a transient error.
    pub fn run_caught(
        &self,
        job: &Job,
        mark: &mut dyn FnMut(Stage),
    ) -> Result<DoneReport, JobError> {
        catch_unwind(AssertUnwindSafe(|| self.run(job, mark)))
            .unwrap_or_else(|payload| Err(JobError::Panic(job::panic_message(payload.as_ref()))))
    }
}

/// The done message: the job's fields, `attempts`, `outputs`, `source`, `timing_ms`,
/// `consumer` and `finished_at`.
pub fn done_message(job: &Job, report: &DoneReport, attempts: u32, consumer: &str) -> Value {
    let mut outputs = Map::new();
    for o in &report.outputs {
        outputs.insert(
            o.rendition.into(),
            json!({"path": o.path, "width": o.width, "height": o.height, "bytes": o.bytes}),
        );
    }
    let t = &report.timing;
    let mut fields = job.fields.clone();
    fields.insert("attempts".into(), attempts.into());
    fields.insert("outputs".into(), Value::Object(outputs));
    fields.insert(
        "source".into(),
        json!({
            "format": report.source.format,
            "width": report.source.width,
            "height": report.source.height,
            "orientation": report.source.orientation,
        }),
    );
    fields.insert(
        "timing_ms".into(),
        json!({
            "queue_wait": t.queue_wait, "read": t.read, "decode": t.decode, "gpu": t.gpu,
            "encode": t.encode, "write": t.write, "total": t.total,
        }),
    );
    fields.insert("consumer".into(), consumer.into());
    fields.insert("finished_at".into(), job::now_ms().into());
    Value::Object(fields)
}

/// One daemon worker thread: claims, runs, settles.
pub struct Worker {
    pub index: usize,
    pub consumer: String,
    pub queue: Queue,
    pub pipeline: Arc<Pipeline>,
    pub config: Arc<Config>,
    pub pulses: Arc<Pulses>,
    pub shutdown: Shutdown,
}

impl Worker {
    /// Runs until the stop flag is set and the job in hand is settled.
    pub fn run(mut self) {
        let shutdown = self.shutdown.clone();
        let (pulses, index) = (Arc::clone(&self.pulses), self.index);
        // The stop check runs before every claim and on every retry of a Redis call, so it also
        // records that this worker is alive, waiting on Redis or not.
        let stopping = move || {
            pulses.beat(index);
            shutdown.requested()
        };
        if let Err(err) = self.queue.register(&stopping) {
            log::debug!("consumer={} not registered: {err}", self.consumer);
        }
        log::info!(
            "worker started consumer={} list={}",
            self.consumer,
            self.queue.processing_key()
        );
        let _ = self.recover_at_start(&stopping);
        while !stopping() {
            if let Err(QueueError::Stopping(_)) = self.step(&stopping) {
                break;
            }
        }
        log::info!("worker stopped consumer={}", self.consumer);
    }

    /// Processes what a previous process with this consumer id held when it died, counting
    /// each as a recovery so that a job that kills its worker every time ends as `poison`.
    fn recover_at_start(&mut self, stopping: &dyn Fn() -> bool) -> Result<(), QueueError> {
        let stage = self.queue.recorded_stage(&self.consumer, stopping)?;
        self.queue.take_reconnected();
        for raw in self.queue.orphans(stopping)? {
            log::warn!(
                "recovering a job held when this consumer last stopped consumer={} stage={}",
                self.consumer,
                stage.as_deref().unwrap_or("unknown")
            );
            self.queue.note_recovery(&raw, stage.as_deref(), stopping)?;
            metrics::global().count_recovery("restart");
            self.handle(&raw, true);
        }
        Ok(())
    }

    /// Handles any orphans a reconnect may have left, then one claim.
    fn step(&mut self, stopping: &dyn Fn() -> bool) -> Result<(), QueueError> {
        if self.queue.take_reconnected() {
            for raw in self.queue.orphans(stopping)? {
                log::info!(
                    "recovering orphan after a reconnect consumer={} bytes={}",
                    self.consumer,
                    raw.len()
                );
                metrics::global().count_recovery("reconnect");
                self.handle(&raw, true);
            }
            return Ok(());
        }
        let asked = Instant::now();
        if let Some(claim) = self.queue.claim(stopping)? {
            metrics::global().observe_redis("claim", asked.elapsed());
            self.handle(&claim.payload, claim.may_be_recovered);
        }
        Ok(())
    }

    fn mark(&mut self, stage: Stage) {
        self.pulses.beat(self.index);
        self.queue.mark_stage(&self.consumer, stage.name());
    }

    /// Runs one claimed payload and writes its outcome; never gives up on the write.
    /// `may_be_recovered` is false when Redis is known to hold no recovery count for it.
    fn handle(&mut self, raw: &[u8], may_be_recovered: bool) {
        failpoint::hit("after-claim");
        let _in_flight = metrics::global().job_in_flight();
        self.mark(Stage::Claimed);
        let claimed_at = job::now_ms();
        let job = match Job::parse(raw) {
            Ok(job) => job,
            Err(err) => {
                let message = job::unparsed_failure(raw, &err, &self.consumer).to_string();
                log::error!(
                    "job=? outcome=failed kind={} consumer={} error=\"{err}\"",
                    err.kind(),
                    self.consumer
                );
                let counted = Counted::Failed(err.kind());
                self.settle(raw, "?", &Outcome::Failed(&message), &counted);
                return;
            }
        };
        let attempt = job.attempts.saturating_add(1);
        if may_be_recovered && self.fail_if_poison(raw, &job, attempt) {
            return;
        }
        let pipeline = Arc::clone(&self.pipeline);
        let mut mark = |stage: Stage| self.mark(stage);
        match pipeline.run_caught(&job, &mut mark) {
            Ok(mut report) => {
                report.timing.queue_wait = job
                    .enqueued_at_ms
                    .map(|at| claimed_at.saturating_sub(at) as f64);
                let message = done_message(&job, &report, attempt, &self.consumer).to_string();
                log::info!(
                    "job={} outcome=done ms={:.1} attempt={attempt} consumer={}",
                    job.id,
                    report.timing.total,
                    self.consumer
                );
                let counted = Counted::Done(&report.timing);
                self.settle(raw, &job.id, &Outcome::Done(&message), &counted);
            }
            Err(err) => self.settle_error(raw, &job, attempt, &err),
        }
    }

    /// Fails the job as `poison` when it was recovered after a worker death more often than
    /// the limit allows. Returns whether it did.
    fn fail_if_poison(&mut self, raw: &[u8], job: &Job, attempt: u32) -> bool {
        let asked = Instant::now();
        let recovery = self.queue.recovery(raw, &|| false);
        metrics::global().observe_redis("recovery", asked.elapsed());
        let (recoveries, stage) = match recovery {
            Ok(info) => info,
            Err(_) => return false,
        };
        if recoveries <= self.config.poison_limit {
            return false;
        }
        let stage = stage.unwrap_or_else(|| "unknown".into());
        let error = format!(
            "job was recovered {recoveries} times after its worker died (poison_limit {}); \
             the last stage it reached was {stage}",
            self.config.poison_limit
        );
        log::error!(
            "job={} outcome=failed kind=poison stage={stage} consumer={} error=\"{error}\"",
            job.id,
            self.consumer
        );
        let mut message = job::failed_message(job, &error, "poison", attempt, &self.consumer);
        message["stage"] = stage.into();
        let outcome = Outcome::Failed(&message.to_string());
        self.settle(raw, &job.id, &outcome, &Counted::Failed("poison"));
        true
    }

    fn settle_error(&mut self, raw: &[u8], job: &Job, attempt: u32, err: &JobError) {
        let disposition = err.disposition();
        if disposition == Disposition::Fatal {
            self.shutdown
                .request_fatal(&format!("job={} {err}", job.id));
        }
        if disposition == Disposition::Permanent {
            log::error!(
                "job={} outcome=failed kind={} attempt={attempt} consumer={} error=\"{err}\"",
                job.id,
                err.kind(),
                self.consumer
            );
            let message =
                job::failed_message(job, &err.to_string(), err.kind(), attempt, &self.consumer);
            let outcome = Outcome::Failed(&message.to_string());
            self.settle(raw, &job.id, &outcome, &Counted::Failed(err.kind()));
        } else if attempt >= self.config.max_attempts {
            let error = format!(
                "gave up after {attempt} attempts; last error ({}): {err}",
                err.kind()
            );
            log::error!(
                "job={} outcome=failed kind=exhausted attempt={attempt} consumer={} error=\"{err}\"",
                job.id,
                self.consumer
            );
            let message = job::failed_message(job, &error, "exhausted", attempt, &self.consumer);
            let outcome = Outcome::Failed(&message.to_string());
            self.settle(raw, &job.id, &outcome, &Counted::Failed("exhausted"));
        } else {
            let delay = queue::backoff_ms(&self.config.retry, attempt);
            let due_ms = job::now_ms() + delay;
            log::warn!(
                "job={} outcome=retry kind={} attempt={attempt} delay_ms={delay} consumer={} error=\"{err}\"",
                job.id,
                err.kind(),
                self.consumer
            );
            let payload = job::retry_payload(job, attempt, err, due_ms).to_string();
            self.settle(
                raw,
                &job.id,
                &Outcome::RetryAt {
                    payload: &payload,
                    due_ms,
                },
                &Counted::Retry(err.kind()),
            );
        }
    }

    /// Writes the outcome and removes the claim; `counted` goes into the metrics once the
    /// write has committed.
    fn settle(&mut self, raw: &[u8], id: &str, outcome: &Outcome<'_>, counted: &Counted<'_>) {
        self.mark(Stage::Settle);
        failpoint::hit("before-ack");
        // The outcome is written whatever the stop flag says: stopping means finishing this.
        let (pulses, index) = (Arc::clone(&self.pulses), self.index);
        let asked = Instant::now();
        let settled = self.queue.settle(raw, outcome, &move || {
            pulses.beat(index);
            false
        });
        metrics::global().observe_redis("settle", asked.elapsed());
        self.mark(Stage::Idle);
        match settled {
            Ok(Settled::Written) => metrics::global().count(counted),
            Ok(Settled::AlreadyGone) => log::warn!(
                "job={id} claim was already gone when its outcome was written; nothing written consumer={}",
                self.consumer
            ),
            Err(err) => log::error!(
                "job={id} outcome not written consumer={}: {err}",
                self.consumer
            ),
        }
    }
}
