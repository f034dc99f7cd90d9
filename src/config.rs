//! Configuration: one table of settings, four layers, validated once.
//!
//! Every setting has a key (`max_attempts`), a flag (`--max-attempts`), an environment variable
//! (`IMAGE_WORKER_MAX_ATTEMPTS`) and a TOML key in the config file (`max_attempts = 3`). The
//! layers are consulted in the order flags, environment, file, built-in default; the first layer
//! that names a setting wins. Raw values are kept with their origin until validation, so a refusal
//! names where the bad value came from: the flag, the variable, or the file and line.
//!
//! Validation happens here and only here. The rest of the program receives a [`Config`] whose
//! values are in range and never re-checks them.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;

use crate::ops::{Rendition, RenditionSpec};

/// The default location of the config file, read only when it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/image-worker/config.toml";

/// The environment variable that names the config file, beside `--config`.
pub const CONFIG_PATH_ENV: &str = "IMAGE_WORKER_CONFIG";

/// Prefix shared by every environment variable the worker reads.
pub const ENV_PREFIX: &str = "IMAGE_WORKER_";

/// One setting of the table: how it is named and described.
#[derive(Debug)]
pub struct Setting {
    pub key: &'static str,
    pub value_name: &'static str,
    pub help: &'static str,
    /// Whether the setting takes several values (a repeatable flag, a TOML array, a
    /// colon-separated environment variable).
    pub list: bool,
}

impl Setting {
    pub fn flag(&self) -> String {
        self.key.replace('_', "-")
    }

    pub fn env_var(&self) -> String {
        format!("{ENV_PREFIX}{}", self.key.to_ascii_uppercase())
    }
}

const fn one(key: &'static str, value_name: &'static str, help: &'static str) -> Setting {
    Setting {
        key,
        value_name,
        help,
        list: false,
    }
}

/// Every setting the worker understands. Flags, environment variables, the TOML file and the
/// documentation are all derived from this table.
pub const SETTINGS: &[Setting] = &[
    one(
        "redis",
        "URL",
        "Redis server [default: redis://127.0.0.1:6379]",
    ),
    one(
        "workers",
        "N",
        "CPU worker threads [default: available cores]",
    ),
    one("backend", "B", "auto | cuda | cpu [default: auto]"),
    Setting {
        key: "input_root",
        value_name: "DIR",
        help: "jobs may only read below these; repeatable [default: /data/incoming]",
        list: true,
    },
    one(
        "output_root",
        "DIR",
        "renditions are written below this [default: /data/processed]",
    ),
    one(
        "max_attempts",
        "N",
        "attempts before a transient failure is final [default: 3]",
    ),
    one(
        "log_level",
        "L",
        "error | warn | info | debug | trace [default: info]",
    ),
    one(
        "key_prefix",
        "P",
        "prefix of every Redis key [default: image]",
    ),
    one(
        "hash_tag",
        "BOOL",
        "wrap the key prefix in {} for Redis Cluster [default: false]",
    ),
    one(
        "hostname",
        "NAME",
        "host part of consumer ids [default: the system host name]",
    ),
    one(
        "max_input_bytes",
        "BYTES",
        "largest input file [default: 64MiB]",
    ),
    one(
        "max_pixels",
        "N",
        "largest decoded image in pixels [default: 50000000]",
    ),
    one(
        "max_side",
        "N",
        "largest width or height in pixels [default: 30000]",
    ),
    one(
        "max_decode_bytes",
        "BYTES",
        "memory budget of one decode [default: 1GiB]",
    ),
    one(
        "max_metadata_bytes",
        "BYTES",
        "largest ICC profile or EXIF block [default: 16MiB]",
    ),
    one(
        "job_timeout_ms",
        "MS",
        "longest backend stage of one job before it is retried [default: 60000]",
    ),
    one(
        "drain_timeout_ms",
        "MS",
        "longest drain after SIGTERM before exiting non-zero [default: 30000]",
    ),
    one(
        "alive_ttl_ms",
        "MS",
        "TTL of this host's liveness key, refreshed every third of it [default: 30000]",
    ),
    one(
        "poison_limit",
        "N",
        "crash recoveries of one job before it fails as poison [default: 2]",
    ),
    one(
        "metrics_addr",
        "ADDR",
        "address for GET /metrics and /healthz, or off [default: 127.0.0.1:9464]",
    ),
    one(
        "retry_base_ms",
        "MS",
        "delay before the first retry, doubled each time [default: 1000]",
    ),
    one(
        "retry_max_ms",
        "MS",
        "longest delay between retries [default: 300000]",
    ),
    one("thumb_size", "PX", "thumbnail box side [default: 320]"),
    one("thumb_quality", "Q", "thumbnail WebP quality [default: 80]"),
    one(
        "thumb_method",
        "M",
        "thumbnail libwebp method, 0 (fastest) to 6 (smallest) [default: 4]",
    ),
    one("blur_size", "PX", "placeholder box side [default: 64]"),
    one(
        "blur_sigma",
        "S",
        "placeholder Gaussian sigma in pixels [default: 3]",
    ),
    one(
        "blur_quality",
        "Q",
        "placeholder WebP quality [default: 60]",
    ),
    one(
        "blur_method",
        "M",
        "placeholder libwebp method, 0 to 6 [default: 4]",
    ),
    one("lq_size", "PX", "preview box side [default: 1280]"),
    one("lq_quality", "Q", "preview WebP quality [default: 30]"),
    one(
        "lq_method",
        "M",
        "preview libwebp method, 0 (fastest) to 6 (smallest) [default: 2]",
    ),
];

