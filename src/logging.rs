//! Log output on standard error: plain lines with a timestamp, or journal lines under systemd.
//!
//! systemd sets `JOURNAL_STREAM` to `DEVICE:INODE` of the stream it connected to the service's
//! standard error. While standard error is still that stream, journald stamps every line itself
//! and reads a leading `<N>` as the line's syslog priority, so each line is written as
//! `<N>message` with no timestamp and no level word: `<3>` error, `<4>` warn, `<6>` info, `<7>`
//! debug and trace. Anywhere else (a terminal, a file, a variable inherited by a child whose
//! standard error was redirected) lines are simplelog's: an RFC 3339 time, the level, the
//! message.

use std::fmt;
use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The variable systemd sets when standard output or error is connected to the journal.
pub const JOURNAL_STREAM_ENV: &str = "JOURNAL_STREAM";

/// Installs the logger for `level`; does nothing when a logger is already installed.
pub fn init(level: LevelFilter) {
    if stderr_is_journal() {
        if log::set_boxed_logger(Box::new(JournalLogger { level })).is_ok() {
            log::set_max_level(level);
        }
        return;
    }
    let config = simplelog::ConfigBuilder::new()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .set_time_format_rfc3339()
        .build();
    let _ = simplelog::WriteLogger::init(level, config, std::io::stderr());
}

/// Whether standard error is the stream named by `JOURNAL_STREAM`.
fn stderr_is_journal() -> bool {
    let Some((device, inode)) = std::env::var(JOURNAL_STREAM_ENV)
        .ok()
        .as_deref()
        .and_then(parse_stream)
    else {
        return false;
    };
    // SAFETY: `stat` is a plain C struct for which all zeroes is a valid value, and fstat only
    // writes into it.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: descriptor 2 is only inspected, and the pointer is to a live, writable struct.
    let rc = unsafe { libc::fstat(libc::STDERR_FILENO, &mut stat) };
    rc == 0 && stat.st_dev as u64 == device && stat.st_ino as u64 == inode
}

/// Parses `DEVICE:INODE`, both decimal.
fn parse_stream(value: &str) -> Option<(u64, u64)> {
    let (device, inode) = value.split_once(':')?;
    Some((device.parse().ok()?, inode.parse().ok()?))
}

/// The syslog priority journald reads from a line's `<N>` prefix.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// One message as journal lines: every line of it carries the prefix, so a message that spans
/// lines keeps its priority throughout.
fn journal_lines(level: Level, message: &fmt::Arguments<'_>) -> String {
    let prefix = format!("<{}>", priority(level));
    let text = message.to_string();
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        out.push_str(&prefix);
        out.push_str(line);
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str(&prefix);
        out.push('\n');
    }
    out
}

struct JournalLogger {
    level: LevelFilter,
}

impl Log for JournalLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let lines = journal_lines(record.level(), record.args());
            // One write per message, so lines of concurrent threads do not interleave.
            let _ = std::io::stderr().lock().write_all(lines.as_bytes());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(
            journal_lines(Level::Error, &format_args!("job=a outcome=failed")),
            "<3>job=a outcome=failed\n"
        );
        assert_eq!(journal_lines(Level::Warn, &format_args!("w")), "<4>w\n");
        assert_eq!(journal_lines(Level::Info, &format_args!("i")), "<6>i\n");
        assert_eq!(journal_lines(Level::Debug, &format_args!("d")), "<7>d\n");
        assert_eq!(journal_lines(Level::Trace, &format_args!("t")), "<7>t\n");
    }

    #[test]
    fn every_line_of_a_message_keeps_its_priority() {
        assert_eq!(
            journal_lines(Level::Warn, &format_args!("first\nsecond")),
            "<4>first\n<4>second\n"
        );
    }

    #[test]
    fn journal_stream_is_device_and_inode() {
        assert_eq!(parse_stream("64769:123456"), Some((64769, 123456)));
        assert_eq!(parse_stream("garbage"), None);
        assert_eq!(parse_stream("1:x"), None);
    }
}
