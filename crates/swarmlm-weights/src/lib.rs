//! Zero-copy memory-mapped Mixtral checkpoints.
//!
//! The engine never copies a weight: every tensor it reads is a [`TensorView`] into a read-only
//! memory map of a checkpoint file. [`Checkpoint::open`] accepts both ways Mixtral travels:
//!
//! - the Hugging Face hub layout (`config.json` + `model.safetensors` or shards listed in
//!   `model.safetensors.index.json`), and
//! - Mistral AI's original release (`params.json` + `consolidated.00.pth`, a zip archive whose
//!   stored entries are mapped in place; its `data.pkl` is interpreted by a restricted pickle
//!   reader that never executes anything).
//!
//! Tensors are always addressed by their hub names; the one real difference between the two,
//! the RoPE layout of the q/k rows, is reported by [`Checkpoint::rope_layout`] (see
//! [`names::half_split_row_for_interleaved`]).
//!
//! Everything is validated at open — header and archive structure, offsets, byte lengths,
//! alignment, overlap, dtypes, and that every tensor the config implies is present with the
//! right shape (all problems listed at once) — so that later accesses cannot fail or fault.
//!
//! # Residency
//!
//! [`Checkpoint::advise`], [`Checkpoint::resident_bytes`] and [`Checkpoint::drop_page_cache`]
//! let an expert pager ask the kernel to read ahead or let go of one tensor's pages, and measure
//! how much of it sits in the page cache.
//!
//! # The SIGBUS hazard, and why it does not apply here
//!
//! A memory map stays valid only as long as the file behind it still has the bytes. If a mapped
//! file is truncated (by another process, or by a downloader rewriting it), touching a page past
//! the new end raises `SIGBUS` and kills the process; no Rust check can catch that, because the
//! slice still looks valid. swarmlm avoids it by construction:
//!
//! - it maps only files that are complete and verified (SHA-256 against the manifest) before the
//!   engine opens them, and it never writes to, truncates or replaces a file it has open — the
//!   downloader and seeder only read files once they are complete;
//! - maps are read-only (`PROT_READ`, `MAP_SHARED`: the view *is* the page cache, never a
//!   private copy), so nothing in the process can change them;
//! - the size of every file is taken with `fstat` on the opened descriptor and every tensor is
//!   checked to lie inside that size at open, so a short or half-written file is an error at
//!   open, not a fault later;
//! - files are kept open for the checkpoint's lifetime, so deleting or replacing a path (a new
//!   inode) cannot shrink what is mapped — only an in-place truncate can, which is the one thing
//!   users must not do to a model folder that a running swarmlm is using.

pub mod config;
mod error;
mod hf;
mod mapped;
pub mod names;
pub mod pickle;
pub mod pth;
mod resident;
pub mod spm_proto;
pub mod st_header;
pub mod zip;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use config::{JsonSource, MixtralConfig};
pub use error::{TensorProblem, WeightsError};
pub use names::{hf_tensor_names, hf_to_mistral_name, mistral_to_hf_name};
pub use resident::{page_size, HUGE_PAGES_ENV};

use mapped::MappedFile;

/// Which on-disk layout a checkpoint came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `config.json` + safetensors (single file or shards).
    HfSafetensors,
    /// Mistral's original `params.json` + `consolidated.00.pth`.
    MistralPth,
}

/// How the q/k projection rows of each head are ordered relative to RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RopeLayout {
    /// HF: RoPE pairs dims `i` and `i + head_dim/2` of each head.
    HalfSplit,
    /// Mistral original: RoPE pairs dims `2i` and `2i + 1` (q/k rows not permuted).
    Interleaved,
}

/// Element types a view can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    BF16,
    F16,
    F32,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::BF16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }

    pub(crate) fn from_safetensors(s: &str) -> Option<Dtype> {
        match s {
            "BF16" => Some(Dtype::BF16),
            "F16" => Some(Dtype::F16),
            "F32" => Some(Dtype::F32),
            _ => None,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::BF16 => "BF16",
            Dtype::F16 => "F16",
            Dtype::F32 => "F32",
        })
    }
}

/// Access-pattern advice for one tensor's pages (see [`Checkpoint::advise`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Advice {
    WillNeed,
    DontNeed,
    Random,
    Sequential,
}

/// Where a tensor's bytes are in which file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLocation {
    pub file: PathBuf,
    /// Absolute byte offset of the first element in `file`.
    pub offset: u64,
    pub len: u64,
}

/// A typed, borrowed view of one tensor's bytes inside a memory map. Copying the view copies
/// only the reference.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// The hub name.
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    /// Exactly `numel × dtype.size()` bytes, aligned to the element size.
    pub bytes: &'a [u8],
}