fn setting(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// Where a raw value came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    Flag(String),
    Env(String),
    File { path: PathBuf, line: usize },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag --{flag}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::File { path, line } => write!(f, "{} line {line}", path.display()),
        }
    }
}

/// A value as given, before validation.
#[derive(Clone, Debug)]
pub struct RawValue {
    pub values: Vec<String>,
    pub origin: Origin,
}

/// A refusal at start-up. Each names the setting and where its value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value '{value}' for {key} (from {origin}): {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        origin: Origin,
        reason: String,
    },
    #[error("unknown setting '{name}' (from {origin})")]
    Unknown { name: String, origin: Origin },
    #[error("cannot read config file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("config file {path} line {line}: {reason}")]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{0}")]
    Other(String),
}

/// The layers of raw values, highest precedence first.
#[derive(Debug, Default)]
pub struct RawSettings {
    layers: [HashMap<&'static str, RawValue>; 3],
}

const FLAGS: usize = 0;
const ENV: usize = 1;
const FILE: usize = 2;

impl RawSettings {
    /// Records a value given on the command line.
    pub fn set_flag(&mut self, key: &'static str, values: Vec<String>) {
        let origin = Origin::Flag(key.replace('_', "-"));
        self.layers[FLAGS].insert(key, RawValue { values, origin });
    }

    /// Reads every `IMAGE_WORKER_*` variable. A variable that names no setting is refused, so a
    /// misspelt name does not silently leave a default in force.
    pub fn read_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if name == CONFIG_PATH_ENV || name.starts_with("IMAGE_WORKER_TEST_") {
                continue;
            }
            let origin = Origin::Env(name.clone());
            let key = rest.to_ascii_lowercase();
            let Some(setting) = setting(&key) else {
                return Err(ConfigError::Unknown { name, origin });
            };
            let values = if setting.list {
                value
                    .split(':')
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
                    .collect()
            } else {
                vec![value]
            };
            self.layers[ENV].insert(setting.key, RawValue { values, origin });
        }
        Ok(())
    }

    /// Parses the TOML config file. Keys are the settings' keys at the top level.
    pub fn read_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let table: HashMap<String, toml::Spanned<toml::Value>> =
            toml::from_str(text).map_err(|err| ConfigError::Syntax {
                path: path.to_owned(),
                line: err.span().map_or(1, |span| line_of(text, span.start)),
                reason: err.message().to_owned(),
            })?;
        for (name, spanned) in table {
            let origin = Origin::File {
                path: path.to_owned(),
                line: line_of(text, spanned.span().start),
            };
            let Some(setting) = setting(&name) else {
                return Err(ConfigError::Unknown { name, origin });
            };
            let values = toml_values(setting, spanned.get_ref(), &origin)?;
            self.layers[FILE].insert(setting.key, RawValue { values, origin });
        }
        Ok(())
    }

    /// The winning raw value of a setting, if any layer names it.
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.layers.iter().find_map(|layer| layer.get(key))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn toml_values(
    setting: &'static Setting,
    value: &toml::Value,
    origin: &Origin,
) -> Result<Vec<String>, ConfigError> {
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    };
    let refuse = || ConfigError::Invalid {
        key: setting.key,
        value: value.to_string(),
        origin: origin.clone(),
        reason: if setting.list {
            "expected a string or an array of strings".into()
        } else {
            "expected a single value".into()
        },
    };
    match value {
        toml::Value::Array(items) if setting.list => items
            .iter()
            .map(|item| scalar(item).ok_or_else(refuse))
            .collect(),
        _ => scalar(value).map(|v| vec![v]).ok_or_else(refuse),
    }
}

