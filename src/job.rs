//! Jobs: parsing, validation before any pixel work, failure classification and the messages
//! written back to Redis.
//!
//! A job is a JSON object with at least `id` and `input`. Every field the producer sent is kept
//! and echoed in the outcome message, so producers can attach their own correlation data. The
//! worker maintains `attempts` (how many attempts have been made) and adds `last_error` and
//! `last_error_kind` when it schedules a retry.
//!
//! Validation refuses, before the file is opened: an `id` outside `[A-Za-z0-9_-]{1,128}` (it
//! becomes a directory name), an `input` that is not absolute, that does not resolve (after
//! following every symlink) to a regular file inside one of the input roots, or that is larger
//! than the byte limit.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::backend::BackendError;
use crate::decode::DecodeError;
use crate::encode::EncodeError;
use crate::output::OutputError;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A parsed job.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: String,
    pub input: PathBuf,
    /// Attempts already made before this one.
    pub attempts: u32,
    /// When the producer enqueued it, if it said (`enqueued_at`, ms since the epoch).
    pub enqueued_at_ms: Option<u64>,
    /// Every field as given, echoed back in the outcome.
    pub fields: Map<String, Value>,
}

impl Job {
    /// Parses a raw queue payload. Fails with [`JobError::Invalid`] on anything malformed.
    pub fn parse(raw: &[u8]) -> Result<Job, JobError> {
        let value: Value = serde_json::from_slice(raw)
            .map_err(|err| JobError::Invalid(format!("job is not valid JSON: {err}")))?;
        let Value::Object(fields) = value else {
            return Err(JobError::Invalid("job is not a JSON object".into()));
        };
        let id = match fields.get("id") {
            Some(Value::String(id)) => id.clone(),
            Some(_) => return Err(JobError::Invalid("job id is not a string".into())),
            None => return Err(JobError::Invalid("job has no id".into())),
        };
        validate_id(&id)?;
        let input = match fields.get("input") {
            Some(Value::String(input)) => PathBuf::from(input),
            Some(_) => {
                return Err(JobError::Invalid(format!(
                    "job {id}: input is not a string"
                )));
            }
            None => return Err(JobError::Invalid(format!("job {id} has no input"))),
        };
        let attempts = match fields.get("attempts") {
            None => 0,
            Some(v) => v
                .as_u64()
                .filter(|&n| n <= u32::MAX as u64)
                .ok_or_else(|| {
                    JobError::Invalid(format!("job {id}: attempts is not a whole number"))
                })? as u32,
        };
        let enqueued_at_ms = fields.get("enqueued_at").and_then(Value::as_u64);
        Ok(Job {
            id,
            input,
            attempts,
            enqueued_at_ms,
            fields,
        })
    }

    /// The job's `ops` field, if any.
    pub fn ops(&self) -> Option<&Value> {
        self.fields.get("ops")
    }
}

/// Refuses ids that could not safely be a directory name.
pub fn validate_id(id: &str) -> Result<(), JobError> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        let shown: String = id.chars().take(40).collect();
        return Err(JobError::Invalid(format!(
            "job id '{shown}' must be 1 to 128 of A-Z a-z 0-9 _ -"
        )));
    }
    Ok(())
}

/// Resolves a job's input path: absolute, a regular file once every symlink is followed, inside
/// one of `roots` (already canonical) when roots are given, and at most `max_bytes` long.
/// Returns the canonical path and its size.
pub fn resolve_input(
    input: &Path,
    roots: Option<&[PathBuf]>,
    max_bytes: u64,
) -> Result<(PathBuf, u64), JobError> {
    if !input.is_absolute() {
        return Err(JobError::Invalid(format!(
            "input {} is not an absolute path",
            input.display()
        )));
    }
    let canonical = input.canonicalize().map_err(|err| {
        JobError::Invalid(format!(
            "input {} cannot be resolved: {err}",
            input.display()
        ))
    })?;
    if let Some(roots) = roots
        && !roots.iter().any(|root| canonical.starts_with(root))
    {
        return Err(JobError::Invalid(format!(
            "input {} resolves to {}, outside the input roots",
            input.display(),
            canonical.display()
        )));
    }
    let meta = canonical.metadata().map_err(|err| {
        JobError::Invalid(format!(
            "input {} cannot be examined: {err}",
            canonical.display()
        ))
    })?;
    if !meta.is_file() {
        return Err(JobError::Invalid(format!(
            "input {} is not a regular file",
            canonical.display()
        )));
    }
    if meta.len() > max_bytes {
        return Err(too_many_bytes(&canonical, meta.len(), max_bytes));
    }
    Ok((canonical, meta.len()))
}

