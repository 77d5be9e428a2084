//! Strict reading of v1 .torrent files, independent of librqbit.
//!
//! A .torrent (or the metadata fetched for a magnet) is untrusted input. This reader gives swarmlm
//! its own view of one — info hash over the exact received `info` bytes, name, piece length, files,
//! trackers — so fetch can cross-check librqbit's view and the manifest
//! ([`TorrentInfo::check_manifest`]), and it refuses anything swarmlm could not handle safely:
//! unsafe or non-UTF-8 paths (librqbit panics on non-UTF-8 names, trap 6), duplicate files,
//! padding files (BEP 47, unsupported by librqbit), and a piece count that disagrees with the total
//! size (trap 4).

use sha1::{Digest as _, Sha1};
use swarmlm_manifest::{
    check_component, check_relative_path, Magnet, Manifest, MAX_PIECE_LENGTH, MIN_PIECE_LENGTH,
};

use crate::bencode::{self, DecodeError, Decoded};

/// One file of a torrent, in torrent order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorrentFile {
    /// `/`-separated path relative to the torrent's folder (for a single-file torrent: its name).
    pub path: String,
    pub length: u64,
}

/// What a .torrent says, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorrentInfo {
    /// SHA-1 of the `info` dictionary's bytes exactly as they appear in the input.
    pub info_hash: [u8; 20],
    pub name: String,
    pub piece_length: u64,
    /// One SHA-1 per piece.
    pub pieces: Vec<[u8; 20]>,
    pub files: Vec<TorrentFile>,
    /// True for the single-file form (`info.length`); the file is then named `name` itself
    /// instead of living in a `name/` folder.
    pub single_file: bool,
    /// `announce` then `announce-list`, duplicates removed, in order.
    pub trackers: Vec<String>,
    pub total_size: u64,
}

/// Why a .torrent was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TorrentError {
    #[error("not a valid .torrent: {0}")]
    Bencode(#[from] DecodeError),
    #[error(".torrent field `{field}`: {problem}")]
    Field { field: String, problem: String },
    #[error("the torrent disagrees with the manifest on {what}: torrent has {torrent}, manifest has {manifest}")]
    ManifestMismatch {
        what: String,
        torrent: String,
        manifest: String,
    },
}

fn field(field: impl Into<String>, problem: impl Into<String>) -> TorrentError {
    TorrentError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

fn utf8<'a>(bytes: &'a [u8], name: &str) -> Result<&'a str, TorrentError> {
    std::str::from_utf8(bytes).map_err(|_| field(name, "is not UTF-8"))
}

fn as_bytes<'a>(v: &Decoded<'a>, name: &str) -> Result<&'a [u8], TorrentError> {
    match v {
        Decoded::Bytes(b) => Ok(b),
        other => Err(field(
            name,
            format!("must be a string, found {}", other.kind()),
        )),
    }
}

fn as_u64(v: &Decoded<'_>, name: &str) -> Result<u64, TorrentError> {
    match v {
        Decoded::Int(i) => u64::try_from(*i).map_err(|_| field(name, format!("{i} is negative"))),
        other => Err(field(
            name,
            format!("must be an integer, found {}", other.kind()),
        )),
    }
}

fn as_list<'v, 'a>(v: &'v Decoded<'a>, name: &str) -> Result<&'v [Decoded<'a>], TorrentError> {
    match v {
        Decoded::List(items) => Ok(items),
        other => Err(field(
            name,
            format!("must be a list, found {}", other.kind()),
        )),
    }
}

/// Parse and check a v1 .torrent file.
pub fn parse_torrent(bytes: &[u8]) -> Result<TorrentInfo, TorrentError> {
    let root = bencode::decode(bytes)?;
    if !matches!(root, Decoded::Dict(_)) {
        return Err(field("(top level)", "must be a dictionary"));
    }
    let info_entry = root.get("info").ok_or_else(|| field("info", "missing"))?;
    let info_hash: [u8; 20] = Sha1::digest(info_entry.raw).into();
    let info = &info_entry.value;
    if !matches!(info, Decoded::Dict(_)) {
        return Err(field("info", "must be a dictionary"));
    }
    let mut parsed = parse_info(info)?;
    parsed.info_hash = info_hash;
    parsed.trackers = parse_trackers(&root)?;
    Ok(parsed)
}