/// Which image backend to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Cuda,
    Cpu,
}

/// How Redis keys are named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyNaming {
    pub prefix: String,
    pub hash_tag: bool,
}

/// Limits applied to every input before and during decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_input_bytes: u64,
    pub max_pixels: u64,
    pub max_side: u32,
    pub max_decode_bytes: u64,
    pub max_metadata_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_input_bytes: 64 << 20,
            max_pixels: 50_000_000,
            max_side: 30_000,
            max_decode_bytes: 1 << 30,
            max_metadata_bytes: 16 << 20,
        }
    }
}

/// Delays between attempts of a job that failed transiently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base_ms: u64,
    pub max_ms: u64,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub redis_url: String,
    pub workers: usize,
    pub backend: BackendChoice,
    pub input_roots: Vec<PathBuf>,
    pub output_root: PathBuf,
    pub max_attempts: u32,
    pub log_level: LevelFilter,
    pub keys: KeyNaming,
    pub hostname: String,
    pub limits: DecodeLimits,
    pub retry: RetryPolicy,
    /// The default renditions, in the order thumb, blur, lq.
    pub renditions: Vec<RenditionSpec>,
    /// How long a worker waits for the backend stage of one job.
    pub job_timeout: Duration,
    /// How long the drain after SIGTERM may take.
    pub drain_timeout: Duration,
    /// TTL of the liveness key.
    pub alive_ttl: Duration,
    /// Recoveries after a crash a job may have before it fails as `poison`.
    pub poison_limit: u32,
    /// Where `/metrics` and `/healthz` are served; `None` when turned off.
    pub metrics_addr: Option<SocketAddr>,
}

