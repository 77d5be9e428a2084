//! `seed`: serve a verified model folder to the swarm.
//!
//! librqbit does not re-verify files before serving them (trap 14), and its own full SHA-1
//! check on every start would re-read the whole model. So the folder is verified first against
//! its manifest — instantly when the verification record still matches sizes and mtimes, fully
//! with `recheck` — and librqbit is then handed a fast-resume bitfield saying "all pieces
//! present", in a persistence folder of ours (trap 8), which it spot-checks instead of re-reading
//! everything. Existing files need `overwrite: true` to be served at all (trap 2).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use librqbit::AddTorrentOptions;
use swarmlm_manifest::{Magnet, Manifest, VerifyOptions};

use crate::create::{create_torrent, CreateOptions, PieceSize};
use crate::error::SwarmError;
use crate::events::Event;
use crate::fetch::TORRENT_FILE;
use crate::session::{SessionConfig, SwarmSession};

/// Folder in `<dir>/.swarmlm/` for librqbit's persistence while seeding.
pub const SEED_STATE_DIR: &str = "rqbit";

/// A model folder ready to be served.
#[derive(Debug, Clone)]
pub struct SeedTarget {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub torrent_bytes: Vec<u8>,
}

impl SeedTarget {
    /// A model folder. `fetch` leaves `.swarmlm/manifest.toml` and `.swarmlm/model.torrent`
    /// in it; a folder without the torrent (a publisher's, or one made by `forge`) gets one
    /// created reproducibly, which must give the manifest's info hash, and a folder without a
    /// manifest gets the manifest of that torrent.
    pub fn from_dir(dir: &Path) -> Result<SeedTarget, SwarmError> {
        let state = dir.join(swarmlm_manifest::STATE_DIR);
        let manifest_path = state.join(swarmlm_manifest::MANIFEST_FILE);
        let torrent_path = state.join(TORRENT_FILE);
        let manifest = if manifest_path.is_file() {
            Some(
                Manifest::load(&manifest_path).map_err(|e| SwarmError::Manifest {
                    path: manifest_path.clone(),
                    reason: e.to_string(),
                })?,
            )
        } else {
            None
        };
        if let (Some(m), true) = (&manifest, torrent_path.is_file()) {
            let bytes =
                std::fs::read(&torrent_path).map_err(|e| SwarmError::io(&torrent_path, e))?;
            return Self::new(dir, m.clone(), bytes, &torrent_path);
        }
        let opts = CreateOptions {
            name: manifest.as_ref().map(|m| m.name.clone()),
            trackers: manifest
                .as_ref()
                .and_then(|m| Magnet::parse(&m.magnet).ok())
                .map(|m| m.trackers)
                .unwrap_or_default(),
            piece_size: manifest
                .as_ref()
                .and_then(|m| m.piece_length)
                .map_or(PieceSize::Auto, PieceSize::Fixed),
            format: manifest.as_ref().map(|m| m.format),
            description: manifest
                .as_ref()
                .map(|m| m.description.clone())
                .unwrap_or_default(),
            license: manifest
                .as_ref()
                .map(|m| m.license.clone())
                .unwrap_or_default(),
            source: manifest
                .as_ref()
                .map(|m| m.source.clone())
                .unwrap_or_default(),
        };
        std::fs::create_dir_all(&state).map_err(|e| SwarmError::io(&state, e))?;
        let created = create_torrent(dir, &opts).map_err(|e| SwarmError::NotVerified {
            dir: dir.to_path_buf(),
            reason: format!("cannot create its torrent: {e}"),
        })?;
        let manifest = match manifest {
            Some(m) => {
                if created.info_hash != m.info_hash {
                    return Err(SwarmError::TorrentManifestMismatch {
                        manifest: manifest_path.display().to_string(),
                        detail: format!(
                            "the files in {} give info hash {}, the manifest says {}",
                            dir.display(),
                            hex::encode(created.info_hash),
                            hex::encode(m.info_hash)
                        ),
                    });
                }
                m
            }
            None => {
                created
                    .manifest
                    .save(&manifest_path)
                    .map_err(|e| SwarmError::Manifest {
                        path: manifest_path.clone(),
                        reason: e.to_string(),
                    })?;
                created.manifest.clone()
            }
        };
        swarmlm_manifest::atomic_write(&torrent_path, &created.torrent_bytes)
            .map_err(|e| SwarmError::io(&torrent_path, e))?;
        Self::new(dir, manifest, created.torrent_bytes, &torrent_path)
    }

