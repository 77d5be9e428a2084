//! The real Mistral v1 tokenizer, compiled into the binary so forge works from an installed
//! binary in any folder, and its trimming to smaller vocabularies.
//!
//! Provenance and licence: `assets/tokenizers/mistral-v1/PROVENANCE.md` in the repository.
//!
//! - `vocab_size == 32000`: the four real files, byte for byte.
//! - `vocab_size > 32000`: the same four files; ids ≥ 32000 exist in the weights but no text
//!   maps to them.
//! - `vocab_size < 32000`: `tokenizer.json` trimmed to ids `< vocab_size` (vocabulary entries with
//!   larger ids dropped, and every merge whose left part, right part or result was dropped), the
//!   config and special-token map unchanged, and no `tokenizer.model` (a SentencePiece model cannot
//!   be cut safely; transformers then loads the fast tokenizer from `tokenizer.json`). Ids 0..259
//!   (specials and byte fallback) always survive, so any text still encodes; but below 28706 the
//!   lone `▁` (id 28705) is gone, so a space that does not merge into the next word is encoded as
//!   the byte-fallback tokens of `▁`'s UTF-8 bytes and decodes back as `▁`, not as a space.

use serde_json::Value;

use crate::error::ForgeError;
use crate::json;

/// Vocabulary size of the embedded tokenizer.
pub const MISTRAL_V1_VOCAB: usize = 32000;

pub const TOKENIZER_MODEL: &[u8] =
    include_bytes!("../../../assets/tokenizers/mistral-v1/tokenizer.model");
pub const TOKENIZER_JSON: &[u8] =
    include_bytes!("../../../assets/tokenizers/mistral-v1/tokenizer.json");
pub const TOKENIZER_CONFIG_JSON: &[u8] =
    include_bytes!("../../../assets/tokenizers/mistral-v1/tokenizer_config.json");
pub const SPECIAL_TOKENS_MAP_JSON: &[u8] =
    include_bytes!("../../../assets/tokenizers/mistral-v1/special_tokens_map.json");

/// The tokenizer files to write for a model of `vocab_size`, as (file name, bytes).
pub fn tokenizer_files(vocab_size: usize) -> Result<Vec<(&'static str, Vec<u8>)>, ForgeError> {
    let mut files = Vec::with_capacity(4);
    if vocab_size >= MISTRAL_V1_VOCAB {
        files.push(("tokenizer.model", TOKENIZER_MODEL.to_vec()));
        files.push(("tokenizer.json", TOKENIZER_JSON.to_vec()));
    } else {
        files.push((
            "tokenizer.json",
            trim_tokenizer_json(TOKENIZER_JSON, vocab_size)?,
        ));
    }
    files.push(("tokenizer_config.json", TOKENIZER_CONFIG_JSON.to_vec()));
    files.push(("special_tokens_map.json", SPECIAL_TOKENS_MAP_JSON.to_vec()));
    Ok(files)
}

fn broken(reason: impl Into<String>) -> ForgeError {
    ForgeError::Tokenizer {
        reason: reason.into(),
    }
}

