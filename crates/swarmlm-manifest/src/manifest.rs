//! The manifest type, its strict TOML reader and its canonical TOML writer.
//!
//! A manifest is what a user trusts before any byte arrives, so the reader refuses anything it
//! cannot vouch for (unsafe paths, duplicate files, malformed hashes, unknown fields, a magnet that
//! is not a v1 info hash) and every refusal names the field. The writer emits one canonical text
//! (fixed field order, lowercase hex, optional fields omitted) so that load → save is
//! byte-identical for canonical input and diffs of `magnets/*.toml` stay readable.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::magnet::Magnet;

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write manifest {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest is not UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("manifest is not valid TOML: {message}")]
    Syntax { message: String },
    #[error("manifest field `{field}`: {problem}")]
    Field { field: String, problem: String },
    /// Any of the above, found while loading a file.
    #[error("{path}: {inner}")]
    InFile {
        path: PathBuf,
        inner: Box<ManifestError>,
    },
}

impl ManifestError {
    fn field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        ManifestError::Field {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The offending field (`name`, `files[2].sha256`, ...) when the error is about one field.
    pub fn field_name(&self) -> Option<&str> {
        match self {
            ManifestError::Field { field, .. } => Some(field),
            ManifestError::InFile { inner, .. } => inner.field_name(),
            _ => None,
        }
    }
}

/// How the weights in a release are stored; decides which reader `swarmlm run` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFormat {
    /// Hugging Face hub layout: `config.json` + `*.safetensors` shards.
    HfSafetensors,
    /// Mistral AI's own releases: `params.json` + `consolidated.*.pth`.
    MistralPth,
    /// Mistral AI's later releases (Mixtral 8x22B): `params.json` + `consolidated.safetensors`,
    /// safetensors with Mistral's own tensor names, not the Hugging Face shard layout. Fetched,
    /// verified and seeded; `swarmlm run` does not read it yet.
    MistralSafetensors,
}

impl ModelFormat {
    /// The spelling used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::HfSafetensors => "hf-safetensors",
            ModelFormat::MistralPth => "mistral-pth",
            ModelFormat::MistralSafetensors => "mistral-safetensors",
        }
    }

    /// Parse the manifest spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hf-safetensors" => Some(ModelFormat::HfSafetensors),
            "mistral-pth" => Some(ModelFormat::MistralPth),
            "mistral-safetensors" => Some(ModelFormat::MistralSafetensors),
            _ => None,
        }
    }

    /// Guess the format from the file names of a release: `params.json` with a
    /// `consolidated*.safetensors` (and no `config.json`) is Mistral's safetensors layout; any
    /// other `*.safetensors` file means the hub layout; otherwise a `*.pth` file means a
    /// Mistral `.pth` release. `None` when neither is present.
    pub fn detect<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let (mut pth, mut st, mut consolidated_st, mut params, mut config) =
            (false, false, false, false, false);
        for p in paths {
            let base = p.rsplit('/').next().unwrap_or(p);
            st |= base.ends_with(".safetensors");
            consolidated_st |= base.starts_with("consolidated") && base.ends_with(".safetensors");
            pth |= base.ends_with(".pth");
            params |= base == "params.json";
            config |= base == "config.json";
        }
        if consolidated_st && params && !config {
            Some(ModelFormat::MistralSafetensors)
        } else if st {
            Some(ModelFormat::HfSafetensors)
        } else {
            pth.then_some(ModelFormat::MistralPth)
        }
    }
}

impl std::fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One file of a release. `size` and `sha256` may be unknown in advance (a release announced only
/// by its magnet, or with only the publisher's md5): they are then filled in on first download
/// (trust on first use, see [`Manifest::pin_unknowns`](crate::Manifest::pin_unknowns)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Relative path inside the model folder, `/`-separated.
    pub path: String,
    pub size: Option<u64>,
    pub sha256: Option<[u8; 32]>,
    /// Only where the publisher gave an md5 (Mistral's `RELEASE` lists).
    pub md5: Option<[u8; 16]>,
}

