//! swarmlm-manifest: the trust root of swarmlm.
//!
//! A manifest (`magnets/<name>.toml`, format in `magnets/README.md`) says where a model comes from
//! (a magnet URI) and what every one of its files must hash to. BitTorrent's own SHA-1 piece
//! hashes only protect against peers disagreeing with the torrent; the manifest's SHA-256 (or the
//! publisher's md5) is what ties the bytes to the release. This crate reads and writes manifests
//! strictly, verifies a model folder against one ([`verify_dir`]), and keeps the verification
//! record that lets later starts skip re-hashing ([`record_matches`]).

mod hashing;
pub mod magnet;
mod manifest;
pub mod record;
pub mod store;
mod verify;

use std::io::Write as _;
use std::path::{Path, PathBuf};

pub use hashing::{hash_file, read_full, Digests};
pub use magnet::{Magnet, MagnetError};
pub use manifest::{
    check_component, check_name, check_relative_path, parse_hex, FileEntry, Manifest,
    ManifestError, ModelFormat, PathProblem, MAX_PIECE_LENGTH, MIN_PIECE_LENGTH,
};
pub use record::{record_matches, Record, RecordEntry, RecordError, MANIFEST_FILE, STATE_DIR};
pub use verify::{
    parse_release, verify_dir, verify_dir_with_progress, FileReport, FileStatus, HashAlgorithm,
    ReleaseEntry, VerifyError, VerifyOptions, VerifyReport, RELEASE_FILE,
};

/// Write a file so that readers see either the old or the new content, never a mix: write a
/// temporary file next to it, fsync, rename over.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = parent.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(&parent) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The descriptive half of a manifest, supplied by whoever builds one from a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestMeta {
    pub name: String,
    pub description: String,
    pub license: String,
    pub source: String,
    /// `None`: detect from file names ([`ModelFormat::detect`]).
    pub format: Option<ModelFormat>,
}

/// What the torrent says about a folder: its magnet, piece length and files (torrent order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorrentFacts {
    pub magnet: String,
    pub piece_length: u64,
    /// `(path, size)` with `/`-separated paths, in torrent order.
    pub files: Vec<(String, u64)>,
}

/// Why a manifest could not be built from a folder.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot hash {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is {actual} bytes but the torrent says {expected}")]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("cannot tell the model format from the file names (no *.safetensors, no *.pth); give it explicitly")]
    UnknownFormat,
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// Build a manifest for a folder whose torrent is known: hash every listed file (SHA-256, in
/// parallel), check its size against the torrent, and fill in everything else from `meta` and
/// `facts`. Used after a first download of a magnet-only release (trust on first use) and by
/// tools that create torrents some other way.
pub fn manifest_from_dir(
    dir: &Path,
    meta: &ManifestMeta,
    facts: &TorrentFacts,
) -> Result<Manifest, BuildError> {
    let format = match meta.format {
        Some(f) => f,
        None => ModelFormat::detect(facts.files.iter().map(|(p, _)| p.as_str()))
            .ok_or(BuildError::UnknownFormat)?,
    };
    let info_hash = Magnet::parse(&facts.magnet)
        .map_err(|e| ManifestError::Field {
            field: "magnet".into(),
            problem: e.to_string(),
        })?
        .info_hash;
    for (path, _) in &facts.files {
        check_relative_path(path).map_err(|p| ManifestError::Field {
            field: "files.path".into(),
            problem: format!("{path:?}: {p}"),
        })?;
    }
    let results = hashing::run_parallel(&facts.files, hashing::default_threads(), |(path, _)| {
        hash_file(&dir.join(path), false, &|_| {})
    });
    let mut files = Vec::with_capacity(facts.files.len());
    for ((path, expected), result) in facts.files.iter().zip(results) {
        let full = dir.join(path);
        let digests = result.map_err(|source| BuildError::Io {
            path: full.clone(),
            source,
        })?;
        if digests.size != *expected {
            return Err(BuildError::SizeMismatch {
                path: full,
                expected: *expected,
                actual: digests.size,
            });
        }
        files.push(FileEntry {
            path: path.clone(),
            size: Some(digests.size),
            sha256: Some(digests.sha256),
            md5: None,
        });
    }
    let manifest = Manifest {
        name: meta.name.clone(),
        description: meta.description.clone(),
        license: meta.license.clone(),
        source: meta.source.clone(),
        format,
        magnet: facts.magnet.clone(),
        info_hash,
        piece_length: Some(facts.piece_length),
        total_size: Some(facts.files.iter().map(|(_, s)| s).sum()),
        files,
    };
    manifest.validate()?;
    Ok(manifest)
}

impl Manifest {
    /// Trust on first use: copy the size and SHA-256 of every file the manifest did not pin from a
    /// report in which that file verified (`Unpinned`, or `Ok` on md5/size only), and fill in
    /// `total_size` once every size is known. Returns how many files gained a pin. The caller
    /// saves the result as the user's copy; the published manifest is never changed.
    pub fn pin_unknowns(&mut self, report: &VerifyReport) -> usize {
        let mut pinned = 0;
        for f in &mut self.files {
            let Some(r) = report.files.iter().find(|r| r.path == f.path) else {
                continue;
            };
            if !r.status.is_ok() {
                continue;
            }
            let mut changed = false;
            if f.size.is_none() {
                f.size = r.size;
                changed |= r.size.is_some();
            }
            if f.sha256.is_none() {
                f.sha256 = r.actual_sha256;
                changed |= r.actual_sha256.is_some();
            }
            pinned += usize::from(changed);
        }
        if self.total_size.is_none() && self.files.iter().all(|f| f.size.is_some()) {
            self.total_size = Some(self.files.iter().filter_map(|f| f.size).sum());
        }
        pinned
    }
}
