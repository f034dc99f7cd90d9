//! The Redis reliable queue.
//!
//! A worker claims a job with `BRPOPLPUSH image_jobs image_jobs:processing:{consumer}`, so the
//! payload is never only in the worker's memory: until the outcome is written it sits in the
//! worker's own processing list, where a restarted worker (same consumer id) finds it again.
//! Every outcome — done, retry, failed — is written in one `MULTI`/`EXEC` together with the
//! `LREM` of the claimed payload, guarded by `WATCH` on the processing list and a check that the
//! payload is still there. A job is therefore never both settled and claimed, and an outcome
//! whose reply was lost with a dropped connection is not written twice on the retry.
//!
//! Retries wait in the `image_retry` sorted set (score: due time in ms) and are moved back to
//! `image_jobs` by an atomic script when due.
//!
//! Every call goes through [`Queue::call`], which survives a dropped connection: it reconnects
//! with capped exponential backoff and logs once per change of the link's state for the whole
//! process, not once per try.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use redis::{Connection, RedisResult, Script};

use crate::config::{KeyNaming, RetryPolicy};

/// How long one `BRPOPLPUSH` blocks, so that the stop flag is seen at least this often.
pub const CLAIM_BLOCK: Duration = Duration::from_secs(1);

/// The read timeout of every connection: longer than the block, so a blocked claim is never
/// mistaken for a dead server.
const READ_TIMEOUT: Duration = Duration::from_secs(4);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The names of every key of one deployment, derived from one prefix.
///
/// With the default prefix `image` they are the design's names: `image_jobs`,
/// `image_jobs:processing:{consumer}`, `image_retry`, `image_done`, `image_failed`. With the hash
/// tag option the prefix is written `{image}`, so Redis Cluster puts every key in one slot and
/// the transactions and scripts that touch two keys stay legal.
#[derive(Clone, Debug)]
pub struct Keys {
    pub jobs: String,
    pub retry: String,
    pub done: String,
    pub failed: String,
    /// The set of every processing list ever registered by a worker.
    pub consumers: String,
    /// Hash: consumer id → the stage its current job last reached.
    pub stages: String,
    /// Hash: raw payload → how many times it was recovered after its worker died.
    pub recoveries: String,
    /// Hash: raw payload → the stage it had reached when its worker died.
    pub last_stage: String,
    /// Hash: consumer id → when it claimed the job it holds (ms since the epoch).
    pub claimed_at: String,
    prefix: String,
}

impl Keys {
    pub fn new(naming: &KeyNaming) -> Keys {
        let prefix = if naming.hash_tag {
            format!("{{{}}}", naming.prefix)
        } else {
            naming.prefix.clone()
        };
        Keys {
            jobs: format!("{prefix}_jobs"),
            retry: format!("{prefix}_retry"),
            done: format!("{prefix}_done"),
            failed: format!("{prefix}_failed"),
            consumers: format!("{prefix}_worker:consumers"),
            stages: format!("{prefix}_worker:stage"),
            recoveries: format!("{prefix}_worker:recoveries"),
            last_stage: format!("{prefix}_worker:last_stage"),
            claimed_at: format!("{prefix}_worker:claimed_at"),
            prefix,
        }
    }

    /// The processing list of one consumer.
    pub fn processing(&self, consumer: &str) -> String {
        format!("{}_jobs:processing:{consumer}", self.prefix)
    }

    /// The liveness key of one host.
    pub fn alive(&self, hostname: &str) -> String {
        format!("{}_worker:alive:{hostname}", self.prefix)
    }

    /// The pattern matching every processing list.
    pub fn processing_pattern(&self) -> String {
        // A hash tag's braces are literal in a pattern except for glob characters, which the
        // prefix charset excludes.
        format!("{}_jobs:processing:*", self.prefix)
    }
}

/// A stable consumer id: the same host and worker index give the same id after a restart.
pub fn consumer_id(hostname: &str, index: usize) -> String {
    format!("{hostname}:{index}")
}

/// A Redis call that failed even after reconnecting, or was abandoned because the worker is
/// stopping.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis call abandoned while stopping: {0}")]
    Stopping(String),
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Whether the link to Redis is down, as last logged by any thread of this process.
static LINK_DOWN: AtomicBool = AtomicBool::new(false);

fn note_link_down(url: &str, err: &redis::RedisError) {
    if !LINK_DOWN.swap(true, Ordering::SeqCst) {
        log::warn!("redis unreachable url={url} error=\"{err}\"; retrying with backoff");
    }
}

