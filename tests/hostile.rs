//! Hostile inputs against the real daemon: malformed, truncated, mislabelled and oversized files
//! each end as done or as one permanent failure, quickly, without the worker dying or its memory
//! growing past the decode budget; header and metadata bombs are refused within a second with a
//! message that names the limit and the value.
//!
//! The bad-input sweep runs over every file of `../shared/corpus/bad` (relative to the crate) when
//! that folder exists, and always over a set generated here. No corpus file is part of this
//! repository.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageEncoder, ImageFormat, RgbImage};
use serde_json::Value;
use support::*;

/// `Daemon::start` runs this many worker threads.
const WORKERS: usize = 2;

/// Longest a sweep job may take from its push to its outcome.
const JOB_DEADLINE: Duration = Duration::from_secs(10);

/// Longest a bomb may take from its push to its outcome.
const BOMB_DEADLINE: Duration = Duration::from_secs(1);

/// Decode budget of the sweep's daemon (`--max-decode-bytes`). Below the 1 GiB default so that
/// the RSS cap means something; no input of the sweep that should decode needs more.
const SWEEP_DECODE_BUDGET: u64 = 128 << 20;

/// Highest peak RSS the sweep's daemon may reach. Each worker holds at most one decode within the
/// budget at a time; the rest of the process (binary, allocator, Redis connections, the input
/// being read, renditions and WebP encoders) is well inside another 128 MiB.
const SWEEP_RSS_CAP: u64 = WORKERS as u64 * SWEEP_DECODE_BUDGET + (128 << 20);

/// The permanent kinds a decode can fail with. Anything else (`panic`, `exhausted`, ...) would
/// mean a retry, or a failure that is not the input's fault.
const DECODE_KINDS: [&str; 3] = ["corrupt", "too_large", "unsupported"];

/// Corpus files whose outcome this project has decided, beyond "done or a clean failure".
const CORPUS_EXPECTED: &[(&str, &str)] = &[
    ("generated/gen_png_iccp_bomb_2GiB.png", "too_large"),
    ("generated/gen_png_bomb_20000x20000_gray8.png", "too_large"),
    (
        "generated/gen_png_100000x100000_gray_8rows.png",
        "too_large",
    ),
    (
        "generated/gen_png_ihdr_65535x65535_rgba_noidat.png",
        "too_large",
    ),
    (
        "generated/gen_gif_screen_65535x65535_1px_frame.gif",
        "too_large",
    ),
    ("generated/gen_jpeg_sof_65500x65500.jpg", "too_large"),
    ("generated/gen_tiff_65535x65535_rgb_header.tif", "too_large"),
    (
        "generated/gen_webp_vp8l_16384x16384_header_only.webp",
        "too_large",
    ),
    (
        "generated/gen_webp_vp8x_canvas_16777216sq.webp",
        "too_large",
    ),
    ("generated/gen_jpeg_cut_after_header_620B.jpg", "corrupt"),
    ("wuffs/peacock.default.truncated.jpeg", "corrupt"),
    ("wuffs/peacock.progressive.truncated.jpeg", "corrupt"),
    ("zune/incomplete_image.jpg", "corrupt"),
    ("generated/gen_zero_bytes.png", "unsupported"),
    // Only the first frame is decoded, and compressed text is never inflated.
    ("generated/gen_gif_10000_frames_1000x1000.gif", "done"),
    ("generated/gen_png_ztxt_bomb_256MiB.png", "done"),
];

/// What a sweep input must end as.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Done,
    Fails(&'static str),
    /// Done, or failed with one of [`DECODE_KINDS`].
    Either,
}

impl Expect {
    fn from_corpus(relative: &str, name: &str) -> Expect {
        if name.starts_with("control_") {
            return Expect::Done;
        }
        match CORPUS_EXPECTED.iter().find(|(path, _)| *path == relative) {
            Some((_, "done")) => Expect::Done,
            Some((_, kind)) => Expect::Fails(kind),
            None => Expect::Either,
        }
    }
}

struct Case {
    id: String,
    /// Where it came from, for messages.
    label: String,
    path: PathBuf,
    expect: Expect,
}

struct Outcome {
    done: bool,
    message: Value,
    elapsed: Duration,
}