impl Config {
    /// Validates every setting. `system_hostname` and `cores` supply the defaults that depend on
    /// the machine, so that tests can pin them.
    pub fn from_raw(
        raw: &RawSettings,
        system_hostname: &str,
        cores: usize,
    ) -> Result<Config, ConfigError> {
        let r = Resolver { raw };
        let config = Config {
            redis_url: r.one("redis", "redis://127.0.0.1:6379", parse_redis_url)?,
            workers: r.one("workers", &cores.max(1).to_string(), |v| {
                parse_int(v, 1, 1024)
            })?,
            backend: r.one("backend", "auto", parse_backend)?,
            input_roots: r.list("input_root", &["/data/incoming"], parse_absolute_path)?,
            output_root: r.one("output_root", "/data/processed", parse_absolute_path)?,
            max_attempts: r.one("max_attempts", "3", |v| parse_int(v, 1, 100))?,
            log_level: r.one("log_level", "info", parse_log_level)?,
            keys: KeyNaming {
                prefix: r.one("key_prefix", "image", parse_key_prefix)?,
                hash_tag: r.one("hash_tag", "false", parse_bool)?,
            },
            hostname: r.one("hostname", system_hostname, parse_hostname)?,
            limits: DecodeLimits {
                max_input_bytes: r
                    .one("max_input_bytes", "64MiB", |v| parse_bytes(v, 1, 1 << 40))?,
                max_pixels: r.one("max_pixels", "50000000", |v| parse_int(v, 1, 1 << 34))?,
                max_side: r.one("max_side", "30000", |v| parse_int(v, 1, 1 << 20))?,
                max_decode_bytes: r.one("max_decode_bytes", "1GiB", |v| {
                    parse_bytes(v, 1 << 20, 1 << 40)
                })?,
                max_metadata_bytes: r.one("max_metadata_bytes", "16MiB", |v| {
                    parse_bytes(v, 1 << 10, 1 << 32)
                })?,
            },
            job_timeout: r.one("job_timeout_ms", "60000", parse_millis)?,
            drain_timeout: r.one("drain_timeout_ms", "30000", parse_millis)?,
            alive_ttl: r.one("alive_ttl_ms", "30000", |v| {
                parse_millis(v).and_then(|d| {
                    if d >= Duration::from_millis(300) {
                        Ok(d)
                    } else {
                        Err("expected at least 300 ms".into())
                    }
                })
            })?,
            poison_limit: r.one("poison_limit", "2", |v| parse_int(v, 0, 1000))?,
            metrics_addr: r.one("metrics_addr", "127.0.0.1:9464", parse_metrics_addr)?,
            retry: RetryPolicy {
                base_ms: r.one("retry_base_ms", "1000", |v| parse_int(v, 1, 86_400_000))?,
                max_ms: r.one("retry_max_ms", "300000", |v| parse_int(v, 1, 86_400_000))?,
            },
            renditions: vec![
                r.rendition(Rendition::Thumb, "320", "80", "4", None)?,
                r.rendition(Rendition::Blur, "64", "60", "4", Some("3"))?,
                r.rendition(Rendition::Lq, "1280", "30", "2", None)?,
            ],
        };
        config.check_relations(raw)?;
        Ok(config)
    }

    fn check_relations(&self, raw: &RawSettings) -> Result<(), ConfigError> {
        if self.retry.max_ms < self.retry.base_ms {
            let origin = raw.get("retry_max_ms").map(|v| v.origin.to_string());
            return Err(ConfigError::Other(format!(
                "retry_max_ms ({}) is below retry_base_ms ({}){}",
                self.retry.max_ms,
                self.retry.base_ms,
                origin.map(|o| format!(" (from {o})")).unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// The default spec of one rendition.
    pub fn rendition(&self, rendition: Rendition) -> &RenditionSpec {
        self.renditions
            .iter()
            .find(|spec| spec.rendition == rendition)
            .expect("every rendition has a default spec")
    }
}

/// Looks up settings through the layers and validates them.
struct Resolver<'a> {
    raw: &'a RawSettings,
}

impl Resolver<'_> {
    fn one<T>(
        &self,
        key: &'static str,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.raw.get(key) {
            None => Ok(parse(default).expect("built-in defaults are valid")),
            Some(raw) => {
                let value = raw.values.last().map(String::as_str).unwrap_or("");
                parse(value).map_err(|reason| invalid(key, value, raw, reason))
            }
        }
    }

    fn list<T>(
        &self,
        key: &'static str,
        default: &[&str],
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, ConfigError> {
        let Some(raw) = self.raw.get(key) else {
            return Ok(default
                .iter()
                .map(|v| parse(v).expect("defaults are valid"))
                .collect());
        };
        if raw.values.is_empty() {
            return Err(invalid(key, "", raw, "at least one value is needed".into()));
        }
        raw.values
            .iter()
            .map(|value| parse(value).map_err(|reason| invalid(key, value, raw, reason)))
            .collect()
    }

    fn rendition(
        &self,
        rendition: Rendition,
        size: &str,
        quality: &str,
        method: &str,
        sigma: Option<&str>,
    ) -> Result<RenditionSpec, ConfigError> {
        let name = rendition.name();
        let key = |suffix: &str| -> &'static str {
            let wanted = format!("{name}_{suffix}");
            setting(&wanted)
                .expect("rendition settings are in the table")
                .key
        };
        let bounds = rendition.bounds();
        let mut spec = RenditionSpec {
            rendition,
            size: self.one(key("size"), size, |v| parse_int(v, 1, bounds.max_size))?,
            quality: self.one(key("quality"), quality, |v| parse_float(v, 0.0, 100.0))?,
            sigma: 0.0,
            method: self.one(key("method"), method, |v| parse_int(v, 0, 6))?,
        };
        if let Some(sigma) = sigma {
            spec.sigma = self.one(key("sigma"), sigma, |v| {
                parse_float(v, bounds.min_sigma, bounds.max_sigma)
            })?;
        }
        Ok(spec)
    }
}

fn invalid(key: &'static str, value: &str, raw: &RawValue, reason: String) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_owned(),
        origin: raw.origin.clone(),
        reason,
    }
}

fn parse_int<T>(value: &str, min: u64, max: u64) -> Result<T, String>
where
    T: TryFrom<u64>,
{
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| format!("expected a whole number between {min} and {max}"))?;
    if !(min..=max).contains(&n) {
        return Err(format!("expected a whole number between {min} and {max}"));
    }
    T::try_from(n).map_err(|_| format!("expected a whole number between {min} and {max}"))
}

