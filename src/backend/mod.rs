//! The backend thread: one thread owns the image backend; workers send it requests.
//!
//! A worker sends a [`RenderRequest`] over a bounded channel and blocks on its own reply channel
//! until the backend answers. The backend thread runs requests one at a time, in arrival order.
//! This is the thread that owns the CUDA context when the GPU backend is in use (nothing else may
//! touch it); the CPU backend runs on it too, behind the same [`Backend`] trait, so that both
//! backends see the same flow.
//!
//! The thread ends when every [`BackendHandle`] has been dropped: disconnection of the request
//! channel is the normal way to stop it, after it has answered what was already queued.

pub mod coeffs;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
mod driver;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, bounded};

use crate::decode::SourceImage;
use crate::failpoint;
use crate::job::{now_ms, panic_message};
use crate::ops::RenditionSpec;

/// One rendition's pixels, RGBA8 without padding, not yet encoded.
#[derive(Clone, Debug)]
pub struct RenderedImage {
    pub spec: RenditionSpec,
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// Why a backend could not answer a request.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// This request failed; the backend is still usable. Transient for the job.
    #[error("backend failed on this image: {0}")]
    Job(String),
    /// The backend thread is gone (it panicked or could not start). Transient for the job; the
    /// process cannot go on without a backend.
    #[error("backend thread is not running")]
    Stopped,
    /// The backend did not answer within the job timeout. Transient for the job.
    #[error("backend did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend could not be created at start-up.
    #[error("{0}")]
    Unavailable(String),
}

/// An image backend. It is created on, and used only from, the backend thread.
pub trait Backend {
    /// A short name for logs and `check`: `cpu` or `cuda`.
    fn name(&self) -> &'static str;

    /// A line describing the backend for start-up logs (device, capabilities).
    fn describe(&self) -> String;

    /// Makes every rendition of `plan` from `source`, in the plan's order.
    fn render(
        &mut self,
        source: &SourceImage,
        plan: &[RenditionSpec],
    ) -> Result<Vec<RenderedImage>, BackendError>;
}

/// What a worker sends to the backend thread.
pub struct RenderRequest {
    pub source: SourceImage,
    pub plan: Vec<RenditionSpec>,
    pub reply: Sender<Result<Vec<RenderedImage>, BackendError>>,
}

/// What the backend thread is doing, for the watchdog that notices a stuck backend.
#[derive(Debug, Default)]
pub struct BackendState {
    /// When the request in progress started (ms since the epoch); 0 when idle.
    busy_since_ms: AtomicU64,
}

impl BackendState {
    /// How long the request in progress has been running, if one is.
    pub fn busy_for(&self) -> Option<Duration> {
        match self.busy_since_ms.load(Ordering::SeqCst) {
            0 => None,
            since => Some(Duration::from_millis(now_ms().saturating_sub(since))),
        }
    }
}

/// A worker's side of the backend: cheap to clone, one per worker thread.
#[derive(Clone)]
pub struct BackendHandle {
    requests: Sender<RenderRequest>,
    name: &'static str,
    timeout: Duration,
    state: Arc<BackendState>,
}

impl BackendHandle {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn state(&self) -> &Arc<BackendState> {
        &self.state
    }

    /// Sends `source` to the backend thread and waits, at most the job timeout, for its
    /// renditions.
    pub fn render(
        &self,
        source: SourceImage,
        plan: Vec<RenditionSpec>,
    ) -> Result<Vec<RenderedImage>, BackendError> {
        let (reply, answer) = bounded(1);
        let request = RenderRequest {
            source,
            plan,
            reply,
        };
        self.requests
            .send_timeout(request, self.timeout)
            .map_err(|err| match err {
                SendTimeoutError::Timeout(_) => BackendError::Timeout(self.timeout),
                SendTimeoutError::Disconnected(_) => BackendError::Stopped,
            })?;
        answer.recv_timeout(self.timeout).map_err(|err| match err {
            RecvTimeoutError::Timeout => BackendError::Timeout(self.timeout),
            RecvTimeoutError::Disconnected => BackendError::Stopped,
        })?
    }
}

/// Makes a backend; called on the backend thread at start and again after a panic.
pub type MakeBackend = dyn Fn() -> Result<Box<dyn Backend>, BackendError> + Send;

/// The running backend thread.
pub struct BackendThread {
    join: JoinHandle<()>,
}