/// A model release: where to get it (magnet) and what every byte must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The torrent's `info.name`: the folder the files land in. A single path component.
    pub name: String,
    pub description: String,
    pub license: String,
    /// Where the release comes from (a URL or a sentence), for people.
    pub source: String,
    pub format: ModelFormat,
    /// The magnet URI, stored verbatim.
    pub magnet: String,
    /// Derived from `magnet` (its `xt=urn:btih:`); [`Manifest::validate`] checks they agree.
    pub info_hash: [u8; 20],
    /// Torrent piece length in bytes, when known: a power of two from 16 KiB to 256 MiB.
    pub piece_length: Option<u64>,
    /// Sum of all file sizes, when known. Required when every file's size is known.
    pub total_size: Option<u64>,
    /// In torrent order (the order pieces are laid over the files).
    pub files: Vec<FileEntry>,
}

/// Smallest and largest piece length a manifest or torrent may declare.
pub const MIN_PIECE_LENGTH: u64 = 16 * 1024;
pub const MAX_PIECE_LENGTH: u64 = 256 * 1024 * 1024;

/// Why a relative path inside a release is unsafe or unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathProblem {
    #[error("the path is empty")]
    Empty,
    #[error("the path is absolute")]
    Absolute,
    #[error("the path has an empty component (`//` or a trailing `/`)")]
    EmptyComponent,
    #[error("the path has a `{0}` component")]
    DotComponent(&'static str),
    #[error("the path contains a backslash, NUL or control character")]
    BadCharacter,
    #[error("a path component is longer than 255 bytes")]
    TooLong,
}

/// Check one `/`-separated relative path: no absolute paths, no `.`/`..`/empty components, no
/// backslashes or control characters. Shared with the torrent parser so both trust roots agree.
pub fn check_relative_path(path: &str) -> Result<(), PathProblem> {
    if path.is_empty() {
        return Err(PathProblem::Empty);
    }
    if path.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    for component in path.split('/') {
        check_component(component)?;
    }
    Ok(())
}

/// Check one path component (a file or folder name).
pub fn check_component(component: &str) -> Result<(), PathProblem> {
    match component {
        "" => return Err(PathProblem::EmptyComponent),
        "." => return Err(PathProblem::DotComponent(".")),
        ".." => return Err(PathProblem::DotComponent("..")),
        _ => {}
    }
    if component.len() > 255 {
        return Err(PathProblem::TooLong);
    }
    if component
        .chars()
        .any(|c| c == '\\' || c == '/' || c.is_control())
    {
        return Err(PathProblem::BadCharacter);
    }
    Ok(())
}

/// Check a release name: it becomes a folder name, so it is one safe path component.
pub fn check_name(name: &str) -> Result<(), PathProblem> {
    check_component(name)
}

const TOP_FIELDS: &[&str] = &[
    "name",
    "description",
    "license",
    "source",
    "format",
    "magnet",
    "piece_length",
    "total_size",
    "files",
];
const FILE_FIELDS: &[&str] = &["path", "size", "sha256", "md5"];

