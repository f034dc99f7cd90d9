//! Nothing lost, nothing wedged: crashes at every stage, signals, Redis outages, a full disk,
//! stuck and panicking backends, dead consumers and a soak of random kills.
//!
//! Every test ends with the invariant of [`assert_invariant`]: each job id in exactly one of
//! `image_done` or `image_failed`, exactly once; nothing waiting, retrying or claimed; every
//! output a complete WebP, no temporary file left.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const FAILPOINT: &str = "IMAGE_WORKER_TEST_FAILPOINT";

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn one_worker() -> [&'static str; 2] {
    ["--workers", "1"]
}

/// The outputs `process` writes for `input` under `id`: what an undisturbed run produces.
fn reference_outputs(dirs: &Dirs, input: &Path, id: &str) -> Vec<Vec<u8>> {
    let out = dirs.base.path().join(format!("reference-{id}"));
    run_process(dirs, input, &out, id);
    renditions_of(&out, id)
}

fn renditions_of(root: &Path, id: &str) -> Vec<Vec<u8>> {
    ["thumb", "blur", "lq"]
        .iter()
        .map(|r| fs::read(root.join(id).join(format!("{id}_{r}.webp"))).unwrap())
        .collect()
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn llen(conn: &mut redis::Connection, key: &str) -> usize {
    redis::cmd("LLEN").arg(key).query(conn).unwrap()
}

/// Starts a plain one-worker daemon, lets it finish `names`, stops it cleanly and checks the
/// invariant; returns how many ended done.
fn restart_and_finish(redis: &RedisServer, dirs: &Dirs, names: &[String]) -> usize {
    let daemon = Daemon::start(redis, dirs, &one_worker());
    finish(daemon, &mut redis.conn(), names, &dirs.output)
}

/// Pushes one job and starts a one-worker daemon whose encoder hangs; returns once the job has
/// been claimed and is stuck in hand.
fn daemon_hanging_on(redis: &RedisServer, dirs: &Dirs, id: &str, extra: &[&str]) -> Daemon {
    let mut conn = redis.conn();
    let input = dirs.input_file(&format!("{id}.png"), &png_rgba(200, 200));
    push_job(&mut conn, &job_json(id, &input));
    let mut flags = vec!["--workers", "1"];
    flags.extend_from_slice(extra);
    let daemon = Daemon::start_with_env(redis, dirs, &flags, &[(FAILPOINT, "during-encode:hang")]);
    wait_until("the job is claimed", || {
        llen(&mut conn, "image_jobs:processing:testhost:0") == 1
    });
    thread::sleep(Duration::from_millis(300));
    daemon
}

#[test]
fn kill_9_at_each_stage_then_restart_loses_nothing_and_outputs_match() {
    for stage in [
        "after-claim",
        "during-decode",
        "during-encode",
        "after-rename",
        "before-ack",
    ] {
        let redis = RedisServer::start();
        let dirs = Dirs::new();
        let mut conn = redis.conn();
        let input = dirs.input_file("crash.png", &png_rgba(640, 400));
        let expected = reference_outputs(&dirs, &input, "crash");
        push_job(&mut conn, &job_json("crash", &input));

        let mut daemon =
            Daemon::start_with_env(&redis, &dirs, &one_worker(), &[(FAILPOINT, stage)]);
        let status = daemon.wait_exit(WAIT);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "{stage}: the failpoint kills with SIGKILL"
        );
        assert_eq!(
            llen(&mut conn, "image_jobs:processing:testhost:0"),
            1,
            "{stage}: still claimed"
        );

        let done = restart_and_finish(&redis, &dirs, &ids(&["crash"]));
        assert_eq!(done, 1, "{stage}: done after the restart");
        assert!(
            renditions_of(&dirs.output, "crash") == expected,
            "{stage}: outputs differ"
        );
        note(&format!("kill -9 {stage}: recovered, outputs identical"));
    }
}