    /// Checks that the torrent is the manifest's (same info hash) and its files are safe.
    pub fn new(
        dir: &Path,
        manifest: Manifest,
        torrent_bytes: Vec<u8>,
        torrent_path: &Path,
    ) -> Result<SeedTarget, SwarmError> {
        crate::fetch::check_torrent_bytes(torrent_path, &torrent_bytes)?;
        let parsed = librqbit::torrent_from_bytes(&torrent_bytes).map_err(|e| {
            SwarmError::BadTorrentFile {
                path: torrent_path.to_path_buf(),
                reason: format!("{e:#}"),
            }
        })?;
        if parsed.info_hash.0 != manifest.info_hash {
            return Err(SwarmError::TorrentManifestMismatch {
                manifest: manifest.name.clone(),
                detail: format!(
                    "{} has info hash {}, the manifest says {}",
                    torrent_path.display(),
                    parsed.info_hash.as_string(),
                    hex::encode(manifest.info_hash)
                ),
            });
        }
        Ok(SeedTarget {
            dir: dir.to_path_buf(),
            manifest,
            torrent_bytes,
        })
    }
}

/// How to seed.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    pub session: SessionConfig,
    /// Hash every file even if the verification record still matches.
    pub recheck: bool,
}

/// Verifies the folder (fast path: the record), then serves it until `shutdown` resolves.
pub async fn seed(
    target: SeedTarget,
    opts: SeedOptions,
    emit: &(dyn Fn(&Event) + Sync),
    shutdown: impl Future<Output = ()>,
) -> Result<(), SwarmError> {
    let dir = target.dir.clone();
    let manifest = target.manifest.clone();
    let recheck = opts.recheck;
    let report = tokio::task::spawn_blocking(move || {
        swarmlm_manifest::verify_dir(
            &dir,
            &manifest,
            &VerifyOptions {
                trust_record: !recheck,
                update_record: true,
                ..Default::default()
            },
        )
    })
    .await
    .map_err(|e| SwarmError::NotVerified {
        dir: target.dir.clone(),
        reason: e.to_string(),
    })?
    .map_err(|e| SwarmError::NotVerified {
        dir: target.dir.clone(),
        reason: e.to_string(),
    })?;
    if !report.ok() {
        let failures: Vec<String> = report
            .failures()
            .map(|f| format!("{}: {}", f.path, f.status.label()))
            .collect();
        return Err(SwarmError::NotVerified {
            dir: target.dir.clone(),
            reason: format!("{} (run `swarmlm verify` for details)", failures.join(", ")),
        });
    }
    let unpinned: Vec<&str> = report
        .files
        .iter()
        .filter(|f| f.actual_sha256.is_none() && f.expected_sha256.is_none())
        .map(|f| f.path.as_str())
        .collect();
    if !unpinned.is_empty() {
        return Err(SwarmError::NotVerified {
            dir: target.dir.clone(),
            reason: format!("no hash to check {} against", unpinned.join(", ")),
        });
    }

    let persistence = target
        .dir
        .join(swarmlm_manifest::STATE_DIR)
        .join(SEED_STATE_DIR);
    prepare_fastresume(&persistence, &target)?;
    let mut config = opts.session.clone();
    config.persistence_dir = Some(persistence);
    let session = SwarmSession::start(&config, &target.dir).await?;
    let trackers: Vec<String> = config
        .extra_trackers
        .iter()
        .map(|u| u.to_string())
        .collect();
    let result = serve(&session, &target, &trackers, emit, shutdown).await;
    session.stop().await;
    result
}

