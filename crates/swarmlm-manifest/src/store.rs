//! The local model store and the one rule for what a model argument names.
//!
//! `fetch`, `run`, `seed`, `list`, `rm` and `where` all take "a model" on the command line. Before
//! this module each crate had its own copy of where the store lives and how a name is looked up,
//! and copies drift. Everything that needs the store root or turns an argument into a model calls
//! [`models_root`] and [`resolve`] here.
//!
//! **Store root** ([`models_root`]): `$SWARMLM_HOME/models`, else `$XDG_DATA_HOME/swarmlm/models`,
//! else `$HOME/.local/share/swarmlm/models` (empty variables count as unset). A model fetched by
//! name lives in `<root>/<name>`, `<name>` being the torrent's `info.name`.
//!
//! **Resolution rule** ([`resolve`]), first match wins:
//! 1. an existing folder path → that folder;
//! 2. a path ending in `.toml` → a manifest file;
//! 3. a path ending in `.torrent` → a torrent file;
//! 4. `magnet:?...` → a magnet link;
//! 5. a bare name (one safe path component) → the store entry `<root>/<name>` if it is a folder,
//!    else the catalogue manifest `magnets/<name>.toml`;
//! 6. otherwise nothing.
//!
//! The catalogue (`magnets/*.toml`) is compiled into the binary with `include_str!`, so a bare
//! catalogue name works from an installed binary in any working directory.

use std::path::{Path, PathBuf};

use crate::{
    record_matches, Manifest, ManifestError, ModelFormat, Record, MANIFEST_FILE, STATE_DIR,
};

/// The catalogue as shipped: `(file name in magnets/, TOML text)`. Every `magnets/*.toml` of the
/// repository is listed here (a test checks that none is forgotten).
pub const CATALOGUE: &[(&str, &str)] = &[
    (
        "mistral-7B-v0.1.toml",
        include_str!("../../../magnets/mistral-7B-v0.1.toml"),
    ),
    (
        "mixtral-8x7b-32kseqlen.toml",
        include_str!("../../../magnets/mixtral-8x7b-32kseqlen.toml"),
    ),
    (
        "mixtral-8x22b.toml",
        include_str!("../../../magnets/mixtral-8x22b.toml"),
    ),
    (
        "shakespeare-moe.toml",
        include_str!("../../../magnets/shakespeare-moe.toml"),
    ),
];

/// Where our own fetch keeps a download in progress, inside [`STATE_DIR`].
pub const PARTIAL_DIR: &str = "partial";

/// The store root from an environment lookup; [`models_root`] passes the process environment.
/// Split out so the rule can be tested without touching the process environment.
pub fn models_root_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(home) = var("SWARMLM_HOME") {
        return Some(home.join("models"));
    }
    if let Some(data) = var("XDG_DATA_HOME") {
        return Some(data.join("swarmlm").join("models"));
    }
    var("HOME").map(|h| {
        h.join(".local")
            .join("share")
            .join("swarmlm")
            .join("models")
    })
}

/// The folder fetched models live under: `$SWARMLM_HOME/models`, else
/// `$XDG_DATA_HOME/swarmlm/models`, else `~/.local/share/swarmlm/models`. `None` only when none
/// of those variables is set.
pub fn models_root() -> Option<PathBuf> {
    models_root_from(|k| std::env::var_os(k))
}

/// The catalogue manifests, in [`CATALOGUE`] order. An entry that does not parse is left out;
/// the crate's tests parse every entry, so a shipped binary never drops one.
pub fn catalogue() -> Vec<Manifest> {
    CATALOGUE
        .iter()
        .filter_map(|(_, text)| Manifest::from_toml_str(text).ok())
        .collect()
}

/// The catalogue manifest called `name`: by its file name (`magnets/<name>.toml`) or by the
/// manifest's own `name` (the torrent's folder name), which are the same for every shipped entry.
pub fn catalogue_entry(name: &str) -> Option<Manifest> {
    CATALOGUE.iter().find_map(|(file, text)| {
        let stem = file.strip_suffix(".toml").unwrap_or(file);
        let m = Manifest::from_toml_str(text).ok()?;
        (stem == name || m.name == name).then_some(m)
    })
}

