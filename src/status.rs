//! `image-worker status`: the queue and its consumers as Redis sees them now.
//!
//! It only reads. It shows the queue depth, the retry set with its next due time, outcome
//! counts with failures by kind, every live host (from its liveness key) with each consumer's
//! stage and the job it holds, the oldest claim and its age, and processing lists that still
//! hold a job although their host's liveness key has expired (work for `requeue-stuck`).
//!
//! Claim ages come from the `claimed_at` hash, written with the `claimed` stage right after the
//! claim. A job picked up again after a restart counts its age from that pick-up.
//!
//! # Limitations
//!
//! Failures by kind are counted over the newest [`FAILED_SCAN_LIMIT`] failed messages only, so
//! the command stays cheap on a list that nobody trims; the output says when it stopped short.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use redis::{Connection, RedisResult};
use serde_json::Value;

use crate::job::Job;
use crate::queue::Keys;

/// How many of the newest failed messages are read to count failures by kind.
pub const FAILED_SCAN_LIMIT: usize = 100_000;

const FAILED_SCAN_CHUNK: usize = 1000;

/// One consumer (worker thread) and what it holds.
#[derive(Debug)]
pub struct ConsumerView {
    pub id: String,
    pub stage: Option<String>,
    /// Ids of the jobs in its processing list (at most one while the invariant holds).
    pub held: Vec<String>,
    pub claimed_at_ms: Option<u64>,
}

/// A host whose liveness key exists.
#[derive(Debug)]
pub struct HostView {
    pub name: String,
    pub pid: Option<u64>,
    pub started_at_ms: Option<u64>,
    /// The backend the host runs, as it described it at start-up.
    pub backend: Option<String>,
    pub ttl_ms: i64,
    pub consumers: Vec<ConsumerView>,
}

/// Everything `status` prints.
#[derive(Debug)]
pub struct Status {
    pub now_ms: u64,
    pub waiting: u64,
    pub retrying: u64,
    pub next_due_ms: Option<u64>,
    pub done: u64,
    pub failed: u64,
    pub failed_by_kind: BTreeMap<String, u64>,
    pub failed_scanned: u64,
    pub hosts: Vec<HostView>,
    /// Consumers with a non-empty processing list whose host has no liveness key.
    pub stale: Vec<ConsumerView>,
}

/// Reads the status from Redis.
pub fn read(conn: &mut Connection, keys: &Keys, now_ms: u64) -> RedisResult<Status> {
    let (waiting, retrying, done, failed): (u64, u64, u64, u64) = redis::pipe()
        .cmd("LLEN")
        .arg(&keys.jobs)
        .cmd("ZCARD")
        .arg(&keys.retry)
        .cmd("LLEN")
        .arg(&keys.done)
        .cmd("LLEN")
        .arg(&keys.failed)
        .query(conn)?;
    let next: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(&keys.retry)
        .arg(0)
        .arg(0)
        .arg("WITHSCORES")
        .query(conn)?;
    let (failed_by_kind, failed_scanned) = failed_kinds(conn, keys)?;
    let (hosts, stale) = consumers(conn, keys)?;
    Ok(Status {
        now_ms,
        waiting,
        retrying,
        next_due_ms: next.first().map(|(_, score)| *score as u64),
        done,
        failed,
        failed_by_kind,
        failed_scanned,
        hosts,
        stale,
    })
}

/// Counts the newest failed messages by `kind`; returns the counts and how many were read.
fn failed_kinds(conn: &mut Connection, keys: &Keys) -> RedisResult<(BTreeMap<String, u64>, u64)> {
    let mut kinds = BTreeMap::new();
    let mut read = 0;
    while read < FAILED_SCAN_LIMIT {
        let chunk: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&keys.failed)
            .arg(read)
            .arg(read + FAILED_SCAN_CHUNK - 1)
            .query(conn)?;
        for message in &chunk {
            let kind = serde_json::from_slice::<Value>(message)
                .ok()
                .and_then(|v| v.get("kind").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| "unknown".into());
            *kinds.entry(kind).or_insert(0) += 1;
        }
        read += chunk.len();
        if chunk.len() < FAILED_SCAN_CHUNK {
            break;
        }
    }
    Ok((kinds, read as u64))
}

