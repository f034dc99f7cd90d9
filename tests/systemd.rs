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

/// Runs the daemon with standard error in a file, one corrupt job, and `journal_stream` as
/// `JOURNAL_STREAM` (`None`: the file's own device and inode, as systemd would set them).
fn log_of_one_failed_job(journal_stream: Option<&str>) -> String {
    use std::os::unix::fs::MetadataExt;

    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let log_path = dirs.base.path().join("stderr.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let meta = log_file.metadata().unwrap();
    let own = format!("{}:{}", meta.dev(), meta.ino());
    let mut conn = redis.conn();
    let whole = jpeg(64, 64);
    let cut = dirs.input_file("cut.jpg", &whole[..whole.len() / 2]);
    push_job(&mut conn, &job_json("cut", &cut));

    let mut child = worker_command(&dirs)
        .args([
            "run",
            "--redis",
            &redis.url(),
            "--backend",
            "cpu",
            "--workers",
            "1",
        ])
        .args(["--hostname", "journalhost", "--log-level", "debug"])
        .args(["--metrics-addr", "off"])
        .arg("--input-root")
        .arg(&dirs.input)
        .arg("--output-root")
        .arg(&dirs.output)
        .env("JOURNAL_STREAM", journal_stream.unwrap_or(&own))
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .spawn()
        .unwrap();
    wait_for_outcomes(&mut conn, 1, Duration::from_secs(20));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(&log_path).unwrap()
}

#[test]
fn under_journald_lines_carry_syslog_priorities_and_no_timestamp() {
    let log = log_of_one_failed_job(None);
    for line in log.lines() {
        let priority = line.get(..3).unwrap_or("");
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&priority),
            "line without a priority prefix: {line:?}\n{log}"
        );
        assert!(
            !line[3..].starts_with(|c: char| c.is_ascii_digit() || c == '['),
            "line with its own timestamp or level: {line:?}"
        );
    }
    assert!(
        log.contains("\n<3>job=cut outcome=failed kind=corrupt"),
        "{log}"
    );
    assert!(
        log.contains("<6>ready: redis and the backend answer"),
        "{log}"
    );
    assert!(log.contains("\n<7>"), "debug lines at priority 7: {log}");
}

#[test]
fn journal_stream_of_another_stream_keeps_timestamps() {
    let log = log_of_one_failed_job(Some("1:1"));
    let first = log.lines().next().unwrap_or("");
    assert!(
        first.starts_with(|c: char| c.is_ascii_digit()),
        "an inherited JOURNAL_STREAM that is not our stderr changes nothing: {first:?}"
    );
    assert!(!log.contains("<3>"), "{log}");
}
