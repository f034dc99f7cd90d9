//! Test-only failpoints: named places in the job flow where a test can make the process die,
//! hang or panic, to prove that every such event loses nothing.
//!
//! A failpoint is armed only by the environment variable `IMAGE_WORKER_TEST_FAILPOINT`, read
//! once, as `NAME[:ACTION[:COUNT]]`. ACTION is `kill` (the default: the process sends itself
//! SIGKILL, exactly as `kill -9` would, so no destructor or outcome write runs), `hang` (the
//! thread sleeps forever) or `panic`. COUNT limits how many hits trigger (default: every hit).
//! Unarmed, a failpoint costs one atomic load.
//!
//! The names are the stages of a job: `after-claim`, `during-decode`, `during-encode`,
//! `after-rename`, `before-ack`, and `backend-render` on the backend thread.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The environment variable that arms a failpoint.
pub const ENV: &str = "IMAGE_WORKER_TEST_FAILPOINT";

#[derive(Debug, PartialEq)]
enum Action {
    Kill,
    Hang,
    Panic,
}

#[derive(Debug)]
struct Armed {
    name: String,
    action: Action,
    remaining: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().and_then(|spec| parse(&spec)))
        .as_ref()
}

fn parse(spec: &str) -> Option<Armed> {
    let mut parts = spec.split(':');
    let name = parts.next().filter(|n| !n.is_empty())?.to_owned();
    let action = match parts.next().unwrap_or("kill") {
        "kill" => Action::Kill,
        "hang" => Action::Hang,
        "panic" => Action::Panic,
        _ => return None,
    };
    let count = parts.next().map_or(Some(u64::MAX), |n| n.parse().ok())?;
    Some(Armed {
        name,
        action,
        remaining: AtomicU64::new(count),
    })
}

/// Triggers the armed action if `name` is the armed failpoint.
pub fn hit(name: &str) {
    let Some(armed) = armed() else { return };
    if armed.name != name {
        return;
    }
    let left = armed.remaining.load(Ordering::Relaxed);
    if left == 0
        || armed
            .remaining
            .compare_exchange(left, left - 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
    {
        return;
    }
    log::warn!("failpoint {name} triggered: {:?}", armed.action);
    match armed.action {
        // SAFETY: sending SIGKILL to our own process id.
        Action::Kill => unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        },
        Action::Hang => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Action::Panic => panic!("failpoint {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_defaults() {
        let armed = parse("during-decode").unwrap();
        assert_eq!(
            (armed.name.as_str(), armed.action),
            ("during-decode", Action::Kill)
        );
        let armed = parse("backend-render:panic:1").unwrap();
        assert_eq!(armed.action, Action::Panic);
        assert_eq!(armed.remaining.load(Ordering::Relaxed), 1);
        assert!(parse("x:explode").is_none());
        assert!(parse("").is_none());
    }
}
