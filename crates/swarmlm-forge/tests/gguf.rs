//! The GGUF forge writes the safetensors forge's model as llama.cpp's converter would: read
//! back with candle's independent GGUF reader, every tensor equals the forged safetensors
//! tensor(s) it comes from once the converter's transformations (q/k row permutation, expert
//! stacking, f32 norms and router) are applied, and the metadata carries the shape and the
//! Mistral v1 vocabulary. The expected tensor order and vocabulary values were taken from
//! `convert_hf_to_gguf.py`'s output for the same forged folder (see BENCHMARKS.md).

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use swarmlm_forge::{forge, forge_gguf, ForgeError, ForgeSpec, Overrides, Preset};

fn bf16_to_f32_bytes(b: &[u8]) -> Vec<u8> {
    b.chunks_exact(2)
        .flat_map(|x| (u32::from(u16::from_le_bytes([x[0], x[1]])) << 16).to_le_bytes())
        .collect()
}

/// convert_hf_to_gguf.py's `permute`: `w.reshape(n_head, 2, d/2, cols).swapaxes(1, 2)`.
fn permute(shape: &[usize], data: &[u8], n_head: usize) -> Vec<u8> {
    let (rows, cols) = (shape[0], shape[1]);
    let d = rows / n_head;
    let row = |r: usize| &data[r * cols * 2..(r + 1) * cols * 2];
    let mut out = Vec::with_capacity(data.len());
    for h in 0..n_head {
        for i in 0..d / 2 {
            for j in 0..2 {
                out.extend_from_slice(row(h * d + j * (d / 2) + i));
            }
        }
    }
    out
}

/// What the GGUF must hold: llama.cpp name → (dtype, numpy-order shape, bytes).
fn expected(
    spec: &ForgeSpec,
    hub: &BTreeMap<String, (Vec<usize>, Vec<u8>)>,
) -> BTreeMap<String, (GgmlDType, Vec<usize>, Vec<u8>)> {
    let s = &spec.shape;
    let mut out = BTreeMap::new();
    let get = |n: &str| hub.get(n).unwrap_or_else(|| panic!("{n} missing")).clone();
    for (gguf, name) in [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output.weight", "lm_head.weight"),
    ] {
        let (shape, data) = get(name);
        out.insert(gguf.to_string(), (GgmlDType::BF16, shape, data));
    }
    let (shape, data) = get("model.norm.weight");
    out.insert(
        "output_norm.weight".into(),
        (GgmlDType::F32, shape, bf16_to_f32_bytes(&data)),
    );
    for l in 0..s.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (g, h, f32) in [
            ("attn_norm", "input_layernorm", true),
            ("ffn_norm", "post_attention_layernorm", true),
            ("ffn_gate_inp", "block_sparse_moe.gate", true),
            ("attn_v", "self_attn.v_proj", false),
            ("attn_output", "self_attn.o_proj", false),
        ] {
            let (shape, data) = get(&format!("{p}.{h}.weight"));
            let v = if f32 {
                (GgmlDType::F32, shape, bf16_to_f32_bytes(&data))
            } else {
                (GgmlDType::BF16, shape, data)
            };
            out.insert(format!("blk.{l}.{g}.weight"), v);
        }
        for (g, h, heads) in [
            ("attn_q", "q_proj", s.num_attention_heads),
            ("attn_k", "k_proj", s.num_key_value_heads),
        ] {
            let (shape, data) = get(&format!("{p}.self_attn.{h}.weight"));
            let data = permute(&shape, &data, heads);
            out.insert(
                format!("blk.{l}.{g}.weight"),
                (GgmlDType::BF16, shape, data),
            );
        }
        for (g, w) in [
            ("ffn_gate_exps", "w1"),
            ("ffn_down_exps", "w2"),
            ("ffn_up_exps", "w3"),
        ] {
            let mut data = Vec::new();
            let mut shape = Vec::new();
            for x in 0..s.num_local_experts {
                let (sh, d) = get(&format!("{p}.block_sparse_moe.experts.{x}.{w}.weight"));
                shape = sh;
                data.extend_from_slice(&d);
            }
            shape.insert(0, s.num_local_experts);
            out.insert(
                format!("blk.{l}.{g}.weight"),
                (GgmlDType::BF16, shape, data),
            );
        }
    }
    out
}

fn u32_of(c: &Content, key: &str) -> u32 {
    c.metadata[key].to_u32().unwrap()
}

fn str_of(c: &Content, key: &str) -> String {
    c.metadata[key].to_string().unwrap().clone()
}