fn too_many_bytes(path: &Path, len: u64, max_bytes: u64) -> JobError {
    JobError::TooLarge(format!(
        "input {} is {len} bytes, above the max_input_bytes limit of {max_bytes}",
        path.display()
    ))
}

/// Reads a resolved input, never more than `max_bytes` (the file may have grown since it was
/// resolved).
pub fn read_input(path: &Path, max_bytes: u64) -> Result<Vec<u8>, JobError> {
    let read_error = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => JobError::Invalid(format!(
            "input {} disappeared before it was read",
            path.display()
        )),
        _ => JobError::Read {
            path: path.to_owned(),
            source,
        },
    };
    let file = File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_many_bytes(path, bytes.len() as u64, max_bytes));
    }
    Ok(bytes)
}

/// The text of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic without a message".into())
}

/// What to do with a job after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The input itself is at fault: fail now, never retry.
    Permanent,
    /// Something around the job failed: retry later, up to the attempt limit.
    Transient,
    /// The process cannot go on: retry the job later and stop the process.
    Fatal,
}

/// Why a job did not produce its outputs.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("cannot read input {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The job's code panicked; the worker caught it and goes on.
    #[error("job panicked: {0}")]
    Panic(String),
}

impl JobError {
    /// The `kind` reported in the failed message (or kept as `last_error_kind` on a retry).
    pub fn kind(&self) -> &'static str {
        match self {
            JobError::Invalid(_) => "invalid",
            JobError::TooLarge(_) | JobError::Decode(DecodeError::TooLarge(_)) => "too_large",
            JobError::Decode(DecodeError::Unsupported(_)) => "unsupported",
            JobError::Decode(DecodeError::Corrupt { .. }) => "corrupt",
            JobError::Read { .. } => "read",
            JobError::Backend(_) => "backend",
            JobError::Encode(_) => "encode",
            JobError::Output(_) => "output",
            JobError::Panic(_) => "panic",
        }
    }

    pub fn disposition(&self) -> Disposition {
        match self {
            JobError::Invalid(_) | JobError::TooLarge(_) | JobError::Decode(_) => {
                Disposition::Permanent
            }
            JobError::Backend(BackendError::Stopped) => Disposition::Fatal,
            JobError::Read { .. }
            | JobError::Backend(_)
            | JobError::Encode(_)
            | JobError::Output(_)
            | JobError::Panic(_) => Disposition::Transient,
        }
    }
}

/// The failed message for a payload that could not be parsed as a job. A JSON object has its
/// fields echoed like any job's; anything else is echoed as the string `raw`.
pub fn unparsed_failure(raw: &[u8], error: &JobError, consumer: &str) -> Value {
    let mut fields = match serde_json::from_slice::<Value>(raw) {
        Ok(Value::Object(fields)) => fields,
        _ => {
            let mut fields = Map::new();
            fields.insert("raw".into(), String::from_utf8_lossy(raw).into());
            fields
        }
    };
    fields.insert("error".into(), error.to_string().into());
    fields.insert("kind".into(), error.kind().into());
    fields.insert("attempts".into(), 1.into());
    fields.insert("consumer".into(), consumer.into());
    fields.insert("finished_at".into(), now_ms().into());
    Value::Object(fields)
}