/// Cut a Hugging Face BPE `tokenizer.json` down to the ids below `vocab_size`.
///
/// The output keeps transformers' key order and lists the vocabulary in id order, so it reads
/// like the original, and its bytes depend only on the input and `vocab_size`.
pub fn trim_tokenizer_json(src: &[u8], vocab_size: usize) -> Result<Vec<u8>, ForgeError> {
    let root: Value = serde_json::from_slice(src).map_err(|e| broken(format!("not JSON: {e}")))?;
    let root = root
        .as_object()
        .ok_or_else(|| broken("top level is not an object"))?;
    let model = root
        .get("model")
        .and_then(Value::as_object)
        .ok_or_else(|| broken("no \"model\" object"))?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Err(broken("model.type is not \"BPE\""));
    }
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| broken("no model.vocab object"))?;
    let mut kept: Vec<(&str, u64)> = Vec::with_capacity(vocab_size);
    for (token, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| broken(format!("vocab entry {token:?} has no integer id")))?;
        if id < vocab_size as u64 {
            kept.push((token.as_str(), id));
        }
    }
    kept.sort_by_key(|&(_, id)| id);
    let keep: std::collections::HashSet<&str> = kept.iter().map(|&(t, _)| t).collect();

    let merges = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| broken("no model.merges array"))?;
    let mut kept_merges: Vec<&Value> = Vec::new();
    for m in merges {
        let (a, b): (String, String) = match m {
            Value::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(a), Some(b)) => (a.to_string(), b.to_string()),
                _ => return Err(broken(format!("merge {m} is not a pair of strings"))),
            },
            Value::String(s) => match s.split_once(' ') {
                Some((a, b)) => (a.to_string(), b.to_string()),
                None => return Err(broken(format!("merge {s:?} has no space"))),
            },
            _ => return Err(broken(format!("merge {m} is neither a pair nor a string"))),
        };
        let merged = format!("{a}{b}");
        if keep.contains(a.as_str()) && keep.contains(b.as_str()) && keep.contains(merged.as_str())
        {
            kept_merges.push(m);
        }
    }
    for t in root
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if t.get("id")
            .and_then(Value::as_u64)
            .is_some_and(|id| id >= vocab_size as u64)
        {
            return Err(broken(format!(
                "added token {t} lies beyond vocab_size {vocab_size}"
            )));
        }
    }

    // Keys in the order transformers writes them (then any others, sorted); nested values in
    // canonical form, so the bytes never depend on serde_json's map flavour.
    const TOP: [&str; 9] = [
        "version",
        "truncation",
        "padding",
        "added_tokens",
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
        "model",
    ];
    const MODEL: [&str; 10] = [
        "type",
        "dropout",
        "unk_token",
        "continuing_subword_prefix",
        "end_of_word_suffix",
        "fuse_unk",
        "byte_fallback",
        "ignore_merges",
        "vocab",
        "merges",
    ];
    let ordered = |map: &'_ serde_json::Map<String, Value>, first: &[&str]| -> Vec<String> {
        let mut keys: Vec<String> = first
            .iter()
            .filter(|k| map.contains_key(**k))
            .map(|k| k.to_string())
            .collect();
        let mut rest: Vec<String> = map
            .keys()
            .filter(|k| !first.contains(&k.as_str()))
            .cloned()
            .collect();
        rest.sort();
        keys.extend(rest);
        keys
    };

    let mut out = String::with_capacity(src.len());
    out.push('{');
    for (k, key) in ordered(root, &TOP).iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        out.push_str(&json::string(key));
        out.push(':');
        if key != "model" {
            out.push_str(&json::compact(&root[key.as_str()]));
            continue;
        }
        out.push('{');
        for (mk, mkey) in ordered(model, &MODEL).iter().enumerate() {
            if mk > 0 {
                out.push(',');
            }
            out.push_str(&json::string(mkey));
            out.push(':');
            match mkey.as_str() {
                "vocab" => {
                    out.push('{');
                    for (i, (token, id)) in kept.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(&json::string(token));
                        out.push(':');
                        out.push_str(&id.to_string());
                    }
                    out.push('}');
                }
                "merges" => {
                    out.push('[');
                    for (i, m) in kept_merges.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(&json::compact(m));
                    }
                    out.push(']');
                }
                _ => out.push_str(&json::compact(&model[mkey.as_str()])),
            }
        }
        out.push('}');
    }
    out.push('}');
    out.push('\n');
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_files_are_the_real_ones() {
        assert_eq!(TOKENIZER_MODEL.len(), 493_443);
        assert_eq!(TOKENIZER_JSON.len(), 3_505_748);
    }

    #[test]
    fn trimming_keeps_only_small_ids_and_consistent_merges() {
        let out = trim_tokenizer_json(TOKENIZER_JSON, 1000).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let vocab = v["model"]["vocab"].as_object().unwrap();
        assert_eq!(vocab.len(), 1000);
        assert!(vocab.values().all(|id| id.as_u64().unwrap() < 1000));
        assert_eq!(vocab["<0x41>"], 3 + 0x41);
        let merges = v["model"]["merges"].as_array().unwrap();
        assert!(!merges.is_empty());
        for m in merges {
            let a = m[0].as_str().unwrap();
            let b = m[1].as_str().unwrap();
            assert!(vocab.contains_key(a) && vocab.contains_key(b));
            assert!(vocab.contains_key(&format!("{a}{b}")));
        }
        // Everything but the model is carried over unchanged.
        let orig: Value = serde_json::from_slice(TOKENIZER_JSON).unwrap();
        for key in [
            "added_tokens",
            "normalizer",
            "pre_tokenizer",
            "post_processor",
            "decoder",
        ] {
            assert_eq!(v[key], orig[key], "{key}");
        }
        assert_eq!(v["model"]["byte_fallback"], true);
    }

    #[test]
    fn trimming_to_the_full_size_keeps_every_entry() {
        let out = trim_tokenizer_json(TOKENIZER_JSON, MISTRAL_V1_VOCAB).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let orig: Value = serde_json::from_slice(TOKENIZER_JSON).unwrap();
        assert_eq!(v, orig);
    }
}
