//! Shared helpers for the integration tests: a private redis-server per test, the worker binary
//! as a child process, and image fixtures generated in code.
//!
//! Nothing here is mocked: each [`RedisServer`] is a real `redis-server` on a free loopback port
//! in its own temporary directory, killed when dropped.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use image::ImageEncoder;
use serde_json::Value;

/// A redis-server started for one test.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    persistent: bool,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A server that keeps nothing on disk, like the default test deployment.
    pub fn start() -> RedisServer {
        RedisServer::launch(false)
    }

    /// A server with an append-only file fsynced on every write, so that a `kill -9` and
    /// restart on the same port loses nothing it acknowledged.
    pub fn start_persistent() -> RedisServer {
        RedisServer::launch(true)
    }

    fn launch(persistent: bool) -> RedisServer {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let child = spawn_redis(port, dir.path(), persistent);
            let mut server = RedisServer {
                child,
                port,
                persistent,
                dir,
            };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// Kills the server with SIGKILL and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) {
        for _ in 0..50 {
            self.child = spawn_redis(self.port, self.dir.path(), self.persistent);
            if self.wait_ready() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not come back on port {}", self.port);
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut conn) = redis::Client::open(self.url()).unwrap().get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

fn spawn_redis(port: u16, dir: &Path, persistent: bool) -> Child {
    let mut command = Command::new("redis-server");
    command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if persistent {
        command.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        command.args(["--appendonly", "no"]);
    }
    command
        .spawn()
        .expect("redis-server must be installed (apt-get install redis-server)")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Temporary input and output roots, and an empty config file so that no system config is read.
pub struct Dirs {
    pub base: tempfile::TempDir,
    pub input: PathBuf,
    pub output: PathBuf,
    pub config: PathBuf,
}

impl Dirs {
    pub fn new() -> Dirs {
        let base = tempfile::tempdir().unwrap();
        let input = base.path().join("incoming");
        let output = base.path().join("processed");
        let config = base.path().join("config.toml");
        fs::create_dir(&input).unwrap();
        fs::create_dir(&output).unwrap();
        fs::write(&config, "").unwrap();
        Dirs {
            base,
            input,
            output,
            config,
        }
    }

    /// Writes `bytes` as `name` in the input root and returns its path.
    pub fn input_file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.input.join(name);
        fs::write(&path, bytes).unwrap();
        path
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_image-worker")
}

/// A command for the worker binary with a clean `IMAGE_WORKER_*` environment and the test's
/// config file.
pub fn worker_command(dirs: &Dirs) -> Command {
    let mut command = Command::new(binary());
    for (name, _) in std::env::vars() {
        if name.starts_with("IMAGE_WORKER_") {
            command.env_remove(name);
        }
    }
    // A test run under systemd must not have its daemons talk to the real service manager.
    for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        command.env_remove(name);
    }
    command.arg("--config").arg(&dirs.config);
    command
}

/// A running daemon, killed when dropped.
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    /// Starts `image-worker run` against `redis` with fast retries and the given extra flags.
    pub fn start(redis: &RedisServer, dirs: &Dirs, extra: &[&str]) -> Daemon {
        Daemon::start_with_env(redis, dirs, extra, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables (failpoints).
    pub fn start_with_env(
        redis: &RedisServer,
        dirs: &Dirs,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut command = worker_command(dirs);
        command
            .arg("run")
            .args([
                "--redis",
                &redis.url(),
                "--backend",
                "cpu",
                "--hostname",
                "testhost",
            ])
            .arg("--input-root")
            .arg(&dirs.input)
            .arg("--output-root")
            .arg(&dirs.output)
            .args([
                "--workers",
                "2",
                "--retry-base-ms",
                "50",
                "--retry-max-ms",
                "200",
            ])
            .args(["--log-level", "debug"])
            // Any free port, so that daemons of concurrent tests never compete for one; a test
            // that scrapes passes its own --metrics-addr, and the last flag wins.
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        Daemon {
            child: command.spawn().unwrap(),
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon still running after {timeout:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }

    /// Peak resident memory so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion.
pub fn run_binary(dirs: &Dirs, args: &[&str]) -> Output {
    worker_command(dirs).args(args).output().unwrap()
}

/// Runs `image-worker process` on `input` into `out` as job `id` on the CPU backend, asserts
/// that it succeeded and returns the done message it printed.
pub fn run_process(dirs: &Dirs, input: &Path, out: &Path, id: &str) -> Value {
    let result = run_binary(
        dirs,
        &[
            "process",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--id",
            id,
            "--backend",
            "cpu",
        ],
    );
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    serde_json::from_slice(&result.stdout).unwrap()
}

pub fn push_job(conn: &mut redis::Connection, payload: &str) {
    redis::cmd("LPUSH")
        .arg("image_jobs")
        .arg(payload)
        .query::<()>(conn)
        .unwrap();
}

pub fn job_json(id: &str, input: &Path) -> String {
    serde_json::json!({"id": id, "input": input}).to_string()
}

pub fn list(conn: &mut redis::Connection, key: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(conn)
        .unwrap()
}

pub fn messages(conn: &mut redis::Connection, key: &str) -> Vec<Value> {
    list(conn, key)
        .iter()
        .map(|m| serde_json::from_str(m).unwrap())
        .collect()
}

/// Waits until `image_done` and `image_failed` together hold `count` messages.
pub fn wait_for_outcomes(conn: &mut redis::Connection, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let done: usize = redis::cmd("LLEN").arg("image_done").query(conn).unwrap();
        let failed: usize = redis::cmd("LLEN").arg("image_failed").query(conn).unwrap();
        if done + failed >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} done and {failed} failed of {count} after {timeout:?}"
        );
        thread::sleep(Duration::from_millis(25));
    }
}

/// Every processing list is empty (or absent).
pub fn assert_nothing_claimed(conn: &mut redis::Connection) {
    let lists: Vec<String> = redis::cmd("KEYS")
        .arg("image_jobs:processing:*")
        .query(conn)
        .unwrap();
    for key in lists {
        assert_eq!(
            list(conn, &key),
            Vec::<String>::new(),
            "{key} still holds a claim"
        );
    }
}

/// The invariant of every fault test: each id ends in exactly one of `image_done` or
/// `image_failed`, exactly once; nothing is waiting, retrying or claimed; every output file is
/// a complete, decodable WebP and no temporary file is left. Returns (done, failed) counts.
pub fn assert_invariant(
    conn: &mut redis::Connection,
    ids: &[String],
    output: &Path,
) -> (usize, usize) {
    let done = messages(conn, "image_done");
    let failed = messages(conn, "image_failed");
    for id in ids {
        let d = done.iter().filter(|m| m["id"] == id.as_str()).count();
        let f = failed.iter().filter(|m| m["id"] == id.as_str()).count();
        assert_eq!(d + f, 1, "job {id}: {d} done and {f} failed messages");
    }
    assert_eq!(
        done.len() + failed.len(),
        ids.len(),
        "no outcome for an unknown job"
    );
    assert_eq!(
        list(conn, "image_jobs"),
        Vec::<String>::new(),
        "jobs still waiting"
    );
    let retries: usize = redis::cmd("ZCARD").arg("image_retry").query(conn).unwrap();
    assert_eq!(retries, 0, "jobs still in the retry set");
    assert_nothing_claimed(conn);
    assert_no_temp_files(output);
    for path in files_below(output) {
        read_webp(&path);
    }
    (done.len(), failed.len())
}

/// Waits until every one of `names` has an outcome, stops `daemon` cleanly, checks the
/// invariant and returns how many ended done.
pub fn finish(
    daemon: Daemon,
    conn: &mut redis::Connection,
    names: &[String],
    output: &Path,
) -> usize {
    wait_for_outcomes(conn, names.len(), Duration::from_secs(60));
    assert!(daemon.stop().success(), "clean exit after SIGTERM");
    assert_invariant(conn, names, output).0
}

/// The jobs not yet settled and not claimed: retry-set members and waiting jobs, parsed.
pub fn pending_jobs(conn: &mut redis::Connection) -> Vec<Value> {
    let retry: Vec<String> = redis::cmd("ZRANGE")
        .arg("image_retry")
        .arg(0)
        .arg(-1)
        .query(conn)
        .unwrap();
    retry
        .iter()
        .chain(&list(conn, "image_jobs"))
        .map(|payload| serde_json::from_str(payload).unwrap())
        .collect()
}

/// Every file below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_below(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

pub fn assert_no_temp_files(dir: &Path) {
    for path in files_below(dir) {
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(
            !name.starts_with('.'),
            "temporary file left behind: {}",
            path.display()
        );
    }
}

/// Decodes a WebP file and returns its size and RGBA pixels.
pub fn read_webp(path: &Path) -> (u32, u32, Vec<u8>) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[8..12], b"WEBP", "{} is not WebP", path.display());
    let image = image::load_from_memory_with_format(&bytes, image::ImageFormat::WebP).unwrap();
    (image.width(), image.height(), image.to_rgba8().into_raw())
}