/// What a model argument names (see the module docs for the rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// An existing folder: given as a path, or the store entry of a bare name.
    Folder(PathBuf),
    /// A path ending in `.toml` (not checked to exist: loading it reports that, naming the file).
    ManifestFile(PathBuf),
    /// A path ending in `.torrent` (not checked to exist either).
    TorrentFile(PathBuf),
    /// A `magnet:?` link, verbatim (not parsed here).
    Magnet(String),
    /// A bare name found in the compiled-in catalogue.
    Catalogue(Manifest),
    /// Nothing matched: what was tried, for the error message.
    NotFound {
        arg: String,
        /// The store root that was searched, if there is one.
        store: Option<PathBuf>,
        /// True when `arg` was a bare name (so the store and the catalogue were searched).
        bare_name: bool,
    },
}

/// Resolve a model argument against the process's store root (see the module docs).
pub fn resolve(arg: &str) -> Resolved {
    resolve_in(arg, models_root().as_deref())
}

/// [`resolve`] against an explicit store root (`None`: no store).
pub fn resolve_in(arg: &str, root: Option<&Path>) -> Resolved {
    let path = Path::new(arg);
    if !arg.is_empty() && path.is_dir() {
        return Resolved::Folder(path.to_path_buf());
    }
    if has_extension(arg, ".toml") {
        return Resolved::ManifestFile(path.to_path_buf());
    }
    if has_extension(arg, ".torrent") {
        return Resolved::TorrentFile(path.to_path_buf());
    }
    if arg.len() >= 8 && arg[..8].eq_ignore_ascii_case("magnet:?") {
        return Resolved::Magnet(arg.to_string());
    }
    let bare_name = is_bare_name(arg);
    if bare_name {
        if let Some(dir) = root.and_then(|r| stored_in(r, arg)) {
            return Resolved::Folder(dir);
        }
        if let Some(m) = catalogue_entry(arg) {
            return Resolved::Catalogue(m);
        }
    }
    Resolved::NotFound {
        arg: arg.to_string(),
        store: root.map(Path::to_path_buf),
        bare_name,
    }
}

fn has_extension(arg: &str, ext: &str) -> bool {
    arg.len() > ext.len()
        && arg.is_char_boundary(arg.len() - ext.len())
        && arg[arg.len() - ext.len()..].eq_ignore_ascii_case(ext)
}

/// A bare name is one safe path component that is not hidden: it can never leave the store root
/// (`..`, `/abs`, `a/b` are not names) nor name swarmlm's own bookkeeping.
pub fn is_bare_name(arg: &str) -> bool {
    crate::check_name(arg).is_ok() && !arg.starts_with('.')
}

/// The store folder of model `name` under the process's store root, if it exists.
pub fn stored(name: &str) -> Option<PathBuf> {
    stored_in(&models_root()?, name)
}

/// The store folder of model `name` under `root`, if `name` is a bare name and the folder exists.
pub fn stored_in(root: &Path, name: &str) -> Option<PathBuf> {
    if !is_bare_name(name) {
        return None;
    }
    let dir = root.join(name);
    dir.is_dir().then_some(dir)
}

/// Why the store could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no model store: none of SWARMLM_HOME, XDG_DATA_HOME, HOME is set")]
    NoRoot,
    #[error("cannot read the model store {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{name:?} is not a model name (one path component, not hidden, no `/`)")]
    NotAName { name: String },
    #[error("no model {name:?} in the store {root}")]
    NotStored { name: String, root: PathBuf },
    #[error("refusing to remove {path}: it is not directly inside the store {root}")]
    OutsideStore { path: PathBuf, root: PathBuf },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where a stored model stands, from the cheapest evidence (sizes, mtimes, the verification
/// record); nothing is re-hashed. `swarmlm verify` is the full check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// Every file is in place and the verification record vouches for all of them.
    Verified,
    /// Every file is in place, but at least one was never verified or changed (size or mtime)
    /// since it was: run `swarmlm verify`.
    Unverified,
    /// Files are missing or still in the partial area: a fetch was interrupted or is running.
    Partial,
    /// A file in place has a size the manifest rules out.
    Corrupt,
    /// No `.swarmlm/manifest.toml` (or an unreadable one): a folder swarmlm did not fetch.
    Unmanaged,
}

impl EntryState {
    /// The spelling used by `swarmlm list` (text and JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            EntryState::Verified => "verified",
            EntryState::Unverified => "unverified",
            EntryState::Partial => "partial",
            EntryState::Corrupt => "corrupt",
            EntryState::Unmanaged => "unmanaged",
        }
    }
}