/// Live hosts with their consumers, and consumers of dead hosts that still hold jobs.
fn consumers(
    conn: &mut Connection,
    keys: &Keys,
) -> RedisResult<(Vec<HostView>, Vec<ConsumerView>)> {
    let lists = processing_lists(conn, keys)?;
    let list_prefix = keys.processing("");
    let mut by_host: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for list in &lists {
        let Some(consumer) = list.strip_prefix(&list_prefix) else {
            continue;
        };
        let host = consumer.rsplit_once(':').map_or(consumer, |(host, _)| host);
        by_host
            .entry(host.to_owned())
            .or_default()
            .push(consumer.to_owned());
    }
    let alive_prefix = keys.alive("");
    let live: BTreeSet<String> = scan(conn, &format!("{alive_prefix}*"))?
        .into_iter()
        .filter_map(|key| key.strip_prefix(&alive_prefix).map(str::to_owned))
        .collect();

    let mut hosts = Vec::new();
    let mut stale = Vec::new();
    for name in &live {
        let mut host = host_view(conn, keys, name)?;
        let mut ids: BTreeSet<String> = by_host
            .remove(name)
            .unwrap_or_default()
            .into_iter()
            .collect();
        ids.extend(host.consumers.drain(..).map(|c| c.id));
        for id in ids {
            host.consumers.push(consumer_view(conn, keys, &id)?);
        }
        hosts.push(host);
    }
    for id in by_host.into_values().flatten() {
        let view = consumer_view(conn, keys, &id)?;
        if !view.held.is_empty() {
            stale.push(view);
        }
    }
    Ok((hosts, stale))
}

/// A live host from its liveness key: JSON with pid, start time and consumer ids.
fn host_view(conn: &mut Connection, keys: &Keys, name: &str) -> RedisResult<HostView> {
    let key = keys.alive(name);
    let (value, ttl_ms): (Option<String>, i64) = redis::pipe()
        .cmd("GET")
        .arg(&key)
        .cmd("PTTL")
        .arg(&key)
        .query(conn)?;
    let alive: Value = value
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or(Value::Null);
    let consumers = alive["consumers"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_str).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|id| ConsumerView {
            id: id.to_owned(),
            stage: None,
            held: Vec::new(),
            claimed_at_ms: None,
        })
        .collect();
    Ok(HostView {
        name: name.to_owned(),
        pid: alive["pid"].as_u64(),
        started_at_ms: alive["started_at"].as_u64(),
        backend: alive["backend"].as_str().map(str::to_owned),
        ttl_ms,
        consumers,
    })
}

fn consumer_view(conn: &mut Connection, keys: &Keys, id: &str) -> RedisResult<ConsumerView> {
    let (held, stage, claimed_at): (Vec<Vec<u8>>, Option<String>, Option<u64>) = redis::pipe()
        .cmd("LRANGE")
        .arg(keys.processing(id))
        .arg(0)
        .arg(-1)
        .cmd("HGET")
        .arg(&keys.stages)
        .arg(id)
        .cmd("HGET")
        .arg(&keys.claimed_at)
        .arg(id)
        .query(conn)?;
    Ok(ConsumerView {
        id: id.to_owned(),
        stage,
        held: held
            .iter()
            .map(|raw| Job::parse(raw).map_or_else(|_| "?".into(), |job| job.id))
            .collect(),
        claimed_at_ms: claimed_at,
    })
}

/// The registered processing lists and any others that exist, sorted.
pub fn processing_lists(conn: &mut Connection, keys: &Keys) -> RedisResult<Vec<String>> {
    let mut lists: Vec<String> = redis::cmd("SMEMBERS").arg(&keys.consumers).query(conn)?;
    lists.extend(scan(conn, &keys.processing_pattern())?);
    lists.sort();
    lists.dedup();
    Ok(lists)
}