// ---- the sweep ----

#[test]
fn every_bad_input_ends_done_or_failed_permanently_without_hurting_the_worker() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let mut cases = corpus_cases(&dirs);
    let corpus_count = cases.len();
    cases.extend(generated_cases(&dirs));
    note(&format!(
        "sweep: {corpus_count} corpus files, {} generated",
        cases.len() - corpus_count
    ));

    let budget = format!("{}MiB", SWEEP_DECODE_BUDGET >> 20);
    let mut daemon = Daemon::start(&redis, &dirs, &["--max-decode-bytes", &budget]);
    let outcomes = run_sweep(&mut conn, &mut daemon, &cases);
    let peak_rss = peak_rss_bytes(daemon.child.id());

    for case in &cases {
        check_outcome(case, &outcomes[&case.id]);
    }
    report_counts("corpus", &cases[..corpus_count], &outcomes);
    report_counts("generated", &cases[corpus_count..], &outcomes);
    let slowest = cases
        .iter()
        .max_by_key(|case| outcomes[&case.id].elapsed)
        .unwrap();
    note(&format!(
        "slowest job: {} in {:?}; worker peak RSS {} MiB (cap {} MiB)",
        slowest.label,
        outcomes[&slowest.id].elapsed,
        peak_rss >> 20,
        SWEEP_RSS_CAP >> 20
    ));

    assert!(
        peak_rss < SWEEP_RSS_CAP,
        "worker peak RSS {} MiB is above the cap of {} MiB",
        peak_rss >> 20,
        SWEEP_RSS_CAP >> 20
    );
    let retries: usize = redis::cmd("ZCARD")
        .arg("image_retry")
        .query(&mut conn)
        .unwrap();
    assert_eq!(retries, 0, "no bad input is retried");
    assert_nothing_claimed(&mut conn);
    assert!(daemon.stop().success(), "clean exit after the sweep");
}

/// Copies every corpus file into the input root under a safe name.
fn corpus_cases(dirs: &Dirs) -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/bad");
    let files: Vec<PathBuf> = files_below(&root)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n != "MANIFEST.tsv" && n != "README.md")
        })
        .collect();
    if files.is_empty() {
        note("sweep: no corpus at ../shared/corpus/bad; generated inputs only");
    }
    files
        .iter()
        .enumerate()
        .map(|(i, file)| {
            let relative = file
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            let id = format!("corpus-{i:03}");
            let path = dirs.input.join(&id);
            fs::copy(file, &path).unwrap();
            Case {
                expect: Expect::from_corpus(&relative, &name),
                id,
                label: relative,
                path,
            }
        })
        .collect()
}