#[test]
fn a_job_that_kills_its_worker_every_time_fails_as_poison_naming_the_stage() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let input = dirs.input_file("poison.png", &png_rgba(64, 64));
    push_job(&mut conn, &job_json("poison", &input));

    let mut starts = 0;
    while llen(&mut conn, "image_failed") == 0 {
        assert!(starts < 6, "still no outcome after {starts} starts");
        starts += 1;
        let mut daemon = Daemon::start_with_env(
            &redis,
            &dirs,
            &one_worker(),
            &[(FAILPOINT, "during-decode")],
        );
        // It either dies in the decoder again or, once the job is poison, fails it and idles.
        let deadline = Instant::now() + WAIT;
        while daemon.is_running() && llen(&mut conn, "image_failed") == 0 {
            assert!(Instant::now() < deadline, "neither died nor failed the job");
            thread::sleep(Duration::from_millis(10));
        }
        if daemon.is_running() {
            assert!(daemon.stop().success());
        }
    }
    // Killed at the first try and after recoveries 1 and 2; recovery 3 is above the limit of 2.
    assert_eq!(starts, 4, "poison after poison_limit + 2 starts");
    let failed = messages(&mut conn, "image_failed");
    assert_eq!(failed[0]["kind"], "poison");
    assert_eq!(failed[0]["stage"], "decode", "{}", failed[0]["error"]);
    assert_invariant(&mut conn, &ids(&["poison"]), &dirs.output);
}

#[test]
fn a_requeued_job_past_the_poison_limit_fails_as_poison_when_claimed() {
    // What requeue-stuck leaves for a job whose workers kept dying: its recovery count and
    // last stage recorded, the payload back on the queue. The claim must see the count even
    // though it asks for it in the same round trip as the claim itself.
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let doomed = job_json("doomed", &dirs.input_file("doomed.png", &png_rgba(16, 16)));
    let fine = job_json("fine", &dirs.input_file("fine.png", &png_rgba(16, 16)));
    redis::pipe()
        .cmd("HSET")
        .arg("image_worker:recoveries")
        .arg(&doomed)
        .arg(3)
        .cmd("HSET")
        .arg("image_worker:last_stage")
        .arg(&doomed)
        .arg("encode")
        .query::<()>(&mut conn)
        .unwrap();
    push_job(&mut conn, &doomed);
    push_job(&mut conn, &fine);

    let daemon = Daemon::start(&redis, &dirs, &one_worker());
    wait_for_outcomes(&mut conn, 2, WAIT);
    assert!(daemon.stop().success());
    let failed = messages(&mut conn, "image_failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["id"], "doomed");
    assert_eq!(failed[0]["kind"], "poison");
    assert_eq!(failed[0]["stage"], "encode");
    let done = messages(&mut conn, "image_done");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["id"], "fine");
    assert_invariant(&mut conn, &ids(&["doomed", "fine"]), &dirs.output);
}

#[test]
fn sigterm_with_jobs_in_flight_exits_0_and_loses_nothing() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let input = dirs.input_file("drain.jpg", &jpeg(1600, 1200));
    let names: Vec<String> = (0..12).map(|i| format!("drain{i}")).collect();
    for id in &names {
        push_job(&mut conn, &job_json(id, &input));
    }
    let daemon = Daemon::start(&redis, &dirs, &[]);
    wait_until("a first job is done", || llen(&mut conn, "image_done") >= 1);
    let started = Instant::now();
    let status = daemon.stop();
    assert_eq!(status.code(), Some(0), "clean drain");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "within the drain deadline"
    );
    assert_nothing_claimed(&mut conn);
    let settled = llen(&mut conn, "image_done") + llen(&mut conn, "image_failed");
    assert_eq!(
        settled + llen(&mut conn, "image_jobs"),
        names.len(),
        "nothing lost"
    );

    let daemon = Daemon::start(&redis, &dirs, &[]);
    assert_eq!(finish(daemon, &mut conn, &names, &dirs.output), names.len());
}

#[test]
fn second_signal_exits_at_once_and_the_claim_is_recovered() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let mut daemon = daemon_hanging_on(&redis, &dirs, "hang", &[]);
    daemon.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(500));
    assert!(
        daemon.is_running(),
        "the first signal waits for the job in hand"
    );
    let second = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(5));
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "the second signal exits at once"
    );
    assert!(!status.success());
    assert_eq!(
        llen(&mut conn, "image_jobs:processing:testhost:0"),
        1,
        "the claim stays"
    );
    assert_eq!(restart_and_finish(&redis, &dirs, &ids(&["hang"])), 1);
}

#[test]
fn drain_deadline_exits_non_zero_and_keeps_the_claim() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let mut daemon = daemon_hanging_on(&redis, &dirs, "slow", &["--drain-timeout-ms", "1000"]);
    let asked = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "non-zero after the drain deadline");
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(
        llen(&mut conn, "image_jobs:processing:testhost:0"),
        1,
        "the claim stays"
    );
    assert_eq!(restart_and_finish(&redis, &dirs, &ids(&["slow"])), 1);
}

