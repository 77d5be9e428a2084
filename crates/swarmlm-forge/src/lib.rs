//! Synthetic Mixtral checkpoints in the exact Hugging Face hub layout.
//!
//! Real Mixtral weights cannot be downloaded everywhere (and are 93 GB), so every test and
//! benchmark of swarmlm runs on forged models of the true shape: `config.json`,
//! `generation_config.json`, `model.safetensors.index.json`, bf16 shards
//! `model-0000i-of-0000n.safetensors` with hub tensor names, and the real Mistral v1 tokenizer.
//! The weights are pseudo-random normal (std 0.02; RMSNorm weights exactly 1.0) from a
//! counter-based generator ([`rng`]), so the same arguments give byte-identical files on any
//! machine and with any number of threads.
//!
//! Layout choices, all as on the hub:
//! - Tensors are assigned to shards in model order ([`tensor_specs`]); a shard is closed when
//!   the next tensor would push its data past the shard size (default 5 GB, like
//!   `save_pretrained`), and a tensor larger than that gets a shard of its own. Inside a shard,
//!   header entries and data are sorted by tensor name. There is always an index, even for one
//!   shard.
//! - Each safetensors header is JSON padded with spaces so the data starts at a multiple of 8;
//!   its `__metadata__` holds `format: pt` plus the generator name and seed.
//! - JSON files are written with sorted keys and two-space indentation.
//!
//! Files appear under their real names only when complete (see [`write`]); `config.json` is
//! written last, so a directory without it is an interrupted forge.

pub mod error;
pub mod gguf;
pub mod json;
pub mod rng;
pub mod shape;
pub mod tensors;
pub mod tokenizer;
mod write;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

pub use error::ForgeError;
pub use gguf::{forge_gguf, forge_gguf_with_progress, gguf_plan, GgufPlan, GgufReport};
pub use shape::{Overrides, Preset, Shape, UnknownPreset};
pub use tensors::{plan, tensor_list, tensor_specs, Init, Plan, TensorSpec};

/// The hub's `max_shard_size` default ("5GB").
pub const DEFAULT_SHARD_SIZE: u64 = 5_000_000_000;

/// Everything that determines a forged checkpoint's bytes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForgeSpec {
    /// Which preset the shape started from (recorded in the report only).
    pub preset: Option<Preset>,
    pub shape: Shape,
    pub seed: u64,
    /// Upper bound on the tensor data bytes of one shard.
    pub shard_size: u64,
}

impl ForgeSpec {
    /// A preset's shape, seed 0, hub shard size.
    pub fn preset(preset: Preset) -> ForgeSpec {
        ForgeSpec::with_overrides(preset, &Overrides::default())
    }

    /// A preset's shape with some fields replaced.
    pub fn with_overrides(preset: Preset, overrides: &Overrides) -> ForgeSpec {
        ForgeSpec {
            preset: Some(preset),
            shape: Shape::from_preset(preset, overrides),
            seed: 0,
            shard_size: DEFAULT_SHARD_SIZE,
        }
    }

    /// Check the shape and settings and lay out the shards (no disk access).
    pub fn plan(&self) -> Result<Plan, ForgeError> {
        self.shape.validate()?;
        tensors::plan(
            &self.shape,
            self.shard_size,
            &tensors::shard_metadata(self.seed),
        )
    }
}

/// One written file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileReport {
    pub name: String,
    pub bytes: u64,
}

/// What a forge wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForgeReport {
    pub out_dir: PathBuf,
    pub preset: Option<Preset>,
    pub seed: u64,
    pub generator: &'static str,
    /// The `config.json` written.
    pub config: Value,
    /// In the order written; `config.json` last.
    pub files: Vec<FileReport>,
    /// Sum of all file sizes.
    pub total_bytes: u64,
    pub shard_count: usize,
    pub tensor_count: usize,
    pub total_parameters: u64,
    /// Tensor data bytes (the index's `metadata.total_size`).
    pub weights_bytes: u64,
}

/// Progress of a running forge, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The file being written.
    pub file: &'a str,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// Write the checkpoint `spec` into `out_dir` (created if missing; must be empty if present).
pub fn forge(spec: &ForgeSpec, out_dir: &Path) -> Result<ForgeReport, ForgeError> {
    forge_with_progress(spec, out_dir, &mut |_| {})
}