/// The failed message: the job's fields plus `error`, `kind`, `attempts`.
pub fn failed_message(job: &Job, error: &str, kind: &str, attempts: u32, consumer: &str) -> Value {
    let mut fields = job.fields.clone();
    fields.insert("error".into(), error.into());
    fields.insert("kind".into(), kind.into());
    fields.insert("attempts".into(), attempts.into());
    fields.insert("consumer".into(), consumer.into());
    fields.insert("finished_at".into(), now_ms().into());
    Value::Object(fields)
}

/// The payload stored in the retry set: the job with its attempt count and last error.
pub fn retry_payload(job: &Job, attempts: u32, error: &JobError, due_ms: u64) -> Value {
    let mut fields = job.fields.clone();
    fields.insert("attempts".into(), attempts.into());
    fields.insert("last_error".into(), error.to_string().into());
    fields.insert("last_error_kind".into(), error.kind().into());
    // Also makes two retries of identical payloads distinct members of the sorted set.
    fields.insert("retry_at".into(), due_ms.into());
    Value::Object(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;

    #[test]
    fn unknown_fields_are_kept() {
        let job = Job::parse(br#"{"id":"a1","input":"/x/a.jpg","trace":{"k":1}}"#).unwrap();
        assert_eq!(job.id, "a1");
        assert_eq!(job.fields["trace"], json!({"k": 1}));
        let failed = failed_message(&job, "boom", "corrupt", 1, "h:0");
        assert_eq!(failed["trace"], json!({"k": 1}));
        assert_eq!(failed["kind"], "corrupt");
    }

    #[test]
    fn malformed_jobs_are_invalid() {
        for raw in [
            &b"not json"[..],
            br#"[1,2]"#,
            br#"{"input":"/a.jpg"}"#,
            br#"{"id":"a","input":5}"#,
            br#"{"id":"a"}"#,
            br#"{"id":"a/b","input":"/a.jpg"}"#,
            br#"{"id":"..","input":"/a.jpg"}"#,
            br#"{"id":"","input":"/a.jpg"}"#,
            br#"{"id":"a","input":"/a.jpg","attempts":-1}"#,
        ] {
            let err = Job::parse(raw).unwrap_err();
            assert_eq!(err.kind(), "invalid", "{}", String::from_utf8_lossy(raw));
            assert_eq!(err.disposition(), Disposition::Permanent);
        }
        assert!(validate_id(&"a".repeat(128)).is_ok());
        assert!(validate_id(&"a".repeat(129)).is_err());
    }

    #[test]
    fn inputs_outside_the_roots_are_refused_even_through_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret.jpg");
        fs::write(&secret, b"x").unwrap();
        let link = root.path().join("link.jpg");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let roots = vec![root.path().canonicalize().unwrap()];

        let err = resolve_input(&link, Some(&roots), 100).unwrap_err();
        assert!(err.to_string().contains("outside the input roots"), "{err}");
        let dotted = root
            .path()
            .join("..")
            .join(outside.path().file_name().unwrap())
            .join("secret.jpg");
        assert!(resolve_input(&dotted, Some(&roots), 100).is_err());
        assert!(resolve_input(Path::new("relative.jpg"), Some(&roots), 100).is_err());
        assert!(resolve_input(&root.path().join("missing.jpg"), Some(&roots), 100).is_err());
        assert!(
            resolve_input(root.path(), Some(&roots), 100).is_err(),
            "a directory"
        );
    }

    #[test]
    fn inputs_above_the_byte_limit_are_too_large() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("big.jpg");
        fs::write(&file, vec![0u8; 101]).unwrap();
        let roots = vec![root.path().canonicalize().unwrap()];
        let err = resolve_input(&file, Some(&roots), 100).unwrap_err();
        assert_eq!(err.kind(), "too_large");
        assert!(
            err.to_string().contains("max_input_bytes limit of 100"),
            "{err}"
        );
        assert_eq!(read_input(&file, 100).unwrap_err().kind(), "too_large");
        assert_eq!(read_input(&file, 101).unwrap().len(), 101);
    }
}