fn parse_millis(value: &str) -> Result<Duration, String> {
    parse_int::<u64>(value, 1, 86_400_000).map(Duration::from_millis)
}

fn parse_float(value: &str, min: f32, max: f32) -> Result<f32, String> {
    match value.trim().parse::<f32>() {
        Ok(x) if x.is_finite() && (min..=max).contains(&x) => Ok(x),
        _ => Err(format!("expected a number between {min} and {max}")),
    }
}

/// Parses a byte count: a whole number with an optional unit (K, M, G, KiB, MiB, GiB; all
/// binary, since these are memory and file sizes).
fn parse_bytes(value: &str, min: u64, max: u64) -> Result<u64, String> {
    let text = value.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        _ => return Err("expected a size such as 67108864, 64MiB or 1GiB".into()),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| "expected a size such as 64MiB".to_string())?;
    let bytes = n
        .checked_shl(shift)
        .filter(|b| b >> shift == n)
        .ok_or("size too large")?;
    if !(min..=max).contains(&bytes) {
        return Err(format!("expected a size between {min} and {max} bytes"));
    }
    Ok(bytes)
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_backend(value: &str) -> Result<BackendChoice, String> {
    match value.trim() {
        "auto" => Ok(BackendChoice::Auto),
        "cuda" => Ok(BackendChoice::Cuda),
        "cpu" => Ok(BackendChoice::Cpu),
        _ => Err("expected auto, cuda or cpu".into()),
    }
}

fn parse_log_level(value: &str) -> Result<LevelFilter, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "error" => Ok(LevelFilter::Error),
        "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err("expected error, warn, info, debug or trace".into()),
    }
}

fn parse_absolute_path(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    if value.is_empty() || !path.is_absolute() {
        return Err("expected an absolute path".into());
    }
    Ok(path)
}

fn parse_redis_url(value: &str) -> Result<String, String> {
    let ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
        .iter()
        .any(|scheme| value.starts_with(scheme));
    if !ok || redis::Client::open(value).is_err() {
        return Err("expected a URL such as redis://127.0.0.1:6379".into());
    }
    Ok(value.to_owned())
}

/// A socket address (`127.0.0.1:9464`, `[::1]:9464`), or `off` for no metrics server.
fn parse_metrics_addr(value: &str) -> Result<Option<SocketAddr>, String> {
    match value.trim() {
        "off" | "none" | "false" => Ok(None),
        text => text
            .parse()
            .map(Some)
            .map_err(|_| "expected an address such as 127.0.0.1:9464, or off".into()),
    }
}

fn parse_key_prefix(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-:.".contains(c));
    if !ok {
        return Err("expected 1 to 64 of A-Z a-z 0-9 _ - : .".into());
    }
    Ok(value.to_owned())
}

