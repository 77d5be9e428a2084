//! Shape overrides reach `config.json`, the tensor shapes and the tokenizer; bad shapes and a
//! non-empty output directory are refused with errors that name the problem.

mod common;

use std::collections::BTreeMap;

use swarmlm_forge::{forge, ForgeError, ForgeSpec, Overrides, Preset};

/// Every tensor's shape, read back from the shards.
fn stored_shapes(dir: &std::path::Path) -> BTreeMap<String, Vec<usize>> {
    common::stored_tensors(dir)
        .into_iter()
        .map(|(name, (shape, _))| (name, shape))
        .collect()
}

#[test]
fn experts_topk_headdim_window_and_vocab_trim() {
    let o = Overrides {
        num_local_experts: Some(3),
        num_experts_per_tok: Some(1),
        head_dim: Some(24),
        sliding_window: Some(128),
        vocab_size: Some(1000),
        num_hidden_layers: Some(1),
        rope_theta: Some(10000.0),
        ..Overrides::default()
    };
    let spec = ForgeSpec::with_overrides(Preset::Tiny, &o);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    forge(&spec, &out).unwrap();

    let c = common::read_json(&out.join("config.json"));
    assert_eq!(c["num_local_experts"], 3);
    assert_eq!(c["num_experts_per_tok"], 1);
    assert_eq!(c["head_dim"], 24);
    assert_eq!(c["sliding_window"], 128);
    assert_eq!(c["vocab_size"], 1000);
    assert_eq!(c["num_hidden_layers"], 1);
    assert_eq!(c["rope_theta"].as_f64(), Some(10000.0));

    let shapes = stored_shapes(&out);
    assert_eq!(shapes.len(), 3 + (7 + 3 * 3));
    assert_eq!(shapes["model.embed_tokens.weight"], [1000, 64]);
    assert_eq!(shapes["lm_head.weight"], [1000, 64]);
    assert_eq!(
        shapes["model.layers.0.self_attn.q_proj.weight"],
        [4 * 24, 64]
    );
    assert_eq!(
        shapes["model.layers.0.self_attn.k_proj.weight"],
        [2 * 24, 64]
    );
    assert_eq!(
        shapes["model.layers.0.self_attn.o_proj.weight"],
        [64, 4 * 24]
    );
    assert_eq!(
        shapes["model.layers.0.block_sparse_moe.gate.weight"],
        [3, 64]
    );
    assert!(shapes.contains_key("model.layers.0.block_sparse_moe.experts.2.w2.weight"));
    assert!(!shapes.contains_key("model.layers.0.block_sparse_moe.experts.3.w1.weight"));
    assert!(!shapes.contains_key("model.layers.1.input_layernorm.weight"));

    // Trimmed tokenizer: no SentencePiece model, every id below the vocabulary, still loadable
    // and still able to encode anything (byte fallback).
    assert!(!out.join("tokenizer.model").exists());
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_eq!(tok.get_vocab_size(false), 1000);
    let text = "Hello, world! Paris est la capitale de la France. 日本語 🦀";
    let enc = tok.encode(text, true).unwrap();
    assert_eq!(enc.get_ids()[0], 1);
    assert!(
        enc.get_ids().iter().all(|&id| id < 1000),
        "{:?}",
        enc.get_ids()
    );
    // The lone "▁" (id 28705) is cut, so word-separating spaces travel as the byte-fallback
    // tokens of its UTF-8 bytes, which the decoder turns back into "▁" (documented in
    // PROVENANCE.md); apart from that the text round-trips.
    let decoded = tok.decode(enc.get_ids(), true).unwrap();
    assert_eq!(decoded.replace('▁', " ").trim_start(), text);
}