/// One model folder in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreEntry {
    /// The folder name (the torrent's `info.name` for fetched models).
    pub name: String,
    pub dir: PathBuf,
    /// From the stored manifest; for an unmanaged folder, guessed from its file names.
    pub format: Option<ModelFormat>,
    /// Bytes on disk: the model's files in place plus what the partial area holds (its data
    /// ranges, so a preallocated sparse file counts only what was written).
    pub size: u64,
    /// The manifest's total size, when known.
    pub total_size: Option<u64>,
    pub state: EntryState,
    /// Every manifest file is in place with an acceptable size, and nothing is left in the
    /// partial area.
    pub complete: bool,
    /// Share of `total_size` on disk, 0–100; `None` when the total is unknown and not complete.
    pub percent: Option<f64>,
    /// Unix seconds of the latest verification, only when the record vouches for every file.
    pub verified_at: Option<u64>,
    /// Lowercase hex, from the stored manifest.
    pub info_hash: Option<String>,
    /// Human-readable findings: missing files, wrong sizes, an unreadable manifest.
    pub problems: Vec<String>,
}

/// Every model folder under the process's store root, sorted by name. A missing root is an empty
/// store.
pub fn list_store() -> Result<Vec<StoreEntry>, StoreError> {
    list_store_in(&models_root().ok_or(StoreError::NoRoot)?)
}

