//! The subcommands: `run` (the daemon), `process`, `enqueue`, `status` and `check`.
//!
//! Each takes the validated [`Config`] and returns the process exit status, or an error that
//! `main` prints once. Usage and configuration errors are [`CommandError::Usage`] (exit 2);
//! everything else that stops a command is exit 1.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::backend::{self, BackendState};
use crate::config::Config;
use crate::job::{self, Job};
use crate::maintenance::Maintenance;
use crate::metrics::{self, Probes};
use crate::notify;
use crate::queue::{self, Keys, Queue};
use crate::shutdown::Shutdown;
use crate::worker::{self, Pipeline, Pulses, Worker};

/// Why a command stopped.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A usage or configuration problem: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Anything else: exit 1.
    #[error("{0}")]
    Failed(String),
}

type CommandResult = Result<u8, CommandError>;

fn failed(context: &str) -> impl FnOnce(String) -> CommandError + '_ {
    move |err| CommandError::Failed(format!("{context}: {err}"))
}

/// Canonicalises the input roots; a root that does not exist is a configuration error.
fn canonical_roots(config: &Config) -> Result<Vec<PathBuf>, CommandError> {
    config
        .input_roots
        .iter()
        .map(|root| {
            root.canonicalize().map_err(|err| {
                CommandError::Usage(format!(
                    "input root {} is not usable: {err}",
                    root.display()
                ))
            })
        })
        .collect()
}

fn ensure_output_root(root: &Path) -> Result<(), CommandError> {
    fs::create_dir_all(root).map_err(|err| {
        CommandError::Failed(format!(
            "output root {} cannot be created: {err}",
            root.display()
        ))
    })
}

fn start_backend(
    config: &Config,
) -> Result<(backend::BackendThread, backend::BackendHandle, String), CommandError> {
    backend::start(config.backend, config.workers, config.job_timeout).map_err(|err| match err {
        backend::BackendError::Unavailable(reason) => CommandError::Usage(reason),
        other => CommandError::Failed(other.to_string()),
    })
}

/// The daemon: workers until SIGTERM or SIGINT, then a drain.
pub fn run(config: Config) -> CommandResult {
    let shutdown =
        Shutdown::install().map_err(|e| failed("cannot install signal handlers")(e.to_string()))?;
    let roots = canonical_roots(&config)?;
    ensure_output_root(&config.output_root)?;
    let (backend_thread, handle, description) = start_backend(&config)?;
    let backend_state = Arc::clone(handle.state());
    metrics::global().set_backend(handle.name());
    let config = Arc::new(config);
    log::info!(
        "image-worker {} starting workers={} backend=\"{description}\" redis={} output_root={}",
        env!("CARGO_PKG_VERSION"),
        config.workers,
        config.redis_url,
        config.output_root.display()
    );

    let pipeline = Arc::new(Pipeline::new(Arc::clone(&config), handle, Some(roots)));
    let pulses = Arc::new(Pulses::new(config.workers));
    start_metrics(&config, &pulses, &backend_state, &shutdown)?;
    let workers = start_workers(&config, &pipeline, &pulses, &shutdown)?;
    drop(pipeline);
    let maintenance_stop = Arc::new(AtomicBool::new(false));
    let maintenance = start_maintenance(&config, &maintenance_stop, &description)?;

    announce_ready(&config, &shutdown)?;
    watch(&shutdown, &backend_state, &pulses, config.job_timeout);
    notify::notify("STOPPING=1");
    log::info!(
        "stop requested: finishing the jobs in hand (drain deadline {:?})",
        config.drain_timeout
    );
    if !drain(&workers, config.drain_timeout) {
        log::error!(
            "drain deadline of {:?} passed; jobs still in hand stay in their processing lists for \
             the next start",
            config.drain_timeout
        );
        std::process::exit(1);
    }
    for worker in workers {
        let _ = worker.join();
    }
    maintenance_stop.store(true, Ordering::SeqCst);
    let _ = maintenance.join();
    if shutdown.is_fatal() {
        // The backend thread may be the thing that is stuck: do not wait for it.
        return Err(CommandError::Failed(
            "stopped after a fatal error (see above)".into(),
        ));
    }
    // The workers held the last handles; the backend thread ends once it has answered them.
    backend_thread.join();
    log::info!("image-worker stopped cleanly");
    Ok(0)
}