#[test]
fn larger_vocab_keeps_the_full_tokenizer() {
    let o = Overrides {
        vocab_size: Some(32768),
        num_hidden_layers: Some(1),
        ..Overrides::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    forge(&ForgeSpec::with_overrides(Preset::Tiny, &o), &out).unwrap();
    assert!(out.join("tokenizer.model").is_file());
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        swarmlm_forge::tokenizer::TOKENIZER_JSON
    );
    assert_eq!(stored_shapes(&out)["lm_head.weight"], [32768, 64]);
}

fn shape_error(o: Overrides) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    match forge(&ForgeSpec::with_overrides(Preset::Tiny, &o), &out) {
        Err(e @ ForgeError::InvalidShape { field, .. }) => {
            assert!(!out.exists(), "nothing may be created for a refused shape");
            (field.to_string(), e.to_string())
        }
        other => panic!("expected InvalidShape, got {other:?}"),
    }
}

#[test]
fn bad_shapes_are_refused_by_field() {
    let (f, msg) = shape_error(Overrides {
        num_hidden_layers: Some(0),
        ..Default::default()
    });
    assert_eq!(f, "num_hidden_layers");
    assert!(msg.contains("at least 1"), "{msg}");

    let (f, msg) = shape_error(Overrides {
        num_attention_heads: Some(3),
        num_key_value_heads: Some(1),
        ..Default::default()
    });
    assert_eq!(f, "num_attention_heads");
    assert!(msg.contains("must divide hidden_size (64)"), "{msg}");

    let (f, msg) = shape_error(Overrides {
        num_key_value_heads: Some(3),
        ..Default::default()
    });
    assert_eq!(f, "num_key_value_heads");
    assert!(msg.contains("must divide num_attention_heads (4)"), "{msg}");

    let (f, _) = shape_error(Overrides {
        num_experts_per_tok: Some(5),
        ..Default::default()
    });
    assert_eq!(f, "num_experts_per_tok");

    let (f, _) = shape_error(Overrides {
        head_dim: Some(7),
        ..Default::default()
    });
    assert_eq!(f, "head_dim");

    let (f, msg) = shape_error(Overrides {
        vocab_size: Some(100),
        ..Default::default()
    });
    assert_eq!(f, "vocab_size");
    assert!(msg.contains("259"), "{msg}");

    let (f, _) = shape_error(Overrides {
        sliding_window: Some(0),
        ..Default::default()
    });
    assert_eq!(f, "sliding_window");

    let (f, _) = shape_error(Overrides {
        rope_theta: Some(f64::NAN),
        ..Default::default()
    });
    assert_eq!(f, "rope_theta");

    // An explicit head_dim lifts the divisibility requirement on hidden_size.
    let o = Overrides {
        num_attention_heads: Some(3),
        num_key_value_heads: Some(1),
        head_dim: Some(16),
        ..Default::default()
    };
    ForgeSpec::with_overrides(Preset::Tiny, &o).plan().unwrap();
}

#[test]
fn non_empty_or_non_directory_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("notes.txt");
    std::fs::write(&keep, b"mine").unwrap();
    let err = forge(&ForgeSpec::preset(Preset::Tiny), dir.path()).unwrap_err();
    assert!(
        matches!(&err, ForgeError::OutDirNotEmpty { entries: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("never overwrites"), "{err}");
    assert_eq!(std::fs::read(&keep).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let err = forge(&ForgeSpec::preset(Preset::Tiny), &keep).unwrap_err();
    assert!(
        matches!(err, ForgeError::OutNotADirectory { .. }),
        "{err:?}"
    );

    let mut spec = ForgeSpec::preset(Preset::Tiny);
    spec.shard_size = 0;
    let err = forge(&spec, &dir.path().join("x")).unwrap_err();
    assert!(
        matches!(
            err,
            ForgeError::InvalidSetting {
                field: "shard_size",
                ..
            }
        ),
        "{err:?}"
    );

    // An existing but empty directory is fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    forge(&ForgeSpec::preset(Preset::Tiny), &empty).unwrap();
    assert!(empty.join("config.json").is_file());
}
