//! Checking a model folder against its manifest (and against a Mistral `RELEASE` md5 list).
//!
//! This is the step that makes BitTorrent's SHA-1 pieces irrelevant to trust: every file is
//! re-hashed with SHA-256 (md5 where the publisher gave only that) and compared with the manifest.
//! Files are hashed in parallel on all cores; the outcome of each file is reported separately so
//! a user sees exactly which file is missing, short or corrupt.

use std::collections::BTreeMap;
use std::path::Path;

use crate::hashing::{default_threads, hash_file, run_parallel, Digests};
use crate::record::{now_unix, stat_file, Record, RecordEntry};
use crate::{check_relative_path, Manifest};

/// Name of the md5 list Mistral AI ships inside its releases.
pub const RELEASE_FILE: &str = "RELEASE";

/// How to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Hashing threads; 0 means one per core.
    pub threads: usize,
    /// Reuse digests from `.swarmlm/verified.json` for files whose size and mtime are unchanged
    /// (what `run`/`seed` want); `false` re-hashes everything (what `swarmlm verify` does).
    pub trust_record: bool,
    /// Record the files that verified (and forget the ones that did not).
    pub update_record: bool,
    /// Also check the folder's `RELEASE` md5 list when there is one.
    pub check_release: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            threads: 0,
            trust_record: false,
            update_record: true,
            check_release: true,
        }
    }
}

/// The algorithm whose digest disagreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    Sha256,
    Md5,
}

impl HashAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Md5 => "md5",
        }
    }
}

/// Outcome for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileStatus {
    /// Every known fact (size, sha256, md5) matched.
    Ok,
    /// The file is there but the manifest pins no hash for it (unknown in advance): its digests
    /// are reported so they can be pinned (trust on first use). Not a failure.
    Unpinned,
    Missing,
    Size {
        expected: u64,
        actual: u64,
    },
    /// Digests in lowercase hex.
    Hash {
        algorithm: HashAlgorithm,
        expected: String,
        actual: String,
    },
    /// The file could not be read (permissions, not a regular file, I/O error).
    Unreadable {
        message: String,
    },
}

impl FileStatus {
    /// The short word shown to users: OK, UNPINNED, MISSING, SIZE, HASH, UNREADABLE.
    pub fn label(&self) -> &'static str {
        match self {
            FileStatus::Ok => "OK",
            FileStatus::Unpinned => "UNPINNED",
            FileStatus::Missing => "MISSING",
            FileStatus::Size { .. } => "SIZE",
            FileStatus::Hash { .. } => "HASH",
            FileStatus::Unreadable { .. } => "UNREADABLE",
        }
    }

    /// Whether this outcome is acceptable.
    pub fn is_ok(&self) -> bool {
        matches!(self, FileStatus::Ok | FileStatus::Unpinned)
    }
}

/// One file's verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    pub path: String,
    pub status: FileStatus,
    pub expected_size: Option<u64>,
    pub expected_sha256: Option<[u8; 32]>,
    pub expected_md5: Option<[u8; 16]>,
    /// Size on disk, when the file exists.
    pub size: Option<u64>,
    /// Digests of the bytes on disk, when they were hashed (or taken from the record).
    pub actual_sha256: Option<[u8; 32]>,
    pub actual_md5: Option<[u8; 16]>,
    /// The digests came from the verification record instead of hashing.
    pub from_record: bool,
}

/// One line of a `RELEASE` md5 list, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseEntry {
    pub path: String,
    pub expected_md5: [u8; 16],
    pub status: FileStatus,
}

/// Everything `verify_dir` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// In manifest order.
    pub files: Vec<FileReport>,
    /// The folder's `RELEASE` md5 list, when it has one (and `check_release` was on).
    pub release: Option<Vec<ReleaseEntry>>,
    /// Set when the verification record could not be written (the verification itself stands).
    pub record_error: Option<String>,
}

impl VerifyReport {
    /// True when every file and every `RELEASE` line checked out.
    pub fn ok(&self) -> bool {
        self.files.iter().all(|f| f.status.is_ok())
            && self
                .release
                .iter()
                .flatten()
                .all(|r| r.status == FileStatus::Ok)
    }

    /// Files that failed.
    pub fn failures(&self) -> impl Iterator<Item = &FileReport> {
        self.files.iter().filter(|f| !f.status.is_ok())
    }
}