fn scan(conn: &mut Connection, pattern: &str) -> RedisResult<Vec<String>> {
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(500)
            .query(conn)?;
        found.extend(batch);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

impl Status {
    /// The oldest claim of a live or dead consumer: (consumer, job id, age in ms).
    pub fn oldest_claim(&self) -> Option<(&str, &str, u64)> {
        self.hosts
            .iter()
            .flat_map(|h| &h.consumers)
            .chain(&self.stale)
            .filter_map(|c| {
                let job = c.held.last()?;
                let at = c.claimed_at_ms?;
                Some((c.id.as_str(), job.as_str(), self.now_ms.saturating_sub(at)))
            })
            .max_by_key(|(_, _, age)| *age)
    }

    /// The text `status` prints; `redis_url` and `keys` name what was read.
    pub fn render(&self, redis_url: &str, keys: &Keys) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "redis       {redis_url}");
        let _ = writeln!(
            out,
            "queue       {:<32} {} waiting",
            keys.jobs, self.waiting
        );
        let due = self.next_due_ms.map_or_else(String::new, |due| {
            format!(
                " (next due in {})",
                seconds(due.saturating_sub(self.now_ms))
            )
        });
        let _ = writeln!(out, "retry       {:<32} {}{due}", keys.retry, self.retrying);
        let _ = writeln!(out, "done        {:<32} {}", keys.done, self.done);
        let _ = writeln!(
            out,
            "failed      {:<32} {}{}",
            keys.failed,
            self.failed,
            self.kinds()
        );
        let _ = writeln!(out, "hosts       {} live", self.hosts.len());
        for host in &self.hosts {
            self.render_host(&mut out, host);
        }
        match self.oldest_claim() {
            Some((consumer, job, age)) => {
                let _ = writeln!(
                    out,
                    "oldest      job {job} held by {consumer}, claimed {} ago",
                    seconds(age)
                );
            }
            None => out.push_str("oldest      no claimed job\n"),
        }
        for consumer in &self.stale {
            let _ = writeln!(
                out,
                "stale       {} holds {} but its host has no liveness key (run \
                 image-worker-requeue-stuck)",
                keys.processing(&consumer.id),
                consumer.held.join(" ")
            );
        }
        out
    }

    fn kinds(&self) -> String {
        if self.failed_by_kind.is_empty() {
            return String::new();
        }
        let kinds: Vec<String> = self
            .failed_by_kind
            .iter()
            .map(|(kind, count)| format!("{kind}={count}"))
            .collect();
        let newest = if self.failed_scanned < self.failed {
            format!(" (newest {})", self.failed_scanned)
        } else {
            String::new()
        };
        format!(": {}{newest}", kinds.join(" "))
    }

    fn render_host(&self, out: &mut String, host: &HostView) {
        let pid = host.pid.map_or_else(|| "?".into(), |p| p.to_string());
        let up = host
            .started_at_ms
            .map_or_else(|| "?".into(), |at| seconds(self.now_ms.saturating_sub(at)));
        let _ = writeln!(
            out,
            "host        {}  pid {pid}  up {up}  liveness expires in {}",
            host.name,
            seconds(host.ttl_ms.max(0) as u64)
        );
        if let Some(backend) = &host.backend {
            let _ = writeln!(out, "  backend   {backend}");
        }
        for consumer in &host.consumers {
            let stage = consumer.stage.as_deref().unwrap_or("idle");
            let held = match (consumer.held.last(), consumer.claimed_at_ms) {
                (None, _) => "no job".to_owned(),
                (Some(job), Some(at)) => {
                    format!(
                        "job {job} claimed {} ago",
                        seconds(self.now_ms.saturating_sub(at))
                    )
                }
                (Some(job), None) => format!("job {job}"),
            };
            let _ = writeln!(out, "  consumer  {:<24} {stage:<8} {held}", consumer.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(id: &str, held: &[&str], claimed_at_ms: Option<u64>) -> ConsumerView {
        ConsumerView {
            id: id.into(),
            stage: Some("decode".into()),
            held: held.iter().map(|s| s.to_string()).collect(),
            claimed_at_ms,
        }
    }

    fn status(hosts: Vec<HostView>, stale: Vec<ConsumerView>) -> Status {
        Status {
            now_ms: 100_000,
            waiting: 0,
            retrying: 0,
            next_due_ms: None,
            done: 0,
            failed: 3,
            failed_by_kind: BTreeMap::from([("corrupt".into(), 2), ("invalid".into(), 1)]),
            failed_scanned: 3,
            hosts,
            stale,
        }
    }

    #[test]
    fn oldest_claim_is_the_earliest_claimed_at_of_any_held_job() {
        let host = HostView {
            name: "h".into(),
            pid: Some(7),
            started_at_ms: Some(1000),
            backend: None,
            ttl_ms: 20_000,
            consumers: vec![
                consumer("h:0", &["young"], Some(99_000)),
                consumer("h:1", &[], Some(1)),
            ],
        };
        let dead = consumer("d:0", &["old"], Some(40_000));
        let status = status(vec![host], vec![dead]);
        assert_eq!(status.oldest_claim(), Some(("d:0", "old", 60_000)));
        let keys = Keys::new(&crate::config::KeyNaming {
            prefix: "image".into(),
            hash_tag: false,
        });
        let text = status.render("redis://x", &keys);
        assert!(
            text.contains("job old held by d:0, claimed 60.0 s ago"),
            "{text}"
        );
        assert!(text.contains("3: corrupt=2 invalid=1"), "{text}");
        assert!(text.contains("job young claimed 1.0 s ago"), "{text}");
    }
}