/// How long a worker may show no progress before it counts as wedged: longer than a job may
/// legitimately wait for the backend, twice over.
fn wedged_after(job_timeout: Duration) -> Duration {
    job_timeout * 2 + Duration::from_secs(10)
}

/// Serves `/metrics` and `/healthz` when `metrics_addr` is set. An address that cannot be bound
/// stops the start-up: an operator who asked for metrics must not get a daemon without them.
fn start_metrics(
    config: &Config,
    pulses: &Arc<Pulses>,
    backend: &Arc<BackendState>,
    shutdown: &Shutdown,
) -> Result<(), CommandError> {
    let Some(addr) = config.metrics_addr else {
        return Ok(());
    };
    let probes = Probes {
        pulses: Arc::clone(pulses),
        backend: Arc::clone(backend),
        shutdown: shutdown.clone(),
        wedged_after: wedged_after(config.job_timeout),
    };
    let bound = metrics::serve(addr, probes).map_err(|err| {
        CommandError::Failed(format!("metrics_addr {addr} cannot be served: {err}"))
    })?;
    if !bound.ip().is_loopback() {
        log::warn!(
            "metrics listening on {bound}, which is not a loopback address: /metrics and \
             /healthz have no authentication"
        );
    }
    log::info!("metrics listening on http://{bound}/metrics and /healthz");
    Ok(())
}

fn start_workers(
    config: &Arc<Config>,
    pipeline: &Arc<Pipeline>,
    pulses: &Arc<Pulses>,
    shutdown: &Shutdown,
) -> Result<Vec<thread::JoinHandle<()>>, CommandError> {
    (0..config.workers)
        .map(|index| {
            let consumer = queue::consumer_id(&config.hostname, index);
            let worker = Worker {
                index,
                queue: Queue::new(&config.redis_url, &config.keys, &consumer)
                    .map_err(|e| CommandError::Usage(e.to_string()))?,
                consumer,
                pipeline: Arc::clone(pipeline),
                config: Arc::clone(config),
                pulses: Arc::clone(pulses),
                shutdown: shutdown.clone(),
            };
            thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || worker.run())
                .map_err(|e| failed("cannot start a worker thread")(e.to_string()))
        })
        .collect()
}

fn start_maintenance(
    config: &Arc<Config>,
    stop: &Arc<AtomicBool>,
    backend: &str,
) -> Result<thread::JoinHandle<()>, CommandError> {
    let consumer = format!("{}:maintenance", config.hostname);
    let maintenance = Maintenance {
        queue: Queue::new(&config.redis_url, &config.keys, &consumer)
            .map_err(|e| CommandError::Usage(e.to_string()))?,
        config: Arc::clone(config),
        workers: config.workers,
        stop: Arc::clone(stop),
        backend: backend.to_owned(),
    };
    thread::Builder::new()
        .name("maintenance".into())
        .spawn(move || maintenance.run())
        .map_err(|e| failed("cannot start the maintenance thread")(e.to_string()))
}

/// Tells systemd the service is ready once Redis answers (the backend already has).
fn announce_ready(config: &Config, shutdown: &Shutdown) -> Result<(), CommandError> {
    let mut queue = Queue::new(
        &config.redis_url,
        &config.keys,
        &format!("{}:ready", config.hostname),
    )
    .map_err(|e| CommandError::Usage(e.to_string()))?;
    if queue.ping(&|| shutdown.requested()).is_ok() {
        notify::notify("READY=1");
        log::info!("ready: redis and the backend answer");
    }
    Ok(())
}

/// Waits for the stop flag, meanwhile keeping systemd's watchdog fed while the process is
/// healthy.
///
/// A backend request that runs far past the job timeout means the backend is stuck: the workers
/// have already retried their jobs, so the process stops with a failure and the supervisor
/// restarts it with a fresh backend. A worker silent for longer than that is wedged outside the
/// backend (a decoder that never returns): the watchdog is no longer fed, so systemd restarts
/// the process and the job is recovered from its processing list.
fn watch(shutdown: &Shutdown, backend: &BackendState, pulses: &Pulses, job_timeout: Duration) {
    let watchdog = notify::watchdog_period();
    let wedged_after = wedged_after(job_timeout);
    let mut fed = Instant::now();
    let mut warned = false;
    while !shutdown.requested() {
        thread::sleep(Duration::from_millis(100));
        if let Some(busy) = backend.busy_for()
            && busy > job_timeout * 2
        {
            shutdown.request_fatal(&format!(
                "the backend has been busy with one request for {busy:?}, over twice the job \
                 timeout of {job_timeout:?}"
            ));
        }
        let silence = pulses.longest_silence();
        if let Some(period) = watchdog
            && fed.elapsed() >= period
        {
            if silence < wedged_after {
                notify::notify("WATCHDOG=1");
                fed = Instant::now();
                warned = false;
            } else if !warned {
                log::error!(
                    "a worker has shown no progress for {silence:?}; no longer feeding the watchdog"
                );
                warned = true;
            }
        }
    }
}