impl<'a> TensorView<'a> {
    fn typed<T: bytemuck::Pod>(&self, want: Dtype) -> Result<&'a [T], WeightsError> {
        if self.dtype != want {
            return Err(WeightsError::DtypeMismatch {
                tensor: self.name.to_string(),
                expected: want,
                actual: self.dtype,
            });
        }
        bytemuck::try_cast_slice(self.bytes).map_err(|_| WeightsError::ViewMisaligned {
            tensor: self.name.to_string(),
            dtype: want,
        })
    }

    pub fn as_bf16(&self) -> Result<&'a [half::bf16], WeightsError> {
        self.typed(Dtype::BF16)
    }

    pub fn as_f16(&self) -> Result<&'a [half::f16], WeightsError> {
        self.typed(Dtype::F16)
    }

    pub fn as_f32(&self) -> Result<&'a [f32], WeightsError> {
        self.typed(Dtype::F32)
    }

    /// Widens any dtype to an owned `Vec<f32>` — a copy, meant for small tensors such as norms.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self.dtype {
            Dtype::BF16 => self
                .bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F16 => self
                .bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::F32 => self
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        }
    }

    pub fn numel(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }
}

/// A validated tensor as a file parser reports it: its name (the hub name for `.pth`), type,
/// shape, and absolute byte range `[start, end)` in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: u64,
    pub end: u64,
}

/// One tensor's place in one mapped file (absolute offsets, validated at open).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub file: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: u64,
    pub end: u64,
}

/// An opened, validated checkpoint: its config and read-only maps of all its weight files.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    format: Format,
    config: MixtralConfig,
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, Entry>,
}

impl Checkpoint {
    /// Opens the model folder `dir`, detecting its format: the hub layout when `config.json`
    /// is present with `model.safetensors.index.json` or `model.safetensors` (preferred when a
    /// folder has both layouts), else Mistral's original when `params.json` and
    /// `consolidated.00.pth` are present.
    pub fn open(dir: &Path) -> Result<Checkpoint, WeightsError> {
        let meta = std::fs::metadata(dir).map_err(|e| WeightsError::io(dir, "stat", e))?;
        if !meta.is_dir() {
            return Err(WeightsError::NoCheckpoint {
                dir: dir.to_path_buf(),
            });
        }
        let has = |name: &str| dir.join(name).exists();
        let (format, loaded) = if has(hf::CONFIG) && (has(hf::INDEX) || has(hf::SINGLE)) {
            (Format::HfSafetensors, hf::open(dir)?)
        } else if has(pth::PARAMS) && has(pth::CONSOLIDATED) {
            let l = pth::open(dir)?;
            let loaded = hf::Loaded {
                config: l.config,
                files: vec![l.file],
                tensors: l.tensors,
            };
            (Format::MistralPth, loaded)
        } else {
            return Err(WeightsError::NoCheckpoint {
                dir: dir.to_path_buf(),
            });
        };
        let ckpt = Checkpoint {
            dir: dir.to_path_buf(),
            format,
            config: loaded.config,
            files: loaded.files,
            tensors: loaded.tensors,
        };
        ckpt.check_against_config()?;
        Ok(ckpt)
    }

    /// Every tensor the config implies must be present with its shape; all problems are
    /// collected so one error lists them all.
    fn check_against_config(&self) -> Result<(), WeightsError> {
        let mut problems = Vec::new();
        for (name, expected) in hf_tensor_names(&self.config) {
            match self.tensors.get(&name) {
                None => problems.push(TensorProblem::Missing { name, expected }),
                Some(e) if e.shape != expected => problems.push(TensorProblem::WrongShape {
                    name,
                    expected,
                    actual: e.shape.clone(),
                }),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(WeightsError::TensorsMismatch {
                dir: self.dir.clone(),
                problems,
            })
        }
    }

    pub fn config(&self) -> &MixtralConfig {
        &self.config
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn rope_layout(&self) -> RopeLayout {
        match self.format {
            Format::HfSafetensors => RopeLayout::HalfSplit,
            Format::MistralPth => RopeLayout::Interleaved,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, hf_name: &str) -> Result<(&str, &Entry), WeightsError> {
        self.tensors
            .get_key_value(hf_name)
            .map(|(k, e)| (k.as_str(), e))
            .ok_or_else(|| WeightsError::UnknownTensor {
                name: hf_name.to_string(),
            })
    }

    /// The tensor named `hf_name` (hub name, for either format), as a view into its map.
    pub fn tensor(&self, hf_name: &str) -> Result<TensorView<'_>, WeightsError> {
        let (name, e) = self.entry(hf_name)?;
        // Offsets were checked against this file's mapped length at open.
        let bytes = &self.files[e.file].bytes()[e.start as usize..e.end as usize];
        Ok(TensorView {
            name,
            dtype: e.dtype,
            shape: &e.shape,
            bytes,
        })
    }

    /// All tensor names (hub names), sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    pub fn location(&self, hf_name: &str) -> Result<TensorLocation, WeightsError> {
        let (_, e) = self.entry(hf_name)?;
        Ok(TensorLocation {
            file: self.files[e.file].path.clone(),
            offset: e.start,
            len: e.end - e.start,
        })
    }

    /// The files this checkpoint maps, in load order.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }
}

// The engine shares one checkpoint across threads; keep that a compile-time fact.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Checkpoint>();
    assert_send_sync::<TensorView<'static>>();
};