/// Pushes the cases, at most one per worker at a time so that each job's time from push to
/// outcome is its own, and collects the outcomes. Asserts on the way that every job ends within
/// [`JOB_DEADLINE`] and that the worker process stays up.
fn run_sweep(
    conn: &mut redis::Connection,
    daemon: &mut Daemon,
    cases: &[Case],
) -> HashMap<String, Outcome> {
    let mut pending = cases.iter();
    let mut in_flight: HashMap<String, (Instant, &Case)> = HashMap::new();
    let mut outcomes = HashMap::new();
    let mut seen = [0usize; 2];
    loop {
        while in_flight.len() < WORKERS {
            let Some(case) = pending.next() else { break };
            let pushed = Instant::now();
            push_job(conn, &job_json(&case.id, &case.path));
            in_flight.insert(case.id.clone(), (pushed, case));
        }
        if in_flight.is_empty() {
            return outcomes;
        }
        for (done, message) in new_outcomes(conn, &mut seen) {
            let id = message["id"].as_str().unwrap().to_string();
            let (pushed, _) = in_flight
                .remove(&id)
                .unwrap_or_else(|| panic!("outcome for {id}, which is not in flight"));
            let elapsed = pushed.elapsed();
            outcomes.insert(
                id,
                Outcome {
                    done,
                    message,
                    elapsed,
                },
            );
        }
        for (pushed, case) in in_flight.values() {
            assert!(
                pushed.elapsed() < JOB_DEADLINE,
                "{} ({}) has no outcome after {JOB_DEADLINE:?}",
                case.label,
                case.id
            );
        }
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "the worker exited during the sweep"
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// Messages added to `image_done` and `image_failed` since the last call. LPUSH puts the newest
/// at the head, so the message that arrived `n`-th is at index `-(n + 1)` however many arrive
/// meanwhile: everything from the head down to index `-(seen + 1)` is new.
fn new_outcomes(conn: &mut redis::Connection, seen: &mut [usize; 2]) -> Vec<(bool, Value)> {
    let mut found = Vec::new();
    for (i, (key, done)) in [("image_done", true), ("image_failed", false)]
        .into_iter()
        .enumerate()
    {
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-(seen[i] as i64) - 1)
            .query(conn)
            .unwrap();
        seen[i] += raw.len();
        found.extend(raw.iter().map(|m| (done, serde_json::from_str(m).unwrap())));
    }
    found
}

fn check_outcome(case: &Case, outcome: &Outcome) {
    let what = format!("{} ({})", case.label, case.id);
    let kind = outcome.message["kind"].as_str().unwrap_or("");
    assert!(
        outcome.elapsed < JOB_DEADLINE,
        "{what}: took {:?}",
        outcome.elapsed
    );
    if !outcome.done {
        assert!(
            DECODE_KINDS.contains(&kind),
            "{what}: failed as {kind:?}, not as a permanent decode failure: {}",
            outcome.message["error"]
        );
        assert_eq!(
            outcome.message["attempts"], 1,
            "{what}: failed on its first attempt"
        );
        let error = outcome.message["error"].as_str().unwrap();
        assert!(
            !error.is_empty() && !error.contains('\n'),
            "{what}: error {error:?}"
        );
    }
    match case.expect {
        Expect::Done => assert!(
            outcome.done,
            "{what}: must be done, failed as {kind}: {}",
            outcome.message["error"]
        ),
        Expect::Fails(wanted) => assert!(
            !outcome.done && kind == wanted,
            "{what}: must fail as {wanted}, got {}",
            if outcome.done {
                "done".to_string()
            } else {
                format!("{kind}: {}", outcome.message["error"])
            }
        ),
        Expect::Either => {}
    }
}

fn report_counts(group: &str, cases: &[Case], outcomes: &HashMap<String, Outcome>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for case in cases {
        let outcome = &outcomes[&case.id];
        let kind = if outcome.done {
            "done"
        } else {
            outcome.message["kind"].as_str().unwrap()
        };
        *counts.entry(kind).or_default() += 1;
    }
    let listed: Vec<String> = counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
    note(&format!(
        "sweep {group} ({}): {}",
        cases.len(),
        listed.join(" ")
    ));
}

/// The process's peak resident set (VmHWM), in bytes.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

/// Inputs made here, so that the sweep means something without the corpus.
fn generated_cases(dirs: &Dirs) -> Vec<Case> {
    let controls: Vec<(&str, Vec<u8>)> = vec![
        ("jpeg", jpeg(120, 80)),
        ("progressive_jpeg", progressive_jpeg(120, 80)),
        ("cmyk_jpeg", cmyk_jpeg(40, 30, [10, 60, 90, 20], false)),
        ("png", png_rgba(90, 60)),
        ("gif", gif_with((40, 30), (40, 30), &[])),
        ("webp", encoded(ImageFormat::WebP)),
        ("bmp", encoded(ImageFormat::Bmp)),
        ("tiff", encoded(ImageFormat::Tiff)),
    ];
    let mut made: Vec<(String, Vec<u8>, Expect)> = Vec::new();
    for (name, bytes) in &controls {
        made.push((format!("control_{name}"), bytes.clone(), Expect::Done));
        let half = bytes[..bytes.len() / 2].to_vec();
        made.push((format!("truncated_{name}"), half, Expect::Fails("corrupt")));
        for k in 1..=6 {
            let mut flipped = bytes.clone();
            flipped[bytes.len() * k / 7] ^= 0xFF;
            made.push((format!("flipped_{name}_{k}"), flipped, Expect::Either));
        }
    }
    made.extend(
        odd_inputs()
            .into_iter()
            .map(|(n, b, e)| (n.to_string(), b, e)),
    );
    made.into_iter()
        .map(|(name, bytes, expect)| Case {
            path: dirs.input_file(&name, &bytes),
            id: name.clone(),
            label: format!("generated {name}"),
            expect,
        })
        .collect()
}

fn odd_inputs() -> Vec<(&'static str, Vec<u8>, Expect)> {
    let png = png_rgba(16, 16);
    let mut bad_ihdr_crc = png.clone();
    bad_ihdr_crc[29] ^= 0x55;
    let mut png_random = png[..8].to_vec();
    png_random.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let text = png_chunk(b"tEXt", &[&b"Comment\0"[..], &vec![b'x'; 1 << 20]].concat());
    let mut ztxt = b"Comment\0\0".to_vec();
    ztxt.extend(zeros_zlib(64 << 20));
    vec![
        ("empty", Vec::new(), Expect::Fails("unsupported")),
        (
            "text_named_jpg",
            b"this is not an image".to_vec(),
            Expect::Fails("unsupported"),
        ),
        (
            "png_signature_then_noise",
            png_random,
            Expect::Fails("corrupt"),
        ),
        ("png_bad_ihdr_crc", bad_ihdr_crc, Expect::Fails("corrupt")),
        (
            "jpeg_sof_zero_width",
            with_jpeg_size(&jpeg(16, 16), 16, 0),
            Expect::Fails("corrupt"),
        ),
        (
            "jpeg_sof_40000_wide",
            with_jpeg_size(&jpeg(16, 16), 8, 40_000),
            Expect::Fails("too_large"),
        ),
        (
            "png_20_text_chunks_of_1mib",
            insert_after_ihdr(&png, &vec![text; 20]),
            Expect::Fails("too_large"),
        ),
        // Compressed text is never inflated, so a zTXt bomb costs only its own bytes.
        (
            "png_ztxt_of_64mib_zeros",
            insert_after_ihdr(&png, &[png_chunk(b"zTXt", &ztxt)]),
            Expect::Done,
        ),
        (
            "gif_frame_larger_than_screen",
            gif_with((16, 16), (300, 300), &[]),
            Expect::Done,
        ),
    ]
}

// ---- bombs ----

#[test]
fn header_and_metadata_bombs_fail_within_a_second_naming_the_limit_and_value() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let daemon = start_idle_daemon(&redis, &dirs, &mut conn);

    let sparse = dirs.input.join("sparse_256mib.png");
    fs::File::create(&sparse)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let bombs: Vec<(&str, PathBuf, &str, [&str; 2])> = vec![
        (
            "gif_screen_25000x25000",
            dirs.input_file("screen.gif", &gif_with((25_000, 25_000), (1, 1), &[])),
            "too_large",
            ["max_pixels", "625000000"],
        ),
        (
            "png_iccp_inflating_to_2gib",
            dirs.input_file("iccp.png", &iccp_bomb_png(2 << 30)),
            "too_large",
            ["max_metadata_bytes", "16777216"],
        ),
        (
            "png_20000x20000",
            dirs.input_file("big.png", &png_declaring(20_000, 20_000)),
            "too_large",
            ["max_pixels", "400000000"],
        ),
        (
            "jpeg_65535x65535",
            dirs.input_file("big.jpg", &with_jpeg_size(&jpeg(16, 16), 65_535, 65_535)),
            "too_large",
            ["max_side", "65535"],
        ),
        (
            "webp_lossless_16384x16384",
            dirs.input_file("big.webp", &webp_lossless_header(16_384, 16_384)),
            "too_large",
            ["max_pixels", "268435456"],
        ),
        (
            "sparse_256mib_png",
            sparse,
            "too_large",
            ["max_input_bytes", "268435456"],
        ),
    ];

    for (id, path, kind, wanted) in &bombs {
        let outcome = push_and_time(&mut conn, id, path);
        let elapsed = outcome.elapsed;
        note(&format!(
            "bomb {id}: {} in {elapsed:?}",
            outcome.message["kind"]
        ));
        assert!(!outcome.done, "{id} must fail");
        assert_eq!(
            outcome.message["kind"], *kind,
            "{id}: {}",
            outcome.message["error"]
        );
        let error = outcome.message["error"].as_str().unwrap();
        for w in wanted {
            assert!(error.contains(w), "{id}: error names {w}: {error}");
        }
        assert!(elapsed < BOMB_DEADLINE, "{id} took {elapsed:?}");
    }
    assert!(daemon.stop().success());
}