impl Manifest {
    /// Read and validate a manifest file. Errors name the file and the field.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let in_file = |inner| ManifestError::InFile {
            path: path.to_path_buf(),
            inner: Box::new(inner),
        };
        let bytes = std::fs::read(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            in_file(ManifestError::NotUtf8 {
                offset: e.valid_up_to(),
            })
        })?;
        Self::from_toml_str(text).map_err(in_file)
    }

    /// Parse and validate manifest text.
    pub fn from_toml_str(text: &str) -> Result<Self, ManifestError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ManifestError::Syntax {
                    message: e.to_string().trim_end().to_string(),
                })?;
        for key in table.keys() {
            if !TOP_FIELDS.contains(&key.as_str()) {
                return Err(ManifestError::field(
                    key.clone(),
                    format!("unknown field (expected one of: {})", TOP_FIELDS.join(", ")),
                ));
            }
        }
        let name = req_str(&table, "name", "name")?;
        let description = opt_str(&table, "description", "description")?.unwrap_or_default();
        let license = opt_str(&table, "license", "license")?.unwrap_or_default();
        let source = opt_str(&table, "source", "source")?.unwrap_or_default();
        let format_text = req_str(&table, "format", "format")?;
        let format = ModelFormat::parse(&format_text).ok_or_else(|| {
            ManifestError::field(
                "format",
                format!(
                    "unknown format `{format_text}` (expected `hf-safetensors`, `mistral-pth` or `mistral-safetensors`)"
                ),
            )
        })?;
        let magnet = req_str(&table, "magnet", "magnet")?;
        let info_hash = Magnet::parse(&magnet)
            .map_err(|e| ManifestError::field("magnet", e.to_string()))?
            .info_hash;
        let piece_length = opt_u64(&table, "piece_length", "piece_length")?;
        let total_size = opt_u64(&table, "total_size", "total_size")?;

        let files_value = table.get("files").ok_or_else(|| {
            ManifestError::field("files", "missing (at least one [[files]] entry)")
        })?;
        let files_array = files_value.as_array().ok_or_else(|| {
            ManifestError::field("files", "must be an array of tables ([[files]])")
        })?;
        let mut files = Vec::with_capacity(files_array.len());
        for (i, value) in files_array.iter().enumerate() {
            let at = |f: &str| format!("files[{i}].{f}");
            let entry = value
                .as_table()
                .ok_or_else(|| ManifestError::field(format!("files[{i}]"), "must be a table"))?;
            for key in entry.keys() {
                if !FILE_FIELDS.contains(&key.as_str()) {
                    return Err(ManifestError::field(
                        at(key),
                        format!(
                            "unknown field (expected one of: {})",
                            FILE_FIELDS.join(", ")
                        ),
                    ));
                }
            }
            let path = req_str(entry, "path", &at("path"))?;
            let size = opt_u64(entry, "size", &at("size"))?;
            let sha256 = opt_hex::<32>(entry, "sha256", &at("sha256"))?;
            let md5 = opt_hex::<16>(entry, "md5", &at("md5"))?;
            files.push(FileEntry {
                path,
                size,
                sha256,
                md5,
            });
        }
        let manifest = Manifest {
            name,
            description,
            license,
            source,
            format,
            magnet,
            info_hash,
            piece_length,
            total_size,
            files,
        };
        manifest.validate()?;
        Ok(manifest)
    }

    /// Check every invariant the reader enforces; used for manifests built in code too.
    pub fn validate(&self) -> Result<(), ManifestError> {
        check_name(&self.name).map_err(|p| ManifestError::field("name", p.to_string()))?;
        let magnet = Magnet::parse(&self.magnet)
            .map_err(|e| ManifestError::field("magnet", e.to_string()))?;
        if magnet.info_hash != self.info_hash {
            return Err(ManifestError::field(
                "magnet",
                format!(
                    "info hash {} does not match the manifest's {}",
                    hex::encode(magnet.info_hash),
                    hex::encode(self.info_hash)
                ),
            ));
        }
        if let Some(pl) = self.piece_length {
            if !pl.is_power_of_two() || !(MIN_PIECE_LENGTH..=MAX_PIECE_LENGTH).contains(&pl) {
                return Err(ManifestError::field(
                    "piece_length",
                    format!("{pl} is not a power of two from 16 KiB to 256 MiB"),
                ));
            }
        }
        if self.files.is_empty() {
            return Err(ManifestError::field(
                "files",
                "missing (at least one [[files]] entry)",
            ));
        }
        let mut seen = HashSet::with_capacity(self.files.len());
        for (i, f) in self.files.iter().enumerate() {
            check_relative_path(&f.path).map_err(|p| {
                ManifestError::field(format!("files[{i}].path"), format!("{:?}: {p}", f.path))
            })?;
            if !seen.insert(f.path.as_str()) {
                return Err(ManifestError::field(
                    format!("files[{i}].path"),
                    format!("{:?} is listed twice", f.path),
                ));
            }
        }
        // A path that is also a folder of another path cannot exist on disk.
        for (i, f) in self.files.iter().enumerate() {
            for (pos, _) in f.path.match_indices('/') {
                if seen.contains(&f.path[..pos]) {
                    return Err(ManifestError::field(
                        format!("files[{i}].path"),
                        format!(
                            "{:?} is inside {:?}, which is listed as a file",
                            f.path,
                            &f.path[..pos]
                        ),
                    ));
                }
            }
        }
        let mut known: u64 = 0;
        let mut all_known = true;
        for (i, f) in self.files.iter().enumerate() {
            match f.size {
                Some(s) => {
                    known = known.checked_add(s).ok_or_else(|| {
                        ManifestError::field(format!("files[{i}].size"), "sizes overflow 64 bits")
                    })?
                }
                None => all_known = false,
            }
        }
        match (self.total_size, all_known) {
            (Some(total), true) if total != known => {
                return Err(ManifestError::field(
                    "total_size",
                    format!("{total} but the file sizes add up to {known}"),
                ))
            }
            (Some(total), false) if known > total => {
                return Err(ManifestError::field(
                    "total_size",
                    format!("{total} but the known file sizes already add up to {known}"),
                ))
            }
            (None, true) => {
                return Err(ManifestError::field(
                    "total_size",
                    format!("missing (every file size is known; they add up to {known})"),
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// The canonical text: fixed field order, lowercase hex, unknown values omitted.
    pub fn to_toml_string(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "name = {}", toml_str(&self.name));
        let _ = writeln!(out, "description = {}", toml_str(&self.description));
        let _ = writeln!(out, "license = {}", toml_str(&self.license));
        let _ = writeln!(out, "source = {}", toml_str(&self.source));
        let _ = writeln!(out, "format = {}", toml_str(self.format.as_str()));
        let _ = writeln!(out, "magnet = {}", toml_str(&self.magnet));
        if let Some(pl) = self.piece_length {
            let _ = writeln!(out, "piece_length = {pl}");
        }
        if let Some(total) = self.total_size {
            let _ = writeln!(out, "total_size = {total}");
        }
        for f in &self.files {
            out.push_str("\n[[files]]\n");
            let _ = writeln!(out, "path = {}", toml_str(&f.path));
            if let Some(size) = f.size {
                let _ = writeln!(out, "size = {size}");
            }
            if let Some(h) = &f.sha256 {
                let _ = writeln!(out, "sha256 = \"{}\"", hex::encode(h));
            }
            if let Some(h) = &f.md5 {
                let _ = writeln!(out, "md5 = \"{}\"", hex::encode(h));
            }
        }
        out
    }

    /// Validate, then write the canonical text atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), ManifestError> {
        self.validate()?;
        crate::atomic_write(path, self.to_toml_string().as_bytes()).map_err(|source| {
            ManifestError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// The file entry for a path, if listed.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// A TOML basic string with only the escapes TOML requires, so output is deterministic.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn opt_str(table: &toml::Table, key: &str, field: &str) -> Result<Option<String>, ManifestError> {
    match table.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ManifestError::field(
            field,
            format!("must be a string, found {}", other.type_str()),
        )),
    }
}

fn req_str(table: &toml::Table, key: &str, field: &str) -> Result<String, ManifestError> {
    opt_str(table, key, field)?.ok_or_else(|| ManifestError::field(field, "missing"))
}

fn opt_u64(table: &toml::Table, key: &str, field: &str) -> Result<Option<u64>, ManifestError> {
    match table.get(key) {
        None => Ok(None),
        Some(toml::Value::Integer(i)) => u64::try_from(*i)
            .map(Some)
            .map_err(|_| ManifestError::field(field, format!("{i} is negative"))),
        Some(other) => Err(ManifestError::field(
            field,
            format!("must be an integer, found {}", other.type_str()),
        )),
    }
}

fn opt_hex<const N: usize>(
    table: &toml::Table,
    key: &str,
    field: &str,
) -> Result<Option<[u8; N]>, ManifestError> {
    let Some(text) = opt_str(table, key, field)? else {
        return Ok(None);
    };
    parse_hex::<N>(&text)
        .map(Some)
        .map_err(|problem| ManifestError::field(field, problem))
}

/// Parse exactly `N` bytes of hex (either case); the error says what was wrong.
pub fn parse_hex<const N: usize>(text: &str) -> Result<[u8; N], String> {
    if text.len() != 2 * N {
        return Err(format!(
            "{:?} has {} characters; expected {} hex digits",
            text,
            text.len(),
            2 * N
        ));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|_| format!("{text:?} is not hexadecimal"))?;
    Ok(out)
}
