//! The hub layout: views equal file bytes and live in the file's read-only map; every malformed
//! header, index and shape problem is reported as its own error variant.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use swarmlm_weights::{
    Checkpoint, Dtype, Format, MixtralConfig, RopeLayout, TensorProblem, WeightsError,
};

fn assert_views_match_files(ck: &Checkpoint, expected: &[(String, Vec<usize>, Vec<u8>)]) {
    assert_eq!(ck.tensor_names().len(), expected.len());
    let mut file_cache = std::collections::HashMap::new();
    for (name, shape, bytes) in expected {
        let v = ck.tensor(name).unwrap();
        assert_eq!(v.name, name);
        assert_eq!(v.dtype, Dtype::BF16);
        assert_eq!(v.shape, shape.as_slice());
        assert_eq!(v.bytes, bytes.as_slice(), "{name}");
        assert_eq!(v.numel(), shape.iter().product::<usize>());
        let loc = ck.location(name).unwrap();
        let file = file_cache
            .entry(loc.file.clone())
            .or_insert_with(|| fs::read(&loc.file).unwrap());
        assert_eq!(
            &file[loc.offset as usize..(loc.offset + loc.len) as usize],
            v.bytes
        );
        // No copy: the view points into a read-only mapping of this very file, at the
        // tensor's file offset from a page-aligned base.
        let (perms, path) = mapping_of(v.bytes.as_ptr()).expect("view is in a mapping");
        assert_eq!(perms, "r--s", "{name}"); // PROT_READ, MAP_SHARED: the page cache itself
        assert_eq!(path, fs::canonicalize(&loc.file).unwrap(), "{name}");
        let base = v.bytes.as_ptr() as usize - loc.offset as usize;
        assert_eq!(base % 4096, 0, "{name}: map base not page-aligned");
        let vals = v.as_bf16().unwrap();
        assert_eq!(vals.as_ptr() as *const u8, v.bytes.as_ptr());
        assert_eq!(
            v.to_f32_vec(),
            vals.iter().map(|x| x.to_f32()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn single_file_views_are_the_file_bytes_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let t = write_single(dir.path());
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.format(), Format::HfSafetensors);
    assert_eq!(ck.rope_layout(), RopeLayout::HalfSplit);
    assert_eq!(ck.dir(), dir.path());
    assert_eq!(ck.config(), &tiny_config());
    assert_views_match_files(&ck, &t);
    let v = ck.tensor("model.norm.weight").unwrap();
    assert!(matches!(
        v.as_f32(),
        Err(WeightsError::DtypeMismatch {
            expected: Dtype::F32,
            actual: Dtype::BF16,
            ..
        })
    ));
    assert!(matches!(
        v.as_f16(),
        Err(WeightsError::DtypeMismatch { .. })
    ));
    assert!(matches!(
        ck.tensor("model.layers.9.input_layernorm.weight"),
        Err(WeightsError::UnknownTensor { .. })
    ));
    // Views can outlive nothing but the checkpoint, and are usable from other threads.
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(ck.tensor("lm_head.weight").unwrap().numel(), 160));
    });
}

#[test]
fn sharded_views_are_the_file_bytes_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let t = write_sharded(dir.path());
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.files().len(), 2);
    assert_views_match_files(&ck, &t);
    let first = ck.location("model.embed_tokens.weight").unwrap();
    assert!(first.file.ends_with("model-00001-of-00002.safetensors"));
    let last = ck.location("lm_head.weight").unwrap();
    assert!(last.file.ends_with("model-00002-of-00002.safetensors"));
}