#[test]
fn ten_thousand_frame_gif_is_done_within_a_second_from_its_first_frame() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let daemon = start_idle_daemon(&redis, &dirs, &mut conn);

    // A red first frame over the whole screen, then 9,999 frames that would each turn the top
    // left pixel blue.
    let blue_pixel = one_pixel_gif_frame([0x4C, 0x01]);
    let bytes = gif_with((256, 256), (256, 256), &blue_pixel.repeat(9_999));
    let path = dirs.input_file("frames.gif", &bytes);
    let outcome = push_and_time(&mut conn, "frames", &path);
    let elapsed = outcome.elapsed;
    note(&format!(
        "10000-frame gif: done={} in {elapsed:?}",
        outcome.done
    ));

    assert!(outcome.done, "{}", outcome.message["error"]);
    assert!(elapsed < BOMB_DEADLINE, "took {elapsed:?}");
    let (w, h, pixels) = read_webp(&dirs.output.join("frames/frames_lq.webp"));
    assert_eq!((w, h), (256, 256));
    for p in pixels.chunks(4) {
        assert!(
            p[0] > 200 && p[2] < 60,
            "only the red first frame is shown, got {p:?}"
        );
    }
    assert!(daemon.stop().success());
}

/// Starts a daemon and waits until it has finished one small job, so that it is idle-waiting
/// on the queue when the caller pushes.
fn start_idle_daemon(redis: &RedisServer, dirs: &Dirs, conn: &mut redis::Connection) -> Daemon {
    let daemon = Daemon::start(redis, dirs, &[]);
    let warm = dirs.input_file("warm.png", &png_rgba(8, 8));
    let outcome = push_and_time(conn, "warm-up", &warm);
    assert!(outcome.done, "warm-up job: {}", outcome.message["error"]);
    daemon
}

