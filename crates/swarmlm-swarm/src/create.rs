//! Reproducible v1 torrent creation: the same model folder always gives the same magnet.
//!
//! librqbit's `create_torrent` walks folders in an unstable order (trap 3), so two people seeding
//! the same model could end up in different swarms. Here the torrent is a pure function of the
//! file contents, their relative paths and the name:
//!
//! - files sorted by path, compared component by component as UTF-8 bytes;
//! - always the multi-file form for a folder (even with one file), so the layout on disk is
//!   always `<name>/<path>`; a single file is refused (pass its folder);
//! - `info` = `{files: [{length, path}], name, piece length, pieces}` and nothing else: no creation
//!   date, no `created by`, no `private`; trackers go in `announce`/`announce-list` outside `info`,
//!   so they do not change the info hash; bencode keys sorted;
//! - piece length from [`auto_piece_length`] unless fixed.
//!
//! Links to regular files (and folders) are followed, because a Hugging Face cache snapshot is a
//! folder of links into `../../blobs/`. Anything that would make the torrent wrong or the info hash
//! unstable is refused with its path: dangling links, link loops, fifos/sockets/devices, non-UTF-8
//! names (they panic inside librqbit, trap 6), partial downloads, an empty folder. The top-level
//! bookkeeping folders `.swarmlm/` (ours), `.git/` and `.cache/` (git and `huggingface_hub`
//! metadata) are skipped.
//!
//! Hashing is one read pass over all files on two threads: one reads and computes each file's
//! SHA-256 (for the manifest), the other computes the SHA-1 piece hashes, whose pieces span file
//! boundaries. Buffers are recycled between them so memory stays bounded.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use sha1::{Digest as _, Sha1};
use sha2::Sha256;
use swarmlm_manifest::{
    check_component, check_name, read_full, FileEntry, Magnet, Manifest, ManifestError,
    ModelFormat, MAX_PIECE_LENGTH, MIN_PIECE_LENGTH,
};

use crate::bencode::Value;

/// Smallest piece length [`auto_piece_length`] picks: 256 KiB.
pub const AUTO_MIN_PIECE: u64 = 256 * 1024;
/// Largest piece length [`auto_piece_length`] picks: 16 MiB.
pub const AUTO_MAX_PIECE: u64 = 16 * 1024 * 1024;
/// [`auto_piece_length`] keeps the piece count at or below this (2^14) while it can.
pub const AUTO_TARGET_PIECES: u64 = 1 << 14;

/// Top-level folders that hold bookkeeping, not model files.
pub const SKIPPED_TOP_DIRS: &[&str] = &[".swarmlm", ".git", ".cache"];
/// File name endings of downloads in progress (ours, browsers', aria2's, qBittorrent's, HF's).
pub const PARTIAL_SUFFIXES: &[&str] = &[".part", ".incomplete", ".aria2", ".crdownload", ".!qB"];

/// Linux's ELOOP ("too many levels of symbolic links").
const ELOOP: i32 = 40;

/// The piece length for `total` bytes: the smallest power of two from 256 KiB to 16 MiB that keeps
/// the torrent at ≤ 16384 (2^14) pieces; above 256 GiB it stays at 16 MiB and the count grows.
/// So a 90 GB Mixtral gets 8 MiB pieces (~10.7k pieces, a ~215 KB info dict), a 2 GB model 256 KiB.
pub fn auto_piece_length(total: u64) -> u64 {
    let mut p = AUTO_MIN_PIECE;
    while p < AUTO_MAX_PIECE && total.div_ceil(p) > AUTO_TARGET_PIECES {
        p *= 2;
    }
    p
}

/// How to pick the piece length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PieceSize {
    /// [`auto_piece_length`].
    #[default]
    Auto,
    /// A power of two from 16 KiB to 256 MiB.
    Fixed(u64),
}

/// What to create.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Torrent (and folder) name; default: the folder's own name.
    pub name: Option<String>,
    /// Tracker URLs, in order; each becomes its own tier of `announce-list`.
    pub trackers: Vec<String>,
    pub piece_size: PieceSize,
    /// Default: detected from file names ([`ModelFormat::detect`]).
    pub format: Option<ModelFormat>,
    /// Copied into the manifest.
    pub description: String,
    pub license: String,
    pub source: String,
}

/// The result of [`create_torrent`].
#[derive(Debug, Clone)]
pub struct CreatedTorrent {
    /// The bencoded .torrent file.
    pub torrent_bytes: Vec<u8>,
    pub info_hash: [u8; 20],
    /// `magnet:?xt=urn:btih:<hex>&dn=<name>&tr=...`
    pub magnet: String,
    /// SHA-256 of every file, sizes, piece length, magnet: ready to save as `<name>.toml`.
    pub manifest: Manifest,
}

