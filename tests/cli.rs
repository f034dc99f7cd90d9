//! The command line: exit statuses, configuration refusals, and the operator subcommands.

mod support;

use std::fs;

use support::*;

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn roots(dirs: &Dirs) -> Vec<String> {
    vec![
        "--input-root".into(),
        dirs.input.display().to_string(),
        "--output-root".into(),
        dirs.output.display().to_string(),
    ]
}

fn run_with(dirs: &Dirs, args: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(roots(dirs));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    run_binary(dirs, &refs)
}

#[test]
fn bad_flag_value_exits_2_naming_the_flag() {
    let dirs = Dirs::new();
    let output = run_with(&dirs, &["check", "--workers", "0"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--workers"), "{}", stderr(&output));
}

#[test]
fn bad_environment_value_exits_2_naming_the_variable() {
    let dirs = Dirs::new();
    let output = worker_command(&dirs)
        .arg("check")
        .args(roots(&dirs))
        .env("IMAGE_WORKER_MAX_ATTEMPTS", "many")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("IMAGE_WORKER_MAX_ATTEMPTS"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bad_file_value_exits_2_naming_file_and_line() {
    let dirs = Dirs::new();
    fs::write(
        &dirs.config,
        "# worker settings\nworkers = 2\nlq_quality = \"best\"\n",
    )
    .unwrap();
    let output = run_with(&dirs, &["check"]);
    assert_eq!(output.status.code(), Some(2));
    let expected = format!("{} line 3", dirs.config.display());
    assert!(stderr(&output).contains(&expected), "{}", stderr(&output));
}

#[test]
fn flag_overrides_environment_which_overrides_file() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    // A bad value in a lower layer is never looked at when a higher layer names the setting.
    fs::write(&dirs.config, "max_attempts = 0\n").unwrap();
    let output = worker_command(&dirs)
        .args(["check", "--redis", &redis.url(), "--backend", "cpu"])
        .args(roots(&dirs))
        .env("IMAGE_WORKER_MAX_ATTEMPTS", "4")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let output = worker_command(&dirs)
        .args([
            "check",
            "--redis",
            &redis.url(),
            "--backend",
            "cpu",
            "--max-attempts",
            "5",
        ])
        .args(roots(&dirs))
        .env("IMAGE_WORKER_MAX_ATTEMPTS", "zero")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "the flag hides the bad env value: {}",
        stderr(&output)
    );
}

/// Built with the feature, the same refusal comes from the driver (tests/cuda.rs).
#[cfg(not(feature = "cuda"))]
#[test]
fn backend_cuda_without_support_is_a_startup_error() {
    let dirs = Dirs::new();
    let output = run_with(
        &dirs,
        &["run", "--backend", "cuda", "--redis", "redis://127.0.0.1:1"],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("built without CUDA support"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn check_passes_only_when_redis_answers() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let ok = run_with(
        &dirs,
        &["check", "--backend", "cpu", "--redis", &redis.url()],
    );
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let closed = run_with(
        &dirs,
        &[
            "check",
            "--backend",
            "cpu",
            "--redis",
            "redis://127.0.0.1:1",
        ],
    );
    assert_eq!(closed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&closed.stdout).contains("FAIL  redis"));
}

#[test]
fn enqueue_then_status_shows_the_waiting_jobs() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let a = dirs.input_file("first photo.jpg", &jpeg(10, 10));
    let b = dirs.input_file("second.png", &png_rgba(10, 10));
    let output = run_with(
        &dirs,
        &[
            "enqueue",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--redis",
            &redis.url(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let mut conn = redis.conn();
    let jobs = messages(&mut conn, "image_jobs");
    let mut ids: Vec<&str> = jobs.iter().map(|j| j["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, vec!["first_photo", "second"]);
    assert!(jobs.iter().all(|j| j["enqueued_at"].as_u64().is_some()));

    let status = run_with(&dirs, &["status", "--redis", &redis.url()]);
    assert!(status.status.success());
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("2 waiting"), "{text}");
}

/// Waits until the stage hash says `consumer` has reached `stage`.
fn wait_for_stage(conn: &mut redis::Connection, consumer: &str, stage: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now: Option<String> = redis::cmd("HGET")
            .arg("image_worker:stage")
            .arg(consumer)
            .query(conn)
            .unwrap();
        if now.as_deref() == Some(stage) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{consumer} is at {now:?}, not {stage}"
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

#[test]
fn status_shows_live_consumers_their_claims_and_failures_by_kind() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    push_job(&mut conn, "{\"id\": \"bad/id\", \"input\": \"/x.jpg\"}");
    let env = [("IMAGE_WORKER_TEST_FAILPOINT", "during-decode:hang")];
    let _daemon = Daemon::start_with_env(&redis, &dirs, &["--workers", "1"], &env);
    wait_for_outcomes(&mut conn, 1, std::time::Duration::from_secs(20));
    let held = dirs.input_file("held.jpg", &jpeg(32, 32));
    push_job(&mut conn, &job_json("held", &held));
    wait_for_stage(&mut conn, "testhost:0", "decode");
    push_job(&mut conn, &job_json("waiting", &held));
    let due = serde_json::json!({"id": "later", "input": held}).to_string();
    let in_a_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 60_000;
    redis::cmd("ZADD")
        .arg("image_retry")
        .arg(in_a_minute)
        .arg(&due)
        .query::<()>(&mut conn)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));

    let status = run_with(&dirs, &["status", "--redis", &redis.url()]);
    assert!(status.status.success(), "{}", stderr(&status));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("1 waiting"), "{text}");
    assert!(
        text.contains("image_retry") && text.contains(" 1 (next due in 5"),
        "{text}"
    );
    assert!(
        text.contains("image_failed") && text.contains("1: invalid=1"),
        "{text}"
    );
    assert!(text.contains("hosts       1 live"), "{text}");
    assert!(text.contains("host        testhost  pid "), "{text}");
    assert!(
        text.contains("  backend   cpu backend (fast_image_resize"),
        "status names each live host's backend: {text}"
    );
    let consumer_line = text
        .lines()
        .find(|l| l.contains("consumer  testhost:0"))
        .unwrap_or_else(|| panic!("no consumer line: {text}"));
    assert!(consumer_line.contains("decode"), "{consumer_line}");
    assert!(
        consumer_line.contains("job held claimed 1."),
        "{consumer_line}"
    );
    assert!(
        text.contains("oldest      job held held by testhost:0, claimed 1."),
        "{text}"
    );
}

#[test]
fn status_names_claims_left_by_a_dead_host() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    redis::cmd("LPUSH")
        .arg("image_jobs:processing:gone:0")
        .arg(job_json("orphan", &dirs.input.join("o.jpg")))
        .query::<()>(&mut conn)
        .unwrap();
    let status = run_with(&dirs, &["status", "--redis", &redis.url()]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("hosts       0 live"), "{text}");
    assert!(
        text.contains("stale       image_jobs:processing:gone:0 holds orphan"),
        "{text}"
    );
}

#[test]
fn check_fails_when_the_output_root_or_the_backend_does_not_answer() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let blocked = dirs.base.path().join("a-file");
    fs::write(&blocked, b"not a directory").unwrap();
    let output = worker_command(&dirs)
        .args(["check", "--backend", "cpu", "--redis", &redis.url()])
        .arg("--input-root")
        .arg(&dirs.input)
        .arg("--output-root")
        .arg(&blocked)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  output"), "{stdout}");
    assert!(stdout.contains("ok    redis"), "{stdout}");

    let output = run_with(
        &dirs,
        &["check", "--backend", "cuda", "--redis", &redis.url()],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    if stdout.contains("ok    backend") {
        note("a CUDA device answered; the failing-backend case needs a host without one");
        return;
    }
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  backend"), "{stdout}");
}