/// Pushes one job and waits for its outcome, timing from the push.
fn push_and_time(conn: &mut redis::Connection, id: &str, path: &Path) -> Outcome {
    let mut seen = [
        redis::cmd("LLEN").arg("image_done").query(conn).unwrap(),
        redis::cmd("LLEN").arg("image_failed").query(conn).unwrap(),
    ];
    let pushed = Instant::now();
    push_job(conn, &job_json(id, path));
    loop {
        if let Some((done, message)) = new_outcomes(conn, &mut seen).into_iter().next() {
            let elapsed = pushed.elapsed();
            assert_eq!(message["id"], id);
            return Outcome {
                done,
                message,
                elapsed,
            };
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(60),
            "{id}: no outcome"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

// ---- fixtures ----

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(data);
    let crc = crc32fast::hash(&chunk[4..]);
    chunk.extend_from_slice(&crc.to_be_bytes());
    chunk
}

/// `png` with `chunks` inserted right after its IHDR chunk (signature, then 25 bytes of IHDR).
fn insert_after_ihdr(png: &[u8], chunks: &[Vec<u8>]) -> Vec<u8> {
    assert_eq!(&png[12..16], b"IHDR");
    [&png[..33], &chunks.concat(), &png[33..]].concat()
}

/// A PNG whose IHDR says `width`×`height` but whose data holds two rows.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(
            &vec![128; width as usize * 2],
            width,
            2,
            image::ExtendedColorType::L8,
        )
        .unwrap();
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// A 1×1 PNG with an iCCP chunk whose profile inflates to `profile_bytes` zeros.
fn iccp_bomb_png(profile_bytes: u64) -> Vec<u8> {
    let mut iccp = b"bomb\0\0".to_vec();
    iccp.extend(zeros_zlib(profile_bytes));
    insert_after_ihdr(&png_rgba(1, 1), &[png_chunk(b"iCCP", &iccp)])
}

/// Deflate output, least significant bit first.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    pending: u64,
    count: u32,
}

impl Bits {
    fn put(&mut self, value: u64, bits: u32) {
        self.pending |= value << self.count;
        self.count += bits;
        while self.count >= 8 {
            self.out.push(self.pending as u8);
            self.pending >>= 8;
            self.count -= 8;
        }
    }