/// Waits until every worker has finished or the deadline passes; returns whether all finished.
fn drain(workers: &[thread::JoinHandle<()>], deadline: Duration) -> bool {
    let until = Instant::now() + deadline;
    while !workers.iter().all(|w| w.is_finished()) {
        if Instant::now() >= until {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A job id made from a file name: its stem with every character outside `[A-Za-z0-9_-]`
/// replaced by `_`, at most 128 characters.
pub fn id_from_path(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    if id.is_empty() { "image".into() } else { id }
}

fn absolute(path: &Path) -> Result<PathBuf, CommandError> {
    std::path::absolute(path)
        .map_err(|err| CommandError::Usage(format!("{}: {err}", path.display())))
}

/// Images through the same pipeline, without Redis; prints one done message per image.
///
/// `file` is one image, or a folder whose files named as images (see [`IMAGE_EXTENSIONS`]) are
/// taken in name order with ids from their names. `repeat` runs that set so many times on one backend, so that a benchmark times
/// the pipeline rather than start-up. The first failure stops the command.
pub fn process(
    mut config: Config,
    file: &Path,
    out: &Path,
    id: Option<String>,
    repeat: u32,
) -> CommandResult {
    config.output_root = absolute(out)?;
    ensure_output_root(&config.output_root)?;
    let jobs = process_jobs(&absolute(file)?, id)?;

    let (backend_thread, handle, _) = start_backend(&config)?;
    let pipeline = Pipeline::new(Arc::new(config), handle, None);
    let result = (0..repeat).try_for_each(|_| {
        jobs.iter().try_for_each(|job| {
            let report = pipeline.run_caught(job, &mut |_| {})?;
            println!("{}", worker::done_message(job, &report, 1, "process"));
            Ok(())
        })
    });
    drop(pipeline);
    backend_thread.join();
    result
        .map_err(|err: job::JobError| CommandError::Failed(format!("{} ({})", err, err.kind())))?;
    Ok(0)
}

/// File name extensions `process` takes from a folder. Formats are still recognised from the
/// content; this only keeps notes and listings beside the images out of the run.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff"];

fn named_as_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The jobs `process` runs: one for a file, one per image file of a folder.
fn process_jobs(input: &Path, id: Option<String>) -> Result<Vec<Job>, CommandError> {
    let usage = |err: String| CommandError::Usage(err);
    let files = if input.is_dir() {
        if id.is_some() {
            return Err(usage(format!(
                "--id names one image, but {} is a folder",
                input.display()
            )));
        }
        let mut files: Vec<PathBuf> = fs::read_dir(input)
            .map_err(|err| usage(format!("{}: {err}", input.display())))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.is_file() && named_as_image(path))
            .collect();
        files.sort();
        files
    } else {
        vec![input.to_path_buf()]
    };
    files
        .iter()
        .map(|path| {
            let id = id.clone().unwrap_or_else(|| id_from_path(path));
            job::validate_id(&id).map_err(|err| usage(err.to_string()))?;
            let raw = json!({"id": id, "input": path}).to_string();
            Job::parse(raw.as_bytes()).map_err(|err| usage(err.to_string()))
        })
        .collect()
}

fn connect(config: &Config) -> Result<redis::Connection, CommandError> {
    let client = redis::Client::open(config.redis_url.as_str())
        .map_err(|err| CommandError::Usage(format!("redis url {}: {err}", config.redis_url)))?;
    client
        .get_connection_with_timeout(Duration::from_secs(3))
        .map_err(|err| {
            CommandError::Failed(format!("cannot reach redis at {}: {err}", config.redis_url))
        })
}

/// Pushes one job per file, with an id from the file name.
pub fn enqueue(config: Config, files: &[PathBuf]) -> CommandResult {
    let mut conn = connect(&config)?;
    let keys = Keys::new(&config.keys);
    let roots = canonical_roots(&config).unwrap_or_default();
    for file in files {
        let input = absolute(file)?;
        let inside = input
            .canonicalize()
            .is_ok_and(|c| roots.iter().any(|r| c.starts_with(r)));
        if !inside {
            log::warn!(
                "{} is not inside an input root; the worker will refuse it",
                input.display()
            );
        }
        let id = id_from_path(&input);
        let payload = json!({"id": id, "input": input, "enqueued_at": job::now_ms()}).to_string();
        redis::cmd("LPUSH")
            .arg(&keys.jobs)
            .arg(&payload)
            .query::<()>(&mut conn)
            .map_err(|err| CommandError::Failed(format!("LPUSH {}: {err}", keys.jobs)))?;
        println!("enqueued id={id} input={}", input.display());
    }
    Ok(0)
}

/// Prints the queue, the retry set, outcomes, live hosts with their consumers and claims.
pub fn status(config: Config) -> CommandResult {
    let mut conn = connect(&config)?;
    let keys = Keys::new(&config.keys);
    let status = crate::status::read(&mut conn, &keys, job::now_ms())
        .map_err(|e| CommandError::Failed(format!("redis: {e}")))?;
    print!("{}", status.render(&config.redis_url, &keys));
    Ok(0)
}

/// Checks config, Redis, the roots and the backend; exit 0 only if all answer.
pub fn check(config: Config) -> CommandResult {
    let mut all_ok = true;
    let mut report = |what: &str, result: Result<String, String>| {
        match &result {
            Ok(detail) => println!("ok    {what:<8} {detail}"),
            Err(detail) => println!("FAIL  {what:<8} {detail}"),
        }
        all_ok &= result.is_ok();
    };
    report("config", Ok("valid".into()));
    report("redis", check_redis(&config));
    for root in &config.input_roots {
        report("input", check_input_root(root));
    }
    report("output", check_output_root(&config.output_root));
    report(
        "backend",
        backend::start(config.backend, 1, config.job_timeout)
            .map(|(thread, handle, description)| {
                drop(handle);
                thread.join();
                description
            })
            .map_err(|err| err.to_string()),
    );
    Ok(if all_ok { 0 } else { 1 })
}

fn check_redis(config: &Config) -> Result<String, String> {
    let mut conn = connect(config).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let pong: String = redis::cmd("PING")
        .query(&mut conn)
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "{} answered {pong} in {:.1} ms",
        config.redis_url,
        started.elapsed().as_secs_f64() * 1e3
    ))
}

