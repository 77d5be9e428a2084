//! The verification record, `<dir>/.swarmlm/verified.json`.
//!
//! Hashing 90 GB takes about a minute per core; `run` and `seed` should not pay that every start.
//! After a successful verification each file's size, mtime (ns) and digests are remembered; a later
//! start trusts a file only while its size and mtime are unchanged (the guard librqbit's
//! fast-resume lacks, trap 17). The record is written atomically (temp file + rename) so a crash
//! never leaves a half-written record that could vouch for anything.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Manifest;

/// Folder inside a model folder where swarmlm keeps its bookkeeping.
pub const STATE_DIR: &str = ".swarmlm";
/// File name of the record inside [`STATE_DIR`].
pub const RECORD_FILE: &str = "verified.json";
/// Where `fetch` stores the manifest a folder was fetched with; `verify` defaults to it.
pub const MANIFEST_FILE: &str = "manifest.toml";

const RECORD_VERSION: u32 = 1;

/// One verified file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEntry {
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch, as seen when hashing started.
    pub mtime_ns: i64,
    /// Lowercase hex.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// Unix seconds when the hash was computed.
    pub verified_at: u64,
}

/// The whole record: verified files by manifest path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub files: BTreeMap<String, RecordEntry>,
}

/// Why the record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read verification record {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("verification record {path} is malformed: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("cannot write verification record {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `<dir>/.swarmlm/verified.json`.
pub fn record_path(dir: &Path) -> PathBuf {
    dir.join(STATE_DIR).join(RECORD_FILE)
}

/// Size and mtime (ns) of a file, following links, the two things a record entry is keyed on.
pub fn stat_file(path: &Path) -> std::io::Result<(u64, i64)> {
    let meta = std::fs::metadata(path)?;
    let mtime_ns = meta
        .mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec());
    Ok((meta.len(), mtime_ns))
}

impl Record {
    /// Read the record of `dir`; an absent record is an empty one.
    pub fn load(dir: &Path) -> Result<Self, RecordError> {
        let path = record_path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Record {
                    version: RECORD_VERSION,
                    files: BTreeMap::new(),
                })
            }
            Err(source) => return Err(RecordError::Read { path, source }),
        };
        let record: Record =
            serde_json::from_slice(&bytes).map_err(|e| RecordError::Malformed {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if record.version != RECORD_VERSION {
            return Err(RecordError::Malformed {
                path,
                message: format!(
                    "version {} (this swarmlm writes {RECORD_VERSION})",
                    record.version
                ),
            });
        }
        Ok(record)
    }

    /// Write atomically into `<dir>/.swarmlm/`, creating that folder if needed.
    pub fn save(&self, dir: &Path) -> Result<(), RecordError> {
        let path = record_path(dir);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir.join(STATE_DIR))?;
            let mut text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
            text.push(b'\n');
            crate::atomic_write(&path, &text)
        };
        write().map_err(|source| RecordError::Write { path, source })
    }

    /// The entry for `path` if the file on disk still has the recorded size and mtime.
    pub fn fresh_entry(&self, dir: &Path, path: &str) -> Option<&RecordEntry> {
        let entry = self.files.get(path)?;
        let (size, mtime_ns) = stat_file(&dir.join(path)).ok()?;
        (entry.size == size && entry.mtime_ns == mtime_ns).then_some(entry)
    }
}

/// True when the record of `dir` vouches for every file of `manifest`: each file is recorded, its
/// size and mtime on disk are unchanged since it was hashed, and the recorded digests equal the
/// manifest's (sha256 and md5 where the manifest gives them, size where known). A missing or
/// malformed record is simply "no".
pub fn record_matches(dir: &Path, manifest: &Manifest) -> bool {
    let Ok(record) = Record::load(dir) else {
        return false;
    };
    manifest.files.iter().all(|f| {
        let Some(entry) = record.fresh_entry(dir, &f.path) else {
            return false;
        };
        f.size.is_none_or(|s| s == entry.size)
            && f.sha256.is_none_or(|h| hex::encode(h) == entry.sha256)
            && f.md5
                .is_none_or(|h| entry.md5.as_deref() == Some(hex::encode(h).as_str()))
    })
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
