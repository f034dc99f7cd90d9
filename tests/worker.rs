//! End-to-end tests of the daemon: a real redis-server per test and the real binary.

mod support;

use std::fs;
use std::time::Duration;

use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn output_path(dirs: &Dirs, id: &str, rendition: &str) -> std::path::PathBuf {
    dirs.output.join(id).join(format!("{id}_{rendition}.webp"))
}

fn by_id<'a>(messages: &'a [Value], id: &str) -> Vec<&'a Value> {
    messages.iter().filter(|m| m["id"] == id).collect()
}

#[test]
fn jpeg_png_with_alpha_and_oriented_jpeg_end_in_done_with_fitted_webps() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    // Both JPEGs are large enough to be decoded at half size (shrink-on-load); the outputs
    // are still sized from the full image.
    let cases = [
        (
            "photo",
            dirs.input_file("photo.jpg", &jpeg(3000, 1500)),
            (3000, 1500),
        ),
        (
            "cutout",
            dirs.input_file("cutout.png", &png_rgba(300, 500)),
            (300, 500),
        ),
        (
            "rotated",
            dirs.input_file("rotated.jpg", &jpeg_with_orientation(3200, 1800, 6)),
            (1800, 3200),
        ),
    ];
    for (id, path, _) in &cases {
        push_job(&mut conn, &job_json(id, path));
    }
    let daemon = Daemon::start(&redis, &dirs, &[]);
    wait_for_outcomes(&mut conn, cases.len(), WAIT);

    let done = messages(&mut conn, "image_done");
    assert_eq!(
        done.len(),
        cases.len(),
        "all done, none failed: {:?}",
        list(&mut conn, "image_failed")
    );
    for (id, _, (w, h)) in &cases {
        let message = by_id(&done, id);
        assert_eq!(message.len(), 1, "{id} done exactly once");
        let message = message[0];
        assert_eq!(message["source"]["width"], *w, "{id}: oriented width");
        assert_eq!(message["source"]["height"], *h, "{id}: oriented height");
        for (rendition, size) in [("thumb", 320), ("blur", 64), ("lq", 1280)] {
            let (ew, eh) = image_worker::ops::fit_within(*w, *h, size, size);
            let (aw, ah, _) = read_webp(&output_path(&dirs, id, rendition));
            assert_eq!((aw, ah), (ew, eh), "{id} {rendition}");
            assert_eq!(message["outputs"][rendition]["width"], ew);
            assert_eq!(message["outputs"][rendition]["height"], eh);
            let bytes = fs::metadata(output_path(&dirs, id, rendition))
                .unwrap()
                .len();
            assert_eq!(message["outputs"][rendition]["bytes"], bytes);
        }
        for stage in ["read", "decode", "gpu", "encode", "write", "total"] {
            assert!(
                message["timing_ms"][stage].as_f64().unwrap() >= 0.0,
                "{id} timing {stage}"
            );
        }
        assert_eq!(message["attempts"], 1);
        assert!(
            message["consumer"]
                .as_str()
                .unwrap()
                .starts_with("testhost:")
        );
    }

    // The oriented JPEG was a horizontal gradient in red: after a 90° clockwise turn, red
    // grows downwards and is flat across.
    let (w, h, pixels) = read_webp(&output_path(&dirs, "rotated", "lq"));
    let red = |x: u32, y: u32| pixels[((y * w + x) * 4) as usize] as i32;
    assert!(
        red(w / 2, h - 10) - red(w / 2, 10) > 150,
        "orientation applied to the pixels"
    );
    assert!((red(10, h / 2) - red(w - 10, h / 2)).abs() < 20);

    // The PNG's alpha is kept: its right half fades from transparent at the top.
    let (w, _, pixels) = read_webp(&output_path(&dirs, "cutout", "thumb"));
    assert!(
        pixels[((w - 2) * 4 + 3) as usize] < 40,
        "top right is transparent"
    );
    assert_eq!(pixels[3], 255, "top left is opaque");

    assert_eq!(list(&mut conn, "image_jobs"), Vec::<String>::new());
    assert_nothing_claimed(&mut conn);
    assert_no_temp_files(&dirs.output);
    assert!(daemon.stop().success(), "clean exit after SIGTERM");
}