fn array_of<'a>(c: &'a Content, key: &str) -> &'a Vec<Value> {
    c.metadata[key].to_vec().unwrap()
}

/// Forge `spec` both ways; check the GGUF against the folder. Returns the tensor names in file
/// order.
fn check(spec: &ForgeSpec) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("hf");
    let gguf = dir.path().join("sub/model.gguf");
    forge(spec, &folder).unwrap();
    let report = forge_gguf(spec, &gguf).unwrap();
    let file_len = std::fs::metadata(&gguf).unwrap().len();
    assert_eq!(report.total_bytes, file_len);

    let mut f = File::open(&gguf).unwrap();
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic).unwrap();
    assert_eq!(&magic, b"GGUF\x03\0\0\0", "magic and version 3");
    f.seek(SeekFrom::Start(0)).unwrap();
    let c = Content::read(&mut f).unwrap();
    assert_eq!(c.tensor_data_offset % 32, 0);

    // Shape metadata.
    let s = &spec.shape;
    assert_eq!(str_of(&c, "general.architecture"), "llama");
    assert_eq!(u32_of(&c, "general.file_type"), 32);
    assert_eq!(u32_of(&c, "general.quantization_version"), 2);
    for (key, v) in [
        ("llama.block_count", s.num_hidden_layers),
        ("llama.context_length", s.max_position_embeddings),
        ("llama.embedding_length", s.hidden_size),
        ("llama.feed_forward_length", s.intermediate_size),
        ("llama.attention.head_count", s.num_attention_heads),
        ("llama.attention.head_count_kv", s.num_key_value_heads),
        ("llama.expert_count", s.num_local_experts),
        ("llama.expert_used_count", s.num_experts_per_tok),
        ("llama.vocab_size", s.vocab_size),
        ("llama.rope.dimension_count", s.head_dim()),
    ] {
        assert_eq!(u32_of(&c, key) as usize, v, "{key}");
    }
    if let Some(d) = s.head_dim {
        assert_eq!(u32_of(&c, "llama.attention.key_length") as usize, d);
        assert_eq!(u32_of(&c, "llama.attention.value_length") as usize, d);
    } else {
        assert!(!c.metadata.contains_key("llama.attention.key_length"));
    }
    let f32_of = |k: &str| c.metadata[k].to_f32().unwrap();
    assert_eq!(f32_of("llama.rope.freq_base"), s.rope_theta as f32);
    assert_eq!(
        f32_of("llama.attention.layer_norm_rms_epsilon"),
        s.rms_norm_eps as f32
    );

    // Vocabulary: the tokenizer.json pieces, SentencePiece scores and types as the converter
    // wrote them for this tokenizer, pads beyond it.
    assert_eq!(str_of(&c, "tokenizer.ggml.model"), "llama");
    assert_eq!(str_of(&c, "tokenizer.ggml.pre"), "default");
    let tok = tokenizers::Tokenizer::from_bytes(swarmlm_forge::tokenizer::TOKENIZER_JSON).unwrap();
    let tokens = array_of(&c, "tokenizer.ggml.tokens");
    let scores = array_of(&c, "tokenizer.ggml.scores");
    let types = array_of(&c, "tokenizer.ggml.token_type");
    assert_eq!(tokens.len(), s.vocab_size);
    assert_eq!(scores.len(), s.vocab_size);
    assert_eq!(types.len(), s.vocab_size);
    for id in 0..s.vocab_size {
        let (t, sc, ty) = (
            tokens[id].to_string().unwrap().as_str(),
            scores[id].to_f32().unwrap(),
            types[id].to_i32().unwrap(),
        );
        let want: (String, f32, i32) = match id {
            0..=2 => (tok.id_to_token(id as u32).unwrap(), -1000.0, 3),
            3..=258 => (format!("<0x{:02X}>", id - 3), 0.0, 6),
            // Whitespace runs ("▁▁", "▁▁▁▁", ..., "▁") carry SentencePiece's -1e9.
            259 | 260 | 273 | 355 | 359 | 428 | 558 | 569 | 756 | 1417 | 2287 | 2600 | 5390
            | 17422 | 28705 => (tok.id_to_token(id as u32).unwrap(), -1e9, 1),
            261..=31999 => (tok.id_to_token(id as u32).unwrap(), 259.0 - id as f32, 1),
            _ => (format!("[PAD{id}]"), -10000.0, 5),
        };
        assert_eq!((t, sc, ty), (want.0.as_str(), want.1, want.2), "token {id}");
    }
    assert_eq!(tokens[31999].to_string().unwrap(), "梦");
    for (key, v) in [
        ("tokenizer.ggml.bos_token_id", 1),
        ("tokenizer.ggml.eos_token_id", 2),
        ("tokenizer.ggml.unknown_token_id", 0),
    ] {
        assert_eq!(u32_of(&c, key), v, "{key}");
    }
    let flag = |k: &str| c.metadata[k].to_bool().unwrap();
    assert!(flag("tokenizer.ggml.add_bos_token"));
    assert!(!flag("tokenizer.ggml.add_sep_token"));
    assert!(!flag("tokenizer.ggml.add_eos_token"));
    assert_eq!(c.metadata.len(), report.metadata_count);

    // Every tensor, byte for byte.
    let want = expected(spec, &common::stored_tensors(&folder));
    assert_eq!(c.tensor_infos.len(), want.len());
    let mut by_offset: Vec<(u64, String)> = Vec::new();
    for (name, (dtype, shape, data)) in &want {
        let info = c
            .tensor_infos
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from the GGUF"));
        assert_eq!(info.ggml_dtype, *dtype, "{name} dtype");
        assert_eq!(info.shape.dims(), shape.as_slice(), "{name} shape");
        assert_eq!(info.offset % 32, 0, "{name} alignment");
        let mut got = vec![0u8; data.len()];
        f.seek(SeekFrom::Start(c.tensor_data_offset + info.offset))
            .unwrap();
        f.read_exact(&mut got).unwrap();
        assert!(got == *data, "{name} bytes differ");
        by_offset.push((info.offset, name.clone()));
    }
    by_offset.sort();
    // Tensors are packed: each starts at the previous one's end rounded up to 32, and the file
    // ends at the last one's padded end.
    let mut end = 0u64;
    for (off, name) in &by_offset {
        assert_eq!(*off, end.next_multiple_of(32), "{name} offset");
        end = off + want[name].2.len() as u64;
    }
    assert_eq!(file_len, c.tensor_data_offset + end.next_multiple_of(32));
    by_offset.into_iter().map(|(_, n)| n).collect()
}