/// Why a torrent could not be created. Each names the path or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{path} is not a folder (swarmlm creates torrents from a model folder; pass the folder that holds the file)")]
    NotADirectory { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is a link to nothing (dangling symbolic link)")]
    DanglingLink { path: PathBuf },
    #[error("{path} is part of a symbolic link loop")]
    LinkLoop { path: PathBuf },
    #[error("{path} is a {kind}, not a regular file or folder")]
    SpecialFile { path: PathBuf, kind: &'static str },
    #[error("{path}: the name is not UTF-8 (torrent paths must be UTF-8; rename it)")]
    NotUtf8 { path: PathBuf },
    #[error("{path}: the name cannot go in a torrent: {problem}")]
    UnsafeName { path: PathBuf, problem: String },
    #[error("{path} looks like a partial download; finish or remove it first")]
    Partial { path: PathBuf },
    #[error("{path} holds no data (no files, or only empty ones)")]
    Empty { path: PathBuf },
    #[error("torrent name {name:?}: {problem}")]
    BadName { name: String, problem: String },
    #[error("piece size {size}: must be a power of two from 16 KiB to 256 MiB")]
    BadPieceSize { size: u64 },
    #[error("tracker {url:?}: not an http(s)://, udp:// or ws(s):// URL")]
    BadTracker { url: String },
    #[error("cannot tell the model format from the file names (no *.safetensors, no *.pth); give it explicitly")]
    UnknownFormat,
    #[error("{path} changed while it was being hashed ({expected} bytes listed, {actual} read)")]
    Changed {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("internal error: {pieces} piece hashes for {total} bytes in pieces of {piece_length}")]
    PieceCount {
        pieces: usize,
        total: u64,
        piece_length: u64,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// A file found by the walk.
#[derive(Debug, Clone)]
struct Found {
    components: Vec<String>,
    abs: PathBuf,
    size: u64,
}

/// Create a torrent and manifest for the model folder `dir`.
pub fn create_torrent(dir: &Path, opts: &CreateOptions) -> Result<CreatedTorrent, CreateError> {
    create_torrent_with_progress(dir, opts, &|_, _| {})
}

/// [`create_torrent`], calling `progress(bytes_hashed, total_bytes)` as the read pass advances.
pub fn create_torrent_with_progress(
    dir: &Path,
    opts: &CreateOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<CreatedTorrent, CreateError> {
    let meta = std::fs::metadata(dir).map_err(|source| CreateError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(CreateError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => {
            let canonical = std::fs::canonicalize(dir).map_err(|source| CreateError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            canonical
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| CreateError::BadName {
                    name: canonical.to_string_lossy().into_owned(),
                    problem: "the folder name is not UTF-8 or is empty; give a name".into(),
                })?
                .to_string()
        }
    };
    check_name(&name).map_err(|p| CreateError::BadName {
        name: name.clone(),
        problem: p.to_string(),
    })?;
    for url in &opts.trackers {
        check_tracker(url)?;
    }

    let mut files = Vec::new();
    let mut ancestors = vec![(meta.dev(), meta.ino())];
    walk(dir, &mut Vec::new(), &mut ancestors, &mut files)?;
    if files.is_empty() {
        return Err(CreateError::Empty {
            path: dir.to_path_buf(),
        });
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    if total == 0 {
        return Err(CreateError::Empty {
            path: dir.to_path_buf(),
        });
    }
    files.sort_by(|a, b| a.components.cmp(&b.components));
    let paths: Vec<String> = files.iter().map(|f| f.components.join("/")).collect();
    let format = match opts.format {
        Some(f) => f,
        None => ModelFormat::detect(paths.iter().map(String::as_str))
            .ok_or(CreateError::UnknownFormat)?,
    };

    let piece_length = match opts.piece_size {
        PieceSize::Auto => auto_piece_length(total),
        PieceSize::Fixed(p) => {
            if !p.is_power_of_two() || !(MIN_PIECE_LENGTH..=MAX_PIECE_LENGTH).contains(&p) {
                return Err(CreateError::BadPieceSize { size: p });
            }
            p
        }
    };

    let (pieces, sha256s) = hash_pass(&files, piece_length, total, progress)?;
    let expected_pieces = total.div_ceil(piece_length) as usize;
    if pieces.len() != expected_pieces * 20 {
        return Err(CreateError::PieceCount {
            pieces: pieces.len() / 20,
            total,
            piece_length,
        });
    }

    let file_list = files
        .iter()
        .map(|f| {
            let mut d = BTreeMap::new();
            d.insert(b"length".to_vec(), Value::Int(f.size as i64));
            d.insert(
                b"path".to_vec(),
                Value::List(f.components.iter().map(|c| Value::str(c)).collect()),
            );
            Value::Dict(d)
        })
        .collect();
    let mut info = BTreeMap::new();
    info.insert(b"files".to_vec(), Value::List(file_list));
    info.insert(b"name".to_vec(), Value::str(&name));
    info.insert(b"piece length".to_vec(), Value::Int(piece_length as i64));
    info.insert(b"pieces".to_vec(), Value::Bytes(pieces));
    let info = Value::Dict(info);
    let info_bytes = info.encode();
    let info_hash: [u8; 20] = Sha1::digest(&info_bytes).into();

    let mut root = BTreeMap::new();
    if let Some(first) = opts.trackers.first() {
        root.insert(b"announce".to_vec(), Value::str(first));
        root.insert(
            b"announce-list".to_vec(),
            Value::List(
                opts.trackers
                    .iter()
                    .map(|t| Value::List(vec![Value::str(t)]))
                    .collect(),
            ),
        );
    }
    root.insert(b"info".to_vec(), info);
    let torrent_bytes = Value::Dict(root).encode();

    let magnet = Magnet {
        info_hash,
        display_name: Some(name.clone()),
        trackers: opts.trackers.clone(),
    }
    .to_uri();
    let manifest = Manifest {
        name,
        description: opts.description.clone(),
        license: opts.license.clone(),
        source: opts.source.clone(),
        format,
        magnet: magnet.clone(),
        info_hash,
        piece_length: Some(piece_length),
        total_size: Some(total),
        files: files
            .iter()
            .zip(paths)
            .zip(sha256s)
            .map(|((f, path), sha)| FileEntry {
                path,
                size: Some(f.size),
                sha256: Some(sha),
                md5: None,
            })
            .collect(),
    };
    manifest.validate()?;
    Ok(CreatedTorrent {
        torrent_bytes,
        info_hash,
        magnet,
        manifest,
    })
}

fn check_tracker(url: &str) -> Result<(), CreateError> {
    let bad = || CreateError::BadTracker {
        url: url.to_string(),
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    if !matches!(scheme, "http" | "https" | "udp" | "ws" | "wss")
        || rest.is_empty()
        || rest.starts_with('/')
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad());
    }
    Ok(())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CreateError + '_ {
    move |source| CreateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn walk(
    dir: &Path,
    rel: &mut Vec<String>,
    ancestors: &mut Vec<(u64, u64)>,
    out: &mut Vec<Found>,
) -> Result<(), CreateError> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        entries.push(entry.map_err(io_err(dir))?);
    }
    // Sorted here only so that the first error reported is deterministic; files are sorted again.
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(CreateError::NotUtf8 { path });
        };
        if rel.is_empty() && SKIPPED_TOP_DIRS.contains(&name) {
            if name == ".swarmlm" {
                refuse_partial_area(&path)?;
            }
            tracing::info!("skipping bookkeeping folder {}", path.display());
            continue;
        }
        check_component(name).map_err(|p| CreateError::UnsafeName {
            path: path.clone(),
            problem: p.to_string(),
        })?;
        if PARTIAL_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            return Err(CreateError::Partial { path });
        }
        let link_meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let meta = if link_meta.file_type().is_symlink() {
            match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(CreateError::DanglingLink { path })
                }
                Err(e) if e.raw_os_error() == Some(ELOOP) => {
                    return Err(CreateError::LinkLoop { path })
                }
                Err(e) => return Err(io_err(&path)(e)),
            }
        } else {
            link_meta
        };
        let ft = meta.file_type();
        if ft.is_file() {
            rel.push(name.to_string());
            out.push(Found {
                components: rel.clone(),
                abs: path,
                size: meta.len(),
            });
            rel.pop();
        } else if ft.is_dir() {
            let id = (meta.dev(), meta.ino());
            if ancestors.contains(&id) {
                return Err(CreateError::LinkLoop { path });
            }
            ancestors.push(id);
            rel.push(name.to_string());
            walk(&path, rel, ancestors, out)?;
            rel.pop();
            ancestors.pop();
        } else {
            let kind = if ft.is_fifo() {
                "fifo"
            } else if ft.is_socket() {
                "socket"
            } else if ft.is_block_device() {
                "block device"
            } else if ft.is_char_device() {
                "character device"
            } else {
                "special file"
            };
            return Err(CreateError::SpecialFile { path, kind });
        }
    }
    Ok(())
}

