//! Typed errors for fetch and seed: each names the input, file, peer or torrent concerned
//! and what was expected, so the CLI can print one readable message.

use std::path::PathBuf;
use std::time::Duration;

use crate::events::PeerReport;

/// Everything that can go wrong while fetching or seeding.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("not a valid magnet link {input:?}: {reason}")]
    InvalidMagnet { input: String, reason: String },

    #[error("{path}: not a valid .torrent file: {reason}")]
    BadTorrentFile { path: PathBuf, reason: String },

    #[error("{what:?} is not a magnet link, a .torrent, a manifest file or a model directory, and no manifest named {what:?} exists in {searched}")]
    UnknownSource { what: String, searched: String },

    #[error("manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },

    #[error("cannot start the BitTorrent session: {reason}")]
    Session { reason: String },

    #[error("cannot add torrent {info_hash}: {reason}")]
    AddTorrent { info_hash: String, reason: String },

    #[error("no metadata for {info_hash} after {}: no peer answered (peers tried: {}; trackers: {})",
        humanize(*waited), list_or_none(peers), list_or_none(trackers))]
    NoMetadata {
        info_hash: String,
        waited: Duration,
        peers: Vec<String>,
        trackers: Vec<String>,
    },

    #[error("download of {name} stalled: no progress for {} ({have} of {total} bytes verified); {}",
        humanize(*waited), describe_peers(peers))]
    Stalled {
        name: String,
        waited: Duration,
        have: u64,
        total: u64,
        peers: Vec<PeerReport>,
    },

    #[error("the torrent does not match the manifest {manifest}: {detail}")]
    TorrentManifestMismatch { manifest: String, detail: String },

    #[error("torrent file name {path:?} is unsafe: {reason}")]
    UnsafePath { path: String, reason: String },

    #[error(
        "{path}: already exists and differs from {file} in this model; refusing to overwrite it"
    )]
    WouldOverwrite { path: PathBuf, file: String },

    #[error("{file}: SHA-256 {actual} does not match the manifest's {expected}; the download stays in {partial}")]
    HashMismatch {
        file: String,
        expected: String,
        actual: String,
        partial: PathBuf,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("torrent {info_hash} failed in librqbit: {reason}")]
    Torrent { info_hash: String, reason: String },

    #[error("{dir}: verification failed before seeding: {reason}")]
    NotVerified { dir: PathBuf, reason: String },

    #[error("--only {pattern:?} matches no file of the torrent")]
    OnlyMatchesNothing { pattern: String },
}

impl SwarmError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SwarmError::Io {
            path: path.into(),
            source,
        }
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn describe_peers(peers: &[PeerReport]) -> String {
    if peers.is_empty() {
        return "no peer was ever seen".into();
    }
    let parts: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    format!("peers seen: {}", parts.join("; "))
}

/// "90s" → "1m30s": short, matching what `--stall-timeout` accepts.
pub fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    let ms = d.subsec_millis();
    if secs == 0 {
        return format!("{ms}ms");
    }
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}