    /// Huffman codes go out most significant bit first.
    fn put_code(&mut self, code: u64, bits: u32) {
        let reversed = (0..bits).fold(0, |r, i| (r << 1) | ((code >> i) & 1));
        self.put(reversed, bits);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.count > 0 {
            self.out.push(self.pending as u8);
        }
        self.out
    }
}

/// A zlib stream of `total` zero bytes, written by hand so that gigabytes cost no time: one
/// fixed-Huffman block of a literal zero and then matches of 258 bytes at distance 1, 13 bits
/// each.
fn zeros_zlib(total: u64) -> Vec<u8> {
    let mut bits = Bits::default();
    bits.put(1, 1); // final block
    bits.put(1, 2); // fixed Huffman codes
    let literal_zero = |bits: &mut Bits| bits.put_code(0x30, 8);
    literal_zero(&mut bits);
    let mut left = total - 1;
    while left >= 258 {
        bits.put_code(0xC5, 8); // length symbol 285: 258 bytes
        bits.put_code(0, 5); // distance symbol 0: 1 byte back
        left -= 258;
    }
    for _ in 0..left {
        literal_zero(&mut bits);
    }
    bits.put_code(0, 7); // end of block
    let adler = ((total % 65_521) << 16 | 1) as u32;
    [&[0x78, 0x01][..], &bits.finish(), &adler.to_be_bytes()].concat()
}

fn progressive_jpeg(width: u16, height: u16) -> Vec<u8> {
    let rgb = gradient_rgb(width.into(), height.into());
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, 90);
    encoder.set_progressive(true);
    encoder
        .encode(&rgb, width, height, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

/// `jpeg` with its SOF0 segment saying `height`×`width`.
fn with_jpeg_size(jpeg: &[u8], height: u16, width: u16) -> Vec<u8> {
    let mut bytes = jpeg.to_vec();
    let mut at = 2;
    while bytes[at + 1] != 0xC0 {
        at += 2 + u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
    }
    // Marker, length, precision, then height and width.
    bytes[at + 5..at + 7].copy_from_slice(&height.to_be_bytes());
    bytes[at + 7..at + 9].copy_from_slice(&width.to_be_bytes());
    bytes
}

/// The first image of a `format` file: a 48×32 gradient.
fn encoded(format: ImageFormat) -> Vec<u8> {
    let image = RgbImage::from_raw(48, 32, gradient_rgb(48, 32)).unwrap();
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image)
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

/// A GIF whose global palette is red (0) and blue (1) and whose first frame, `first` pixels of
/// red at the top left, is followed by the raw blocks `after_first`.
fn gif_with(screen: (u16, u16), first: (u16, u16), after_first: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder =
        gif::Encoder::new(&mut out, screen.0, screen.1, &[255, 0, 0, 0, 0, 255]).unwrap();
    let frame = gif::Frame {
        width: first.0,
        height: first.1,
        buffer: vec![0; first.0 as usize * first.1 as usize].into(),
        ..gif::Frame::default()
    };
    encoder.write_frame(&frame).unwrap();
    drop(encoder);
    assert_eq!(out.pop(), Some(0x3B), "the encoder ends with the trailer");
    out.extend_from_slice(after_first);
    out.push(0x3B);
    out
}

/// A 1×1 frame at the top left whose LZW data (two-bit minimum code size) is `lzw`:
/// `[0x4C, 0x01]` codes clear, palette index 1, end.
fn one_pixel_gif_frame(lzw: [u8; 2]) -> Vec<u8> {
    let mut block = vec![0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0];
    block.extend_from_slice(&[2, 2, lzw[0], lzw[1], 0]);
    block
}

/// A lossless WebP header of the given size with no image data after it.
fn webp_lossless_header(width: u32, height: u32) -> Vec<u8> {
    let bits = (width - 1) | ((height - 1) << 14);
    let mut chunk = b"VP8L".to_vec();
    chunk.extend_from_slice(&5u32.to_le_bytes());
    chunk.push(0x2f);
    chunk.extend_from_slice(&bits.to_le_bytes());
    chunk.push(0); // padding to an even size
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(4 + chunk.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(&chunk);
    out
}
