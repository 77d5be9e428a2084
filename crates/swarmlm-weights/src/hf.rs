//! The Hugging Face hub layout: `config.json` plus either one `model.safetensors` or shards
//! listed in `model.safetensors.index.json`.
//!
//! Every shard the index names is mapped and its header validated; the index must agree with
//! what the shards actually hold, and shard names may not leave the model folder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::mapped::MappedFile;
use crate::st_header::parse_header;
use crate::{Entry, MixtralConfig, WeightsError};

pub(crate) const CONFIG: &str = "config.json";
pub(crate) const INDEX: &str = "model.safetensors.index.json";
pub(crate) const SINGLE: &str = "model.safetensors";

pub(crate) struct Loaded {
    pub config: MixtralConfig,
    pub files: Vec<MappedFile>,
    pub tensors: BTreeMap<String, Entry>,
}

fn add_shard(
    files: &mut Vec<MappedFile>,
    tensors: &mut BTreeMap<String, Entry>,
    path: &Path,
) -> Result<(), WeightsError> {
    let mf = MappedFile::open(path)?;
    let entries = parse_header(path, mf.bytes())?;
    let idx = files.len();
    for e in entries {
        if let Some(prev) = tensors.get(&e.name) {
            return Err(WeightsError::DuplicateTensor {
                file: path.to_path_buf(),
                tensor: e.name,
                other: files[prev.file].path.clone(),
            });
        }
        tensors.insert(
            e.name,
            Entry {
                file: idx,
                dtype: e.dtype,
                shape: e.shape,
                start: e.start,
                end: e.end,
            },
        );
    }
    files.push(mf);
    Ok(())
}

/// A shard name from the index must be a plain file name inside the model folder.
fn plain_file_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains('/')
        && !s.contains('\\')
        && !s.contains('\0')
}

pub(crate) fn open(dir: &Path) -> Result<Loaded, WeightsError> {
    let config = MixtralConfig::from_hf_json(dir.join(CONFIG))?;
    let mut files = Vec::new();
    let mut tensors = BTreeMap::new();
    let index_path = dir.join(INDEX);
    if index_path.exists() {
        let bytes =
            std::fs::read(&index_path).map_err(|e| WeightsError::io(&index_path, "read", e))?;
        let bad = |reason: String| WeightsError::IndexJson {
            index: index_path.clone(),
            reason,
        };
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("`weight_map` missing or not an object".into()))?;
        let mut weight_map = Vec::with_capacity(map.len());
        let mut shards = BTreeSet::new();
        for (tensor, shard) in map {
            let shard = shard
                .as_str()
                .ok_or_else(|| bad(format!("`weight_map.{tensor}` is not a string")))?;
            if !plain_file_name(shard) {
                return Err(bad(format!(
                    "`weight_map.{tensor}` names `{shard}`, which is not a plain file name in the model folder"
                )));
            }
            shards.insert(shard.to_string());
            weight_map.push((tensor.clone(), shard.to_string()));
        }
        for shard in &shards {
            let path = dir.join(shard);
            if !path.exists() {
                return Err(WeightsError::MissingShard {
                    index: index_path.clone(),
                    shard: shard.clone(),
                    path,
                });
            }
            add_shard(&mut files, &mut tensors, &path)?;
        }
        for (tensor, shard) in weight_map {
            let holds = tensors
                .get(&tensor)
                .is_some_and(|e| files[e.file].path == dir.join(&shard));
            if !holds {
                return Err(WeightsError::IndexMismatch {
                    index: index_path.clone(),
                    tensor,
                    shard,
                });
            }
        }
    } else {
        add_shard(&mut files, &mut tensors, &dir.join(SINGLE))?;
    }
    Ok(Loaded {
        config,
        files,
        tensors,
    })
}