async fn serve(
    session: &SwarmSession,
    target: &SeedTarget,
    extra_trackers: &[String],
    emit: &(dyn Fn(&Event) + Sync),
    shutdown: impl Future<Output = ()>,
) -> Result<(), SwarmError> {
    let info_hash = hex::encode(target.manifest.info_hash);
    let handle = session
        .add_torrent_bytes(
            target.torrent_bytes.clone(),
            AddTorrentOptions {
                overwrite: true,
                output_folder: Some(target.dir.to_string_lossy().into_owned()),
                ..Default::default()
            },
            &info_hash,
        )
        .await?;
    handle
        .wait_until_initialized()
        .await
        .map_err(|e| SwarmError::Torrent {
            info_hash: info_hash.clone(),
            reason: format!("{e:#}"),
        })?;
    let stats = handle.stats();
    if !stats.finished {
        return Err(SwarmError::NotVerified {
            dir: target.dir.clone(),
            reason: format!(
                "librqbit's piece check found only {} of {} bytes intact",
                stats.progress_bytes, stats.total_bytes
            ),
        });
    }

    let mut magnet = Magnet::parse(&target.manifest.magnet).map_err(|e| SwarmError::Manifest {
        path: target.dir.clone(),
        reason: e.to_string(),
    })?;
    for t in extra_trackers {
        if !magnet.trackers.contains(t) {
            magnet.trackers.push(t.clone());
        }
    }
    if magnet.display_name.is_none() {
        magnet.display_name = Some(target.manifest.name.clone());
    }
    // Signal handlers are installed when the shutdown future is first polled: poll it once
    // before saying "seeding", or a SIGTERM right after that line kills the process uncleanly.
    tokio::pin!(shutdown);
    tokio::select! {
        biased;
        _ = &mut shutdown => return Ok(()),
        _ = std::future::ready(()) => {}
    }
    emit(&Event::Seeding {
        name: target.manifest.name.clone(),
        info_hash,
        magnet: magnet.to_uri(),
        listen: session.listen_addr().to_string(),
        dir: target.dir.display().to_string(),
    });

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tick.tick() => {
                let stats = handle.stats();
                if let Some(e) = stats.error {
                    return Err(SwarmError::Torrent { info_hash: hex::encode(target.manifest.info_hash), reason: e });
                }
                let (peers, up) = match &stats.live {
                    Some(l) => (l.snapshot.peer_stats.live as usize, l.upload_speed.mbps * 1024.0 * 1024.0),
                    None => (0, 0.0),
                };
                emit(&Event::SeedProgress { peers, uploaded_bytes: stats.uploaded_bytes, upload_bps: up });
            }
        }
    }
}

/// Writes librqbit's fast-resume state for a verified folder: no remembered session (so
/// librqbit restores nothing on its own, traps 7 and 8) and an all-pieces bitfield.
fn prepare_fastresume(folder: &Path, target: &SeedTarget) -> Result<(), SwarmError> {
    std::fs::create_dir_all(folder).map_err(|e| SwarmError::io(folder, e))?;
    for entry in std::fs::read_dir(folder).map_err(|e| SwarmError::io(folder, e))? {
        let entry = entry.map_err(|e| SwarmError::io(folder, e))?;
        let p = entry.path();
        if p.is_file() {
            std::fs::remove_file(&p).map_err(|e| SwarmError::io(&p, e))?;
        }
    }
    let parsed = librqbit::torrent_from_bytes(&target.torrent_bytes).map_err(|e| {
        SwarmError::BadTorrentFile {
            path: folder.to_path_buf(),
            reason: format!("{e:#}"),
        }
    })?;
    let info_hash = parsed.info_hash.as_string();
    let info = parsed
        .info
        .data
        .validate()
        .map_err(|e| SwarmError::BadTorrentFile {
            path: folder.to_path_buf(),
            reason: format!("{e:#}"),
        })?;
    let pieces = info.lengths().total_pieces() as usize;
    let bitv = all_pieces_bitfield(pieces);
    let path = folder.join(format!("{info_hash}.bitv"));
    std::fs::write(&path, bitv).map_err(|e| SwarmError::io(&path, e))
}

/// librqbit's bitfield layout: one bit per piece, most significant bit first.
fn all_pieces_bitfield(pieces: usize) -> Vec<u8> {
    let mut v = vec![0xffu8; pieces / 8];
    let rest = pieces % 8;
    if rest > 0 {
        v.push(0xffu8 << (8 - rest));
    }
    v
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitfield_sets_exactly_the_pieces() {
        assert_eq!(all_pieces_bitfield(0), Vec::<u8>::new());
        assert_eq!(all_pieces_bitfield(1), vec![0x80]);
        assert_eq!(all_pieces_bitfield(8), vec![0xff]);
        assert_eq!(all_pieces_bitfield(10), vec![0xff, 0xc0]);
    }
}
