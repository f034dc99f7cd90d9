//! `/metrics` and `/healthz` of a running daemon: exact outcome counts with their labels, output
//! that a strict Prometheus text parser accepts, and health that follows Redis.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict reader of the Prometheus text format (0.0.4): every sample belongs to a family
/// declared by `# TYPE` before it, names and labels are well formed, no series appears twice,
/// histogram buckets are cumulative and end in `+Inf` equal to `_count`.
fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    if !text.ends_with('\n') {
        return Err("output does not end with a newline".into());
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped: BTreeSet<String> = BTreeSet::new();
    let mut series: BTreeSet<String> = BTreeSet::new();
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let at = |reason: String| format!("line {}: {reason}: {line:?}", number + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            parse_comment(rest, &mut types, &mut helped).map_err(at)?;
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(at("empty line or malformed comment".into()));
        }
        let sample = parse_sample(line).map_err(at)?;
        let family = family_of(&sample.name, &types)
            .ok_or_else(|| at("sample without a # TYPE for its family".into()))?;
        if types[&family] == "histogram"
            && sample.name.ends_with("_bucket")
            && !sample.labels.contains_key("le")
        {
            return Err(at("histogram bucket without le".into()));
        }
        if !series.insert(format!("{}{:?}", sample.name, sample.labels)) {
            return Err(at("series appears twice".into()));
        }
        samples.push(sample);
    }
    check_histograms(&samples, &types)?;
    Ok(samples)
}

fn parse_comment(
    rest: &str,
    types: &mut BTreeMap<String, String>,
    helped: &mut BTreeSet<String>,
) -> Result<(), String> {
    let mut words = rest.splitn(3, ' ');
    let (keyword, name, tail) = (
        words.next().unwrap_or(""),
        words.next().unwrap_or(""),
        words.next().unwrap_or(""),
    );
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    match keyword {
        "TYPE" => {
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&tail) {
                return Err(format!("unknown type {tail:?}"));
            }
            if types.insert(name.to_owned(), tail.to_owned()).is_some() {
                return Err(format!("second TYPE for {name}"));
            }
        }
        "HELP" => {
            if !helped.insert(name.to_owned()) {
                return Err(format!("second HELP for {name}"));
            }
        }
        _ => return Err(format!("unknown comment keyword {keyword:?}")),
    }
    Ok(())
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .split(' ');
    let value = parse_value(fields.next().unwrap_or(""))?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `a="x",b="y"}` and returns the labels and what follows the closing brace.
fn parse_labels(mut text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(after) = text.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = text.find('=').ok_or("label without =")?;
        let name = &text[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = text[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err("label value not quoted".into());
        }
        let mut value = String::new();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break eq + 1 + i + 1,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, '\n') => return Err("newline in label value".into()),
                (_, c) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        text = &text[end..];
        if let Some(after) = text.strip_prefix(',') {
            text = after;
        } else if !text.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().map_err(|_| format!("bad value {text:?}")),
    }
}

/// The declared family a sample belongs to: its own name, or a histogram's or summary's base.
fn family_of(name: &str, types: &BTreeMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        matches!(
            types.get(base).map(String::as_str),
            Some("histogram" | "summary")
        )
        .then(|| base.to_owned())
    })
}

fn check_histograms(samples: &[Sample], types: &BTreeMap<String, String>) -> Result<(), String> {
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        let bucket_name = format!("{family}_bucket");
        let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for sample in samples.iter().filter(|s| s.name == bucket_name) {
            let mut labels = sample.labels.clone();
            let le = parse_value(&labels.remove("le").unwrap())?;
            by_series
                .entry(format!("{labels:?}"))
                .or_default()
                .push((le, sample.value));
        }
        for (labels, buckets) in by_series {
            if buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
                return Err(format!("{family}{labels}: buckets do not end in +Inf"));
            }
            if buckets
                .windows(2)
                .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
            {
                return Err(format!("{family}{labels}: buckets not cumulative"));
            }
            let count = samples
                .iter()
                .find(|s| {
                    s.name == format!("{family}_count") && format!("{:?}", s.labels) == labels
                })
                .ok_or_else(|| format!("{family}{labels}: no _count"))?;
            if count.value != buckets.last().unwrap().1 {
                return Err(format!("{family}{labels}: +Inf bucket differs from _count"));
            }
        }
    }
    Ok(())
}

#[test]
fn strict_parser_refuses_malformed_text() {
    let good = "# TYPE a counter\na{k=\"v\"} 1\n";
    assert!(parse_prometheus(good).is_ok());
    for bad in [
        "a 1\n",
        "# TYPE a counter\na{k=v} 1\n",
        "# TYPE a counter\na 1\na 2\n",
        "# TYPE a counter\na one\n",
        "# TYPE a counter\na 1",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
    ] {
        assert!(parse_prometheus(bad).is_err(), "{bad:?}");
    }
}

/// One HTTP GET; returns the status code and the body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))?
        .parse()
        .ok()?;
    assert_eq!(length, body.len(), "Content-Length matches the body");
    Some((status, body.to_owned()))
}