fn note_link_up(url: &str) {
    if LINK_DOWN.swap(false, Ordering::SeqCst) {
        log::info!("redis reachable again url={url}");
    }
}

/// A claimed job.
#[derive(Debug)]
pub struct Claim {
    pub payload: Vec<u8>,
    /// Whether Redis held recovery counts for any job when this one was claimed; when not,
    /// this job has none ([`Queue::recovery`] would answer 0).
    pub may_be_recovered: bool,
}

/// How a settle call ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    /// The outcome was written and the claim removed, in one transaction.
    Written,
    /// The claimed payload was no longer in the processing list: an earlier try of this same
    /// write committed before its reply was lost, or the job was moved back to the queue by
    /// `requeue-stuck`. Nothing was written.
    AlreadyGone,
}

/// The outcome of a job, as written to Redis.
pub enum Outcome<'a> {
    Done(&'a str),
    Failed(&'a str),
    RetryAt { payload: &'a str, due_ms: u64 },
}

/// One worker's connection to the queue.
pub struct Queue {
    client: redis::Client,
    url: String,
    conn: Option<Connection>,
    pub keys: Keys,
    processing: String,
    /// Set when a new connection replaced a failed one (and at start): the processing list
    /// may then hold a job this worker has not seen, so it must be scanned.
    reconnected: bool,
    /// Replies of commands sent without waiting ([`Queue::mark_stage`]), read before the
    /// next call.
    unread_replies: usize,
}

impl Queue {
    /// A queue for `consumer`; no connection is made until the first call.
    pub fn new(url: &str, naming: &KeyNaming, consumer: &str) -> Result<Queue, QueueError> {
        let keys = Keys::new(naming);
        // Stage marks are written without waiting for their replies; with Nagle's algorithm
        // the next call would then wait for the server to acknowledge them first.
        let info = redis::IntoConnectionInfo::into_connection_info(url)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        Ok(Queue {
            client: redis::Client::open(info)?,
            url: url.to_owned(),
            conn: None,
            processing: keys.processing(consumer),
            keys,
            reconnected: true,
            unread_replies: 0,
        })
    }

    pub fn processing_key(&self) -> &str {
        &self.processing
    }

    /// Whether the processing list must be scanned for orphans; clears the mark.
    pub fn take_reconnected(&mut self) -> bool {
        std::mem::take(&mut self.reconnected)
    }

    /// Runs `op`, reconnecting and retrying with backoff until it succeeds or `stopping`
    /// says to give up. Errors of the server itself (a wrong type, a script error) are retried
    /// the same way: they need an operator, and the job must not be lost meanwhile.
    pub fn call<T>(
        &mut self,
        stopping: &dyn Fn() -> bool,
        mut op: impl FnMut(&mut Connection, &Keys, &str) -> RedisResult<T>,
    ) -> Result<T, QueueError> {
        self.call_behind(stopping, |conn, keys, processing, unread| {
            read_unread(conn, unread)?;
            op(conn, keys, processing)
        })
    }

    /// [`Queue::call`] for an `op` that reads the replies still owed for commands sent without
    /// waiting ([`Queue::mark_stage`]) itself, after sending its own first command, so that
    /// both travel in one round trip (see [`send_behind`]).
    fn call_behind<T>(
        &mut self,
        stopping: &dyn Fn() -> bool,
        mut op: impl FnMut(&mut Connection, &Keys, &str, &mut usize) -> RedisResult<T>,
    ) -> Result<T, QueueError> {
        let mut delay = BACKOFF_FIRST;
        loop {
            let connected = connect(&self.client, &mut self.conn, &mut self.reconnected);
            let err = match connected {
                Ok(conn) => {
                    match op(conn, &self.keys, &self.processing, &mut self.unread_replies) {
                        Ok(value) => {
                            note_link_up(&self.url);
                            return Ok(value);
                        }
                        Err(err) => err,
                    }
                }
                Err(err) => err,
            };
            // A connection that saw any error may hold half a reply or a WATCH: start afresh.
            self.conn = None;
            self.unread_replies = 0;
            note_link_down(&self.url, &err);
            if stopping() {
                return Err(QueueError::Stopping(err.to_string()));
            }
            thread::sleep(delay);
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }

    /// Waits until Redis answers a PING.
    pub fn ping(&mut self, stopping: &dyn Fn() -> bool) -> Result<(), QueueError> {
        self.call(stopping, |conn, _, _| {
            redis::cmd("PING").query::<String>(conn).map(drop)
        })
    }

    /// Registers this worker's processing list in the consumers set.
    pub fn register(&mut self, stopping: &dyn Fn() -> bool) -> Result<(), QueueError> {
        self.call(stopping, |conn, keys, processing| {
            redis::cmd("SADD")
                .arg(&keys.consumers)
                .arg(processing)
                .query::<()>(conn)
        })
    }

    /// Blocks up to [`CLAIM_BLOCK`] for a job and moves it into this worker's processing list.
    ///
    /// The same round trip asks whether any job at all has recoveries recorded (`HLEN`, run
    /// by Redis right after the claim): when none has, the claimed one has none either, and
    /// the poison check needs no round trip of its own.
    pub fn claim(&mut self, stopping: &dyn Fn() -> bool) -> Result<Option<Claim>, QueueError> {
        self.call_behind(stopping, |conn, keys, processing, unread| {
            let mut claim = redis::pipe();
            claim
                .cmd("BRPOPLPUSH")
                .arg(&keys.jobs)
                .arg(processing)
                .arg(CLAIM_BLOCK.as_secs())
                .cmd("HLEN")
                .arg(&keys.recoveries);
            let (payload, recovered): (Option<Vec<u8>>, u64) = send_behind(conn, unread, &claim)?;
            Ok(payload.map(|payload| Claim {
                payload,
                may_be_recovered: recovered > 0,
            }))
        })
    }

    /// The payloads in this worker's processing list, oldest claim first.
    pub fn orphans(&mut self, stopping: &dyn Fn() -> bool) -> Result<Vec<Vec<u8>>, QueueError> {
        let mut held: Vec<Vec<u8>> = self.call(stopping, |conn, _, processing| {
            redis::cmd("LRANGE")
                .arg(processing)
                .arg(0)
                .arg(-1)
                .query(conn)
        })?;
        // Claims are pushed at the head, so the oldest is last.
        held.reverse();
        Ok(held)
    }

    /// Writes `outcome` for the claimed `raw` payload and removes the claim, atomically.
    pub fn settle(
        &mut self,
        raw: &[u8],
        outcome: &Outcome<'_>,
        stopping: &dyn Fn() -> bool,
    ) -> Result<Settled, QueueError> {
        self.call_behind(stopping, |conn, keys, processing, unread| {
            settle_once(conn, keys, processing, raw, outcome, unread)
        })
    }

    /// How often `raw` was recovered after its worker died, and the stage it had reached.
    pub fn recovery(
        &mut self,
        raw: &[u8],
        stopping: &dyn Fn() -> bool,
    ) -> Result<(u32, Option<String>), QueueError> {
        self.call_behind(stopping, |conn, keys, _, unread| {
            let mut read = redis::pipe();
            read.cmd("HGET")
                .arg(&keys.recoveries)
                .arg(raw)
                .cmd("HGET")
                .arg(&keys.last_stage)
                .arg(raw);
            let (count, stage): (Option<u32>, Option<String>) = send_behind(conn, unread, &read)?;
            Ok((count.unwrap_or(0), stage))
        })
    }

    /// Counts one more recovery of `raw`, which had reached `stage`; returns the new count.
    pub fn note_recovery(
        &mut self,
        raw: &[u8],
        stage: Option<&str>,
        stopping: &dyn Fn() -> bool,
    ) -> Result<u32, QueueError> {
        self.call(stopping, |conn, keys, _| {
            let mut tx = redis::pipe();
            tx.atomic()
                .cmd("HINCRBY")
                .arg(&keys.recoveries)
                .arg(raw)
                .arg(1);
            if let Some(stage) = stage {
                tx.cmd("HSET")
                    .arg(&keys.last_stage)
                    .arg(raw)
                    .arg(stage)
                    .ignore();
            }
            let (count,): (u32,) = tx.query(conn)?;
            Ok(count)
        })
    }

    /// The stage this consumer's job had reached, as last recorded (by a previous process
    /// with the same consumer id, when read at start-up).
    pub fn recorded_stage(
        &mut self,
        consumer: &str,
        stopping: &dyn Fn() -> bool,
    ) -> Result<Option<String>, QueueError> {
        self.call(stopping, |conn, keys, _| {
            redis::cmd("HGET")
                .arg(&keys.stages)
                .arg(consumer)
                .query(conn)
        })
    }

    /// Records the stage `consumer`'s job has reached, without waiting for the reply: the
    /// command is on its way to Redis before the next step of the job starts, so a crash in that
    /// step still leaves the stage recorded, at no round trip per stage. The `claimed` stage
    /// also records the claim time, in the same write. Best effort: without a connection,
    /// nothing is recorded.
    pub fn mark_stage(&mut self, consumer: &str, stage: &str) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let mut commands = redis::pipe();
        commands
            .cmd("HSET")
            .arg(&self.keys.stages)
            .arg(consumer)
            .arg(stage);
        if stage == "claimed" {
            commands
                .cmd("HSET")
                .arg(&self.keys.claimed_at)
                .arg(consumer)
                .arg(crate::job::now_ms());
        }
        let sent = commands.len();
        match conn.send_packed_command(&commands.get_packed_pipeline()) {
            Ok(()) => self.unread_replies += sent,
            Err(_) => {
                self.conn = None;
                self.unread_replies = 0;
            }
        }
    }

    /// Sets this host's liveness key to `value` for `ttl`.
    pub fn refresh_alive(
        &mut self,
        hostname: &str,
        value: &str,
        ttl: Duration,
        stopping: &dyn Fn() -> bool,
    ) -> Result<(), QueueError> {
        let ttl_ms = ttl.as_millis() as u64;
        self.call(stopping, |conn, keys, _| {
            redis::cmd("SET")
                .arg(keys.alive(hostname))
                .arg(value)
                .arg("PX")
                .arg(ttl_ms)
                .query::<()>(conn)
        })
    }

    /// Removes this host's liveness key, after a clean stop.
    pub fn clear_alive(&mut self, hostname: &str) -> Result<(), QueueError> {
        self.call(&|| true, |conn, keys, _| {
            redis::cmd("DEL")
                .arg(keys.alive(hostname))
                .query::<()>(conn)
        })
    }

    /// The server's `maxmemory-policy`, if it tells (the command may be renamed away).
    pub fn eviction_policy(&mut self) -> Option<String> {
        self.call(&|| true, |conn, _, _| {
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory-policy")
                .query::<Vec<String>>(conn)
        })
        .ok()
        .and_then(|pair| pair.into_iter().nth(1))
    }

    /// The number of waiting jobs and of jobs in the retry set.
    pub fn depths(&mut self, stopping: &dyn Fn() -> bool) -> Result<(u64, u64), QueueError> {
        self.call(stopping, |conn, keys, _| {
            redis::pipe()
                .cmd("LLEN")
                .arg(&keys.jobs)
                .cmd("ZCARD")
                .arg(&keys.retry)
                .query(conn)
        })
    }

    /// Moves up to `limit` retries that are due by `now_ms` back to the job queue.
    pub fn promote_due(
        &mut self,
        now_ms: u64,
        limit: usize,
        stopping: &dyn Fn() -> bool,
    ) -> Result<usize, QueueError> {
        let script = Script::new(PROMOTE_SCRIPT);
        self.call(stopping, |conn, keys, _| {
            script
                .key(&keys.retry)
                .key(&keys.jobs)
                .arg(now_ms)
                .arg(limit)
                .invoke(conn)
        })
    }
}

/// Reads the replies of commands sent without waiting.
fn read_unread(conn: &mut Connection, unread: &mut usize) -> RedisResult<()> {
    while *unread > 0 {
        conn.recv_response()?;
        *unread -= 1;
    }
    Ok(())
}

/// Sends `commands`, then reads the `unread` replies still owed for earlier commands (sent
/// without waiting, and answered in order before these) and then the replies of `commands`.
/// A stage mark sent just before a call thus costs no round trip of its own: its reply comes
/// back with the call's.
fn send_behind<T: redis::FromRedisValue>(
    conn: &mut Connection,
    unread: &mut usize,
    commands: &redis::Pipeline,
) -> RedisResult<T> {
    conn.send_packed_command(&commands.get_packed_pipeline())?;
    read_unread(conn, unread)?;
    let replies = (0..commands.len())
        .map(|_| conn.recv_response())
        .collect::<RedisResult<Vec<_>>>()?;
    redis::from_redis_value(redis::Value::Array(replies)).map_err(Into::into)
}

/// The open connection, or a new one; a new one marks the processing list for a scan.
fn connect<'c>(
    client: &redis::Client,
    slot: &'c mut Option<Connection>,
    reconnected: &mut bool,
) -> RedisResult<&'c mut Connection> {
    if slot.is_none() {
        let conn = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(READ_TIMEOUT))?;
        conn.set_write_timeout(Some(READ_TIMEOUT))?;
        *slot = Some(conn);
        *reconnected = true;
    }
    Ok(slot.as_mut().expect("connected above"))
}