fn parse_hostname(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !ok {
        return Err("expected a host name of A-Z a-z 0-9 _ - .".into());
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(raw: &RawSettings) -> Result<Config, ConfigError> {
        Config::from_raw(raw, "host-a", 4)
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_when_no_layer_names_a_setting() {
        let config = resolve(&RawSettings::default()).unwrap();
        assert_eq!(config.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(config.workers, 4);
        assert_eq!(config.max_attempts, 3);
        assert_eq!(config.input_roots, vec![PathBuf::from("/data/incoming")]);
        assert_eq!(config.hostname, "host-a");
        assert_eq!(
            config.keys,
            KeyNaming {
                prefix: "image".into(),
                hash_tag: false
            }
        );
        assert_eq!(config.limits, DecodeLimits::default());
        assert_eq!(config.renditions, crate::ops::default_plan());
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let mut raw = RawSettings::default();
        let path = Path::new("/etc/w.toml");
        raw.read_file(path, "workers = 2\nmax_attempts = 5\nlq_size = 1000\n")
            .unwrap();
        raw.read_env(env(&[
            ("IMAGE_WORKER_WORKERS", "3"),
            ("IMAGE_WORKER_MAX_ATTEMPTS", "7"),
        ]))
        .unwrap();
        raw.set_flag("workers", vec!["9".into()]);
        let config = resolve(&raw).unwrap();
        assert_eq!(config.workers, 9, "flag wins");
        assert_eq!(config.max_attempts, 7, "env beats file");
        assert_eq!(
            config.rendition(Rendition::Lq).size,
            1000,
            "file beats default"
        );
        assert_eq!(
            config.rendition(Rendition::Thumb).size,
            320,
            "default remains"
        );
    }

    #[test]
    fn bad_flag_value_names_the_flag() {
        let mut raw = RawSettings::default();
        raw.set_flag("max_attempts", vec!["zero".into()]);
        let message = resolve(&raw).unwrap_err().to_string();
        assert!(message.contains("flag --max-attempts"), "{message}");
        assert!(message.contains("'zero'"), "{message}");
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let mut raw = RawSettings::default();
        raw.read_env(env(&[("IMAGE_WORKER_BACKEND", "gpu")]))
            .unwrap();
        let message = resolve(&raw).unwrap_err().to_string();
        assert!(
            message.contains("environment variable IMAGE_WORKER_BACKEND"),
            "{message}"
        );
    }

    #[test]
    fn bad_file_value_names_the_file_and_line() {
        let mut raw = RawSettings::default();
        raw.read_file(
            Path::new("/etc/w.toml"),
            "# comment\n\nthumb_quality = 101\n",
        )
        .unwrap();
        let message = resolve(&raw).unwrap_err().to_string();
        assert!(message.contains("/etc/w.toml line 3"), "{message}");
    }

    #[test]
    fn webp_method_is_read_per_rendition_within_libwebps_range() {
        let mut raw = RawSettings::default();
        raw.read_file(Path::new("/w.toml"), "lq_method = 1\nthumb_method = 6\n")
            .unwrap();
        let config = resolve(&raw).unwrap();
        assert_eq!(config.rendition(Rendition::Lq).method, 1);
        assert_eq!(config.rendition(Rendition::Thumb).method, 6);
        assert_eq!(config.rendition(Rendition::Blur).method, 4);

        let mut raw = RawSettings::default();
        raw.read_file(Path::new("/w.toml"), "lq_method = 7\n")
            .unwrap();
        let message = resolve(&raw).unwrap_err().to_string();
        assert!(message.contains("lq_method"), "{message}");
    }

    #[test]
    fn unknown_names_are_refused_in_file_and_env() {
        let mut raw = RawSettings::default();
        let err = raw
            .read_file(Path::new("/w.toml"), "workres = 2\n")
            .unwrap_err();
        assert!(err.to_string().contains("workres"), "{err}");
        let err = raw
            .read_env(env(&[("IMAGE_WORKER_WORKRES", "2")]))
            .unwrap_err();
        assert!(err.to_string().contains("IMAGE_WORKER_WORKRES"), "{err}");
    }

    #[test]
    fn file_syntax_error_names_the_line() {
        let mut raw = RawSettings::default();
        let err = raw
            .read_file(Path::new("/w.toml"), "workers = 2\nredis = \n")
            .unwrap_err();
        assert!(err.to_string().contains("/w.toml line 2"), "{err}");
    }

    #[test]
    fn input_roots_come_as_lists_from_every_layer() {
        let mut raw = RawSettings::default();
        raw.read_file(Path::new("/w.toml"), "input_root = [\"/a\", \"/b\"]\n")
            .unwrap();
        assert_eq!(
            resolve(&raw).unwrap().input_roots,
            vec![PathBuf::from("/a"), "/b".into()]
        );
        raw.read_env(env(&[("IMAGE_WORKER_INPUT_ROOT", "/c:/d")]))
            .unwrap();
        assert_eq!(
            resolve(&raw).unwrap().input_roots,
            vec![PathBuf::from("/c"), "/d".into()]
        );
        raw.set_flag("input_root", vec!["/e".into()]);
        assert_eq!(
            resolve(&raw).unwrap().input_roots,
            vec![PathBuf::from("/e")]
        );
    }

    #[test]
    fn relative_roots_are_refused() {
        let mut raw = RawSettings::default();
        raw.set_flag("output_root", vec!["out".into()]);
        assert!(resolve(&raw).unwrap_err().to_string().contains("absolute"));
    }

    #[test]
    fn byte_sizes_accept_binary_units() {
        assert_eq!(parse_bytes("64MiB", 1, u64::MAX), Ok(64 << 20));
        assert_eq!(parse_bytes("2g", 1, u64::MAX), Ok(2 << 30));
        assert_eq!(parse_bytes("1000", 1, u64::MAX), Ok(1000));
        assert!(parse_bytes("12 parsecs", 1, u64::MAX).is_err());
        assert!(parse_bytes("99999999999999999999G", 1, u64::MAX).is_err());
    }

    #[test]
    fn retry_max_below_base_is_refused() {
        let mut raw = RawSettings::default();
        raw.set_flag("retry_base_ms", vec!["5000".into()]);
        raw.set_flag("retry_max_ms", vec!["10".into()]);
        assert!(
            resolve(&raw)
                .unwrap_err()
                .to_string()
                .contains("retry_max_ms")
        );
    }

    const PACKAGED: &str = include_str!("../packaging/config.toml");

    /// The packaged config's commented-out lines, uncommented, except those whose default
    /// depends on the machine.
    fn packaged_defaults() -> String {
        PACKAGED
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| line.contains(" = ") && !line.contains('<'))
            .map(|line| format!("{line}\n"))
            .collect()
    }

    #[test]
    fn packaged_config_documents_every_setting() {
        for setting in SETTINGS {
            let line = format!("# {} = ", setting.key);
            assert!(
                PACKAGED.contains(&line),
                "packaging/config.toml lacks {}",
                setting.key
            );
        }
        let mut raw = RawSettings::default();
        raw.read_file(Path::new("config.toml"), PACKAGED).unwrap();
        assert!(resolve(&raw).is_ok(), "as shipped, every line is a comment");
    }

    #[test]
    fn packaged_config_shows_the_real_defaults() {
        let mut raw = RawSettings::default();
        raw.read_file(Path::new("config.toml"), &packaged_defaults())
            .unwrap();
        let documented = resolve(&raw).unwrap();
        let built_in = resolve(&RawSettings::default()).unwrap();
        assert_eq!(format!("{documented:?}"), format!("{built_in:?}"));
    }

    #[test]
    fn man_page_documents_every_setting() {
        let man = include_str!("../packaging/image-worker.1");
        for setting in SETTINGS {
            let flag = format!(".BI \\-\\-{} ", setting.flag().replace('-', "\\-"));
            assert!(man.contains(&flag), "packaging/image-worker.1 lacks {flag}");
        }
    }

    #[test]
    fn metrics_address_is_an_address_or_off() {
        let config = resolve(&RawSettings::default()).unwrap();
        assert_eq!(config.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(parse_metrics_addr("off"), Ok(None));
        assert_eq!(
            parse_metrics_addr("[::1]:1"),
            Ok(Some("[::1]:1".parse().unwrap()))
        );
        assert!(parse_metrics_addr("localhost").is_err());
    }

    #[test]
    fn every_setting_has_a_flag_and_variable() {
        for s in SETTINGS {
            assert!(s.env_var().starts_with(ENV_PREFIX));
            assert!(!s.flag().contains('_'));
        }
    }
}