#[test]
fn f32_and_f16_views_are_typed_and_widen() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.json"), TINY_CONFIG).unwrap();
    let cfg = tiny_config();
    let mut views = Vec::new();
    let mut owned = Vec::new();
    for (n, s) in swarmlm_weights::hf_tensor_names(&cfg) {
        let numel: usize = s.iter().product();
        let (dt, bytes) = if n.ends_with("norm.weight") {
            let v: Vec<u8> = (0..numel)
                .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
                .collect();
            (safetensors::Dtype::F32, v)
        } else if n == "lm_head.weight" {
            let v: Vec<u8> = (0..numel)
                .flat_map(|i| half::f16::from_f32(i as f32).to_le_bytes())
                .collect();
            (safetensors::Dtype::F16, v)
        } else {
            (safetensors::Dtype::BF16, pattern_bf16(&n, numel))
        };
        owned.push((n, s, dt, bytes));
    }
    for (n, s, dt, b) in &owned {
        views.push((
            n.clone(),
            safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap(),
        ));
    }
    fs::write(
        dir.path().join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    let norm = ck.tensor("model.norm.weight").unwrap();
    assert_eq!(norm.dtype, Dtype::F32);
    let want: Vec<f32> = (0..16).map(|i| i as f32 * 0.5).collect();
    assert_eq!(norm.as_f32().unwrap(), want.as_slice());
    assert_eq!(norm.to_f32_vec(), want);
    let head = ck.tensor("lm_head.weight").unwrap();
    assert_eq!(head.dtype, Dtype::F16);
    assert_eq!(head.as_f16().unwrap()[37].to_f32(), 37.0);
    assert_eq!(head.to_f32_vec()[159], 159.0);
    assert!(matches!(
        head.as_bf16(),
        Err(WeightsError::DtypeMismatch { .. })
    ));
}

fn open_raw(header: &str, data: &[u8]) -> WeightsError {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.json"), TINY_CONFIG).unwrap();
    fs::write(
        dir.path().join("model.safetensors"),
        raw_safetensors(header, data),
    )
    .unwrap();
    Checkpoint::open(dir.path()).unwrap_err()
}

fn open_bytes(bytes: &[u8]) -> WeightsError {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.json"), TINY_CONFIG).unwrap();
    fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    Checkpoint::open(dir.path()).unwrap_err()
}

