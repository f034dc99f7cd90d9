//! Process stop: signals flip one flag that every loop checks.
//!
//! The first SIGTERM or SIGINT sets the stop flag: workers stop claiming, finish the job in hand
//! and write its outcome. A second signal exits the process at once (status 1); whatever was
//! claimed stays in the processing lists and is recovered by the next start. A fatal condition
//! found inside the process (the backend thread is gone) sets the same stop flag and also marks
//! the exit as a failure, so the supervisor restarts the process.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};

/// The shared stop state. Cloning shares it.
#[derive(Clone, Default)]
pub struct Shutdown {
    stop: Arc<AtomicBool>,
    fatal: Arc<AtomicBool>,
}

impl Shutdown {
    /// A stop state no signal is wired to (for `process` and tests).
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Wires SIGTERM and SIGINT to the stop flag.
    pub fn install() -> io::Result<Shutdown> {
        let shutdown = Shutdown::new();
        for signal in [SIGTERM, SIGINT] {
            // Registered first, so it sees the flag as it was before this signal: set means
            // this is the second signal.
            signal_hook::flag::register_conditional_shutdown(
                signal,
                1,
                Arc::clone(&shutdown.stop),
            )?;
            signal_hook::flag::register(signal, Arc::clone(&shutdown.stop))?;
        }
        Ok(shutdown)
    }

    pub fn requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Asks every loop to stop, as a signal would.
    pub fn request(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops the process and makes its exit status a failure.
    pub fn request_fatal(&self, reason: &str) {
        log::error!("stopping the process: {reason}");
        self.fatal.store(true, Ordering::SeqCst);
        self.request();
    }

    pub fn is_fatal(&self) -> bool {
        self.fatal.load(Ordering::SeqCst)
    }
}