#[test]
fn a_stuck_backend_retries_the_job_and_stops_the_process() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let input = dirs.input_file("stuck.png", &png_rgba(100, 100));
    push_job(&mut conn, &job_json("stuck", &input));
    let flags = ["--workers", "1", "--job-timeout-ms", "500"];
    let mut daemon =
        Daemon::start_with_env(&redis, &dirs, &flags, &[(FAILPOINT, "backend-render:hang")]);
    let status = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(1),
        "a stuck backend stops the process with a failure"
    );
    assert_nothing_claimed(&mut conn);
    let pending = pending_jobs(&mut conn);
    assert_eq!(
        pending.len(),
        1,
        "the timed-out job was scheduled for a retry"
    );
    assert_eq!(pending[0]["last_error_kind"], "backend");

    assert_eq!(restart_and_finish(&redis, &dirs, &ids(&["stuck"])), 1);
    let done = &messages(&mut conn, "image_done")[0];
    assert!(done["attempts"].as_u64().unwrap() >= 2, "{done}");
    assert_eq!(done["last_error_kind"], "backend");
}

#[test]
fn a_backend_panic_is_retried_and_the_backend_rebuilt() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let input = dirs.input_file("panic.png", &png_rgba(100, 100));
    let names = ids(&["panic0", "panic1", "panic2"]);
    for id in &names {
        push_job(&mut conn, &job_json(id, &input));
    }
    let mut daemon = Daemon::start_with_env(
        &redis,
        &dirs,
        &one_worker(),
        &[(FAILPOINT, "backend-render:panic:1")],
    );
    wait_for_outcomes(&mut conn, names.len(), WAIT);
    assert!(
        daemon.is_running(),
        "a backend panic does not stop the process"
    );
    assert!(daemon.stop().success());
    let (done, _) = assert_invariant(&mut conn, &names, &dirs.output);
    assert_eq!(done, names.len());
    let retried: Vec<Value> = messages(&mut conn, "image_done")
        .into_iter()
        .filter(|m| m["attempts"] == 2)
        .collect();
    assert_eq!(
        retried.len(),
        1,
        "exactly the job that met the panic was retried"
    );
    assert!(
        retried[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("panicked")
    );
}

#[test]
fn redis_killed_and_restarted_while_jobs_are_in_flight() {
    let mut redis = RedisServer::start_persistent();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let input = dirs.input_file("outage.jpg", &jpeg(1200, 900));
    let names: Vec<String> = (0..20).map(|i| format!("outage{i}")).collect();
    for id in &names {
        push_job(&mut conn, &job_json(id, &input));
    }
    let daemon = Daemon::start(&redis, &dirs, &[]);
    wait_until("some jobs are done", || llen(&mut conn, "image_done") >= 3);
    redis.kill();
    thread::sleep(Duration::from_millis(1500));
    redis.restart();
    let mut conn = redis.conn();
    assert_eq!(finish(daemon, &mut conn, &names, &dirs.output), names.len());
}

#[test]
fn redis_killed_and_restarted_while_the_worker_is_idle() {
    let mut redis = RedisServer::start_persistent();
    let dirs = Dirs::new();
    let input = dirs.input_file("idle.png", &png_rgba(120, 80));
    let daemon = Daemon::start(&redis, &dirs, &[]);
    thread::sleep(Duration::from_millis(700));
    redis.kill();
    thread::sleep(Duration::from_millis(1500));
    redis.restart();
    let mut conn = redis.conn();
    let names = ids(&["idle0", "idle1", "idle2"]);
    for id in &names {
        push_job(&mut conn, &job_json(id, &input));
    }
    assert_eq!(finish(daemon, &mut conn, &names, &dirs.output), names.len());
}

#[test]
fn client_pause_longer_than_the_block_timeout_delays_but_loses_nothing() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let input = dirs.input_file("pause.png", &png_rgba(300, 200));
    let names: Vec<String> = (0..10).map(|i| format!("pause{i}")).collect();
    let daemon = Daemon::start(&redis, &dirs, &[]);
    thread::sleep(Duration::from_millis(500));
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .query::<()>(&mut conn)
        .unwrap();
    // Pushed through a second connection: it waits for the pause like the workers do.
    let mut producer = redis.conn();
    for id in &names {
        push_job(&mut producer, &job_json(id, &input));
    }
    assert_eq!(finish(daemon, &mut conn, &names, &dirs.output), names.len());
}

