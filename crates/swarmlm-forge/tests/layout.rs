//! A forged checkpoint is a well-formed hub checkpoint: every shard opens with the `safetensors`
//! crate, the index maps exactly the tensors the config implies, shapes/dtypes/sizes are right,
//! and the values have the promised distribution.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use swarmlm_forge::{forge, tensor_list, ForgeSpec, Preset};

#[test]
fn shards_index_and_values_are_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    let mut spec = ForgeSpec::preset(Preset::Tiny);
    spec.shard_size = 100_000;
    let report = forge(&spec, &out).unwrap();

    let index = common::read_json(&out.join("model.safetensors.index.json"));
    let weight_map = index["weight_map"].as_object().unwrap();
    let expected: BTreeMap<String, Vec<usize>> = tensor_list(&spec.shape).into_iter().collect();
    let mapped: BTreeSet<&String> = weight_map.keys().collect();
    assert_eq!(mapped, expected.keys().collect::<BTreeSet<_>>());
    assert_eq!(expected.len(), 3 + 2 * (7 + 3 * 4));

    let shard_names: BTreeSet<&str> = weight_map.values().map(|v| v.as_str().unwrap()).collect();
    let n = shard_names.len();
    assert!(
        n > 3,
        "expected several shards with a 100 kB shard size, got {n}"
    );
    assert_eq!(report.shard_count, n);

    let mut total = 0u64;
    let mut seen = BTreeSet::new();
    let (mut sum, mut sum2, mut count) = (0f64, 0f64, 0u64);
    for k in 1..=n {
        let name = format!("model-{k:05}-of-{n:05}.safetensors");
        assert!(
            shard_names.contains(name.as_str()),
            "{name} missing from the index"
        );
        let bytes = std::fs::read(out.join(&name)).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!((8 + header_len) % 8, 0, "{name}: data must start 8-aligned");
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let md = meta.metadata().as_ref().unwrap();
        assert_eq!(md["format"], "pt");
        assert_eq!(md["swarmlm_forge_seed"], "0");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (tname, view) in st.tensors() {
            assert_eq!(
                weight_map[&tname],
                name.as_str(),
                "{tname} is in the wrong shard"
            );
            assert_eq!(view.dtype(), Dtype::BF16, "{tname}");
            assert_eq!(view.shape(), expected[&tname].as_slice(), "{tname}");
            let data = view.data();
            assert_eq!(data.len(), view.shape().iter().product::<usize>() * 2);
            total += data.len() as u64;
            assert!(seen.insert(tname.clone()), "{tname} stored twice");
            if tname.ends_with("layernorm.weight") || tname == "model.norm.weight" {
                assert!(
                    data.chunks_exact(2).all(|e| e == [0x80, 0x3f]),
                    "{tname}: RMSNorm weights must be exactly 1.0"
                );
            } else {
                for e in data.chunks_exact(2) {
                    let v = common::bf16_to_f32(e[0], e[1]) as f64;
                    assert!(v.is_finite() && v.abs() < 0.2, "{tname}: {v}");
                    sum += v;
                    sum2 += v * v;
                    count += 1;
                }
            }
        }
    }
    assert_eq!(seen.len(), expected.len());
    assert_eq!(index["metadata"]["total_size"].as_u64().unwrap(), total);
    assert_eq!(report.weights_bytes, total);
    let params: u64 = expected
        .values()
        .map(|s| s.iter().product::<usize>() as u64)
        .sum();
    assert_eq!(
        index["metadata"]["total_parameters"].as_u64().unwrap(),
        params
    );

    let mean = sum / count as f64;
    let std = (sum2 / count as f64 - mean * mean).sqrt();
    assert!(mean.abs() < 2e-4, "mean {mean}");
    assert!((std - 0.02).abs() < 4e-4, "sample std {std}, want 0.02");

    // Every file the report lists exists with that size, and nothing else (no leftovers).
    let on_disk: BTreeMap<String, u64> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    let reported: BTreeMap<String, u64> = report
        .files
        .iter()
        .map(|f| (f.name.clone(), f.bytes))
        .collect();
    assert_eq!(on_disk, reported);
    assert_eq!(report.total_bytes, on_disk.values().sum::<u64>());
    assert_eq!(report.files.last().unwrap().name, "config.json");
}