fn check_input_root(root: &Path) -> Result<String, String> {
    match fs::read_dir(root) {
        Ok(_) => Ok(format!("{} readable", root.display())),
        Err(err) => Err(format!("{}: {err}", root.display())),
    }
}

fn check_output_root(root: &Path) -> Result<String, String> {
    let probe = root.join(format!(".check-{}", std::process::id()));
    fs::write(&probe, b"probe")
        .and_then(|()| fs::remove_file(&probe))
        .map(|()| format!("{} writable", root.display()))
        .map_err(|err| format!("{} not writable: {err}", root.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_file_names_are_valid_ids() {
        assert_eq!(id_from_path(Path::new("/a/b/IMG 0001.jpeg")), "IMG_0001");
        assert_eq!(id_from_path(Path::new("/a/été.png")), "_t_");
        assert_eq!(id_from_path(Path::new("/a/.png")), "_png");
        assert!(job::validate_id(&id_from_path(Path::new(&"x".repeat(300)))).is_ok());
    }

    #[test]
    fn process_takes_the_images_of_a_folder_in_name_order() {
        let folder = tempfile::tempdir().unwrap();
        for name in ["b.PNG", "a.jpg", "notes.md", "c.webp"] {
            fs::write(folder.path().join(name), b"x").unwrap();
        }
        fs::create_dir(folder.path().join("d.jpg")).unwrap();
        let jobs = process_jobs(folder.path(), None).unwrap();
        let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn process_refuses_one_id_for_a_folder() {
        let folder = tempfile::tempdir().unwrap();
        let err = process_jobs(folder.path(), Some("x".into())).unwrap_err();
        assert!(matches!(err, CommandError::Usage(_)), "{err}");
    }
}