#[test]
fn invalid_jobs_fail_once_with_the_right_kind_and_write_nothing() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.jpg");
    fs::write(&secret, jpeg(64, 64)).unwrap();
    let escape = dirs.input.join("escape.jpg");
    std::os::unix::fs::symlink(&secret, &escape).unwrap();
    let text = dirs.input_file("notes.jpg", b"this is a text file, not a jpeg\n");
    let dotted = format!(
        "{}/../../{}",
        dirs.input.display(),
        secret.strip_prefix("/").unwrap().display()
    );

    let cases: Vec<(String, &str, &str)> = vec![
        ("{not json".into(), "?", "invalid"),
        (r#"{"input":"/data/incoming/x.jpg"}"#.into(), "?", "invalid"),
        (
            serde_json::json!({"id": "no-input"}).to_string(),
            "no-input",
            "invalid",
        ),
        (job_json("a/b", &secret), "a/b", "invalid"),
        (job_json("..", &secret), "..", "invalid"),
        (job_json("outside", &secret), "outside", "invalid"),
        (
            serde_json::json!({"id": "dotted", "input": dotted}).to_string(),
            "dotted",
            "invalid",
        ),
        (job_json("symlink", &escape), "symlink", "invalid"),
        (
            job_json("missing", &dirs.input.join("missing.jpg")),
            "missing",
            "invalid",
        ),
        (job_json("text", &text), "text", "unsupported"),
        (
            serde_json::json!({"id": "badops", "input": text, "ops": {"thumb": {"size": 0}}})
                .to_string(),
            "badops",
            "invalid",
        ),
    ];
    for (payload, _, _) in &cases {
        push_job(&mut conn, payload);
    }
    let daemon = Daemon::start(&redis, &dirs, &[]);
    wait_for_outcomes(&mut conn, cases.len(), WAIT);
    // Give a wrongly scheduled retry the time to show up.
    std::thread::sleep(Duration::from_millis(500));

    let failed = messages(&mut conn, "image_failed");
    assert_eq!(
        failed.len(),
        cases.len(),
        "every invalid job failed exactly once"
    );
    assert_eq!(list(&mut conn, "image_done"), Vec::<String>::new());
    let retries: usize = redis::cmd("ZCARD")
        .arg("image_retry")
        .query(&mut conn)
        .unwrap();
    assert_eq!(retries, 0, "invalid jobs are never retried");
    for (payload, id, kind) in &cases {
        let matching: Vec<&Value> = if *id == "?" {
            // Unparseable payloads come back as `raw`; objects without an id echo their fields.
            let echoed: Option<Value> = serde_json::from_str(payload).ok();
            let input = echoed.as_ref().map(|e| &e["input"]);
            failed
                .iter()
                .filter(|m| {
                    m["raw"] == payload.as_str()
                        || (m["id"].is_null() && Some(&m["input"]) == input)
                })
                .collect()
        } else {
            by_id(&failed, id)
        };
        assert_eq!(matching.len(), 1, "{payload}");
        assert_eq!(
            matching[0]["kind"], *kind,
            "{payload}: {}",
            matching[0]["error"]
        );
        assert_eq!(matching[0]["attempts"], 1, "{payload}");
        assert!(!matching[0]["error"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        files_below(&dirs.output),
        Vec::<std::path::PathBuf>::new(),
        "nothing written"
    );
    assert_eq!(
        files_below(outside.path()),
        vec![secret.clone()],
        "nothing written outside"
    );
    assert_nothing_claimed(&mut conn);
    assert!(daemon.stop().success());
}

#[test]
fn blocked_output_is_retried_then_done_with_attempts_counted() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let input = dirs.input_file("blocked.jpg", &jpeg(400, 300));
    // A plain file where the job's output directory must go.
    let blocker = dirs.output.join("blocked");
    fs::write(&blocker, b"in the way").unwrap();
    push_job(&mut conn, &job_json("blocked", &input));
    let daemon = Daemon::start(
        &redis,
        &dirs,
        &[
            "--max-attempts",
            "5",
            "--retry-base-ms",
            "300",
            "--retry-max-ms",
            "2000",
        ],
    );

    // Wait until the first failure is scheduled as a retry, then clear the way.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(job) = pending_jobs(&mut conn).first()
            && job["attempts"].as_u64() >= Some(1)
        {
            assert_eq!(job["last_error_kind"], "output", "{job}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no retry was scheduled"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    fs::remove_file(&blocker).unwrap();
    wait_for_outcomes(&mut conn, 1, WAIT);

    let done = messages(&mut conn, "image_done");
    assert_eq!(
        done.len(),
        1,
        "failed: {:?}",
        list(&mut conn, "image_failed")
    );
    let attempts = done[0]["attempts"].as_u64().unwrap();
    assert!(
        attempts >= 2,
        "at least one failed attempt before success, got {attempts}"
    );
    assert_eq!(done[0]["last_error_kind"], "output");
    assert!(output_path(&dirs, "blocked", "lq").exists());
    assert_nothing_claimed(&mut conn);
    assert_no_temp_files(&dirs.output);
    assert!(daemon.stop().success());
}

#[test]
fn transient_failures_end_in_exhausted_after_max_attempts() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let input = dirs.input_file("stuck.jpg", &jpeg(64, 64));
    fs::write(dirs.output.join("stuck"), b"in the way").unwrap();
    push_job(&mut conn, &job_json("stuck", &input));
    let daemon = Daemon::start(&redis, &dirs, &["--max-attempts", "3"]);
    wait_for_outcomes(&mut conn, 1, WAIT);

    let failed = messages(&mut conn, "image_failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["kind"], "exhausted");
    assert_eq!(failed[0]["attempts"], 3);
    assert!(
        failed[0]["error"].as_str().unwrap().contains("stuck"),
        "{}",
        failed[0]["error"]
    );
    assert_eq!(list(&mut conn, "image_done"), Vec::<String>::new());
    let retries: usize = redis::cmd("ZCARD")
        .arg("image_retry")
        .query(&mut conn)
        .unwrap();
    assert_eq!(retries, 0);
    assert_nothing_claimed(&mut conn);
    assert!(daemon.stop().success());
}

#[test]
fn orphan_in_own_processing_list_is_processed_exactly_once_at_start() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let input = dirs.input_file("orphan.jpg", &jpeg(500, 400));
    // As if a previous process with the same consumer id died holding this job.
    redis::cmd("LPUSH")
        .arg("image_jobs:processing:testhost:1")
        .arg(job_json("orphan", &input))
        .query::<()>(&mut conn)
        .unwrap();
    let daemon = Daemon::start(&redis, &dirs, &[]);
    wait_for_outcomes(&mut conn, 1, WAIT);
    std::thread::sleep(Duration::from_millis(500));

    let done = messages(&mut conn, "image_done");
    assert_eq!(by_id(&done, "orphan").len(), 1, "processed once");
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0]["consumer"], "testhost:1",
        "by the consumer that owned the list"
    );
    assert_nothing_claimed(&mut conn);
    assert!(daemon.stop().success());
}

