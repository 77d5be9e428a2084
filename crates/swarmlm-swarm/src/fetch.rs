//! `fetch`: magnet / .torrent / manifest → verified files in a model folder.
//!
//! The download goes to `<out>/.swarmlm/partial/`; each file is SHA-256-hashed as its pieces
//! arrive (see [`crate::hasher`]) and hard-linked into `<out>/` the moment it is complete and
//! matches the manifest. The partial names stay until the whole fetch is done, so a rerun after
//! a crash (even `kill -9`) finds every verified piece where librqbit left it: librqbit re-checks
//! the partial area on add (no fast-resume state to trust, trap 17) and only the missing pieces
//! are downloaded again. Peers are re-supplied on every run (trap 7). Files of the user's are
//! never overwritten: a link onto an existing name fails instead of replacing it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use librqbit::{AddTorrent, AddTorrentOptions, AddTorrentResponse, ManagedTorrent};
use sha2::{Digest, Sha256};
use swarmlm_manifest::store::data_len;
use swarmlm_manifest::{record::stat_file, FileEntry, Magnet, Manifest, ModelFormat, Record};

use crate::error::SwarmError;
use crate::events::{Event, PeerReport};
use crate::hasher::{spawn_hasher, FileHasher, HashJob, HashResult, NotifyingStorageFactory};
use crate::session::{SessionConfig, SwarmSession};
use crate::util::{check_relative_path, glob_match, safe_dir_name};

/// Where `<out>/.swarmlm/` keeps the download in progress.
pub const PARTIAL_DIR: &str = "partial";
/// The torrent of a fetched model, kept so `seed` can serve it without re-creating it.
pub const TORRENT_FILE: &str = "model.torrent";

/// What to fetch.
#[derive(Debug, Clone)]
pub enum Source {
    /// A magnet link (metadata via BEP 9 from peers).
    Magnet(String),
    /// A .torrent file's bytes.
    TorrentFile { path: PathBuf, bytes: Vec<u8> },
    /// A manifest: the trust root with SHA-256 per file, and the magnet to fetch.
    Manifest { path: PathBuf, manifest: Manifest },
}