#[test]
fn client_kill_while_blocked_reconnects_and_goes_on() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let input = dirs.input_file("killed.png", &png_rgba(100, 100));
    let daemon = Daemon::start(&redis, &dirs, &[]);
    thread::sleep(Duration::from_millis(700));
    let killed: usize = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut conn)
        .unwrap();
    assert!(
        killed >= 2,
        "the workers' connections were killed ({killed})"
    );
    push_job(&mut conn, &job_json("after-kill", &input));
    wait_for_outcomes(&mut conn, 1, WAIT);
    assert!(daemon.stop().success());
    assert_eq!(
        assert_invariant(&mut conn, &ids(&["after-kill"]), &dirs.output).0,
        1
    );
}

/// A small tmpfs, unmounted on drop.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> SmallDisk {
        fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the tests run as root)"
        );
        SmallDisk {
            path: path.to_owned(),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Noise compresses badly, so its preview needs real space.
fn noise_png(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let pixels: Vec<u8> = (0..width * height * 4)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            if i % 4 == 3 { 255 } else { state as u8 }
        })
        .collect();
    png_of(&pixels, width, height, None)
}

#[test]
fn a_full_disk_is_retried_without_partial_files_and_done_once_space_is_freed() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let disk = SmallDisk::mount(&dirs.base.path().join("small"), "2m");
    let input = dirs.input_file("noise.png", &noise_png(1280, 960));
    let filler = disk.path.join("filler");
    // Leave a few KiB: the job directory fits, the preview does not.
    let free = fs2_free_bytes(&disk.path);
    fs::write(&filler, vec![0u8; (free - 16 * 1024) as usize]).unwrap();
    push_job(&mut conn, &job_json("full", &input));
    let output_root = disk.path.to_str().unwrap().to_owned();
    let flags = [
        "--output-root",
        &output_root,
        "--retry-base-ms",
        "200",
        "--retry-max-ms",
        "400",
        "--max-attempts",
        "50",
    ];
    let daemon = Daemon::start(&redis, &dirs, &flags);

    wait_until("a retry for the full disk is scheduled", || {
        pending_jobs(&mut conn)
            .iter()
            .any(|job| job["last_error_kind"] == "output")
    });
    assert_no_temp_files(&disk.path);
    for path in files_below(&disk.path)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "webp"))
    {
        read_webp(path);
    }
    fs::remove_file(&filler).unwrap();
    wait_for_outcomes(&mut conn, 1, WAIT);
    assert!(daemon.stop().success());
    let (done, _) = assert_invariant(&mut conn, &ids(&["full"]), &disk.path);
    assert_eq!(done, 1);
    assert!(
        messages(&mut conn, "image_done")[0]["attempts"]
            .as_u64()
            .unwrap()
            >= 2
    );
}

fn fs2_free_bytes(path: &Path) -> u64 {
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a writable statvfs struct.
    assert_eq!(unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) }, 0);
    stats.f_bavail as u64 * stats.f_frsize as u64
}

fn requeue_stuck(redis: &RedisServer, extra: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/requeue-stuck.sh");
    let output = Command::new(script)
        .args(["--redis", &redis.url()])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn requeue_stuck_brings_back_dead_consumers_jobs_and_leaves_live_ones() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let input = dirs.input_file("stranded.png", &png_rgba(90, 60));
    let dead = "image_jobs:processing:deadhost:0";
    let live = "image_jobs:processing:livehost:0";
    for id in ["stranded0", "stranded1"] {
        redis::cmd("LPUSH")
            .arg(dead)
            .arg(job_json(id, &input))
            .query::<()>(&mut conn)
            .unwrap();
    }
    redis::cmd("LPUSH")
        .arg(live)
        .arg(job_json("busy", &input))
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("SADD")
        .arg("image_worker:consumers")
        .arg(dead)
        .arg(live)
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("HSET")
        .arg("image_worker:stage")
        .arg("deadhost:0")
        .arg("decode")
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("SET")
        .arg("image_worker:alive:livehost")
        .arg("{}")
        .arg("PX")
        .arg(60_000)
        .query::<()>(&mut conn)
        .unwrap();

    let dry = requeue_stuck(&redis, &["--dry-run"]);
    assert!(dry.contains("would move 2"), "{dry}");
    assert_eq!(llen(&mut conn, dead), 2, "a dry run moves nothing");

    let report = requeue_stuck(&redis, &[]);
    assert!(report.contains("moved 2"), "{report}");
    assert_eq!(llen(&mut conn, dead), 0);
    assert_eq!(
        llen(&mut conn, live),
        1,
        "a live consumer's list is untouched"
    );
    assert_eq!(llen(&mut conn, "image_jobs"), 2);
    let recoveries: Vec<u32> = redis::cmd("HVALS")
        .arg("image_worker:recoveries")
        .query(&mut conn)
        .unwrap();
    assert_eq!(recoveries, vec![1, 1], "each recovery is counted");

    let daemon = Daemon::start(&redis, &dirs, &[]);
    wait_for_outcomes(&mut conn, 2, WAIT);
    assert!(daemon.stop().success());
    let done = messages(&mut conn, "image_done");
    let mut done_ids: Vec<&str> = done.iter().map(|m| m["id"].as_str().unwrap()).collect();
    done_ids.sort();
    assert_eq!(done_ids, vec!["stranded0", "stranded1"]);
    assert_eq!(llen(&mut conn, live), 1);
    let left: usize = redis::cmd("HLEN")
        .arg("image_worker:recoveries")
        .query(&mut conn)
        .unwrap();
    assert_eq!(left, 0, "recovery counts are cleared with the outcome");
}

