//! Mistral AI's original release: `params.json` + `consolidated.00.pth`.
//!
//! The `.pth` is a zip archive whose `data.pkl` describes the state dict and whose
//! `data/<key>` entries hold each tensor storage's raw little-endian bytes, stored uncompressed
//! (and 64-byte aligned by current PyTorch). We map the archive once, read the pickle with the
//! restricted reader, and point each tensor straight at its bytes inside the storage entry —
//! after checking dtype, contiguity (strides), that offset + extent lie within the storage,
//! that the storage entry has exactly the bytes its element count needs, and alignment.
//! Names are translated to hub names; q/k rows stay in the original interleaved order.

use std::collections::BTreeMap;
use std::path::Path;

use crate::mapped::MappedFile;
use crate::pickle::{read_state_dict, StorageKind};
use crate::zip::read_entries;
use crate::{mistral_to_hf_name, Dtype, Entry, MixtralConfig, RawTensor, WeightsError};

pub(crate) const PARAMS: &str = "params.json";
pub(crate) const CONSOLIDATED: &str = "consolidated.00.pth";

pub(crate) struct Loaded {
    pub config: MixtralConfig,
    pub file: MappedFile,
    pub tensors: BTreeMap<String, Entry>,
}

/// Parses a whole `.pth` archive (`bytes`, named `path` in errors) into hub-named tensors whose
/// ranges lie inside `bytes`. Does not check the set of tensors against a config.
pub fn parse_archive(path: &Path, bytes: &[u8]) -> Result<Vec<RawTensor>, WeightsError> {
    let zerr = |reason: String| WeightsError::Zip {
        file: path.to_path_buf(),
        reason,
    };
    let entries = read_entries(path, bytes)?;
    let pkls: Vec<&str> = entries
        .keys()
        .map(String::as_str)
        .filter(|n| {
            n.strip_suffix("/data.pkl")
                .is_some_and(|p| !p.is_empty() && !p.contains('/'))
        })
        .collect();
    let prefix = match pkls.as_slice() {
        [one] => one
            .strip_suffix("/data.pkl")
            .unwrap_or_default()
            .to_string(),
        [] => {
            return Err(zerr(
                "no `<name>/data.pkl` entry: not a PyTorch checkpoint".into(),
            ))
        }
        many => return Err(zerr(format!("several data.pkl entries: {many:?}"))),
    };
    let slice = |e: crate::zip::ZipEntry| &bytes[e.start as usize..(e.start + e.len) as usize];
    if let Some(&bo) = entries.get(&format!("{prefix}/byteorder")) {
        let order = slice(bo);
        if order != b"little" {
            return Err(zerr(format!(
                "byteorder is `{}`, only little-endian checkpoints can be mapped",
                String::from_utf8_lossy(order)
            )));
        }
    }
    let pkl = slice(entries[&format!("{prefix}/data.pkl")]);
    let tensors = read_state_dict(path, pkl)?;

    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        let terr = |reason: String| WeightsError::PthTensor {
            file: path.to_path_buf(),
            tensor: t.name.clone(),
            reason,
        };
        let hf = mistral_to_hf_name(&t.name).ok_or_else(|| WeightsError::UnknownPthName {
            file: path.to_path_buf(),
            name: t.name.clone(),
        })?;
        let dtype = match t.storage_kind {
            StorageKind::BF16 => Dtype::BF16,
            StorageKind::F16 => Dtype::F16,
            StorageKind::F32 => Dtype::F32,
            StorageKind::Untyped => {
                return Err(terr(
                    "storage is untyped bytes (uint8); expected BF16, F16 or F32".into(),
                ))
            }
        };
        let elem = dtype.size() as u64;
        let entry_name = format!("{prefix}/data/{}", t.storage_key);
        let se = *entries.get(&entry_name).ok_or_else(|| {
            terr(format!(
                "its storage entry `{entry_name}` is not in the archive"
            ))
        })?;
        if t.storage_numel.checked_mul(elem) != Some(se.len) {
            return Err(terr(format!(
                "storage `{entry_name}` holds {} bytes but {} {dtype} elements need {}",
                se.len,
                t.storage_numel,
                t.storage_numel.saturating_mul(elem)
            )));
        }
        if t.size.len() != t.stride.len() {
            return Err(terr(format!(
                "size {:?} and stride {:?} differ in rank",
                t.size, t.stride
            )));
        }
        // Row-major contiguity; dims of extent 1 may carry any stride.
        let mut want = 1u64;
        for (&sz, &st) in t.size.iter().zip(&t.stride).rev() {
            if sz != 1 && st != want {
                return Err(terr(format!(
                    "not contiguous: size {:?} with stride {:?}",
                    t.size, t.stride
                )));
            }
            want = want.saturating_mul(sz);
        }
        let numel = t
            .size
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| terr(format!("size {:?} overflows", t.size)))?;
        if t.offset
            .checked_add(numel)
            .is_none_or(|e| e > t.storage_numel)
        {
            return Err(terr(format!(
                "elements {}..{}+{} lie outside its storage of {} elements",
                t.offset, t.offset, numel, t.storage_numel
            )));
        }
        // Within the entry, so these cannot overflow.
        let start = se.start + t.offset * elem;
        let end = start + numel * elem;
        if !start.is_multiple_of(elem) {
            return Err(WeightsError::Misaligned {
                file: path.to_path_buf(),
                tensor: t.name.clone(),
                offset: start,
                align: elem as usize,
            });
        }
        let shape = t.size.iter().map(|&d| d as usize).collect();
        out.push(RawTensor {
            name: hf,
            dtype,
            shape,
            start,
            end,
        });
    }
    Ok(out)
}

pub(crate) fn open(dir: &Path) -> Result<Loaded, WeightsError> {
    if dir.join("consolidated.01.pth").exists() {
        return Err(WeightsError::UnsupportedLayout {
            dir: dir.to_path_buf(),
            reason: "tensor-parallel shards (consolidated.01.pth, ...) are not supported; \
                     only a single consolidated.00.pth"
                .into(),
        });
    }
    let config = MixtralConfig::from_mistral_params(dir.join(PARAMS))?;
    let file = MappedFile::open(&dir.join(CONSOLIDATED))?;
    let tensors = parse_archive(&file.path, file.bytes())?
        .into_iter()
        .map(|t| {
            let e = Entry {
                file: 0,
                dtype: t.dtype,
                shape: t.shape,
                start: t.start,
                end: t.end,
            };
            (t.name, e)
        })
        .collect();
    Ok(Loaded {
        config,
        file,
        tensors,
    })
}