/// Why verification could not run at all (per-file problems are statuses, not errors).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("model folder {path} does not exist or is not a folder")]
    NotADirectory { path: std::path::PathBuf },
    #[error("cannot read {path}: {source}")]
    ReleaseRead {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Parse a Mistral `RELEASE` file: every line of the form `<32 hex>  <path>` (as `md5sum` writes,
/// optionally with `*` before the path) is an entry; any other line (titles, notes) is ignored.
pub fn parse_release(text: &str) -> Vec<(String, [u8; 16])> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some((digest, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let Ok(md5) = crate::parse_hex::<16>(digest) else {
            continue;
        };
        let path = rest.trim_start();
        let path = path.strip_prefix('*').unwrap_or(path);
        let path = path.strip_prefix("./").unwrap_or(path);
        if !path.is_empty() {
            out.push((path.to_string(), md5));
        }
    }
    out
}

struct Job {
    path: String,
    want_md5: bool,
    /// Hashing needed at all (false when the size already disagrees and nothing else needs it).
    expected_size: Option<u64>,
    needed_by_release: bool,
}

enum Outcome {
    Missing,
    Unreadable(String),
    SizeOnly(u64),
    Hashed {
        digests: Digests,
        mtime_ns: i64,
        from_record: bool,
        stable: bool,
    },
}

/// Verify `dir` (the model folder, the torrent's `name` directory) against `manifest`.
pub fn verify_dir(
    dir: &Path,
    manifest: &Manifest,
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    verify_dir_with_progress(dir, manifest, opts, &|_| {})
}

/// [`verify_dir`], calling `progress` with the number of bytes hashed as they are read (from
/// several threads at once).
pub fn verify_dir_with_progress(
    dir: &Path,
    manifest: &Manifest,
    opts: &VerifyOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, VerifyError> {
    if !dir.is_dir() {
        return Err(VerifyError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let release_path = dir.join(RELEASE_FILE);
    let release = if opts.check_release && release_path.is_file() {
        let text = std::fs::read(&release_path).map_err(|source| VerifyError::ReleaseRead {
            path: release_path.clone(),
            source,
        })?;
        Some(parse_release(&String::from_utf8_lossy(&text)))
    } else {
        None
    };

    // One job per distinct path, so a file listed by both the manifest and RELEASE is read once.
    let mut jobs: BTreeMap<String, Job> = BTreeMap::new();
    for f in &manifest.files {
        jobs.insert(
            f.path.clone(),
            Job {
                path: f.path.clone(),
                want_md5: f.md5.is_some(),
                expected_size: f.size,
                needed_by_release: false,
            },
        );
    }
    for (path, _) in release.iter().flatten() {
        if check_relative_path(path).is_err() {
            continue;
        }
        let job = jobs.entry(path.clone()).or_insert_with(|| Job {
            path: path.clone(),
            want_md5: true,
            expected_size: None,
            needed_by_release: true,
        });
        job.want_md5 = true;
        job.needed_by_release = true;
    }
    let mut jobs: Vec<Job> = jobs.into_values().collect();
    let sizes: BTreeMap<String, u64> = jobs
        .iter()
        .map(|j| {
            let size = std::fs::metadata(dir.join(&j.path)).map_or(0, |m| m.len());
            (j.path.clone(), size)
        })
        .collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(sizes[&j.path]));

    let record = if opts.trust_record || opts.update_record {
        Record::load(dir).unwrap_or_default()
    } else {
        Record::default()
    };
    let threads = if opts.threads == 0 {
        default_threads()
    } else {
        opts.threads
    };
    let outcomes = run_parallel(&jobs, threads, |job| {
        check_one(dir, job, &record, opts.trust_record, progress)
    });
    let outcomes: BTreeMap<&str, Outcome> =
        jobs.iter().map(|j| j.path.as_str()).zip(outcomes).collect();

    let mut files = Vec::with_capacity(manifest.files.len());
    for f in &manifest.files {
        let mut report = FileReport {
            path: f.path.clone(),
            status: FileStatus::Ok,
            expected_size: f.size,
            expected_sha256: f.sha256,
            expected_md5: f.md5,
            size: None,
            actual_sha256: None,
            actual_md5: None,
            from_record: false,
        };
        report.status = match &outcomes[f.path.as_str()] {
            Outcome::Missing => FileStatus::Missing,
            Outcome::Unreadable(message) => FileStatus::Unreadable {
                message: message.clone(),
            },
            Outcome::SizeOnly(actual) => {
                report.size = Some(*actual);
                FileStatus::Size {
                    expected: f.size.unwrap_or(0),
                    actual: *actual,
                }
            }
            Outcome::Hashed {
                digests,
                from_record,
                ..
            } => {
                report.size = Some(digests.size);
                report.actual_sha256 = Some(digests.sha256);
                report.actual_md5 = digests.md5;
                report.from_record = *from_record;
                judge(f, digests)
            }
        };
        files.push(report);
    }

    let release = release.map(|entries| {
        entries
            .into_iter()
            .map(|(path, expected_md5)| {
                let status = if let Err(p) = check_relative_path(&path) {
                    FileStatus::Unreadable {
                        message: format!("unsafe path in {RELEASE_FILE}: {p}"),
                    }
                } else {
                    match &outcomes[path.as_str()] {
                        Outcome::Missing => FileStatus::Missing,
                        Outcome::Unreadable(m) => FileStatus::Unreadable { message: m.clone() },
                        Outcome::SizeOnly(_) => FileStatus::Unreadable {
                            message: "not hashed".into(),
                        },
                        Outcome::Hashed { digests, .. } => match digests.md5 {
                            Some(actual) if actual == expected_md5 => FileStatus::Ok,
                            Some(actual) => FileStatus::Hash {
                                algorithm: HashAlgorithm::Md5,
                                expected: hex::encode(expected_md5),
                                actual: hex::encode(actual),
                            },
                            None => FileStatus::Unreadable {
                                message: "md5 not computed".into(),
                            },
                        },
                    }
                };
                ReleaseEntry {
                    path,
                    expected_md5,
                    status,
                }
            })
            .collect()
    });

    let mut report = VerifyReport {
        files,
        release,
        record_error: None,
    };
    if opts.update_record {
        let mut record = record;
        record.version = 1;
        let now = now_unix();
        for f in &report.files {
            match &outcomes[f.path.as_str()] {
                Outcome::Hashed {
                    digests,
                    mtime_ns,
                    stable: true,
                    from_record,
                } if f.status.is_ok() => {
                    let verified_at = match (from_record, record.files.get(&f.path)) {
                        (true, Some(old)) => old.verified_at,
                        _ => now,
                    };
                    record.files.insert(
                        f.path.clone(),
                        RecordEntry {
                            size: digests.size,
                            mtime_ns: *mtime_ns,
                            sha256: hex::encode(digests.sha256),
                            md5: digests.md5.map(hex::encode),
                            verified_at,
                        },
                    );
                }
                _ => {
                    record.files.remove(&f.path);
                }
            }
        }
        if let Err(e) = record.save(dir) {
            report.record_error = Some(e.to_string());
        }
    }
    Ok(report)
}

fn judge(f: &crate::FileEntry, d: &Digests) -> FileStatus {
    if let Some(expected) = f.size {
        if expected != d.size {
            return FileStatus::Size {
                expected,
                actual: d.size,
            };
        }
    }
    if let Some(expected) = f.sha256 {
        if expected != d.sha256 {
            return FileStatus::Hash {
                algorithm: HashAlgorithm::Sha256,
                expected: hex::encode(expected),
                actual: hex::encode(d.sha256),
            };
        }
    }
    if let (Some(expected), Some(actual)) = (f.md5, d.md5) {
        if expected != actual {
            return FileStatus::Hash {
                algorithm: HashAlgorithm::Md5,
                expected: hex::encode(expected),
                actual: hex::encode(actual),
            };
        }
    }
    if f.sha256.is_none() && f.md5.is_none() {
        FileStatus::Unpinned
    } else {
        FileStatus::Ok
    }
}

fn check_one(
    dir: &Path,
    job: &Job,
    record: &Record,
    trust_record: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Outcome {
    let path = dir.join(&job.path);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::Missing,
        Err(e) => return Outcome::Unreadable(e.to_string()),
    };
    if !meta.is_file() {
        return Outcome::Unreadable("not a regular file".into());
    }
    if let Some(expected) = job.expected_size {
        if expected != meta.len() && !job.needed_by_release {
            return Outcome::SizeOnly(meta.len());
        }
    }
    let (size_before, mtime_ns) = match stat_file(&path) {
        Ok(s) => s,
        Err(e) => return Outcome::Unreadable(e.to_string()),
    };
    if trust_record {
        if let Some(entry) = record.fresh_entry(dir, &job.path) {
            let sha = crate::parse_hex::<32>(&entry.sha256).ok();
            let md5 = entry
                .md5
                .as_deref()
                .and_then(|m| crate::parse_hex::<16>(m).ok());
            if let Some(sha256) = sha {
                if !job.want_md5 || md5.is_some() {
                    return Outcome::Hashed {
                        digests: Digests {
                            size: entry.size,
                            sha256,
                            md5: if job.want_md5 { md5 } else { None },
                        },
                        mtime_ns,
                        from_record: true,
                        stable: true,
                    };
                }
            }
        }
    }
    match hash_file(&path, job.want_md5, progress) {
        Ok(digests) => {
            // A file written to while we hashed must not be recorded as verified.
            let stable =
                stat_file(&path).is_ok_and(|s| s == (size_before, mtime_ns) && s.0 == digests.size);
            Outcome::Hashed {
                digests,
                mtime_ns,
                from_record: false,
                stable,
            }
        }
        Err(e) => Outcome::Unreadable(e.to_string()),
    }
}