#[test]
fn malformed_headers_each_get_their_own_error() {
    // Too short to hold the length.
    let e = open_bytes(&[1, 2, 3]);
    assert!(
        matches!(e, WeightsError::FileTooShort { file_len: 3, .. }),
        "{e}"
    );

    // Header length beyond the file.
    let mut b = 1000u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    let e = open_bytes(&b);
    assert!(
        matches!(
            e,
            WeightsError::HeaderBeyondFile {
                header_len: 1000,
                file_len: 10,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("model.safetensors"), "{e}");

    // Absurd header length.
    let e = open_bytes(&u64::MAX.to_le_bytes());
    assert!(matches!(e, WeightsError::HeaderTooLarge { .. }), "{e}");

    // Bad JSON, and JSON of the wrong form.
    for h in [
        "{not json",
        "[1,2]",
        r#"{"a": {"dtype": "BF16", "shape": [1]}}"#,
        r#"{"a": 5}"#,
    ] {
        let e = open_raw(h, &[]);
        assert!(matches!(e, WeightsError::HeaderJson { .. }), "{h}: {e}");
    }

    // Offsets outside the data area, and reversed offsets.
    let e = open_raw(
        r#"{"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}"#,
        &[0; 2],
    );
    assert!(
        matches!(&e, WeightsError::TensorOutOfBounds { tensor, end: 4, data_len: 2, .. } if tensor == "a"),
        "{e}"
    );
    let e = open_raw(
        r#"{"a": {"dtype": "BF16", "shape": [0], "data_offsets": [4, 2]}}"#,
        &[0; 4],
    );
    assert!(matches!(e, WeightsError::TensorOutOfBounds { .. }), "{e}");

    // Overlapping tensors: both named.
    let e = open_raw(
        r#"{"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
            "b": {"dtype": "BF16", "shape": [2], "data_offsets": [2, 6]}}"#,
        &[0; 6],
    );
    assert!(
        matches!(&e, WeightsError::TensorOverlap { first, second, .. } if first == "a" && second == "b"),
        "{e}"
    );

    // Byte length ≠ shape × dtype size.
    let e = open_raw(
        r#"{"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 12]}}"#,
        &[0; 12],
    );
    assert!(
        matches!(&e, WeightsError::TensorByteLength { tensor, expected: 24, actual: 12, .. } if tensor == "a"),
        "{e}"
    );
    // ... including a shape whose byte size overflows.
    let e = open_raw(
        r#"{"a": {"dtype": "F32", "shape": [18446744073709551615, 4], "data_offsets": [0, 4]}}"#,
        &[0; 4],
    );
    assert!(matches!(e, WeightsError::TensorByteLength { .. }), "{e}");

    // Misaligned: header of odd length puts BF16 data at an odd file offset.
    let h = r#"{"a": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}} "#;
    assert_eq!((8 + h.len()) % 2, 1);
    let e = open_raw(h, &[0; 2]);
    assert!(
        matches!(&e, WeightsError::Misaligned { tensor, align: 2, .. } if tensor == "a"),
        "{e}"
    );
    // F32 data on a 2-byte but not 4-byte boundary.
    let h = r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}"#;
    let pad = (8 - (8 + h.len()) % 8) % 8;
    let h = format!("{h}{}", " ".repeat(pad));
    let e = open_raw(&h, &[0; 6]);
    assert!(
        matches!(&e, WeightsError::Misaligned { align: 4, .. }),
        "{e}"
    );

    // Unsupported dtype, named.
    let e = open_raw(
        r#"{"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}"#,
        &[0; 8],
    );
    assert!(
        matches!(&e, WeightsError::UnsupportedDtype { tensor, dtype, .. } if tensor == "a" && dtype == "I64"),
        "{e}"
    );

    // The same name twice in one header.
    let e = open_raw(
        r#"{"a": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]},
            "a": {"dtype": "BF16", "shape": [1], "data_offsets": [2, 4]}}"#,
        &[0; 4],
    );
    assert!(
        matches!(&e, WeightsError::DuplicateTensor { tensor, .. } if tensor == "a"),
        "{e}"
    );

    // A valid header with metadata but none of the model's tensors: every tensor is listed.
    let e = open_raw(r#"{"__metadata__": {"format": "pt"}}"#, &[]);
    match e {
        WeightsError::TensorsMismatch { problems, .. } => {
            let n = swarmlm_weights::hf_tensor_names(&tiny_config()).len();
            assert_eq!(problems.len(), n);
            assert!(problems
                .iter()
                .all(|p| matches!(p, TensorProblem::Missing { .. })));
        }
        e => panic!("{e}"),
    }
}

#[test]
fn missing_and_misshapen_tensors_are_all_listed() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.json"), TINY_CONFIG).unwrap();
    let mut t = model_tensors(&tiny_config());
    t.retain(|(n, _, _)| {
        n != "model.layers.1.block_sparse_moe.experts.2.w2.weight" && n != "model.norm.weight"
    });
    for (n, s, b) in t.iter_mut() {
        if n == "model.layers.0.self_attn.k_proj.weight" || n == "lm_head.weight" {
            s.reverse();
            let _ = b;
        }
    }
    write_safetensors(&dir.path().join("model.safetensors"), &t);
    let e = Checkpoint::open(dir.path()).unwrap_err();
    let msg = e.to_string();
    let WeightsError::TensorsMismatch { problems, .. } = e else {
        panic!("{e}")
    };
    assert_eq!(problems.len(), 4, "{msg}");
    assert!(problems.contains(&TensorProblem::Missing {
        name: "model.layers.1.block_sparse_moe.experts.2.w2.weight".into(),
        expected: vec![16, 24]
    }));
    assert!(problems.contains(&TensorProblem::Missing {
        name: "model.norm.weight".into(),
        expected: vec![16]
    }));
    assert!(problems.contains(&TensorProblem::WrongShape {
        name: "model.layers.0.self_attn.k_proj.weight".into(),
        expected: vec![8, 16],
        actual: vec![16, 8]
    }));
    assert!(problems.contains(&TensorProblem::WrongShape {
        name: "lm_head.weight".into(),
        expected: vec![10, 16],
        actual: vec![16, 10]
    }));
    for p in &problems {
        let name = match p {
            TensorProblem::Missing { name, .. } | TensorProblem::WrongShape { name, .. } => name,
        };
        assert!(msg.contains(name.as_str()), "{msg}");
    }
}