/// [`list_store`] for an explicit root.
pub fn list_store_in(root: &Path) -> Result<Vec<StoreEntry>, StoreError> {
    let read = match std::fs::read_dir(root) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StoreError::Read {
                path: root.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for item in read {
        let item = item.map_err(|source| StoreError::Read {
            path: root.to_path_buf(),
            source,
        })?;
        let Ok(name) = item.file_name().into_string() else {
            continue;
        };
        let dir = item.path();
        if !is_bare_name(&name) || !dir.is_dir() {
            continue;
        }
        out.push(inspect(&name, &dir));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Look at one model folder (see [`StoreEntry`]).
pub fn inspect(name: &str, dir: &Path) -> StoreEntry {
    let partial_bytes = tree_bytes(&dir.join(STATE_DIR).join(PARTIAL_DIR), true);
    let manifest_path = dir.join(STATE_DIR).join(MANIFEST_FILE);
    let manifest = match Manifest::load(&manifest_path) {
        Ok(m) => m,
        Err(e) => {
            let problem = match &e {
                ManifestError::Read { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    format!("no {STATE_DIR}/{MANIFEST_FILE}: not fetched by swarmlm")
                }
                _ => e.to_string(),
            };
            return unmanaged(name, dir, partial_bytes, problem);
        }
    };
    let mut in_place = 0u64;
    let mut missing = 0usize;
    let mut wrong_size = 0usize;
    let mut problems = Vec::new();
    for f in &manifest.files {
        match std::fs::metadata(dir.join(&f.path)) {
            Ok(meta) if meta.is_file() => match f.size {
                Some(s) if s != meta.len() => {
                    wrong_size += 1;
                    problems.push(format!(
                        "{}: {} bytes, the manifest says {s}",
                        f.path,
                        meta.len()
                    ));
                }
                _ => in_place += meta.len(),
            },
            Ok(_) => {
                wrong_size += 1;
                problems.push(format!("{}: not a regular file", f.path));
            }
            Err(_) => {
                missing += 1;
                problems.push(format!("{}: missing", f.path));
            }
        }
    }
    let complete = missing == 0 && wrong_size == 0 && partial_bytes == 0;
    let total = manifest
        .total_size
        .or_else(|| manifest.files.iter().map(|f| f.size).sum::<Option<u64>>());
    let percent = if complete {
        Some(100.0)
    } else {
        total
            .filter(|&t| t > 0)
            .map(|t| ((in_place + partial_bytes) as f64 * 100.0 / t as f64).min(99.9))
    };
    let verified_at = (complete && record_matches(dir, &manifest))
        .then(|| {
            let record = Record::load(dir).ok()?;
            manifest
                .files
                .iter()
                .filter_map(|f| record.files.get(&f.path).map(|e| e.verified_at))
                .max()
        })
        .flatten();
    let state = if wrong_size > 0 {
        EntryState::Corrupt
    } else if !complete {
        EntryState::Partial
    } else if verified_at.is_some() {
        EntryState::Verified
    } else {
        EntryState::Unverified
    };
    if state == EntryState::Unverified {
        problems.push(
            "not verified, or changed since it was verified: run `swarmlm verify`".to_string(),
        );
    }
    StoreEntry {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        format: Some(manifest.format),
        size: in_place + partial_bytes,
        total_size: total,
        state,
        complete,
        percent,
        verified_at,
        info_hash: Some(hex::encode(manifest.info_hash)),
        problems,
    }
}

fn unmanaged(name: &str, dir: &Path, partial_bytes: u64, problem: String) -> StoreEntry {
    let mut names = Vec::new();
    collect_names(dir, dir, &mut names);
    StoreEntry {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        format: ModelFormat::detect(names.iter().map(String::as_str)),
        size: tree_bytes(dir, false) + partial_bytes,
        total_size: None,
        state: EntryState::Unmanaged,
        complete: false,
        percent: None,
        verified_at: None,
        info_hash: None,
        problems: vec![problem],
    }
}

/// Relative paths of the regular files under `dir`, skipping swarmlm's bookkeeping folder.
fn collect_names(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    for item in read.flatten() {
        let path = item.path();
        let Ok(ft) = item.file_type() else { continue };
        if ft.is_dir() {
            if dir == base && item.file_name() == STATE_DIR {
                continue;
            }
            collect_names(base, &path, out);
        } else if let Ok(rel) = path.strip_prefix(base) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// Bytes of data in `path`: the sum of its data ranges (`SEEK_DATA` / `SEEK_HOLE`), which
/// says what an interrupted download wrote. Not its length: librqbit creates files sparse at full
/// length. Nor its allocated blocks: ext4 reports `st_blocks` short by up to a whole extent
/// while delayed-allocation data is being written back, and a rerun right after `kill -9` looks
/// at exactly the files the kernel is then writing back; the data ranges stay whole throughout.
/// A file system without hole support reports the whole file as data (an overcount, never an
/// undercount).
pub fn data_len(path: &Path) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    let end = file.metadata()?.len();
    let seek = |from: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        let from = libc::off_t::try_from(from).map_err(std::io::Error::other)?;
        // SAFETY: plain syscall on a descriptor `file` keeps open; no memory is passed.
        let at = unsafe { libc::lseek(file.as_raw_fd(), from, whence) };
        if at >= 0 {
            return Ok(Some(at as u64));
        }
        let e = std::io::Error::last_os_error();
        // ENXIO: no data at or after `from`.
        match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        }
    };
    let mut total = 0;
    let mut pos = 0;
    while pos < end {
        let Some(data) = seek(pos, libc::SEEK_DATA)? else {
            break;
        };
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        if hole <= data {
            break; // the file shrank under us
        }
        total += hole - data;
        pos = hole;
    }
    Ok(total)
}

/// Bytes of the regular files under `dir` (not following links, skipping the top-level
/// bookkeeping folder). `in_progress`: count each file's data ([`data_len`]) instead of its
/// length, because a download in progress may be preallocated at full length.
fn tree_bytes(dir: &Path, in_progress: bool) -> u64 {
    fn walk(base: &Path, dir: &Path, in_progress: bool) -> u64 {
        let Ok(read) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut total = 0u64;
        for item in read.flatten() {
            let Ok(meta) = item.metadata() else { continue };
            if meta.is_dir() {
                if dir == base && item.file_name() == STATE_DIR {
                    continue;
                }
                total += walk(base, &item.path(), in_progress);
            } else if meta.is_file() {
                total += if in_progress {
                    // A file that vanished or cannot be read holds nothing this run can reuse.
                    data_len(&item.path()).unwrap_or(0)
                } else {
                    meta.len()
                };
            }
        }
        total
    }
    walk(dir, dir, in_progress)
}

/// Delete model `name` from the process's store. Returns the folder that was removed.
pub fn remove(name: &str) -> Result<PathBuf, StoreError> {
    remove_in(&models_root().ok_or(StoreError::NoRoot)?, name)
}

/// Delete model `name` from the store at `root`. Only ever deletes `<root>/<name>` itself: the
/// name must be a bare name, and the resolved folder's parent must be the resolved root (a link
/// named like a model is removed as a link; its target is left alone).
pub fn remove_in(root: &Path, name: &str) -> Result<PathBuf, StoreError> {
    if !is_bare_name(name) {
        return Err(StoreError::NotAName {
            name: name.to_string(),
        });
    }
    let path = root.join(name);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(_) => {
            return Err(StoreError::NotStored {
                name: name.to_string(),
                root: root.to_path_buf(),
            })
        }
    };
    let remove_err = |source| StoreError::Remove {
        path: path.clone(),
        source,
    };
    if meta.file_type().is_symlink() {
        std::fs::remove_file(&path).map_err(remove_err)?;
        return Ok(path);
    }
    if !meta.is_dir() {
        return Err(StoreError::NotStored {
            name: name.to_string(),
            root: root.to_path_buf(),
        });
    }
    let canon_root = std::fs::canonicalize(root).map_err(|source| StoreError::Read {
        path: root.to_path_buf(),
        source,
    })?;
    let canon = std::fs::canonicalize(&path).map_err(remove_err)?;
    if canon.parent() != Some(canon_root.as_path()) || canon == canon_root {
        return Err(StoreError::OutsideStore {
            path: canon,
            root: canon_root,
        });
    }
    // remove_dir_all does not follow links inside the tree, so nothing outside it is touched.
    std::fs::remove_dir_all(&canon).map_err(remove_err)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn root_follows_the_documented_order() {
        let all = env(&[
            ("SWARMLM_HOME", "/s"),
            ("XDG_DATA_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(models_root_from(all), Some(PathBuf::from("/s/models")));
        let xdg = env(&[
            ("SWARMLM_HOME", ""),
            ("XDG_DATA_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(
            models_root_from(xdg),
            Some(PathBuf::from("/x/swarmlm/models"))
        );
        let home = env(&[("HOME", "/h")]);
        assert_eq!(
            models_root_from(home),
            Some(PathBuf::from("/h/.local/share/swarmlm/models"))
        );
        assert_eq!(models_root_from(env(&[])), None);
    }

    #[test]
    fn every_catalogue_entry_parses_and_matches_its_file_name() {
        assert_eq!(catalogue().len(), CATALOGUE.len());
        for (file, text) in CATALOGUE {
            let m = Manifest::from_toml_str(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(format!("{}.toml", m.name), *file);
            assert_eq!(catalogue_entry(&m.name), Some(m));
        }
    }

    #[test]
    fn every_magnets_file_is_compiled_in() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../magnets");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        on_disk.sort();
        let mut compiled: Vec<String> = CATALOGUE.iter().map(|(f, _)| f.to_string()).collect();
        compiled.sort();
        assert_eq!(on_disk, compiled);
        for (file, text) in CATALOGUE {
            assert_eq!(std::fs::read_to_string(dir.join(file)).unwrap(), *text);
        }
    }

    #[test]
    fn the_real_mistral_info_hashes_are_pinned() {
        let hash = |name: &str| hex::encode(catalogue_entry(name).unwrap().info_hash);
        assert_eq!(
            hash("mistral-7B-v0.1"),
            "208b101a0f51514ecf285885a8b0f6fb1a1e4d7d"
        );
        assert_eq!(
            hash("mixtral-8x7b-32kseqlen"),
            "5546272da9065eddeb6fcd7ffddeef5b75be79a7"
        );
        assert_eq!(
            hash("mixtral-8x22b"),
            "9238b09245d0d8cd915be09927769d5f7584c1c9"
        );
        // Made by `swarmlm create` from the bundled model; tests/demo_cli.rs re-creates it.
        assert_eq!(
            hash("shakespeare-moe"),
            "691d58ac285de6f16bfdd3cf4b6904c5126509d6"
        );
        let m = catalogue_entry("mixtral-8x7b-32kseqlen").unwrap();
        let md5 = |p: &str| m.file(p).and_then(|f| f.md5).map(hex::encode);
        assert_eq!(
            md5("consolidated.00.pth").as_deref(),
            Some("1faa9bc9b20fcfe81fcd4eb7166a79e6")
        );
        assert_eq!(
            md5("tokenizer.model").as_deref(),
            Some("37974873eb68a7ab30c4912fc36264ae")
        );
    }

    #[test]
    fn resolution_rule_in_order() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("mixtral-8x7b-32kseqlen")).unwrap();
        std::fs::create_dir(r.join("mine")).unwrap();
        let folder = tempfile::tempdir().unwrap();
        let folder_arg = folder.path().to_str().unwrap();

        assert_eq!(
            resolve_in(folder_arg, Some(r)),
            Resolved::Folder(folder.path().to_path_buf())
        );
        assert_eq!(
            resolve_in("x/m.toml", Some(r)),
            Resolved::ManifestFile(PathBuf::from("x/m.toml"))
        );
        assert_eq!(
            resolve_in("m.TORRENT", Some(r)),
            Resolved::TorrentFile(PathBuf::from("m.TORRENT"))
        );
        let magnet = "magnet:?xt=urn:btih:5546272da9065eddeb6fcd7ffddeef5b75be79a7";
        assert_eq!(
            resolve_in(magnet, Some(r)),
            Resolved::Magnet(magnet.to_string())
        );
        // The store wins over the catalogue for the same name.
        assert_eq!(
            resolve_in("mixtral-8x7b-32kseqlen", Some(r)),
            Resolved::Folder(r.join("mixtral-8x7b-32kseqlen"))
        );
        assert_eq!(
            resolve_in("mine", Some(r)),
            Resolved::Folder(r.join("mine"))
        );
        match resolve_in("mixtral-8x22b", Some(r)) {
            Resolved::Catalogue(m) => assert_eq!(m.name, "mixtral-8x22b"),
            other => panic!("expected the catalogue entry, got {other:?}"),
        }
        match resolve_in("mixtral-8x7b-32kseqlen", None) {
            Resolved::Catalogue(m) => assert_eq!(m.name, "mixtral-8x7b-32kseqlen"),
            other => panic!("expected the catalogue entry, got {other:?}"),
        }
        assert_eq!(
            resolve_in("nope", Some(r)),
            Resolved::NotFound {
                arg: "nope".into(),
                store: Some(r.to_path_buf()),
                bare_name: true
            }
        );
        // Not names: never looked up in the store.
        for arg in ["../mine", "a/b", "..", ".", "", ".swarmlm"] {
            assert!(
                matches!(
                    resolve_in(arg, Some(r)),
                    Resolved::NotFound {
                        bare_name: false,
                        ..
                    }
                ) || Path::new(arg).is_dir(),
                "{arg:?}"
            );
        }
    }

    #[test]
    fn remove_refuses_anything_but_a_store_entry() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("link")).unwrap();
        std::fs::create_dir_all(r.join("model/sub")).unwrap();
        std::fs::write(r.join("model/sub/w.bin"), b"weights").unwrap();

        assert!(matches!(
            remove_in(r, ".."),
            Err(StoreError::NotAName { .. })
        ));
        assert!(matches!(
            remove_in(r, "a/b"),
            Err(StoreError::NotAName { .. })
        ));
        assert!(matches!(
            remove_in(r, "absent"),
            Err(StoreError::NotStored { .. })
        ));
        // A link is removed as a link: what it points at survives.
        assert_eq!(remove_in(r, "link").unwrap(), r.join("link"));
        assert!(outside.path().join("keep").is_file());
        assert_eq!(remove_in(r, "model").unwrap(), r.join("model"));
        assert!(!r.join("model").exists());
        assert!(r.is_dir());
    }

    #[test]
    fn data_len_counts_written_ranges_of_a_sparse_file() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        assert_eq!(data_len(&path).unwrap(), 0);
        // Two runs of 16 KiB blocks, as librqbit writes them, and one byte at the very end.
        for off in (0..(100 << 10)).step_by(16 << 10) {
            f.write_all_at(&[7u8; 16 << 10], off).unwrap();
        }
        f.write_all_at(&[9u8; 48 << 10], 3 << 20).unwrap();
        f.write_all_at(&[1u8], (8 << 20) - 1).unwrap();
        let written = (112 << 10) + (48 << 10) + 1;
        let got = data_len(&path).unwrap();
        // File systems count whole blocks (at most 64 KiB each here).
        assert!(
            (written..written + 3 * (64 << 10)).contains(&got),
            "{got} bytes of data for {written} written"
        );
        assert!(data_len(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_sparse_partial_file_counts_only_its_data_in_the_size() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        let partial = model.join(STATE_DIR).join(PARTIAL_DIR);
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(model.join("config.json"), [1u8; 10]).unwrap();
        // Preallocated at full length as librqbit does, 64 KiB of it written.
        let f = std::fs::File::create(partial.join("model.safetensors")).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&[7u8; 64 << 10], 1 << 20).unwrap();
        let size = inspect("m", &model).size;
        let written = 10 + (64 << 10);
        assert!(
            (written..written + (64 << 10)).contains(&size),
            "size {size} for {written} bytes written"
        );
    }
}