#[test]
fn tiny_gguf_equals_the_converted_folder() {
    let mut spec = ForgeSpec::preset(Preset::Tiny);
    spec.seed = 3;
    let order = check(&spec);
    // The order convert_hf_to_gguf.py writes for the one-shard tiny folder.
    let mut want = vec!["output.weight".to_string(), "token_embd.weight".into()];
    for l in 0..2 {
        for t in [
            "ffn_gate_exps",
            "ffn_down_exps",
            "ffn_up_exps",
            "ffn_gate_inp",
            "attn_norm",
            "ffn_norm",
            "attn_k",
            "attn_output",
            "attn_q",
            "attn_v",
        ] {
            want.push(format!("blk.{l}.{t}.weight"));
        }
    }
    want.push("output_norm.weight".into());
    assert_eq!(order, want);
}

#[test]
fn other_shapes_shards_and_padded_vocabularies_match_too() {
    // Explicit head_dim (q wider than hidden), a vocabulary beyond the tokenizer's, several
    // shards (the order follows them), odd sizes that need padding between tensors.
    let overrides = Overrides {
        head_dim: Some(34),
        vocab_size: Some(32003),
        intermediate_size: Some(100),
        num_local_experts: Some(3),
        num_experts_per_tok: Some(1),
        ..Overrides::default()
    };
    let mut spec = ForgeSpec::with_overrides(Preset::Tiny, &overrides);
    spec.seed = 11;
    spec.shard_size = 1_000_000;
    let order = check(&spec);
    // The shard with the embeddings comes first, the one with lm_head last.
    assert_eq!(order.first().unwrap(), "token_embd.weight");
    assert_eq!(order.last().unwrap(), "output.weight");
}

#[test]
fn shapes_llama_cpp_cannot_take_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    for (overrides, field) in [
        (
            Overrides {
                vocab_size: Some(1000),
                ..Overrides::default()
            },
            "vocab_size",
        ),
        (
            Overrides {
                sliding_window: Some(64),
                ..Overrides::default()
            },
            "sliding_window",
        ),
    ] {
        let spec = ForgeSpec::with_overrides(Preset::Tiny, &overrides);
        match forge_gguf(&spec, &out) {
            Err(ForgeError::UnsupportedInGguf { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected a refusal, got {other:?}"),
        }
        assert!(!out.exists());
    }
    // An existing file is never replaced.
    std::fs::write(&out, b"mine").unwrap();
    let spec = ForgeSpec::preset(Preset::Tiny);
    assert!(matches!(
        forge_gguf(&spec, &out),
        Err(ForgeError::WouldOverwrite { .. })
    ));
    assert_eq!(std::fs::read(&out).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