#[test]
fn index_problems_are_named() {
    // A shard the index names is missing.
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path());
    fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, WeightsError::MissingShard { shard, .. } if shard == "model-00002-of-00002.safetensors"),
        "{e}"
    );

    // The index maps a tensor to a shard that does not hold it.
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path());
    let p = dir.path().join("model.safetensors.index.json");
    let mut idx: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
    idx["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors".into();
    fs::write(&p, idx.to_string()).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, WeightsError::IndexMismatch { tensor, .. } if tensor == "lm_head.weight"),
        "{e}"
    );

    // Shard names may not leave the folder.
    idx["weight_map"]["lm_head.weight"] = "../model-00002-of-00002.safetensors".into();
    fs::write(&p, idx.to_string()).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(matches!(e, WeightsError::IndexJson { .. }), "{e}");

    // Not JSON at all / no weight_map.
    fs::write(&p, "nope").unwrap();
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(WeightsError::IndexJson { .. })
    ));
    fs::write(&p, "{}").unwrap();
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(WeightsError::IndexJson { .. })
    ));

    // The same tensor in two shards.
    let dir = tempfile::tempdir().unwrap();
    let t = write_sharded(dir.path());
    let mut second = t[t.len() / 2..].to_vec();
    second.push(t[0].clone());
    write_safetensors(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &second,
    );
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, WeightsError::DuplicateTensor { tensor, .. } if tensor == &t[0].0),
        "{e}"
    );
}

#[test]
fn non_regular_files_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.json"), TINY_CONFIG).unwrap();
    let fifo = dir.path().join("model.safetensors");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(matches!(e, WeightsError::NotRegularFile { .. }), "{e}");

    fs::remove_file(&fifo).unwrap();
    fs::create_dir(&fifo).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(matches!(e, WeightsError::NotRegularFile { .. }), "{e}");
}

#[test]
fn symlinked_shards_are_followed() {
    // The hub cache stores shards as symlinks to blobs.
    let blobs = tempfile::tempdir().unwrap();
    let t = write_single(blobs.path());
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("config.json"), TINY_CONFIG).unwrap();
    std::os::unix::fs::symlink(
        blobs.path().join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.tensor(&t[3].0).unwrap().bytes, t[3].2.as_slice());
}

#[test]
fn folders_without_a_checkpoint_are_named() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(WeightsError::NoCheckpoint { .. })
    ));
    fs::write(dir.path().join("config.json"), TINY_CONFIG).unwrap();
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(WeightsError::NoCheckpoint { .. })
    ));
    assert!(matches!(
        Checkpoint::open(&dir.path().join("nope")),
        Err(WeightsError::Io { .. })
    ));
}

