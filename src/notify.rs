//! systemd notifications: `READY=1`, `WATCHDOG=1` and `STOPPING=1` over `$NOTIFY_SOCKET`.
//!
//! Under `Type=notify` systemd waits for `READY=1` before it calls the service started, and
//! with `WatchdogSec` it restarts a service that stops sending `WATCHDOG=1`. Without
//! `NOTIFY_SOCKET` (not under systemd) every call does nothing. A socket path starting with `@`
//! is in the abstract namespace. Sending is best effort: a failure is logged at debug level and
//! never stops the worker.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// The environment variable systemd sets to the notification socket.
pub const SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Sends one notification, such as `READY=1`.
pub fn notify(state: &str) {
    let Ok(path) = std::env::var(SOCKET_ENV) else {
        return;
    };
    if let Err(err) = send(&path, state) {
        log::debug!("sd_notify {state} to {path} failed: {err}");
    }
}

fn send(path: &str, state: &str) -> std::io::Result<usize> {
    let socket = UnixDatagram::unbound()?;
    match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &address)
        }
        None => socket.send_to(state.as_bytes(), path),
    }
}

/// How often to send `WATCHDOG=1`: half the interval systemd asked for in `WATCHDOG_USEC`, or
/// `None` when it asked for none.
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    // WATCHDOG_PID, when set, names the process the watchdog is meant for.
    let for_us =
        std::env::var("WATCHDOG_PID").map_or(true, |pid| pid.parse() == Ok(std::process::id()));
    (usec > 0 && for_us).then(|| Duration::from_micros(usec / 2))
}