/// [`forge`], reporting progress after every buffer written. Data generation runs on the
/// current rayon pool (so `pool.install(|| forge(..))` bounds its threads).
pub fn forge_with_progress(
    spec: &ForgeSpec,
    out_dir: &Path,
    on_progress: &mut dyn FnMut(Progress<'_>),
) -> Result<ForgeReport, ForgeError> {
    // Everything that can be refused is refused before the disk is touched.
    let plan = spec.plan()?;
    let tokenizer_files = tokenizer::tokenizer_files(spec.shape.vocab_size)?;
    let config = spec.shape.config_json();
    let config_bytes = json::pretty(&config).into_bytes();
    let generation_bytes = json::pretty(&shape::generation_config_json()).into_bytes();
    let index_bytes = json::pretty(&index_json(&plan)).into_bytes();
    prepare_out_dir(out_dir)?;

    let total_bytes = tokenizer_files
        .iter()
        .map(|f| f.1.len() as u64)
        .sum::<u64>()
        + plan.shards.iter().map(|s| s.file_bytes()).sum::<u64>()
        + (config_bytes.len() + generation_bytes.len() + index_bytes.len()) as u64;
    let mut tracker = Tracker {
        done: 0,
        total: total_bytes,
        on_progress,
    };
    let mut files = Vec::new();
    let small = |name: &str, bytes: &[u8], tracker: &mut Tracker<'_>| {
        let n = write::write_small(out_dir, name, bytes)?;
        tracker.add(name, n);
        Ok::<_, ForgeError>(FileReport {
            name: name.to_string(),
            bytes: n,
        })
    };
    for (name, bytes) in &tokenizer_files {
        files.push(small(name, bytes, &mut tracker)?);
    }
    files.push(small(
        "generation_config.json",
        &generation_bytes,
        &mut tracker,
    )?);
    for shard in &plan.shards {
        let name = shard.file_name.as_str();
        let bytes = write::write_shard(out_dir, shard, spec.seed, &mut |n| tracker.add(name, n))?;
        files.push(FileReport {
            name: name.to_string(),
            bytes,
        });
    }
    files.push(small(
        "model.safetensors.index.json",
        &index_bytes,
        &mut tracker,
    )?);
    files.push(small("config.json", &config_bytes, &mut tracker)?);
    write::sync_dir(out_dir)?;

    Ok(ForgeReport {
        out_dir: out_dir.to_path_buf(),
        preset: spec.preset,
        seed: spec.seed,
        generator: rng::GENERATOR,
        config,
        total_bytes: files.iter().map(|f| f.bytes).sum(),
        files,
        shard_count: plan.shards.len(),
        tensor_count: plan.shards.iter().map(|s| s.tensors.len()).sum(),
        total_parameters: plan.total_parameters,
        weights_bytes: plan.total_size,
    })
}

struct Tracker<'a> {
    done: u64,
    total: u64,
    on_progress: &'a mut dyn FnMut(Progress<'_>),
}

impl Tracker<'_> {
    fn add(&mut self, file: &str, bytes: u64) {
        self.done += bytes;
        (self.on_progress)(Progress {
            file,
            done_bytes: self.done,
            total_bytes: self.total,
        });
    }
}

/// `model.safetensors.index.json` for `plan`.
fn index_json(plan: &Plan) -> Value {
    let mut map = serde_json::Map::new();
    for shard in &plan.shards {
        for t in &shard.tensors {
            map.insert(t.spec.name.clone(), json!(shard.file_name));
        }
    }
    json!({
        "metadata": {
            "total_parameters": plan.total_parameters,
            "total_size": plan.total_size,
        },
        "weight_map": map,
    })
}

/// Create `dir` if missing; refuse it if it is a file or holds anything.
fn prepare_out_dir(dir: &Path) -> Result<(), ForgeError> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            // A symlink to a directory is fine (the user pointed us there on purpose).
            let is_dir = meta.is_dir()
                || (meta.file_type().is_symlink()
                    && std::fs::metadata(dir).map(|m| m.is_dir()).unwrap_or(false));
            if !is_dir {
                return Err(ForgeError::OutNotADirectory {
                    path: dir.to_path_buf(),
                });
            }
            let entries = std::fs::read_dir(dir)
                .map_err(|e| ForgeError::io("list", dir, e))?
                .count();
            if entries > 0 {
                return Err(ForgeError::OutDirNotEmpty {
                    path: dir.to_path_buf(),
                    entries,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| ForgeError::io("create directory", dir, e))
        }
        Err(e) => Err(ForgeError::io("inspect", dir, e)),
    }
}
