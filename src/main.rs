//! The command line: flags from the settings table, layered config, one error path.
//!
//! Every flag of [`config::SETTINGS`] is global, so it may follow any subcommand. Usage and
//! configuration errors exit 2, other failures exit 1, a clean stop exits 0.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use image_worker::commands::{self, CommandError};
use image_worker::config::{self, Config, ConfigError, RawSettings, SETTINGS};

#[derive(Parser)]
#[command(
    name = "image-worker",
    version,
    about = "Takes image jobs from Redis and writes three WebP renditions of each",
    after_help = "Every setting can also be given as IMAGE_WORKER_<NAME> in the environment or as \
                  <name> = value in the config file; flags win over the environment, which wins \
                  over the file."
)]
struct Cli {
    /// Config file [default: /etc/image-worker/config.toml when it exists]
    #[arg(long, global = true, value_name = "FILE", env = config::CONFIG_PATH_ENV)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default)
    Run,
    /// Make the renditions of one image (or of each file of a folder) without Redis and print
    /// one done message per image
    Process {
        file: PathBuf,
        /// Output root for this image
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Job id [default: from the file name]
        #[arg(long)]
        id: Option<String>,
        /// Process the image (or folder) this many times, for benchmarks
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
    },
    /// Push one job per file (id from the file name)
    Enqueue {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show the queue, the retry set, failures by kind, live consumers and the oldest claim
    Status,
    /// Check config, Redis, roots and backend; exit 0 only if all answer
    Check,
}

fn command_line() -> clap::Command {
    // A flag given twice takes its last value, as shells and wrappers expect.
    let mut root = Cli::command().args_override_self(true);
    let names: Vec<String> = root
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        root = root.mut_subcommand(name, |sub| sub.args_override_self(true));
    }
    SETTINGS.iter().fold(root, |command, setting| {
        command.arg(
            Arg::new(setting.key)
                .long(setting.flag())
                .value_name(setting.value_name)
                .help(setting.help)
                .global(true)
                .action(if setting.list {
                    ArgAction::Append
                } else {
                    ArgAction::Set
                }),
        )
    })
}

fn load_config(matches: &ArgMatches, config_path: Option<&Path>) -> Result<Config, ConfigError> {
    let mut raw = RawSettings::default();
    let path = match config_path {
        Some(path) => Some(path.to_owned()),
        None => Some(PathBuf::from(config::DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
    };
    if let Some(path) = path {
        let text = std::fs::read_to_string(&path).map_err(|err| ConfigError::Unreadable {
            path: path.clone(),
            reason: err.to_string(),
        })?;
        raw.read_file(&path, &text)?;
    }
    raw.read_env(std::env::vars())?;
    // Global flags are propagated down, so the deepest matches hold every flag given.
    let matches = matches.subcommand().map_or(matches, |(_, sub)| sub);
    for setting in SETTINGS {
        if let Some(values) = matches.get_many::<String>(setting.key) {
            raw.set_flag(setting.key, values.cloned().collect());
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Config::from_raw(&raw, &system_hostname(), cores)
}

fn system_hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its full length, which is what we pass.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    let name = String::from_utf8_lossy(&buffer[..end]).into_owned();
    if rc != 0 || name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

fn main() -> ExitCode {
    let matches = command_line().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let config = match load_config(&matches, cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("image-worker: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    image_worker::logging::init(config.log_level);
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => commands::run(config),
        Command::Process {
            file,
            out,
            id,
            repeat,
        } => commands::process(config, &file, &out, id, repeat),
        Command::Enqueue { files } => commands::enqueue(config, &files),
        Command::Status => commands::status(config),
        Command::Check => commands::check(config),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            log::error!("{err}");
            eprintln!("image-worker: {err}");
            ExitCode::from(match err {
                CommandError::Usage(_) => 2,
                CommandError::Failed(_) => 1,
            })
        }
    }
}
