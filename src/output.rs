//! Atomic output: a rendition file is either complete or absent.
//!
//! Each file is written to a hidden temporary name in the job's directory, flushed to disk,
//! renamed over its final name, and then the directory itself is flushed so the rename survives
//! a power cut. Readers therefore never see a partial file under a final name. Temporary files
//! left by a process that died mid-write are removed the next time the job is written.
//!
//! The output root must already exist; job directories are created below it. Nothing is ever
//! written outside `{output_root}/{id}/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A failed write. Transient: disks fill and get cleared, mounts come back.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct OutputError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> OutputError + '_ {
    move |source| OutputError {
        path: path.to_owned(),
        source,
    }
}

/// The directory of one job's outputs.
pub fn job_dir(output_root: &Path, id: &str) -> PathBuf {
    output_root.join(id)
}

/// The final path of one rendition.
pub fn rendition_path(output_root: &Path, id: &str, rendition_name: &str) -> PathBuf {
    job_dir(output_root, id).join(format!("{id}_{rendition_name}.webp"))
}

const TEMP_MARK: &str = ".tmp-";

/// Writes each `(final path, bytes)` atomically. All paths must be in `dir`.
pub fn write_all_atomic(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> Result<(), OutputError> {
    let created = ensure_dir(dir)?;
    remove_stale_temps(dir);
    for (path, bytes) in files {
        debug_assert_eq!(
            path.parent(),
            Some(dir),
            "outputs stay in the job directory"
        );
        write_one(path, bytes)?;
    }
    sync_dir(dir)?;
    if created {
        // The job directory's own entry lives in its parent.
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Creates `dir` (one level, below an existing root). Returns whether it was created now.
fn ensure_dir(dir: &Path) -> Result<bool, OutputError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            if fs::metadata(dir).map_err(at(dir))?.is_dir() {
                Ok(false)
            } else {
                Err(OutputError {
                    path: dir.to_owned(),
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "exists and is not a directory",
                    ),
                })
            }
        }
        Err(err) => Err(OutputError {
            path: dir.to_owned(),
            source: err,
        }),
    }
}

fn write_one(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let temp = temp_path(path);
    let result =
        write_and_sync(&temp, bytes).and_then(|()| fs::rename(&temp, path).map_err(at(path)));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn write_and_sync(temp: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp)
        .map_err(at(temp))?;
    file.write_all(bytes).map_err(at(temp))?;
    file.sync_all().map_err(at(temp))
}

fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .expect("output paths name a file")
        .to_string_lossy();
    path.with_file_name(format!(".{name}{TEMP_MARK}{}-{n}", std::process::id()))
}

/// Whether `name` is one of our temporary names.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_MARK)
}

fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if is_temp_name(&entry.file_name().to_string_lossy()) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), OutputError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_appear_complete_and_no_temps_remain() {
        let root = tempfile::tempdir().unwrap();
        let dir = job_dir(root.path(), "a1");
        let path = rendition_path(root.path(), "a1", "thumb");
        write_all_atomic(&dir, &[(path.clone(), b"hello".to_vec())]).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a1_thumb.webp")]);
    }

    #[test]
    fn rewriting_replaces_and_removes_stale_temps() {
        let root = tempfile::tempdir().unwrap();
        let dir = job_dir(root.path(), "a1");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(".a1_lq.webp.tmp-999-0"), b"partial").unwrap();
        let path = rendition_path(root.path(), "a1", "lq");
        write_all_atomic(&dir, &[(path.clone(), b"one".to_vec())]).unwrap();
        write_all_atomic(&dir, &[(path.clone(), b"two".to_vec())]).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn a_file_in_the_way_is_an_error_naming_the_path() {
        let root = tempfile::tempdir().unwrap();
        let dir = job_dir(root.path(), "a1");
        fs::write(&dir, b"in the way").unwrap();
        let err = write_all_atomic(&dir, &[(dir.join("a1_lq.webp"), vec![1])]).unwrap_err();
        assert!(err.to_string().contains("a1"), "{err}");
    }

    #[test]
    fn temp_names_are_recognised() {
        assert!(is_temp_name(".a_thumb.webp.tmp-12-3"));
        assert!(!is_temp_name("a_thumb.webp"));
    }
}