#[test]
fn hf_config_defaults_and_field_errors() {
    let mut v: serde_json::Value = serde_json::from_str(TINY_CONFIG).unwrap();
    let parse = |v: &serde_json::Value| MixtralConfig::from_hf_json(v.to_string().as_bytes());

    let c = parse(&v).unwrap();
    assert_eq!(c.head_dim, 4, "null head_dim = hidden / heads");
    assert_eq!((c.bos_token_id, c.eos_token_id), (Some(1), Some(2)));
    assert_eq!(c.sliding_window, None);

    let o = v.as_object_mut().unwrap();
    o.remove("rope_theta");
    o.remove("rms_norm_eps");
    o.remove("head_dim");
    o.remove("bos_token_id");
    o.insert("eos_token_id".into(), serde_json::json!([7, 2]));
    o.insert("sliding_window".into(), 32.into());
    let c = parse(&v).unwrap();
    assert_eq!(c.rope_theta, 1e6);
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.head_dim, 4);
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_id, Some(7));
    assert_eq!(c.sliding_window, Some(32));

    v["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 500000.0});
    assert_eq!(parse(&v).unwrap().rope_theta, 5e5);
    v["head_dim"] = 8.into();
    assert_eq!(parse(&v).unwrap().head_dim, 8);

    let field_err = |v: &serde_json::Value, want: &str| match parse(v) {
        Err(WeightsError::ConfigField { field, .. }) => assert_eq!(field, want),
        r => panic!("{want}: {r:?}"),
    };
    let mut w = v.clone();
    w["hidden_size"] = "big".into();
    field_err(&w, "hidden_size");
    let mut w = v.clone();
    w.as_object_mut().unwrap().remove("num_local_experts");
    field_err(&w, "num_local_experts");
    let mut w = v.clone();
    w["model_type"] = "llama".into();
    field_err(&w, "model_type");
    let mut w = v.clone();
    w["rope_theta"] = serde_json::json!([1]);
    field_err(&w, "rope_theta");

    let invalid = |v: &serde_json::Value, want: &str| match parse(v) {
        Err(WeightsError::InvalidConfig { field, .. }) => assert_eq!(field, want),
        r => panic!("{want}: {r:?}"),
    };
    let mut w = v.clone();
    w["num_key_value_heads"] = 3.into();
    invalid(&w, "num_key_value_heads");
    let mut w = v.clone();
    w["num_experts_per_tok"] = 4.into();
    invalid(&w, "num_experts_per_tok");
    let mut w = v.clone();
    w["head_dim"] = 5.into();
    invalid(&w, "head_dim");
    let mut w = v.clone();
    w["sliding_window"] = 0.into();
    invalid(&w, "sliding_window");

    assert!(matches!(
        MixtralConfig::from_hf_json(b"{oops"),
        Err(WeightsError::ConfigJson { .. })
    ));
    // Strings: JSON text or a path.
    assert_eq!(
        MixtralConfig::from_hf_json(TINY_CONFIG).unwrap(),
        tiny_config()
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    fs::write(&p, TINY_CONFIG).unwrap();
    assert_eq!(
        MixtralConfig::from_hf_json(p.to_str().unwrap()).unwrap(),
        tiny_config()
    );
    assert_eq!(MixtralConfig::from_hf_json(&p).unwrap(), tiny_config());
    assert!(matches!(
        MixtralConfig::from_hf_json(Path::new("/nonexistent/config.json")),
        Err(WeightsError::Io { .. })
    ));
}

#[test]
fn corrupted_headers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    write_single(dir.path());
    let full = fs::read(dir.path().join("model.safetensors")).unwrap();
    let header_end = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let file = Path::new("model.safetensors");
    let mut opened = 0;
    for pos in 0..header_end {
        for val in [b'0', b'9', b'"', b'}', b' ', 0xFF] {
            let mut bad = full.clone();
            if bad[pos] == val {
                continue;
            }
            bad[pos] = val;
            if let Ok(entries) = swarmlm_weights::st_header::parse_header(file, &bad) {
                // Whatever still parses must describe in-bounds, consistently sized tensors.
                for e in entries {
                    assert!(e.start <= e.end && e.end <= bad.len() as u64);
                    let numel: u64 = e.shape.iter().map(|&d| d as u64).product();
                    assert_eq!(numel * e.dtype.size() as u64, e.end - e.start);
                    assert_eq!(e.start % e.dtype.size() as u64, 0);
                }
                opened += 1;
            }
        }
    }
    // Digit edits in an offset pair or a shape, and whitespace in the right place, can keep a
    // header valid; the point is that nothing panics.
    assert!(opened > 0);
}