impl Source {
    /// Reads what the user typed: a magnet link, a `.torrent` file, a manifest `.toml`, or the
    /// name of a manifest in one of `manifest_dirs` (`<dir>/<name>.toml`).
    pub fn resolve(input: &str, manifest_dirs: &[PathBuf]) -> Result<Source, SwarmError> {
        let trimmed = input.trim();
        if trimmed.len() >= 7 && trimmed[..7].eq_ignore_ascii_case("magnet:") {
            Magnet::parse(trimmed).map_err(|e| SwarmError::InvalidMagnet {
                input: trimmed.to_string(),
                reason: e.to_string(),
            })?;
            return Ok(Source::Magnet(trimmed.to_string()));
        }
        let path = Path::new(input);
        if path.is_file() {
            let is_toml = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
            if is_toml {
                return Self::manifest_file(path);
            }
            let bytes = std::fs::read(path).map_err(|e| SwarmError::io(path, e))?;
            check_torrent_bytes(path, &bytes)?;
            return Ok(Source::TorrentFile {
                path: path.to_path_buf(),
                bytes,
            });
        }
        if path.is_dir() {
            let m = path
                .join(swarmlm_manifest::STATE_DIR)
                .join(swarmlm_manifest::MANIFEST_FILE);
            if m.is_file() {
                return Self::manifest_file(&m);
            }
        }
        if safe_dir_name(input).is_some() {
            for dir in manifest_dirs {
                let candidate = dir.join(format!("{input}.toml"));
                if candidate.is_file() {
                    return Self::manifest_file(&candidate);
                }
            }
        }
        Err(SwarmError::UnknownSource {
            what: input.to_string(),
            searched: manifest_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    fn manifest_file(path: &Path) -> Result<Source, SwarmError> {
        let manifest = Manifest::load(path).map_err(|e| SwarmError::Manifest {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Source::Manifest {
            path: path.to_path_buf(),
            manifest,
        })
    }

    /// The info hash, when known before any metadata arrives.
    fn known_info_hash(&self) -> Option<[u8; 20]> {
        match self {
            Source::Magnet(m) => Magnet::parse(m).ok().map(|m| m.info_hash),
            Source::Manifest { manifest, .. } => Some(manifest.info_hash),
            Source::TorrentFile { .. } => None,
        }
    }

    /// A name for the default output folder, when known before metadata.
    fn name_hint(&self) -> Option<String> {
        match self {
            Source::Manifest { manifest, .. } => Some(manifest.name.clone()),
            Source::Magnet(m) => Magnet::parse(m).ok().and_then(|m| m.display_name),
            Source::TorrentFile { .. } => None,
        }
    }
}

/// Parses a .torrent strictly enough that librqbit will accept it: bencode, v1 info dict,
/// valid piece table, safe file names.
pub fn check_torrent_bytes(path: &Path, bytes: &[u8]) -> Result<(), SwarmError> {
    let bad = |reason: String| SwarmError::BadTorrentFile {
        path: path.to_path_buf(),
        reason,
    };
    // Our strict reader first (padding files, piece count, duplicates: traps 4 and 5), then
    // librqbit's own view, which is what will actually run.
    crate::torrent::parse_torrent(bytes).map_err(|e| bad(e.to_string()))?;
    let parsed = librqbit::torrent_from_bytes(bytes).map_err(|e| bad(format!("{e:#}")))?;
    let info = parsed
        .info
        .data
        .validate()
        .map_err(|e| bad(format!("{e:#}")))?;
    for fd in info.iter_file_details() {
        let name = fd.filename.to_vec().join("/");
        if !utf8_components(&fd.filename) {
            return Err(bad(format!("file name {name:?} is not UTF-8")));
        }
        check_relative_path(&name).map_err(|r| bad(format!("file name {name:?}: {r}")))?;
    }
    Ok(())
}

/// Trap 6: a file name that is not UTF-8 panics inside librqbit, so it is refused first.
fn utf8_components<B: AsRef<[u8]>>(name: &librqbit::FileIteratorName<'_, B>) -> bool {
    name.iter_components_bytes()
        .all(|c| std::str::from_utf8(c).is_ok())
}

/// Everything `fetch` needs besides the source.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Model folder; default `<store>/<name>`.
    pub out: Option<PathBuf>,
    /// Where models go when `out` is not given (see [`crate::util::default_store`]).
    pub store: Option<PathBuf>,
    /// Peers to dial (magnet `x.pe` is ignored by librqbit, trap 1).
    pub peers: Vec<SocketAddr>,
    pub session: SessionConfig,
    /// Only files matching one of these globs (all when empty).
    pub only: Vec<String>,
    /// No verified byte for this long → fail (traps 12 and 15).
    pub stall_timeout: Duration,
}

/// What a successful fetch did.
#[derive(Debug, Clone)]
pub struct FetchOutcome {
    pub out_dir: PathBuf,
    pub name: String,
    pub info_hash: String,
    pub magnet: String,
    /// Files moved into place by this run.
    pub files_fetched: Vec<String>,
    /// Files already in place and verified.
    pub files_skipped: Vec<String>,
    /// Payload bytes received from peers by this run.
    pub downloaded_bytes: u64,
}

/// One file of the torrent.
#[derive(Debug, Clone)]
struct TFile {
    path: String,
    len: u64,
    offset: u64,
    padding: bool,
}

/// Fetches, verifies and places a model; `emit` receives progress.
pub async fn fetch(
    source: Source,
    opts: FetchOptions,
    emit: &(dyn Fn(&Event) + Sync),
) -> Result<FetchOutcome, SwarmError> {
    let started = Instant::now();
    let hint_dir = match (&opts.out, source.name_hint()) {
        (Some(o), _) => o.clone(),
        (None, Some(n)) => opts
            .store
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .join(n),
        (None, None) => opts.store.clone().unwrap_or_else(std::env::temp_dir),
    };
    let session = SwarmSession::start(&opts.session, &hint_dir).await?;
    let result = fetch_in_session(&session, source, &opts, emit, started).await;
    session.stop().await;
    result
}

async fn fetch_in_session(
    session: &SwarmSession,
    source: Source,
    opts: &FetchOptions,
    emit: &(dyn Fn(&Event) + Sync),
    started: Instant,
) -> Result<FetchOutcome, SwarmError> {
    let known_hash = source.known_info_hash().map(hex::encode);
    let hash_label = known_hash
        .clone()
        .unwrap_or_else(|| "(from .torrent)".into());

    // 1. Metadata: from the .torrent, or BEP 9 from peers for a magnet (bounded: trap 15).
    let (add, trackers): (AddTorrent<'static>, Vec<String>) = match &source {
        Source::Magnet(m) => (
            AddTorrent::from_url(m.clone()),
            Magnet::parse(m).map(|m| m.trackers).unwrap_or_default(),
        ),
        Source::Manifest { manifest, .. } => (
            AddTorrent::from_url(manifest.magnet.clone()),
            Magnet::parse(&manifest.magnet)
                .map(|m| m.trackers)
                .unwrap_or_default(),
        ),
        Source::TorrentFile { bytes, .. } => (AddTorrent::from_bytes(bytes.clone()), Vec::new()),
    };
    let mut all_trackers = trackers;
    all_trackers.extend(opts.session.extra_trackers.iter().map(|u| u.to_string()));
    let list_opts = AddTorrentOptions {
        list_only: true,
        // Naming the folder keeps librqbit from deriving one from untrusted torrent names.
        output_folder: Some(std::env::temp_dir().to_string_lossy().into_owned()),
        initial_peers: Some(opts.peers.clone()),
        ..Default::default()
    };
    let listed = tokio::time::timeout(
        opts.stall_timeout,
        session.inner().add_torrent(add, Some(list_opts)),
    )
    .await;
    let no_metadata = || SwarmError::NoMetadata {
        info_hash: hash_label.clone(),
        waited: opts.stall_timeout,
        peers: opts.peers.iter().map(|p| p.to_string()).collect(),
        trackers: all_trackers.clone(),
    };
    let listed = match listed {
        Err(_elapsed) => return Err(no_metadata()),
        Ok(Err(e)) => {
            let reason = format!("{e:#}");
            if reason.contains("exhausted") || reason.contains("no known way to resolve peers") {
                return Err(no_metadata());
            }
            return Err(match &source {
                Source::TorrentFile { path, .. } => SwarmError::BadTorrentFile {
                    path: path.clone(),
                    reason,
                },
                _ => SwarmError::AddTorrent {
                    info_hash: hash_label.clone(),
                    reason,
                },
            });
        }
        Ok(Ok(AddTorrentResponse::ListOnly(l))) => l,
        Ok(Ok(_)) => {
            return Err(SwarmError::AddTorrent {
                info_hash: hash_label,
                reason: "librqbit started the torrent instead of listing it".into(),
            })
        }
    };
    let info_hash = listed.info_hash.as_string();
    let piece_length = u64::from(listed.info.info().piece_length);
    let total_length = listed.info.lengths().total_length();
    let torrent_name = listed
        .info
        .name()
        .map(|n| n.into_owned())
        .unwrap_or_default();

    // Metadata from peers is as untrusted as a .torrent: read it with the strict reader too.
    let strict = crate::torrent::parse_torrent(&listed.torrent_bytes).map_err(|e| {
        SwarmError::BadTorrentFile {
            path: PathBuf::from(format!("metadata of {info_hash}")),
            reason: e.to_string(),
        }
    })?;
    if hex::encode(strict.info_hash) != info_hash {
        return Err(SwarmError::BadTorrentFile {
            path: PathBuf::from(format!("metadata of {info_hash}")),
            reason: format!(
                "info hash computed as {}, librqbit says {info_hash}",
                hex::encode(strict.info_hash)
            ),
        });
    }

    // 2. The torrent's file table, checked (trap 16: names are untrusted here too).
    let mut files = Vec::new();
    let mut offset = 0u64;
    for fd in listed.info.iter_file_details() {
        let path = fd.filename.to_vec().join("/");
        if !utf8_components(&fd.filename) {
            return Err(SwarmError::UnsafePath {
                path,
                reason: "not UTF-8".into(),
            });
        }
        check_relative_path(&path).map_err(|reason| SwarmError::UnsafePath {
            path: path.clone(),
            reason,
        })?;
        files.push(TFile {
            path,
            len: fd.len,
            offset,
            padding: fd.attrs().padding,
        });
        offset += fd.len;
    }

    // 3. The manifest: the given one, or the one stored by an earlier run of this model.
    let name = match &source {
        Source::Manifest { manifest, .. } => manifest.name.clone(),
        _ => source
            .name_hint()
            .filter(|n| safe_dir_name(n).is_some())
            .or_else(|| Some(torrent_name.clone()).filter(|n| safe_dir_name(n).is_some()))
            .unwrap_or_else(|| info_hash.clone()),
    };
    let out_dir = match &opts.out {
        Some(o) => o.clone(),
        None => opts
            .store
            .clone()
            .ok_or_else(|| SwarmError::Session {
                reason: "no --out given and no model store (set SWARMLM_HOME or HOME)".into(),
            })?
            .join(&name),
    };
    let state_dir = out_dir.join(swarmlm_manifest::STATE_DIR);
    let stored_manifest_path = state_dir.join(swarmlm_manifest::MANIFEST_FILE);
    let mut manifest: Option<Manifest> = match &source {
        Source::Manifest { manifest, .. } => Some(manifest.clone()),
        _ => None,
    };
    let mut trust_on_first_use = manifest.is_none();
    if manifest.is_none() && stored_manifest_path.is_file() {
        if let Ok(stored) = Manifest::load(&stored_manifest_path) {
            if hex::encode(stored.info_hash) == info_hash {
                manifest = Some(stored);
                trust_on_first_use = false;
            }
        }
    }
    if let Some(m) = &manifest {
        cross_check(m, &info_hash, piece_length, &files)?;
        strict
            .check_manifest(m)
            .map_err(|e| SwarmError::TorrentManifestMismatch {
                manifest: m.name.clone(),
                detail: e.to_string(),
            })?;
    }
    if let Ok(stored) = Manifest::load(&stored_manifest_path) {
        if hex::encode(stored.info_hash) != info_hash {
            return Err(SwarmError::TorrentManifestMismatch {
                manifest: stored_manifest_path.display().to_string(),
                detail: format!(
                    "{} already holds model {:?} (info hash {}), not {}; choose another --out",
                    out_dir.display(),
                    stored.name,
                    hex::encode(stored.info_hash),
                    info_hash
                ),
            });
        }
    }
    // Trust on first use for a published manifest that leaves sizes or hashes open (Mistral's
    // magnet-only releases): the user's copy from an earlier fetch of the same torrent already
    // pinned them, and holds this folder to them.
    if let (Some(m), Ok(user_copy)) = (manifest.as_mut(), Manifest::load(&stored_manifest_path)) {
        if user_copy.info_hash == m.info_hash {
            fill_unknowns(m, &user_copy);
        }
    }
    let magnet = match &manifest {
        Some(m) => m.magnet.clone(),
        None => match &source {
            Source::Magnet(m) => m.clone(),
            _ => Magnet {
                info_hash: listed.info_hash.0,
                display_name: Some(name.clone()),
                trackers: all_trackers.clone(),
            }
            .to_uri(),
        },
    };
    let expected_sha = |path: &str| -> Option<[u8; 32]> {
        manifest
            .as_ref()
            .and_then(|m| m.file(path))
            .and_then(|f| f.sha256)
    };

    // 4. Which files to fetch: selected by --only, not already in place and verified.
    let mut selected: Vec<usize> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        if f.padding {
            continue;
        }
        if opts.only.is_empty() || opts.only.iter().any(|g| glob_match(g, &f.path)) {
            selected.push(i);
        }
    }
    if selected.is_empty() {
        return Err(SwarmError::OnlyMatchesNothing {
            pattern: opts.only.join(" "),
        });
    }
    std::fs::create_dir_all(&state_dir).map_err(|e| SwarmError::io(&state_dir, e))?;
    let mut record = Record::load(&out_dir).unwrap_or_default();
    record.version = 1;
    let mut wanted: Vec<usize> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for &i in &selected {
        let f = &files[i];
        let final_path = out_dir.join(&f.path);
        match std::fs::symlink_metadata(&final_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => wanted.push(i),
            Err(e) => return Err(SwarmError::io(&final_path, e)),
            Ok(meta) => {
                let same = meta.is_file()
                    && meta.len() == f.len
                    && match expected_sha(&f.path) {
                        Some(want) => {
                            let fresh = record
                                .fresh_entry(&out_dir, &f.path)
                                .is_some_and(|e| e.sha256 == hex::encode(want) && e.size == f.len);
                            fresh || sha256_file(&final_path)? == want
                        }
                        // Nothing to compare with: only our own record of this torrent vouches.
                        None => false,
                    };
                if !same {
                    return Err(SwarmError::WouldOverwrite {
                        path: final_path,
                        file: f.path.clone(),
                    });
                }
                if record.fresh_entry(&out_dir, &f.path).is_none() {
                    if let Some(sha) = expected_sha(&f.path) {
                        record_file(&mut record, &out_dir, &f.path, sha)?;
                    }
                }
                skipped.push(f.path.clone());
                emit(&Event::FileSkipped {
                    path: f.path.clone(),
                    size: f.len,
                });
            }
        }
    }
    let wanted_bytes: u64 = wanted.iter().map(|&i| files[i].len).sum();
    emit(&Event::Metadata {
        name: name.clone(),
        info_hash: info_hash.clone(),
        files: files.iter().filter(|f| !f.padding).count(),
        total_bytes: total_length,
        wanted_bytes,
    });

    // The manifest this folder will be verified against from now on.
    let mut stored = match &manifest {
        Some(m) => Some(m.clone()),
        None => derive_manifest(&name, &magnet, listed.info_hash.0, piece_length, &files),
    };
    if let Some(m) = &stored {
        save_manifest(m, &stored_manifest_path)?;
    }
    let torrent_path = state_dir.join(TORRENT_FILE);
    swarmlm_manifest::atomic_write(&torrent_path, &listed.torrent_bytes)
        .map_err(|e| SwarmError::io(&torrent_path, e))?;
    record.save(&out_dir).map_err(|e| SwarmError::Manifest {
        path: swarmlm_manifest::record::record_path(&out_dir),
        reason: e.to_string(),
    })?;

    let partial_dir = state_dir.join(PARTIAL_DIR);
    let mut fetched: Vec<String> = Vec::new();
    let mut downloaded_bytes = 0u64;
    let mut rejected_report: Vec<PeerReport> = Vec::new();

    let handle = if wanted.is_empty() {
        None
    } else {
        // A successful fetch removes the partial area: finding it means an interrupted run.
        let interrupted = partial_dir.is_dir();
        std::fs::create_dir_all(&partial_dir).map_err(|e| SwarmError::io(&partial_dir, e))?;
        let (piece_tx, piece_rx) = mpsc::channel::<u32>();
        let mut peers = opts.peers.clone();
        for p in &listed.seen_peers {
            if !peers.contains(p) {
                peers.push(*p);
            }
        }
        let add_opts = AddTorrentOptions {
            overwrite: true,
            output_folder: Some(partial_dir.to_string_lossy().into_owned()),
            only_files: Some(wanted.clone()),
            initial_peers: Some(peers),
            storage_factory: Some(librqbit::storage::StorageFactoryExt::boxed(
                NotifyingStorageFactory::new(piece_tx),
            )),
            ..Default::default()
        };
        if let Some(e) = interrupted
            .then(|| left_over(&partial_dir, &files, &selected, &wanted))
            .flatten()
        {
            emit(&e);
        }
        let handle = session
            .add_torrent_bytes(listed.torrent_bytes.to_vec(), add_opts, &info_hash)
            .await?;

        {
            let r = download(
                session.inner(),
                &handle,
                DownloadPlan {
                    files: &files,
                    wanted: &wanted,
                    partial_dir: &partial_dir,
                    out_dir: &out_dir,
                    piece_length,
                    total_length,
                    wanted_bytes,
                    info_hash: &info_hash,
                    name: &name,
                    stall_timeout: opts.stall_timeout,
                },
                piece_rx,
                &expected_sha,
                emit,
                |path, sha| {
                    record_file(&mut record, &out_dir, path, sha)?;
                    record.save(&out_dir).map_err(|e| SwarmError::Manifest {
                        path: swarmlm_manifest::record::record_path(&out_dir),
                        reason: e.to_string(),
                    })?;
                    if trust_on_first_use {
                        if let Some(m) = stored.as_mut() {
                            if let Some(entry) = m.files.iter_mut().find(|f| f.path == path) {
                                entry.sha256 = Some(sha);
                            }
                            save_manifest(m, &stored_manifest_path)?;
                        }
                    }
                    fetched.push(path.to_string());
                    Ok(())
                },
            )
            .await;
            downloaded_bytes = handle
                .live()
                .map(|l| l.stats_snapshot().fetched_bytes)
                .unwrap_or(0);
            r?;
            rejected_report = peer_reports(&handle, &info_hash)
                .into_iter()
                .filter(|p| !p.pieces_rejected.is_empty())
                .collect();
        }
        Some(handle)
    };

    emit(&Event::Done {
        name: name.clone(),
        info_hash: info_hash.clone(),
        magnet: magnet.clone(),
        out_dir: out_dir.display().to_string(),
        files: selected.len(),
        total_bytes: selected.iter().map(|&i| files[i].len).sum(),
        downloaded_bytes,
        elapsed_secs: started.elapsed().as_secs_f64(),
        rejected_peers: rejected_report,
    });

    if let Some(h) = &handle {
        let _ = session
            .inner()
            .delete(librqbit::api::TorrentIdOrHash::Id(h.id()), false)
            .await;
    }
    // Every selected file is in place under its final name; the partial names are spare.
    if partial_dir.exists() {
        std::fs::remove_dir_all(&partial_dir).map_err(|e| SwarmError::io(&partial_dir, e))?;
    }
    // Trust on first use, completed: once every file of a manifest with unknown sizes or
    // SHA-256 is in place, check everything the manifest and a RELEASE md5 list can check (the
    // SHA-1 pieces already held every byte to the info hash), then record what was observed in
    // the user's copy. The published manifest is never changed.
    let complete = selected.len() == files.iter().filter(|f| !f.padding).count();
    if let Some(m) = stored.as_mut().filter(|m| complete && has_unknowns(m)) {
        pin_after_verify(m, &out_dir, piece_length).await?;
        save_manifest(m, &stored_manifest_path)?;
    }
    Ok(FetchOutcome {
        out_dir,
        name,
        info_hash,
        magnet,
        files_fetched: fetched,
        files_skipped: skipped,
        downloaded_bytes,
    })
}

struct DownloadPlan<'a> {
    files: &'a [TFile],
    wanted: &'a [usize],
    partial_dir: &'a Path,
    out_dir: &'a Path,
    piece_length: u64,
    total_length: u64,
    wanted_bytes: u64,
    info_hash: &'a str,
    name: &'a str,
    stall_timeout: Duration,
}

/// Runs the download of `plan.wanted` until every file is hashed and placed, or the watchdog
/// fires.
async fn download(
    session: &std::sync::Arc<librqbit::Session>,
    handle: &ManagedTorrent,
    plan: DownloadPlan<'_>,
    piece_rx: mpsc::Receiver<u32>,
    expected_sha: &dyn Fn(&str) -> Option<[u8; 32]>,
    emit: &(dyn Fn(&Event) + Sync),
    mut on_placed: impl FnMut(&str, [u8; 32]) -> Result<(), SwarmError>,
) -> Result<(), SwarmError> {
    // Wait for librqbit's check of the partial area (a resume re-hashes it here).
    let mut last_progress = (0u64, Instant::now());
    loop {
        let done = handle.with_state(|s| match s {
            librqbit::ManagedTorrentState::Initializing(_) => Ok(false),
            librqbit::ManagedTorrentState::Error(e) => Err(format!("{e:#}")),
            _ => Ok(true),
        });
        match done {
            Ok(true) => break,
            Ok(false) => {}
            Err(reason) => {
                return Err(SwarmError::Torrent {
                    info_hash: plan.info_hash.to_string(),
                    reason,
                })
            }
        }
        let checked = handle.stats().progress_bytes;
        if checked != last_progress.0 {
            last_progress = (checked, Instant::now());
        } else if last_progress.1.elapsed() > plan.stall_timeout {
            return Err(SwarmError::Torrent {
                info_hash: plan.info_hash.to_string(),
                reason: format!(
                    "checking the partial download in {} made no progress",
                    plan.partial_dir.display()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let initial: Vec<u32> = librqbit::Api::new(session.clone(), None)
        .api_dump_haves(librqbit::api::TorrentIdOrHash::Id(handle.id()))
        .map(|(bf, _)| bf.iter_ones().map(|i| i as u32).collect())
        .unwrap_or_default();
    let jobs: Vec<HashJob> = plan
        .wanted
        .iter()
        .map(|&i| HashJob {
            index: i,
            partial_path: plan.partial_dir.join(&plan.files[i].path),
            offset: plan.files[i].offset,
            len: plan.files[i].len,
        })
        .collect();
    // Empty files have no pieces and librqbit may not create them.
    for &i in plan.wanted {
        if plan.files[i].len == 0 {
            let p = plan.partial_dir.join(&plan.files[i].path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| SwarmError::io(parent, e))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| SwarmError::io(&p, e))?;
        }
    }
    let (result_tx, result_rx) = mpsc::channel();
    let hasher = FileHasher::new(plan.piece_length, plan.total_length, jobs);
    let _hasher_thread = spawn_hasher(hasher, initial, piece_rx, result_tx);

    let mut placed: BTreeSet<usize> = BTreeSet::new();
    let mut last_have = (u64::MAX, Instant::now());
    let mut last_emit = Instant::now() - Duration::from_secs(10);
    let mut hashed_events = 0u64;
    loop {
        while let Ok(r) = result_rx.try_recv() {
            hashed_events += 1;
            match r {
                HashResult::Failed { path, error, .. } => return Err(SwarmError::io(path, error)),
                HashResult::Done { index, sha256 } => {
                    let f = &plan.files[index];
                    if let Some(want) = expected_sha(&f.path) {
                        if want != sha256 {
                            return Err(SwarmError::HashMismatch {
                                file: f.path.clone(),
                                expected: hex::encode(want),
                                actual: hex::encode(sha256),
                                partial: plan.partial_dir.join(&f.path),
                            });
                        }
                    }
                    place(plan.partial_dir, plan.out_dir, &f.path, sha256)?;
                    on_placed(&f.path, sha256)?;
                    placed.insert(index);
                    emit(&Event::FileVerified {
                        path: f.path.clone(),
                        size: f.len,
                        sha256: hex::encode(sha256),
                    });
                }
            }
        }
        let stats = handle.stats();
        if let Some(err) = &stats.error {
            return Err(SwarmError::Torrent {
                info_hash: plan.info_hash.to_string(),
                reason: err.clone(),
            });
        }
        if placed.len() == plan.wanted.len() {
            emit_progress(handle, &plan, placed.len(), emit);
            return Ok(());
        }
        let progress = stats.progress_bytes + hashed_events;
        if progress != last_have.0 {
            last_have = (progress, Instant::now());
        } else if last_have.1.elapsed() >= plan.stall_timeout {
            return Err(SwarmError::Stalled {
                name: plan.name.to_string(),
                waited: plan.stall_timeout,
                have: stats.progress_bytes,
                total: plan.wanted_bytes,
                peers: peer_reports(handle, plan.info_hash),
            });
        }
        if last_emit.elapsed() >= Duration::from_millis(500) {
            emit_progress(handle, &plan, placed.len(), emit);
            last_emit = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn emit_progress(
    handle: &ManagedTorrent,
    plan: &DownloadPlan<'_>,
    files_verified: usize,
    emit: &(dyn Fn(&Event) + Sync),
) {
    let stats = handle.stats();
    let (down, up, peers, fetched) = match &stats.live {
        Some(l) => (
            l.download_speed.mbps * 1024.0 * 1024.0,
            l.upload_speed.mbps * 1024.0 * 1024.0,
            l.snapshot.peer_stats.live as usize,
            l.snapshot.fetched_bytes,
        ),
        None => (0.0, 0.0, 0, 0),
    };
    let remaining = stats.total_bytes.saturating_sub(stats.progress_bytes);
    emit(&Event::Progress {
        have_bytes: stats.progress_bytes,
        wanted_bytes: stats.total_bytes.max(plan.wanted_bytes),
        downloaded_bytes: fetched,
        download_bps: down,
        upload_bps: up,
        peers,
        eta_secs: (down > 1.0).then(|| remaining as f64 / down),
        files_verified,
        files_wanted: plan.wanted.len(),
    });
}

/// What librqbit knows about each peer of a torrent, with the pieces each one had rejected.
pub fn peer_reports(handle: &ManagedTorrent, info_hash: &str) -> Vec<PeerReport> {
    let mut out: BTreeMap<String, PeerReport> = BTreeMap::new();
    if let Some(live) = handle.live() {
        // The filter type is not exported by librqbit; it deserializes from its JSON form.
        if let Ok(filter) = serde_json::from_value(serde_json::json!({ "state": "all" })) {
            let snap = live.per_peer_stats_snapshot(filter);
            if let Ok(v) = serde_json::to_value(&snap) {
                if let Some(peers) = v.get("peers").and_then(|p| p.as_object()) {
                    for (addr, p) in peers {
                        let c = &p["counters"];
                        let n = |k: &str| c.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
                        out.insert(
                            addr.clone(),
                            PeerReport {
                                addr: addr.clone(),
                                state: p["state"].as_str().unwrap_or("?").to_string(),
                                fetched_bytes: n("fetched_bytes"),
                                pieces_ok: n("downloaded_and_checked_pieces") as u32,
                                pieces_rejected: Vec::new(),
                                errors: n("errors") as u32,
                            },
                        );
                    }
                }
            }
        }
    }
    for (addr, pieces) in crate::rejects::rejected_pieces(info_hash) {
        out.entry(addr.clone())
            .or_insert_with(|| PeerReport {
                addr,
                state: "gone".into(),
                fetched_bytes: 0,
                pieces_ok: 0,
                pieces_rejected: Vec::new(),
                errors: 0,
            })
            .pieces_rejected = pieces;
    }
    out.into_values().collect()
}

/// Compares the torrent with the manifest before a byte is downloaded.
fn cross_check(
    m: &Manifest,
    info_hash: &str,
    piece_length: u64,
    files: &[TFile],
) -> Result<(), SwarmError> {
    let mismatch = |detail: String| SwarmError::TorrentManifestMismatch {
        manifest: m.name.clone(),
        detail,
    };
    if hex::encode(m.info_hash) != info_hash {
        return Err(mismatch(format!(
            "info hash is {info_hash}, the manifest says {}",
            hex::encode(m.info_hash)
        )));
    }
    if let Some(pl) = m.piece_length {
        if pl != piece_length {
            return Err(mismatch(format!(
                "piece length is {piece_length}, the manifest says {pl}"
            )));
        }
    }
    let torrent: BTreeMap<&str, u64> = files
        .iter()
        .filter(|f| !f.padding)
        .map(|f| (f.path.as_str(), f.len))
        .collect();
    for f in &m.files {
        match torrent.get(f.path.as_str()) {
            None => return Err(mismatch(format!("{} is not in the torrent", f.path))),
            Some(&len) => {
                if let Some(size) = f.size {
                    if size != len {
                        return Err(mismatch(format!(
                            "{} is {len} bytes in the torrent, {size} in the manifest",
                            f.path
                        )));
                    }
                }
            }
        }
    }
    for path in torrent.keys() {
        if m.file(path).is_none() {
            return Err(mismatch(format!(
                "the torrent has {path}, which the manifest does not list"
            )));
        }
    }
    Ok(())
}

/// A manifest for a bare magnet or .torrent, pinned file by file as downloads verify
/// (trust on first use). `None` when the format cannot be told from the file names.
fn derive_manifest(
    name: &str,
    magnet: &str,
    info_hash: [u8; 20],
    piece_length: u64,
    files: &[TFile],
) -> Option<Manifest> {
    let real: Vec<&TFile> = files.iter().filter(|f| !f.padding).collect();
    let format = ModelFormat::detect(real.iter().map(|f| f.path.as_str()));
    let format = match format {
        Some(f) => f,
        None => {
            tracing::warn!(
                "cannot tell the model format of {name} from its file names; no manifest stored"
            );
            return None;
        }
    };
    let m = Manifest {
        name: name.to_string(),
        description: String::new(),
        license: String::new(),
        source: "derived from the torrent on first download (trust on first use)".into(),
        format,
        magnet: magnet.to_string(),
        info_hash,
        piece_length: Some(piece_length),
        total_size: Some(real.iter().map(|f| f.len).sum()),
        files: real
            .iter()
            .map(|f| FileEntry {
                path: f.path.clone(),
                size: Some(f.len),
                sha256: None,
                md5: None,
            })
            .collect(),
    };
    m.validate().ok().map(|_| m)
}

fn has_unknowns(m: &Manifest) -> bool {
    m.piece_length.is_none()
        || m.total_size.is_none()
        || m.files
            .iter()
            .any(|f| f.size.is_none() || f.sha256.is_none())
}

/// Copies into `m` the sizes and SHA-256 that `pinned` (the user's copy of the same torrent)
/// knows and `m` leaves open; never overrides what `m` states. Left unchanged if the result
/// would not be a valid manifest.
fn fill_unknowns(m: &mut Manifest, pinned: &Manifest) {
    let mut filled = m.clone();
    for f in &mut filled.files {
        if let Some(p) = pinned.file(&f.path) {
            if f.size.is_none() {
                f.size = p.size;
            }
            if f.sha256.is_none() && f.size == p.size {
                f.sha256 = p.sha256;
            }
        }
    }
    if filled.piece_length.is_none() {
        filled.piece_length = pinned.piece_length;
    }
    if filled.total_size.is_none() && filled.files.iter().all(|f| f.size.is_some()) {
        filled.total_size = Some(filled.files.iter().filter_map(|f| f.size).sum());
    }
    if filled.validate().is_ok() {
        *m = filled;
    }
}

/// Verifies the complete folder against `m` (re-hashing only what the fetch record cannot
/// vouch for: md5 sums, the RELEASE list) and pins what verified.
async fn pin_after_verify(
    m: &mut Manifest,
    dir: &Path,
    piece_length: u64,
) -> Result<(), SwarmError> {
    let (d, mc) = (dir.to_path_buf(), m.clone());
    let not_verified = |reason: String| SwarmError::NotVerified {
        dir: dir.to_path_buf(),
        reason,
    };
    let report = tokio::task::spawn_blocking(move || {
        swarmlm_manifest::verify_dir(
            &d,
            &mc,
            &swarmlm_manifest::VerifyOptions {
                trust_record: true,
                update_record: true,
                ..Default::default()
            },
        )
    })
    .await
    .map_err(|e| not_verified(e.to_string()))?
    .map_err(|e| not_verified(e.to_string()))?;
    if !report.ok() {
        let failures: Vec<String> = report
            .failures()
            .map(|f| format!("{}: {}", f.path, f.status.label()))
            .collect();
        let release: Vec<String> = report
            .release
            .iter()
            .flatten()
            .filter(|r| r.status != swarmlm_manifest::FileStatus::Ok)
            .map(|r| format!("{}: RELEASE md5 {}", r.path, r.status.label()))
            .collect();
        return Err(not_verified(format!(
            "{}; nothing was pinned (run `swarmlm verify` for details)",
            [failures, release].concat().join(", ")
        )));
    }
    m.pin_unknowns(&report);
    if m.piece_length.is_none() {
        m.piece_length = Some(piece_length);
    }
    Ok(())
}

fn save_manifest(m: &Manifest, path: &Path) -> Result<(), SwarmError> {
    m.save(path).map_err(|e| SwarmError::Manifest {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn record_file(
    record: &mut Record,
    dir: &Path,
    path: &str,
    sha: [u8; 32],
) -> Result<(), SwarmError> {
    let full = dir.join(path);
    let (size, mtime_ns) = stat_file(&full).map_err(|e| SwarmError::io(&full, e))?;
    record.files.insert(
        path.to_string(),
        swarmlm_manifest::RecordEntry {
            size,
            mtime_ns,
            sha256: hex::encode(sha),
            md5: None,
            verified_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        },
    );
    Ok(())
}

/// Puts a verified partial file at its final name without ever replacing an existing file:
/// a hard link fails on an existing name, and then only identical content is accepted.
fn place(partial_dir: &Path, out_dir: &Path, rel: &str, sha: [u8; 32]) -> Result<(), SwarmError> {
    let from = partial_dir.join(rel);
    let to = out_dir.join(rel);
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| SwarmError::io(parent, e))?;
    }
    match std::fs::hard_link(&from, &to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let same_inode = {
                use std::os::unix::fs::MetadataExt;
                match (std::fs::metadata(&from), std::fs::metadata(&to)) {
                    (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                    _ => false,
                }
            };
            if same_inode || (to.is_file() && sha256_file(&to)? == sha) {
                Ok(())
            } else {
                Err(SwarmError::WouldOverwrite {
                    path: to,
                    file: rel.to_string(),
                })
            }
        }
        Err(e) => Err(SwarmError::io(&to, e)),
    }
}

/// What an interrupted run left for this one, if anything: see [`Event::Resuming`].
fn left_over(
    partial_dir: &Path,
    files: &[TFile],
    selected: &[usize],
    wanted: &[usize],
) -> Option<Event> {
    let partial_bytes: u64 = wanted
        .iter()
        .filter_map(|&i| data_len(&partial_dir.join(&files[i].path)).ok())
        .sum();
    let in_place: Vec<&TFile> = selected
        .iter()
        .filter(|i| !wanted.contains(i))
        .map(|&i| &files[i])
        .collect();
    (partial_bytes > 0 || !in_place.is_empty()).then(|| Event::Resuming {
        partial_dir: partial_dir.display().to_string(),
        partial_bytes,
        in_place_files: in_place.len(),
        in_place_bytes: in_place.iter().map(|f| f.len).sum(),
    })
}

fn sha256_file(path: &Path) -> Result<[u8; 32], SwarmError> {
    let mut f = std::fs::File::open(path).map_err(|e| SwarmError::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| SwarmError::io(path, e))?;
    Ok(h.finalize().into())
}