/// Our own fetch keeps downloads in progress in `.swarmlm/partial/`: a folder with anything there
/// is not a finished model.
fn refuse_partial_area(state_dir: &Path) -> Result<(), CreateError> {
    let partial = state_dir.join("partial");
    match std::fs::read_dir(&partial) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(CreateError::Partial { path: partial });
            }
            Ok(())
        }
        Err(_) => Ok(()),
    }
}

const BUF_SIZE: usize = 4 << 20;
const BUFFERS: usize = 8;

/// One read pass: per-file SHA-256 on this thread (with the reads), SHA-1 pieces on another.
fn hash_pass(
    files: &[Found],
    piece_length: u64,
    total: u64,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<(Vec<u8>, Vec<[u8; 32]>), CreateError> {
    std::thread::scope(|s| {
        let (to_sha1, sha1_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(BUFFERS);
        let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
        let sha1_thread = s.spawn(move || {
            let mut pieces = Vec::with_capacity(total.div_ceil(piece_length) as usize * 20);
            let mut hasher = Sha1::new();
            let mut in_piece: u64 = 0;
            for (buf, n) in sha1_rx {
                let mut data = &buf[..n];
                while !data.is_empty() {
                    let room = (piece_length - in_piece) as usize;
                    let take = room.min(data.len());
                    hasher.update(&data[..take]);
                    in_piece += take as u64;
                    data = &data[take..];
                    if in_piece == piece_length {
                        pieces.extend_from_slice(&hasher.finalize_reset());
                        in_piece = 0;
                    }
                }
                // The reader may be gone already after an error; nothing to recycle then.
                let _ = back_tx.send(buf);
            }
            if in_piece > 0 {
                pieces.extend_from_slice(&hasher.finalize());
            }
            pieces
        });

        let read_all = || -> Result<Vec<[u8; 32]>, CreateError> {
            let mut allocated = 0;
            let mut done: u64 = 0;
            let mut sums = Vec::with_capacity(files.len());
            for f in files {
                let mut file = std::fs::File::open(&f.abs).map_err(io_err(&f.abs))?;
                let mut sha = Sha256::new();
                let mut read: u64 = 0;
                loop {
                    let mut buf = match back_rx.try_recv() {
                        Ok(b) => b,
                        Err(_) if allocated < BUFFERS => {
                            allocated += 1;
                            vec![0u8; BUF_SIZE]
                        }
                        Err(_) => back_rx.recv().map_err(|_| CreateError::Io {
                            path: f.abs.clone(),
                            source: std::io::Error::other("piece hashing thread stopped"),
                        })?,
                    };
                    let n = read_full(&mut file, &mut buf).map_err(io_err(&f.abs))?;
                    if n == 0 {
                        // This buffer never reaches the SHA-1 thread, so it never comes back:
                        // count it as freed, or a folder of more than BUFFERS files deadlocks.
                        allocated -= 1;
                        break;
                    }
                    sha.update(&buf[..n]);
                    read += n as u64;
                    done += n as u64;
                    if read > f.size {
                        break;
                    }
                    progress(done, total);
                    to_sha1.send((buf, n)).map_err(|_| CreateError::Io {
                        path: f.abs.clone(),
                        source: std::io::Error::other("piece hashing thread stopped"),
                    })?;
                }
                if read != f.size {
                    return Err(CreateError::Changed {
                        path: f.abs.clone(),
                        expected: f.size,
                        actual: read,
                    });
                }
                sums.push(sha.finalize().into());
            }
            Ok(sums)
        };
        let sums = read_all();
        drop(to_sha1);
        let pieces = sha1_thread.join().map_err(|_| CreateError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other("piece hashing thread panicked"),
        })?;
        Ok((pieces, sums?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_piece_length_rule() {
        const MIB: u64 = 1 << 20;
        assert_eq!(auto_piece_length(1), 256 * 1024);
        assert_eq!(auto_piece_length(2_000_000_000), 256 * 1024);
        assert_eq!(auto_piece_length(4 * 1024 * MIB), 256 * 1024); // exactly 16384 pieces
        assert_eq!(auto_piece_length(4 * 1024 * MIB + 1), 512 * 1024);
        assert_eq!(auto_piece_length(90_000_000_000), 8 * MIB);
        assert_eq!(auto_piece_length(93_405_585_408), 8 * MIB);
        assert_eq!(auto_piece_length(281_000_000_000), 16 * MIB);
        assert_eq!(auto_piece_length(u64::MAX), 16 * MIB);
        for total in [1u64, 10_000_000_000, 200_000_000_000] {
            let p = auto_piece_length(total);
            assert!(p.is_power_of_two());
            assert!(total.div_ceil(p) <= AUTO_TARGET_PIECES || p == AUTO_MAX_PIECE);
        }
    }

    #[test]
    fn tracker_urls_are_checked() {
        for ok in [
            "http://127.0.0.1:6969/announce",
            "udp://tracker.example:1337",
            "wss://t.example/x",
        ] {
            check_tracker(ok).unwrap();
        }
        for bad in [
            "",
            "127.0.0.1:6969",
            "ftp://x",
            "http://",
            "http:///a",
            "http://a b",
        ] {
            assert!(check_tracker(bad).is_err(), "{bad}");
        }
    }
}