/// One optimistic transaction; retried from the top when `EXEC` is aborted by a change of the
/// watched processing list.
fn settle_once(
    conn: &mut Connection,
    keys: &Keys,
    processing: &str,
    raw: &[u8],
    outcome: &Outcome<'_>,
    unread: &mut usize,
) -> RedisResult<Settled> {
    loop {
        let mut check = redis::pipe();
        check
            .cmd("WATCH")
            .arg(processing)
            .cmd("LPOS")
            .arg(processing)
            .arg(raw);
        let ((), position): ((), Option<i64>) = send_behind(conn, unread, &check)?;
        if position.is_none() {
            redis::cmd("UNWATCH").query::<()>(conn)?;
            return Ok(Settled::AlreadyGone);
        }
        let mut tx = redis::pipe();
        tx.atomic();
        match outcome {
            Outcome::Done(message) => tx.cmd("LPUSH").arg(&keys.done).arg(*message).ignore(),
            Outcome::Failed(message) => tx.cmd("LPUSH").arg(&keys.failed).arg(*message).ignore(),
            Outcome::RetryAt { payload, due_ms } => tx
                .cmd("ZADD")
                .arg(&keys.retry)
                .arg(*due_ms)
                .arg(*payload)
                .ignore(),
        };
        tx.cmd("LREM").arg(processing).arg(1).arg(raw).ignore();
        tx.cmd("HDEL").arg(&keys.recoveries).arg(raw).ignore();
        tx.cmd("HDEL").arg(&keys.last_stage).arg(raw).ignore();
        let committed: Option<()> = tx.query(conn)?;
        if committed.is_some() {
            return Ok(Settled::Written);
        }
    }
}