#[test]
fn live_worker_keeps_its_liveness_key_fresh_and_removes_it_on_a_clean_stop() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let daemon = Daemon::start(&redis, &dirs, &["--alive-ttl-ms", "900"]);
    wait_until("the liveness key exists", || {
        redis::cmd("EXISTS")
            .arg("image_worker:alive:testhost")
            .query::<bool>(&mut conn)
            .unwrap()
    });
    thread::sleep(Duration::from_millis(2000));
    let ttl: i64 = redis::cmd("PTTL")
        .arg("image_worker:alive:testhost")
        .query(&mut conn)
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 900,
        "refreshed well past its first TTL ({ttl} ms left)"
    );
    let report = requeue_stuck(&redis, &[]);
    assert!(
        report.contains("testhost:0") && report.contains("untouched"),
        "{report}"
    );
    assert!(daemon.stop().success());
    let exists: bool = redis::cmd("EXISTS")
        .arg("image_worker:alive:testhost")
        .query(&mut conn)
        .unwrap();
    assert!(!exists, "removed on a clean stop");
}

/// A tiny xorshift generator; the seed is printed so a failing soak can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn soak_2000_jobs_through_4_workers_with_random_kills_of_worker_and_redis() {
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    note(&format!("soak seed {seed} (SOAK_SEED={seed} replays it)"));
    let mut rng = Rng(seed);
    let mut redis = RedisServer::start_persistent();
    let dirs = Dirs::new();
    let inputs: Vec<_> = (0..8)
        .map(|i| dirs.input_file(&format!("soak{i}.png"), &png_rgba(40 + i * 7, 30 + i * 5)))
        .collect();
    let names: Vec<String> = (0..2000).map(|i| format!("soak{i}")).collect();
    {
        let mut conn = redis.conn();
        let mut pipe = redis::pipe();
        for (i, id) in names.iter().enumerate() {
            pipe.cmd("LPUSH")
                .arg("image_jobs")
                .arg(job_json(id, &inputs[i % inputs.len()]))
                .ignore();
        }
        pipe.query::<()>(&mut conn).unwrap();
    }
    let flags = ["--workers", "4"];
    let (mut worker_kills, mut redis_kills) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut daemon = Daemon::start(&redis, &dirs, &flags);
    loop {
        let settled = {
            let mut conn = redis.conn();
            llen(&mut conn, "image_done") + llen(&mut conn, "image_failed")
        };
        if settled >= names.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "soak incomplete: {settled} of {}",
            names.len()
        );
        thread::sleep(Duration::from_millis(100 + rng.below(400)));
        if worker_kills + redis_kills >= 12 {
            continue; // enough chaos; let it finish
        }
        if rng.below(2) == 0 {
            daemon.signal(libc::SIGKILL);
            daemon.wait_exit(WAIT);
            worker_kills += 1;
            daemon = Daemon::start(&redis, &dirs, &flags);
        } else {
            redis.kill();
            thread::sleep(Duration::from_millis(rng.below(800)));
            redis.restart();
            redis_kills += 1;
        }
    }
    assert!(daemon.stop().success());
    let mut conn = redis.conn();
    let (done, failed) = assert_invariant(&mut conn, &names, &dirs.output);
    let poison = messages(&mut conn, "image_failed")
        .iter()
        .filter(|m| m["kind"] == "poison")
        .count();
    note(&format!(
        "soak: {} jobs, {done} done, {failed} failed ({poison} poison), {worker_kills} worker kills, {redis_kills} redis kills",
        names.len()
    ));
    assert_eq!(
        failed, poison,
        "the only failures a kill can cause are poison jobs"
    );
}