#[test]
fn config_and_side_files_follow_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    forge(&ForgeSpec::preset(Preset::Tiny), &out).unwrap();

    let c = common::read_json(&out.join("config.json"));
    assert_eq!(
        c["architectures"],
        serde_json::json!(["MixtralForCausalLM"])
    );
    assert_eq!(c["model_type"], "mixtral");
    for (field, want) in [
        ("hidden_size", 64),
        ("intermediate_size", 128),
        ("num_hidden_layers", 2),
        ("num_attention_heads", 4),
        ("num_key_value_heads", 2),
        ("num_local_experts", 4),
        ("num_experts_per_tok", 2),
        ("vocab_size", 32000),
        ("max_position_embeddings", 4096),
        ("bos_token_id", 1),
        ("eos_token_id", 2),
    ] {
        assert_eq!(c[field].as_u64(), Some(want), "{field}");
    }
    assert_eq!(c["rms_norm_eps"].as_f64(), Some(1e-5));
    assert_eq!(c["rope_theta"].as_f64(), Some(1e6));
    assert_eq!(c["router_jitter_noise"].as_f64(), Some(0.0));
    assert!(c["sliding_window"].is_null());
    assert_eq!(c["tie_word_embeddings"], false);
    assert_eq!(c["torch_dtype"], "bfloat16");
    assert_eq!(c["hidden_act"], "silu");
    assert!(
        c.get("head_dim").is_none(),
        "head_dim is only written when set explicitly"
    );

    let g = common::read_json(&out.join("generation_config.json"));
    assert_eq!(g["bos_token_id"], 1);
    assert_eq!(g["eos_token_id"], 2);

    // The real tokenizer, byte for byte (md5 37974873eb68a7ab30c4912fc36264ae upstream).
    let model = std::fs::read(out.join("tokenizer.model")).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&model)),
        "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"
    );
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let enc = tok
        .encode("Hello, world! Paris est la capitale de la France.", true)
        .unwrap();
    assert_eq!(
        enc.get_ids(),
        [1, 22557, 28725, 1526, 28808, 5465, 934, 543, 16809, 883, 340, 543, 4843, 28723]
    );
    let tc = common::read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["bos_token"], "<s>");
    assert!(out.join("special_tokens_map.json").is_file());
}

#[test]
fn full_mixtral_tensor_list_has_hub_names_and_shapes() {
    let shape = Preset::Mixtral8x7b.shape();
    let list: BTreeMap<String, Vec<usize>> = tensor_list(&shape).into_iter().collect();
    assert_eq!(list.len(), 995);
    assert_eq!(list["model.embed_tokens.weight"], [32000, 4096]);
    assert_eq!(list["lm_head.weight"], [32000, 4096]);
    assert_eq!(list["model.norm.weight"], [4096]);
    assert_eq!(
        list["model.layers.31.self_attn.q_proj.weight"],
        [4096, 4096]
    );
    assert_eq!(
        list["model.layers.31.self_attn.k_proj.weight"],
        [1024, 4096]
    );
    assert_eq!(
        list["model.layers.31.self_attn.v_proj.weight"],
        [1024, 4096]
    );
    assert_eq!(
        list["model.layers.31.self_attn.o_proj.weight"],
        [4096, 4096]
    );
    assert_eq!(
        list["model.layers.0.block_sparse_moe.gate.weight"],
        [8, 4096]
    );
    assert_eq!(
        list["model.layers.0.block_sparse_moe.experts.7.w1.weight"],
        [14336, 4096]
    );
    assert_eq!(
        list["model.layers.0.block_sparse_moe.experts.7.w2.weight"],
        [4096, 14336]
    );
    assert_eq!(
        list["model.layers.0.block_sparse_moe.experts.7.w3.weight"],
        [14336, 4096]
    );
    assert_eq!(list["model.layers.5.input_layernorm.weight"], [4096]);
    assert_eq!(
        list["model.layers.5.post_attention_layernorm.weight"],
        [4096]
    );
    let bytes: u64 = list
        .values()
        .map(|s| 2 * s.iter().product::<usize>() as u64)
        .sum();
    assert_eq!(bytes, 93_405_585_408);
}
