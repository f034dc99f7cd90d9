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

pub mod cpu;

use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::decode::SourceImage;
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

/// A worker's side of the backend: cheap to clone, one per worker thread.
#[derive(Clone)]
pub struct BackendHandle {
    requests: Sender<RenderRequest>,
    name: &'static str,
}

impl BackendHandle {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Sends `source` to the backend thread and waits for its renditions.
    pub fn render(
        &self,
        source: SourceImage,
        plan: Vec<RenditionSpec>,
    ) -> Result<Vec<RenderedImage>, BackendError> {
        let (reply, answer) = bounded(1);
        self.requests
            .send(RenderRequest {
                source,
                plan,
                reply,
            })
            .map_err(|_| BackendError::Stopped)?;
        answer.recv().map_err(|_| BackendError::Stopped)?
    }
}

/// The running backend thread.
pub struct BackendThread {
    join: JoinHandle<()>,
}

impl BackendThread {
    /// Starts the backend thread. `make` runs on the new thread (a CUDA context belongs to the
    /// thread that creates it); its failure is returned here. `depth` bounds the request queue.
    pub fn start<F>(
        make: F,
        depth: usize,
    ) -> Result<(BackendThread, BackendHandle, String), BackendError>
    where
        F: FnOnce() -> Result<Box<dyn Backend>, BackendError> + Send + 'static,
    {
        let (requests, incoming) = bounded::<RenderRequest>(depth.max(1));
        let (ready_tx, ready_rx) = bounded(1);
        let join = thread::Builder::new()
            .name("backend".into())
            .spawn(move || match make() {
                Ok(backend) => {
                    let _ = ready_tx.send(Ok((backend.name(), backend.describe())));
                    serve(backend, incoming);
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                }
            })
            .map_err(|err| {
                BackendError::Unavailable(format!("cannot start the backend thread: {err}"))
            })?;
        let (name, description) = ready_rx.recv().map_err(|_| BackendError::Stopped)??;
        Ok((
            BackendThread { join },
            BackendHandle { requests, name },
            description,
        ))
    }

    /// Waits for the thread to finish; it does once every handle is dropped.
    pub fn join(self) {
        let _ = self.join.join();
    }
}

fn serve(mut backend: Box<dyn Backend>, incoming: Receiver<RenderRequest>) {
    for request in incoming {
        let answer = backend.render(&request.source, &request.plan);
        // A worker that gave up waiting has dropped its receiver; nothing to do then.
        let _ = request.reply.send(answer);
    }
    log::debug!("backend thread: all workers are gone, stopping");
}

/// Starts the backend thread for `choice`. `auto` without CUDA support in this build falls back
/// to the CPU with one warning; `cuda` without it is an error for the caller to refuse start-up.
pub fn start(
    choice: crate::config::BackendChoice,
    depth: usize,
) -> Result<(BackendThread, BackendHandle, String), BackendError> {
    use crate::config::BackendChoice;
    match choice {
        BackendChoice::Cpu => {}
        BackendChoice::Auto => {
            log::warn!(
                "backend=auto: this build has no CUDA support (cargo feature cuda); using the cpu backend"
            )
        }
        BackendChoice::Cuda => {
            return Err(BackendError::Unavailable(
                "backend cuda was asked for, but this binary was built without the cuda feature"
                    .into(),
            ));
        }
    }
    BackendThread::start(
        || Ok(Box::new(cpu::CpuBackend::new()) as Box<dyn Backend>),
        depth,
    )
}
