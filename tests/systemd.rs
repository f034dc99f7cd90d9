//! The daemon speaks systemd's notify protocol: READY once Redis and the backend answer,
//! WATCHDOG keep-alives while healthy, STOPPING when the drain begins.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::*;

fn receive_for(socket: &UnixDatagram, how_long: Duration) -> Vec<String> {
    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        if let Ok(n) = socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
    }
    messages
}

#[test]
fn notify_socket_gets_ready_then_watchdog_keepalives_then_stopping() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let path = dirs.base.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let env = [
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", "400000"),
    ];
    let daemon = Daemon::start_with_env(&redis, &dirs, &[], &env);

    let running = receive_for(&socket, Duration::from_secs(3));
    assert_eq!(
        running.first().map(String::as_str),
        Some("READY=1"),
        "{running:?}"
    );
    let keepalives = running.iter().filter(|m| *m == "WATCHDOG=1").count();
    // Every 200 ms (half of WATCHDOG_USEC) for about 3 s.
    assert!(
        keepalives >= 8,
        "{keepalives} keep-alives in 3 s: {running:?}"
    );
    assert_eq!(
        running.iter().filter(|m| *m == "READY=1").count(),
        1,
        "READY only once"
    );

    assert!(daemon.stop().success());
    let stopping = receive_for(&socket, Duration::from_millis(300));
    assert!(stopping.iter().any(|m| m == "STOPPING=1"), "{stopping:?}");
}
