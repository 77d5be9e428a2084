//! What fetch and seed report while they run: the CLI renders these as a progress bar, plain
//! lines or JSON lines (`{"event":"progress",...}`), and tests parse the JSON form.

use std::fmt;

use serde::Serialize;

/// One peer as librqbit saw it, plus the pieces of its that failed the hash check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerReport {
    pub addr: String,
    /// librqbit's peer state: "live", "connecting", "queued", "dead", "not_needed".
    pub state: String,
    pub fetched_bytes: u64,
    pub pieces_ok: u32,
    /// Piece indexes this peer sent that failed their SHA-1 check.
    pub pieces_rejected: Vec<u32>,
    /// Connections to this peer that ended in an error (a rejected piece is one).
    pub errors: u32,
}

impl fmt::Display for PeerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {} bytes received, {} pieces verified, {} rejected",
            self.addr,
            self.state,
            self.fetched_bytes,
            self.pieces_ok,
            self.pieces_rejected.len()
        )?;
        if !self.pieces_rejected.is_empty() {
            let shown: Vec<String> = self
                .pieces_rejected
                .iter()
                .take(8)
                .map(|p| p.to_string())
                .collect();
            let more = if self.pieces_rejected.len() > 8 {
                ", ..."
            } else {
                ""
            };
            write!(f, ": pieces {}{more}", shown.join(", "))?;
        }
        write!(f, ", {} connection errors)", self.errors)
    }
}

/// Progress and milestones of a fetch or a seed.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The torrent's metadata is known (from the .torrent or BEP 9) and was checked.
    Metadata {
        name: String,
        info_hash: String,
        files: usize,
        total_bytes: u64,
        /// Bytes to download this run (selected files not yet in place).
        wanted_bytes: u64,
    },
    /// An interrupted run left something this one reuses: data in the partial area, which
    /// librqbit reads back and checks piece by piece before downloading the rest, and files it
    /// had already verified and put in place (each also reported as `file_skipped`). Sent before
    /// that check, which can take a minute on a large model and reports nothing while it runs.
    Resuming {
        partial_dir: String,
        /// Bytes of data the partial files of the files still to fetch hold: their written
        /// ranges, not their sparse length.
        partial_bytes: u64,
        /// Files the interrupted run had already verified and put in place, and their bytes.
        in_place_files: usize,
        in_place_bytes: u64,
    },
    /// Periodic download progress.
    Progress {
        have_bytes: u64,
        wanted_bytes: u64,
        downloaded_bytes: u64,
        download_bps: f64,
        upload_bps: f64,
        peers: usize,
        eta_secs: Option<f64>,
        files_verified: usize,
        files_wanted: usize,
    },
    /// A file passed its check and was moved into place.
    FileVerified {
        path: String,
        size: u64,
        sha256: String,
    },
    /// A file that was already in place and verified; not downloaded.
    FileSkipped { path: String, size: u64 },
    /// Everything selected is in place and verified.
    Done {
        name: String,
        info_hash: String,
        magnet: String,
        out_dir: String,
        files: usize,
        total_bytes: u64,
        downloaded_bytes: u64,
        elapsed_secs: f64,
        rejected_peers: Vec<PeerReport>,
    },
    /// Serving started.
    Seeding {
        name: String,
        info_hash: String,
        magnet: String,
        listen: String,
        dir: String,
    },
    /// Periodic seeding status.
    SeedProgress {
        peers: usize,
        uploaded_bytes: u64,
        upload_bps: f64,
    },
}