// ---- fixtures ----

/// A smooth RGB gradient, so that encoders and resamplers have real work.
pub fn gradient_rgb(width: u32, height: u32) -> Vec<u8> {
    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            pixels.push((x * 255 / width.max(1)) as u8);
            pixels.push((y * 255 / height.max(1)) as u8);
            pixels.push(((x + y) % 256) as u8);
        }
    }
    pixels
}

pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    jpeg_of(&gradient_rgb(width, height), width, height, None)
}

pub fn jpeg_of(rgb: &[u8], width: u32, height: u32, icc: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92);
    if let Some(icc) = icc {
        encoder.set_icc_profile(icc).unwrap();
    }
    encoder
        .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

pub fn png_rgba(width: u32, height: u32) -> Vec<u8> {
    let mut pixels = Vec::new();
    for y in 0..height {
        for x in 0..width {
            let alpha = if x < width / 2 {
                255
            } else {
                (y * 255 / height) as u8
            };
            pixels.extend_from_slice(&[200, (x % 256) as u8, 40, alpha]);
        }
    }
    png_of(&pixels, width, height, None)
}

pub fn png_of(rgba: &[u8], width: u32, height: u32, icc: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = image::codecs::png::PngEncoder::new(&mut out);
    if let Some(icc) = icc {
        encoder.set_icc_profile(icc).unwrap();
    }
    encoder
        .write_image(rgba, width, height, image::ExtendedColorType::Rgba8)
        .unwrap();
    out
}

/// A JPEG whose EXIF says `orientation` (6: rotate 90° clockwise to display).
pub fn jpeg_with_orientation(width: u32, height: u32, orientation: u16) -> Vec<u8> {
    let plain = jpeg(width, height);
    // A little-endian TIFF header with one IFD entry: tag 0x0112 (Orientation), SHORT, count 1.
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"II*\0");
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);

    let mut out = plain[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&plain[2..]);
    out
}

/// A flat CMYK JPEG of the given ink amounts (0 = no ink), without an ICC profile.
/// With `ycck`, the inks are stored as Adobe's YCCK transform instead of plain CMYK.
pub fn cmyk_jpeg(width: u16, height: u16, cmyk: [u8; 4], ycck: bool) -> Vec<u8> {
    let pixels = cmyk.repeat(width as usize * height as usize);
    let mut out = Vec::new();
    let encoder = jpeg_encoder::Encoder::new(&mut out, 95);
    let color = if ycck {
        jpeg_encoder::ColorType::CmykAsYcck
    } else {
        jpeg_encoder::ColorType::Cmyk
    };
    encoder.encode(&pixels, width, height, color).unwrap();
    out
}

/// Flushes stdout of a test so interleaved output reads in order.
pub fn note(message: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{message}");
}