/// Parse a bare bencoded `info` dictionary (what BEP 9 metadata exchange delivers); trackers are
/// then empty.
pub fn parse_info_dict(bytes: &[u8]) -> Result<TorrentInfo, TorrentError> {
    let info = bencode::decode(bytes)?;
    if !matches!(info, Decoded::Dict(_)) {
        return Err(field("info", "must be a dictionary"));
    }
    let mut parsed = parse_info(&info)?;
    parsed.info_hash = Sha1::digest(bytes).into();
    Ok(parsed)
}

fn parse_info(info: &Decoded<'_>) -> Result<TorrentInfo, TorrentError> {
    let name_v = &info
        .get("name")
        .ok_or_else(|| field("info.name", "missing"))?
        .value;
    let name = utf8(as_bytes(name_v, "info.name")?, "info.name")?.to_string();
    check_component(&name).map_err(|p| field("info.name", format!("{name:?}: {p}")))?;

    let piece_length = as_u64(
        &info
            .get("piece length")
            .ok_or_else(|| field("info.piece length", "missing"))?
            .value,
        "info.piece length",
    )?;
    if !piece_length.is_power_of_two()
        || !(MIN_PIECE_LENGTH..=MAX_PIECE_LENGTH).contains(&piece_length)
    {
        return Err(field(
            "info.piece length",
            format!("{piece_length} is not a power of two from 16 KiB to 256 MiB"),
        ));
    }
    let pieces_raw = as_bytes(
        &info
            .get("pieces")
            .ok_or_else(|| field("info.pieces", "missing"))?
            .value,
        "info.pieces",
    )?;
    if pieces_raw.len() % 20 != 0 {
        return Err(field(
            "info.pieces",
            format!("{} bytes is not a multiple of 20", pieces_raw.len()),
        ));
    }

    let (files, single_file) = match (info.get("length"), info.get("files")) {
        (Some(_), Some(_)) => {
            return Err(field(
                "info.files",
                "both `length` and `files` are present (single- and multi-file at once)",
            ))
        }
        (None, None) => return Err(field("info.files", "missing (and no `length` either)")),
        (Some(len), None) => {
            let length = as_u64(&len.value, "info.length")?;
            (
                vec![TorrentFile {
                    path: name.clone(),
                    length,
                }],
                true,
            )
        }
        (None, Some(files)) => (parse_files(&files.value)?, false),
    };

    let mut total: u64 = 0;
    for f in &files {
        total = total
            .checked_add(f.length)
            .ok_or_else(|| field("info.files", "total size overflows 64 bits"))?;
    }
    if total == 0 {
        return Err(field(
            "info.files",
            "the torrent holds no data (total size 0)",
        ));
    }
    let expected_pieces = total.div_ceil(piece_length);
    let got = (pieces_raw.len() / 20) as u64;
    if got != expected_pieces {
        return Err(field(
            "info.pieces",
            format!(
                "{got} piece hashes, but {total} bytes in pieces of {piece_length} need {expected_pieces}"
            ),
        ));
    }
    let pieces = pieces_raw
        .chunks_exact(20)
        .map(|c| {
            let mut h = [0u8; 20];
            h.copy_from_slice(c);
            h
        })
        .collect();
    Ok(TorrentInfo {
        info_hash: [0; 20],
        name,
        piece_length,
        pieces,
        files,
        single_file,
        trackers: Vec::new(),
        total_size: total,
    })
}

