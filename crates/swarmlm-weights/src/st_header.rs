//! Strict validation of a safetensors file header, done here rather than by the `safetensors`
//! crate because the engine needs more than it checks and errors that say more than it does.
//!
//! A safetensors file is `u64 LE header length N`, `N bytes of JSON`, then the data area. Each
//! JSON entry gives a tensor's dtype, shape and `[begin, end)` offsets into the data area. Before
//! any view is handed out we check, for every tensor: a supported dtype, offsets inside the data
//! area, a byte length that equals shape × element size, data aligned for its element type (the
//! map base is page-aligned, so alignment of the file offset is alignment of the pointer), no two
//! tensors overlapping, and no name appearing twice. Holes between tensors are allowed: they are
//! harmless to a reader.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::{Dtype, RawTensor, WeightsError};

/// Headers above this are refused outright (the `safetensors` crate uses the same bound); the
/// real Mixtral shards have headers of a few tens of KiB.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// A JSON object read as its list of members in file order, so duplicate names can be seen
/// (a plain map would keep only the last).
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses and validates the header of a safetensors file whose complete contents are `bytes`.
/// `file` is only used to name the file in errors.
pub fn parse_header(file: &Path, bytes: &[u8]) -> Result<Vec<RawTensor>, WeightsError> {
    let file_len = bytes.len() as u64;
    let hjson = |reason: String| WeightsError::HeaderJson {
        file: file.to_path_buf(),
        reason,
    };
    if bytes.len() < 8 {
        return Err(WeightsError::FileTooShort {
            file: file.to_path_buf(),
            file_len,
        });
    }
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&bytes[..8]);
    let header_len = u64::from_le_bytes(n8);
    if header_len > MAX_HEADER_LEN {
        return Err(WeightsError::HeaderTooLarge {
            file: file.to_path_buf(),
            header_len,
            limit: MAX_HEADER_LEN,
        });
    }
    if header_len > file_len - 8 {
        return Err(WeightsError::HeaderBeyondFile {
            file: file.to_path_buf(),
            header_len,
            file_len,
        });
    }
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    let header = &bytes[8..data_start as usize];
    let Members(members) = serde_json::from_slice(header).map_err(|e| hjson(e.to_string()))?;

    let mut seen = HashSet::new();
    let mut entries = Vec::with_capacity(members.len());
    for (name, v) in members {
        if name == "__metadata__" {
            if !v.is_object() {
                return Err(hjson("`__metadata__` is not an object".into()));
            }
            continue;
        }
        if !seen.insert(name.clone()) {
            return Err(WeightsError::DuplicateTensor {
                file: file.to_path_buf(),
                tensor: name,
                other: file.to_path_buf(),
            });
        }
        let obj = v
            .as_object()
            .ok_or_else(|| hjson(format!("entry `{name}` is not an object")))?;
        let dtype_s = obj
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| hjson(format!("tensor `{name}`: `dtype` missing or not a string")))?;
        let shape: Vec<usize> = obj
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                hjson(format!(
                    "tensor `{name}`: `shape` missing or not a list of non-negative integers"
                ))
            })?;
        let offs = obj
            .get("data_offsets")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| {
                hjson(format!(
                    "tensor `{name}`: `data_offsets` missing or not [begin, end] integers"
                ))
            })?;
        let dtype =
            Dtype::from_safetensors(dtype_s).ok_or_else(|| WeightsError::UnsupportedDtype {
                file: file.to_path_buf(),
                tensor: name.clone(),
                dtype: dtype_s.to_string(),
            })?;
        let (begin, end) = offs;
        if begin > end || end > data_len {
            return Err(WeightsError::TensorOutOfBounds {
                file: file.to_path_buf(),
                tensor: name,
                begin,
                end,
                data_len,
            });
        }
        let expected = shape
            .iter()
            .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64));
        if expected != Some(end - begin) {
            return Err(WeightsError::TensorByteLength {
                file: file.to_path_buf(),
                tensor: name,
                shape,
                dtype: dtype.to_string(),
                expected: expected.unwrap_or(u64::MAX),
                actual: end - begin,
            });
        }
        let start = data_start + begin;
        if start % dtype.size() as u64 != 0 {
            return Err(WeightsError::Misaligned {
                file: file.to_path_buf(),
                tensor: name,
                offset: start,
                align: dtype.size(),
            });
        }
        entries.push(RawTensor {
            name,
            dtype,
            shape,
            start,
            end: data_start + end,
        });
    }

    let mut order: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].start < entries[i].end)
        .collect();
    order.sort_by_key(|&i| entries[i].start);
    for w in order.windows(2) {
        let (a, b) = (&entries[w[0]], &entries[w[1]]);
        if b.start < a.end {
            return Err(WeightsError::TensorOverlap {
                file: file.to_path_buf(),
                first: a.name.clone(),
                second: b.name.clone(),
            });
        }
    }
    Ok(entries)
}