impl BackendThread {
    /// Starts the backend thread. `make` runs on the new thread (a CUDA context belongs to the
    /// thread that creates it); its first failure is returned here. `depth` bounds the request
    /// queue; `timeout` is how long a worker waits for an answer.
    pub fn start(
        make: Box<MakeBackend>,
        depth: usize,
        timeout: Duration,
    ) -> Result<(BackendThread, BackendHandle, String), BackendError> {
        let (requests, incoming) = bounded::<RenderRequest>(depth.max(1));
        let (ready_tx, ready_rx) = bounded(1);
        let state = Arc::new(BackendState::default());
        let thread_state = Arc::clone(&state);
        let join = thread::Builder::new()
            .name("backend".into())
            .spawn(move || match make() {
                Ok(backend) => {
                    let _ = ready_tx.send(Ok((backend.name(), backend.describe())));
                    serve(backend, make, incoming, &thread_state);
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                }
            })
            .map_err(|err| {
                BackendError::Unavailable(format!("cannot start the backend thread: {err}"))
            })?;
        let (name, description) = ready_rx.recv().map_err(|_| BackendError::Stopped)??;
        let handle = BackendHandle {
            requests,
            name,
            timeout,
            state,
        };
        Ok((BackendThread { join }, handle, description))
    }

    /// Waits for the thread to finish; it does once every handle is dropped.
    pub fn join(self) {
        let _ = self.join.join();
    }
}

/// Answers requests until every handle is gone. A panic while rendering is answered as an
/// error to the waiting worker, and the backend is rebuilt before the next request; if it
/// cannot be rebuilt the thread ends, which workers see as [`BackendError::Stopped`].
fn serve(
    mut backend: Box<dyn Backend>,
    make: Box<MakeBackend>,
    incoming: Receiver<RenderRequest>,
    state: &BackendState,
) {
    for request in incoming {
        state.busy_since_ms.store(now_ms().max(1), Ordering::SeqCst);
        let result = catch_unwind(AssertUnwindSafe(|| {
            failpoint::hit("backend-render");
            backend.render(&request.source, &request.plan)
        }));
        state.busy_since_ms.store(0, Ordering::SeqCst);
        match result {
            // A worker that gave up waiting has dropped its receiver; nothing to do then.
            Ok(answer) => drop(request.reply.send(answer)),
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                log::error!("backend panicked: {message}; rebuilding it");
                let _ = request.reply.send(Err(BackendError::Job(format!(
                    "backend panicked: {message}"
                ))));
                match make() {
                    Ok(rebuilt) => backend = rebuilt,
                    Err(err) => {
                        log::error!("backend cannot be rebuilt: {err}");
                        return;
                    }
                }
            }
        }
    }
    log::debug!("backend thread: all workers are gone, stopping");
}

/// Starts the backend thread for `choice`. `auto` uses CUDA when this build has it and a device
/// answers, else the CPU with one warning that says why; `cuda` without a usable device is an
/// error for the caller to refuse start-up with.
pub fn start(
    choice: crate::config::BackendChoice,
    depth: usize,
    timeout: Duration,
) -> Result<(BackendThread, BackendHandle, String), BackendError> {
    use crate::config::BackendChoice;
    let cpu = || {
        let make = || Ok(Box::new(cpu::CpuBackend::new()) as Box<dyn Backend>);
        BackendThread::start(Box::new(make), depth, timeout)
    };
    match choice {
        BackendChoice::Cpu => cpu(),
        BackendChoice::Cuda => start_cuda(depth, timeout),
        BackendChoice::Auto => match start_cuda(depth, timeout) {
            Err(BackendError::Unavailable(reason)) => {
                log::warn!("backend=auto: {reason}; using the cpu backend");
                let (thread, handle, description) = cpu()?;
                Ok((
                    thread,
                    handle,
                    format!("{description}, as backend=auto: {reason}"),
                ))
            }
            other => other,
        },
    }
}

#[cfg(feature = "cuda")]
fn start_cuda(
    depth: usize,
    timeout: Duration,
) -> Result<(BackendThread, BackendHandle, String), BackendError> {
    let make = || cuda::CudaBackend::new().map(|b| Box::new(b) as Box<dyn Backend>);
    BackendThread::start(Box::new(make), depth, timeout)
}

#[cfg(not(feature = "cuda"))]
fn start_cuda(
    _depth: usize,
    _timeout: Duration,
) -> Result<(BackendThread, BackendHandle, String), BackendError> {
    Err(BackendError::Unavailable(
        "this binary was built without CUDA support (cargo feature cuda)".into(),
    ))
}