/// Moves due members of the retry set to the job queue; returns how many moved.
const PROMOTE_SCRIPT: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, payload in ipairs(due) do
  redis.call('ZREM', KEYS[1], payload)
  redis.call('LPUSH', KEYS[2], payload)
end
return #due
";

/// The delay before attempt `attempts + 1`, after `attempts` attempts have failed: the base
/// doubled per failure, capped, with the upper half jittered so that jobs that failed together
/// do not all come back together.
pub fn backoff_ms(policy: &RetryPolicy, attempts: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(40);
    let full = policy
        .base_ms
        .saturating_mul(1u64 << doublings)
        .min(policy.max_ms);
    let half = full / 2;
    full - half + random_below(half + 1)
}

fn random_below(n: u64) -> u64 {
    // Every RandomState gets fresh keys, so hashing nothing gives a new number each time;
    // that is all the randomness jitter needs.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u8(0);
    hasher.finish() % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_keys_are_the_designs_names() {
        let keys = Keys::new(&KeyNaming {
            prefix: "image".into(),
            hash_tag: false,
        });
        assert_eq!(keys.jobs, "image_jobs");
        assert_eq!(keys.retry, "image_retry");
        assert_eq!(keys.done, "image_done");
        assert_eq!(keys.failed, "image_failed");
        assert_eq!(keys.processing("web-1:0"), "image_jobs:processing:web-1:0");
    }

    #[test]
    fn hash_tag_wraps_the_prefix_of_every_key() {
        let keys = Keys::new(&KeyNaming {
            prefix: "image".into(),
            hash_tag: true,
        });
        for key in [
            &keys.jobs,
            &keys.retry,
            &keys.done,
            &keys.failed,
            &keys.processing("h:1"),
        ] {
            assert!(key.starts_with("{image}_"), "{key}");
        }
    }

    #[test]
    fn consumer_ids_are_stable() {
        assert_eq!(consumer_id("web-1", 3), "web-1:3");
        assert_eq!(consumer_id("web-1", 3), consumer_id("web-1", 3));
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let policy = RetryPolicy {
            base_ms: 1000,
            max_ms: 10_000,
        };
        for _ in 0..50 {
            assert!((500..=1000).contains(&backoff_ms(&policy, 1)));
            assert!((1000..=2000).contains(&backoff_ms(&policy, 2)));
            assert!((2000..=4000).contains(&backoff_ms(&policy, 3)));
            assert!((5000..=10_000).contains(&backoff_ms(&policy, 30)));
        }
    }
}
