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