#[test]
fn process_writes_byte_identical_outputs_to_the_daemon() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let input = dirs.input_file("same.png", &png_rgba(700, 450));
    let ops =
        serde_json::json!({"thumb": {"size": 200}, "blur": {"sigma": 2.5}, "lq": {"quality": 45}});
    let payload = serde_json::json!({"id": "same", "input": input, "ops": ops}).to_string();
    push_job(&mut conn, &payload);
    let daemon = Daemon::start(&redis, &dirs, &[]);
    wait_for_outcomes(&mut conn, 1, WAIT);
    assert!(daemon.stop().success());
    assert_eq!(messages(&mut conn, "image_done").len(), 1);

    // `process` takes the same overrides from its config, for the same image.
    let out = dirs.base.path().join("process-out");
    fs::write(
        &dirs.config,
        "thumb_size = 200\nblur_sigma = 2.5\nlq_quality = 45\n",
    )
    .unwrap();
    let printed = run_process(&dirs, &input, &out, "same");
    assert_eq!(printed["id"], "same");
    for rendition in ["thumb", "blur", "lq"] {
        let daemon_bytes = fs::read(output_path(&dirs, "same", rendition)).unwrap();
        let process_bytes =
            fs::read(out.join("same").join(format!("same_{rendition}.webp"))).unwrap();
        assert!(
            daemon_bytes == process_bytes,
            "{rendition} differs between daemon and process"
        );
        assert_eq!(printed["outputs"][rendition]["bytes"], daemon_bytes.len());
    }
}

#[test]
fn hash_tag_option_puts_every_key_under_one_tag() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let input = dirs.input_file("tagged.jpg", &jpeg(100, 80));
    redis::cmd("LPUSH")
        .arg("{image}_jobs")
        .arg(job_json("tagged", &input))
        .query::<()>(&mut conn)
        .unwrap();
    let daemon = Daemon::start(&redis, &dirs, &["--hash-tag", "true"]);
    let deadline = std::time::Instant::now() + WAIT;
    while list(&mut conn, "{image}_done").is_empty() {
        assert!(std::time::Instant::now() < deadline, "tagged job not done");
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(daemon.stop().success());
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(keys.iter().all(|k| k.starts_with("{image}_")), "{keys:?}");
}