/// Polls `path` until `accept` takes the answer, or panics after `timeout`.
fn wait_for(
    port: u16,
    path: &str,
    timeout: Duration,
    accept: impl Fn(u16, &str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((status, body)) = get(port, path) {
            if accept(status, &body) {
                return body;
            }
            last = Some((status, body));
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("GET {path}: no acceptable answer within {timeout:?}; last: {last:?}");
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn outcomes_total(samples: &[Sample]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == "image_worker_jobs_total")
        .map(|s| s.value)
        .sum()
}

/// The gauges of an idle CPU daemon after three done jobs that carried `enqueued_at`.
fn assert_idle_cpu_gauges(samples: &[Sample]) {
    assert_eq!(
        value(samples, "image_worker_queue_wait_seconds_count", &[]),
        Some(3.0)
    );
    assert_eq!(
        value(samples, "image_worker_retries_total", &[("kind", "read")]),
        Some(0.0)
    );
    assert_eq!(
        value(samples, "image_worker_jobs_in_flight", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(samples, "image_worker_retry_set_size", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(samples, "image_worker_backend_channel_depth", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(samples, "image_worker_backend_info", &[("backend", "cpu")]),
        Some(1.0)
    );
    assert_eq!(
        value(samples, "image_worker_device_memory_used_bytes", &[]),
        None,
        "no device memory on the cpu backend"
    );
    assert!(value(samples, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 1e6));
}

#[test]
fn metrics_count_exactly_the_settled_jobs_with_their_labels() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let mut conn = redis.conn();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for i in 0..3 {
        let input = dirs.input_file(&format!("good{i}.jpg"), &jpeg(96, 64));
        let payload =
            serde_json::json!({"id": format!("good{i}"), "input": input, "enqueued_at": now});
        push_job(&mut conn, &payload.to_string());
    }
    let whole = jpeg(256, 256);
    let truncated = dirs.input_file("cut.jpg", &whole[..whole.len() / 2]);
    push_job(&mut conn, &job_json("cut", &truncated));
    let text = dirs.input_file("notes.jpg", b"this is not an image at all");
    push_job(&mut conn, &job_json("notes", &text));
    push_job(&mut conn, "{\"id\": \"no/slashes\", \"input\": \"/x.jpg\"}");
    let jobs = 6.0;

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&redis, &dirs, &["--metrics-addr", &addr]);
    wait_for_outcomes(&mut conn, 6, Duration::from_secs(60));
    let body = wait_for(port, "/metrics", Duration::from_secs(10), |status, body| {
        status == 200
            && parse_prometheus(body).is_ok_and(|s| {
                outcomes_total(&s) >= jobs
                    && value(&s, "image_worker_queue_depth", &[]) == Some(0.0)
            })
    });
    let samples = parse_prometheus(&body).unwrap();

    assert_eq!(
        outcomes_total(&samples),
        jobs,
        "exactly N outcomes:\n{body}"
    );
    let jobs_total = "image_worker_jobs_total";
    for (labels, expected) in [
        (&[("outcome", "done"), ("kind", "none")], 3.0),
        (&[("outcome", "failed"), ("kind", "corrupt")], 1.0),
        (&[("outcome", "failed"), ("kind", "unsupported")], 1.0),
        (&[("outcome", "failed"), ("kind", "invalid")], 1.0),
        (&[("outcome", "failed"), ("kind", "exhausted")], 0.0),
    ] {
        assert_eq!(
            value(&samples, jobs_total, labels),
            Some(expected),
            "{labels:?}\n{body}"
        );
    }
    for stage in ["read", "decode", "gpu", "encode", "write"] {
        let count = value(
            &samples,
            "image_worker_stage_seconds_count",
            &[("stage", stage)],
        );
        assert_eq!(count, Some(3.0), "stage {stage} timed once per done job");
    }
    for call in ["claim", "settle"] {
        let labels = [("call", call)];
        let count = value(&samples, "image_worker_redis_call_seconds_count", &labels);
        assert_eq!(count, Some(jobs), "redis {call} timed once per job\n{body}");
        let sum = value(&samples, "image_worker_redis_call_seconds_sum", &labels).unwrap();
        assert!(
            sum > 0.0 && sum < jobs,
            "redis {call} took {sum} s for {jobs} jobs"
        );
    }
    assert_idle_cpu_gauges(&samples);

    // Nothing is counted twice on a later scrape.
    thread::sleep(Duration::from_millis(300));
    let again = parse_prometheus(&get(port, "/metrics").unwrap().1).unwrap();
    assert_eq!(outcomes_total(&again), jobs);
    assert_eq!(get(port, "/nothing-here").map(|(s, _)| s), Some(404));
    assert!(daemon.stop().success());
}

#[test]
fn healthz_follows_redis_reachability() {
    let mut redis = RedisServer::start();
    let dirs = Dirs::new();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&redis, &dirs, &["--metrics-addr", &addr]);

    let ok = wait_for(port, "/healthz", Duration::from_secs(10), |s, _| s == 200);
    assert_eq!(ok, "ok\n");
    redis.kill();
    let down = wait_for(port, "/healthz", Duration::from_secs(20), |s, _| s == 503);
    assert!(down.contains("redis has not answered"), "{down}");
    let metrics = get(port, "/metrics").unwrap().1;
    assert!(metrics.contains("\nimage_worker_healthy 0\n"), "{metrics}");

    redis.restart();
    wait_for(port, "/healthz", Duration::from_secs(20), |s, _| s == 200);
    assert!(daemon.stop().success());
}

#[test]
fn metrics_address_in_use_stops_the_start_up() {
    let redis = RedisServer::start();
    let dirs = Dirs::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut daemon = Daemon::start(&redis, &dirs, &["--metrics-addr", &addr]);
    let status = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
}