fn parse_files(v: &Decoded<'_>) -> Result<Vec<TorrentFile>, TorrentError> {
    let list = as_list(v, "info.files")?;
    if list.is_empty() {
        return Err(field("info.files", "is empty"));
    }
    let mut files = Vec::with_capacity(list.len());
    let mut seen = std::collections::HashSet::new();
    for (i, entry) in list.iter().enumerate() {
        let at = |f: &str| format!("info.files[{i}].{f}");
        if !matches!(entry, Decoded::Dict(_)) {
            return Err(field(format!("info.files[{i}]"), "must be a dictionary"));
        }
        if let Some(attr) = entry.get("attr") {
            let attr = as_bytes(&attr.value, &at("attr"))?;
            if attr.contains(&b'p') {
                return Err(field(
                    at("attr"),
                    "padding files (BEP 47) are not supported (librqbit cannot handle them); \
                     create the torrent as plain v1",
                ));
            }
        }
        let length = as_u64(
            &entry
                .get("length")
                .ok_or_else(|| field(at("length"), "missing"))?
                .value,
            &at("length"),
        )?;
        let comps = as_list(
            &entry
                .get("path")
                .ok_or_else(|| field(at("path"), "missing"))?
                .value,
            &at("path"),
        )?;
        if comps.is_empty() {
            return Err(field(at("path"), "is an empty list"));
        }
        let mut parts = Vec::with_capacity(comps.len());
        for c in comps {
            let c = utf8(as_bytes(c, &at("path"))?, &at("path"))?;
            check_component(c).map_err(|p| field(at("path"), format!("component {c:?}: {p}")))?;
            parts.push(c);
        }
        let path = parts.join("/");
        check_relative_path(&path).map_err(|p| field(at("path"), format!("{path:?}: {p}")))?;
        if !seen.insert(path.clone()) {
            return Err(field(at("path"), format!("{path:?} is listed twice")));
        }
        files.push(TorrentFile { path, length });
    }
    for (i, f) in files.iter().enumerate() {
        for (pos, _) in f.path.match_indices('/') {
            if seen.contains(&f.path[..pos]) {
                return Err(field(
                    format!("info.files[{i}].path"),
                    format!(
                        "{:?} is inside {:?}, which is a file",
                        f.path,
                        &f.path[..pos]
                    ),
                ));
            }
        }
    }
    Ok(files)
}

fn parse_trackers(root: &Decoded<'_>) -> Result<Vec<String>, TorrentError> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |t: &str| {
        if !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    };
    if let Some(a) = root.get("announce") {
        push(utf8(as_bytes(&a.value, "announce")?, "announce")?);
    }
    if let Some(list) = root.get("announce-list") {
        for (i, tier) in as_list(&list.value, "announce-list")?.iter().enumerate() {
            let name = format!("announce-list[{i}]");
            for (j, t) in as_list(tier, &name)?.iter().enumerate() {
                let name = format!("announce-list[{i}][{j}]");
                push(utf8(as_bytes(t, &name)?, &name)?);
            }
        }
    }
    Ok(out)
}

impl TorrentInfo {
    /// `magnet:?xt=urn:btih:<hex>&dn=<name>&tr=...`
    pub fn magnet(&self) -> String {
        Magnet {
            info_hash: self.info_hash,
            display_name: Some(self.name.clone()),
            trackers: self.trackers.clone(),
        }
        .to_uri()
    }

    /// Check that this torrent is the one the manifest describes: same info hash, name, piece
    /// length (when the manifest knows it), and the same files in the same order with the same
    /// sizes (where the manifest knows them).
    pub fn check_manifest(&self, m: &Manifest) -> Result<(), TorrentError> {
        let mismatch = |what: &str, torrent: String, manifest: String| {
            Err(TorrentError::ManifestMismatch {
                what: what.to_string(),
                torrent,
                manifest,
            })
        };
        if self.info_hash != m.info_hash {
            return mismatch(
                "the info hash",
                hex::encode(self.info_hash),
                hex::encode(m.info_hash),
            );
        }
        if self.name != m.name {
            return mismatch("the name", self.name.clone(), m.name.clone());
        }
        if let Some(pl) = m.piece_length {
            if pl != self.piece_length {
                return mismatch(
                    "the piece length",
                    self.piece_length.to_string(),
                    pl.to_string(),
                );
            }
        }
        let tp: Vec<&str> = self.files.iter().map(|f| f.path.as_str()).collect();
        let mp: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
        if tp != mp {
            return mismatch("the file list", tp.join(", "), mp.join(", "));
        }
        for (t, f) in self.files.iter().zip(&m.files) {
            if let Some(size) = f.size {
                if size != t.length {
                    return mismatch(
                        &format!("the size of {}", t.path),
                        t.length.to_string(),
                        size.to_string(),
                    );
                }
            }
        }
        if let Some(total) = m.total_size {
            if total != self.total_size {
                return mismatch(
                    "the total size",
                    self.total_size.to_string(),
                    total.to_string(),
                );
            }
        }
        Ok(())
    }
}
