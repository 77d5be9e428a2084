//! Mistral's original `.pth`: the torch-written fixture twin equals its safetensors twin after
//! the RoPE row permutation; forged archives exercise ZIP64 and every defect; hostile pickles
//! are refused with the global or opcode named.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::pth::*;
use common::*;
use swarmlm_weights::names::{half_split_row_for_interleaved, interleaved_row_for_half_split};
use swarmlm_weights::{
    hf_to_mistral_name, Checkpoint, Format, MixtralConfig, RopeLayout, TensorProblem, WeightsError,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Compares a `.pth` checkpoint with its hub twin: configs equal, same names, q/k equal through
/// the row permutation, everything else byte-equal; views lie in the archive's map.
fn assert_twins(hf: &Checkpoint, pth: &Checkpoint) {
    assert_eq!(hf.config(), pth.config());
    assert_eq!(hf.format(), Format::HfSafetensors);
    assert_eq!(pth.format(), Format::MistralPth);
    assert_eq!(hf.rope_layout(), RopeLayout::HalfSplit);
    assert_eq!(pth.rope_layout(), RopeLayout::Interleaved);
    assert_eq!(hf.tensor_names(), pth.tensor_names());
    let d = pth.config().head_dim;
    let archive = fs::read(pth.files()[0]).unwrap();
    let canon = fs::canonicalize(pth.files()[0]).unwrap();
    let mut permuted = 0;
    for name in pth.tensor_names() {
        let a = hf.tensor(name).unwrap();
        let b = pth.tensor(name).unwrap();
        assert_eq!(b.name, name);
        assert_eq!(a.dtype, b.dtype, "{name}");
        assert_eq!(a.shape, b.shape, "{name}");
        let loc = pth.location(name).unwrap();
        assert_eq!(loc.file, pth.files()[0]);
        assert_eq!(
            &archive[loc.offset as usize..(loc.offset + loc.len) as usize],
            b.bytes
        );
        let (perms, path) = mapping_of(b.bytes.as_ptr()).expect("view is in a mapping");
        assert_eq!((perms.as_str(), path), ("r--s", canon.clone()), "{name}");
        if name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight") {
            let row = a.shape[1] * a.dtype.size();
            let rows = a.shape[0];
            assert_ne!(a.bytes, b.bytes, "{name}: permutation must matter");
            for r in 0..rows {
                let o = interleaved_row_for_half_split(r, d);
                assert_eq!(half_split_row_for_interleaved(o, d), r);
                assert_eq!(
                    &a.bytes[r * row..(r + 1) * row],
                    &b.bytes[o * row..(o + 1) * row],
                    "{name}: hub row {r} vs original row {o}"
                );
            }
            permuted += 1;
        } else {
            assert_eq!(a.bytes, b.bytes, "{name}");
        }
    }
    assert_eq!(permuted, 2 * pth.config().num_hidden_layers);
}

#[test]
fn torch_written_twin_matches_its_safetensors_twin() {
    let hf = Checkpoint::open(&fixture("tiny-hf")).unwrap();
    let pth = Checkpoint::open(&fixture("tiny-pth")).unwrap();
    let c = pth.config();
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (64, 2, 4, 2)
    );
    assert_eq!(
        (c.head_dim, c.num_local_experts, c.num_experts_per_tok),
        (16, 4, 2)
    );
    assert_eq!(
        c.rope_theta, 1e6,
        "absent rope_theta in params.json defaults to 1e6"
    );
    assert_eq!(pth.tensor_names().len(), 3 + 2 * (7 + 3 * 4));
    assert_twins(&hf, &pth);
    // The torch writer's 64-byte alignment survives into the views.
    for name in pth.tensor_names() {
        assert_eq!(pth.location(name).unwrap().offset % 64, 0, "{name}");
        assert!(pth.tensor(name).unwrap().as_bf16().is_ok());
    }
}

/// The tiny model of `common` as a `.pth` twin: Mistral names, original q/k row order.
fn tiny_pth_parts(cfg: &MixtralConfig) -> (Vec<PT>, Vec<(String, Vec<u8>)>) {
    let mut ts = Vec::new();
    let mut storages = Vec::new();
    for (i, (name, shape, bytes)) in model_tensors(cfg).into_iter().enumerate() {
        let bytes = if name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight") {
            let row = shape[1] * 2;
            let mut orig = vec![0u8; bytes.len()];
            for o in 0..shape[0] {
                let r = half_split_row_for_interleaved(o, cfg.head_dim);
                orig[o * row..(o + 1) * row].copy_from_slice(&bytes[r * row..(r + 1) * row]);
            }
            orig
        } else {
            bytes
        };
        let stride = if shape.len() == 2 {
            vec![shape[1] as u64, 1]
        } else {
            vec![1]
        };
        ts.push(PT {
            name: hf_to_mistral_name(&name).unwrap(),
            storage_type: "BFloat16Storage",
            key: i.to_string(),
            storage_numel: (bytes.len() / 2) as u64,
            offset: 0,
            size: shape.iter().map(|&d| d as u64).collect(),
            stride,
        });
        storages.push((i.to_string(), bytes));
    }
    (ts, storages)
}

const TINY_PARAMS: &str = r#"{"dim": 16, "n_layers": 2, "head_dim": 4, "hidden_dim": 24,
  "n_heads": 4, "n_kv_heads": 2, "norm_eps": 1e-05, "vocab_size": 10, "rope_theta": 1000000.0,
  "max_seq_len": 64, "moe": {"num_experts_per_tok": 2, "num_experts": 3}}"#;

fn write_pth_dir(archive: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("params.json"), TINY_PARAMS).unwrap();
    fs::write(dir.path().join("consolidated.00.pth"), archive).unwrap();
    dir
}

fn open_forged(
    ts: &[PT],
    storages: &[(String, Vec<u8>)],
    opts: &ZipOpts,
) -> Result<Checkpoint, WeightsError> {
    let dir = write_pth_dir(&pth_archive(ts, storages, opts));
    let r = Checkpoint::open(dir.path());
    drop(dir);
    r
}

#[test]
fn forged_zip64_twin_matches_and_plain_zip_too() {
    let cfg = tiny_config();
    assert_eq!(
        MixtralConfig::from_mistral_params(TINY_PARAMS.as_bytes()).unwrap(),
        cfg
    );
    let hf_dir = tempfile::tempdir().unwrap();
    write_single(hf_dir.path());
    let hf = Checkpoint::open(hf_dir.path()).unwrap();
    let (ts, st) = tiny_pth_parts(&cfg);
    for zip64 in [true, false] {
        let dir = write_pth_dir(&pth_archive(
            &ts,
            &st,
            &ZipOpts {
                zip64,
                ..Default::default()
            },
        ));
        let pth = Checkpoint::open(dir.path()).unwrap();
        assert_twins(&hf, &pth);
    }
}

#[test]
fn tensors_may_share_a_storage_at_an_offset() {
    let cfg = tiny_config();
    let (mut ts, mut st) = tiny_pth_parts(&cfg);
    // Put the final norm inside the embedding's storage, after the embedding.
    let emb = ts
        .iter()
        .position(|t| t.name == "tok_embeddings.weight")
        .unwrap();
    let norm = ts.iter().position(|t| t.name == "norm.weight").unwrap();
    let norm_bytes = st[norm].1.clone();
    let emb_key = ts[emb].key.clone();
    st[emb].1.extend_from_slice(&norm_bytes);
    ts[emb].storage_numel += 16;
    ts[norm].key = emb_key;
    ts[norm].storage_numel = ts[emb].storage_numel;
    ts[norm].offset = 160;
    st.remove(norm);
    let ck = open_forged(&ts, &st, &ZipOpts::default()).unwrap();
    assert_eq!(
        ck.tensor("model.norm.weight").unwrap().bytes,
        norm_bytes.as_slice()
    );
    let e = ck.location("model.embed_tokens.weight").unwrap();
    let n = ck.location("model.norm.weight").unwrap();
    assert_eq!(n.offset, e.offset + 320);
}

fn pth_err(ts: &[PT], st: &[(String, Vec<u8>)], opts: &ZipOpts) -> WeightsError {
    open_forged(ts, st, opts).unwrap_err()
}

fn tensor_err_contains(e: &WeightsError, tensor_want: &str, reason_has: &str) {
    match e {
        WeightsError::PthTensor { tensor, reason, .. } => {
            assert_eq!(tensor, tensor_want, "{e}");
            assert!(reason.contains(reason_has), "{e}");
        }
        _ => panic!("expected PthTensor, got {e}"),
    }
}

#[test]
fn forged_archive_defects_each_get_their_own_error() {
    let cfg = tiny_config();
    let (ts, st) = tiny_pth_parts(&cfg);
    let wq = ts
        .iter()
        .position(|t| t.name == "layers.0.attention.wq.weight")
        .unwrap();

    // Compressed entries cannot be mapped.
    let e = pth_err(
        &ts,
        &st,
        &ZipOpts {
            method: 8,
            ..Default::default()
        },
    );
    assert!(
        matches!(&e, WeightsError::ZipCompressed { method: 8, .. }),
        "{e}"
    );

    // Non-contiguous (transposed) strides.
    let mut t2 = ts.clone();
    t2[wq].stride = vec![1, 16];
    tensor_err_contains(
        &pth_err(&t2, &st, &Default::default()),
        "layers.0.attention.wq.weight",
        "not contiguous",
    );

    // Offset + extent beyond the storage.
    let mut t2 = ts.clone();
    t2[wq].offset = 1;
    tensor_err_contains(
        &pth_err(&t2, &st, &Default::default()),
        "layers.0.attention.wq.weight",
        "outside its storage",
    );

    // Storage entry shorter than its declared element count.
    let mut s2 = st.clone();
    s2[wq].1.truncate(10);
    tensor_err_contains(
        &pth_err(&ts, &s2, &Default::default()),
        "layers.0.attention.wq.weight",
        "holds 10 bytes",
    );

    // Storage entry missing from the archive.
    let mut s2 = st.clone();
    s2.remove(wq);
    tensor_err_contains(
        &pth_err(&ts, &s2, &Default::default()),
        "layers.0.attention.wq.weight",
        "not in the archive",
    );

    // Size and stride of different rank.
    let mut t2 = ts.clone();
    t2[wq].stride = vec![1];
    tensor_err_contains(
        &pth_err(&t2, &st, &Default::default()),
        "layers.0.attention.wq.weight",
        "rank",
    );

    // Untyped (uint8) storage.
    let mut t2 = ts.clone();
    t2[wq].storage_type = "UntypedStorage";
    tensor_err_contains(
        &pth_err(&t2, &st, &Default::default()),
        "layers.0.attention.wq.weight",
        "untyped",
    );

    // Misaligned storage data.
    let e = pth_err(
        &ts,
        &st,
        &ZipOpts {
            align: 1,
            skew: 1,
            ..Default::default()
        },
    );
    assert!(
        matches!(&e, WeightsError::Misaligned { align: 2, .. }),
        "{e}"
    );

    // A name that is not Mixtral's.
    let mut t2 = ts.clone();
    t2[wq].name = "layers.0.attention.wqq.weight".into();
    let e = pth_err(&t2, &st, &Default::default());
    assert!(
        matches!(&e, WeightsError::UnknownPthName { name, .. } if name == "layers.0.attention.wqq.weight"),
        "{e}"
    );

    // Missing and misshapen tensors, all listed.
    let mut t2 = ts.clone();
    t2.retain(|t| t.name != "output.weight" && t.name != "layers.1.ffn_norm.weight");
    let gate = t2
        .iter()
        .position(|t| t.name == "layers.1.block_sparse_moe.gate.weight")
        .unwrap();
    t2[gate].size = vec![16, 3];
    t2[gate].stride = vec![3, 1];
    match pth_err(&t2, &st, &Default::default()) {
        WeightsError::TensorsMismatch { problems, .. } => {
            assert_eq!(problems.len(), 3);
            assert!(problems.contains(&TensorProblem::Missing {
                name: "lm_head.weight".into(),
                expected: vec![10, 16]
            }));
            assert!(problems.contains(&TensorProblem::WrongShape {
                name: "model.layers.1.block_sparse_moe.gate.weight".into(),
                expected: vec![3, 16],
                actual: vec![16, 3]
            }));
        }
        e => panic!("{e}"),
    }

    // Big-endian archives cannot be mapped as little-endian views.
    let mut entries = vec![
        ("archive/data.pkl".to_string(), state_dict_pickle(&ts)),
        ("archive/byteorder".to_string(), b"big".to_vec()),
    ];
    entries.extend(
        st.iter()
            .map(|(k, b)| (format!("archive/data/{k}"), b.clone())),
    );
    let dir = write_pth_dir(&zip(&entries, &Default::default()));
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, WeightsError::Zip { reason, .. } if reason.contains("byteorder")),
        "{e}"
    );

    // No data.pkl at all.
    let dir = write_pth_dir(&zip(
        &[("archive/x".into(), vec![1, 2])],
        &Default::default(),
    ));
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, WeightsError::Zip { reason, .. } if reason.contains("data.pkl")),
        "{e}"
    );
}

#[test]
fn every_truncation_of_an_archive_is_an_error_not_a_panic() {
    let cfg = tiny_config();
    let (ts, st) = tiny_pth_parts(&cfg);
    for zip64 in [false, true] {
        let full = pth_archive(
            &ts,
            &st,
            &ZipOpts {
                zip64,
                ..Default::default()
            },
        );
        let mut cuts: Vec<usize> = (0..full.len()).step_by(97).collect();
        cuts.extend(full.len().saturating_sub(200)..full.len());
        for cut in cuts {
            let e =
                swarmlm_weights::pth::parse_archive(Path::new("c.pth"), &full[..cut]).unwrap_err();
            assert!(matches!(e, WeightsError::Zip { .. }), "cut at {cut}: {e}");
        }
        // And through open, once, with the file named in the error.
        let dir = write_pth_dir(&full[..full.len() - 1]);
        let e = Checkpoint::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("consolidated.00.pth"), "{e}");
    }
}

#[test]
fn committed_hostile_and_broken_fixtures_are_refused() {
    let e = Checkpoint::open(&fixture("hostile-reduce")).unwrap_err();
    match &e {
        WeightsError::PickleGlobal { global, .. } => {
            assert!(
                global == "posix.system" || global == "os.system" || global == "nt.system",
                "{e}"
            )
        }
        _ => panic!("{e}"),
    }
    assert!(e.to_string().contains("system"), "{e}");

    let e = Checkpoint::open(&fixture("hostile-global")).unwrap_err();
    assert!(
        matches!(&e, WeightsError::PickleGlobal { global, .. } if global == "torch._utils._rebuild_parameter"),
        "{e}"
    );

    let e = Checkpoint::open(&fixture("truncated")).unwrap_err();
    assert!(matches!(&e, WeightsError::Zip { .. }), "{e}");
    assert!(e.to_string().contains("consolidated.00.pth"), "{e}");
}

/// Runs the restricted reader on a hand-written pickle.
fn pickle_err(pkl: &[u8]) -> WeightsError {
    swarmlm_weights::pickle::read_state_dict(Path::new("x.pth"), pkl).unwrap_err()
}

#[test]
fn restricted_pickle_refuses_everything_else() {
    // Disallowed opcodes are named.
    for (pkl, name) in [
        (
            &b"\x80\x02(cos\nsystem\nX\x02\x00\x00\x00lsi."[..],
            "GLOBAL",
        ),
        (b"\x80\x02}q\x00(X\x01\x00\x00\x00ai\x00.", "INST"),
        (b"\x80\x02]\x81.", "NEWOBJ"),
        (b"\x80\x02P0\n.", "PERSID"),
        (b"\x80\x02\x8f.", "EMPTY_SET"),
        (b"\x80\x02U\x01a.", "SHORT_BINSTRING"),
        (b"\x80\x02\xff.", "0xff"),
    ] {
        let e = pickle_err(pkl);
        match &e {
            WeightsError::PickleOpcode { opcode, .. } => assert!(opcode.contains(name), "{e}"),
            // `cos\nsystem` is refused at the global before INST is reached.
            WeightsError::PickleGlobal { global, .. } => assert_eq!(global, "os.system"),
            _ => panic!("{name}: {e}"),
        }
    }
    // Globals outside the allow-list, by GLOBAL and by STACK_GLOBAL.
    for pkl in [
        &b"\x80\x02cbuiltins\neval\n."[..],
        b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.",
        b"\x80\x02ctorch\nload\n.",
    ] {
        let e = pickle_err(pkl);
        assert!(matches!(e, WeightsError::PickleGlobal { .. }), "{e}");
    }
    // Allowed globals, called the wrong way.
    for (pkl, has) in [
        (
            &b"\x80\x02ccollections\nOrderedDict\nK\x01\x85R."[..],
            "OrderedDict called with arguments",
        ),
        (
            b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)R.",
            "0 arguments",
        ),
        (
            b"\x80\x02ctorch\nFloatStorage\n)R.",
            "only OrderedDict and _rebuild_tensor_v2",
        ),
        (b"\x80\x02(X\x01\x00\x00\x00xtQ.", "persistent id"),
        (b"\x80\x02K\x01.", "expected a state dict"),
        (b"\x80\x02.", "stack underflow"),
        (b"\x80\x02}", "truncated"),
        (b"\x80\x02}X\xff\xff\xff\xff", "truncated"),
        (b"\x80\x02h\x05.", "never stored"),
        (b"\x80\x02t.", "no MARK"),
        (b"\x80\x02}.junk", "follow STOP"),
        (b"\x80\x09}.", "protocol 9"),
        (
            b"\x80\x02}X\x01\x00\x00\x00aK\x01s.",
            "is a int, expected a tensor",
        ),
        (b"\x80\x02)X\x01\x00\x00\x00aK\x01s.", "SETITEM on a tuple"),
        (
            b"\x80\x02}X\x01\x00\x00\x00aK\x01sX\x01\x00\x00\x00aK\x01s.",
            "appears twice",
        ),
        (b"\x80\x02]}b.", "BUILD of a list"),
        (
            b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00.",
            "LONG1",
        ),
        (b"\x80\x02X\x01\x00\x00\x00\xff.", "UTF-8"),
    ] {
        let e = pickle_err(pkl);
        assert!(matches!(e, WeightsError::Pickle { .. }), "{has}: {e}");
        assert!(e.to_string().contains(has), "{has}: {e}");
    }
    // Deep nesting is flat in memory: a million nested tuples neither recurse nor overflow.
    let mut deep = b"\x80\x02N".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 1_000_000));
    deep.push(b'.');
    let e = pickle_err(&deep);
    assert!(
        e.to_string().contains("tuple, expected a state dict"),
        "{e}"
    );
}

#[test]
fn mistral_params_defaults_and_errors() {
    let mut v: serde_json::Value = serde_json::from_str(TINY_PARAMS).unwrap();
    let parse =
        |v: &serde_json::Value| MixtralConfig::from_mistral_params(v.to_string().as_bytes());
    let o = v.as_object_mut().unwrap();
    o.remove("rope_theta");
    o.remove("head_dim");
    o.remove("max_seq_len");
    o.insert("sliding_window".into(), 4096.into());
    let c = parse(&v).unwrap();
    assert_eq!(c.rope_theta, 1e6);
    assert_eq!(c.head_dim, 4);
    assert_eq!(c.max_position_embeddings, 32768);
    assert_eq!(c.sliding_window, Some(4096));
    assert_eq!(
        (c.bos_token_id, c.eos_token_id, c.tie_word_embeddings),
        (Some(1), Some(2), false)
    );

    let mut w = v.clone();
    w.as_object_mut().unwrap().remove("moe");
    assert!(matches!(parse(&w), Err(WeightsError::ConfigField { field, .. }) if field == "moe"));
    let mut w = v.clone();
    w["moe"]["num_experts"] = serde_json::Value::Null;
    assert!(
        matches!(parse(&w), Err(WeightsError::ConfigField { field, .. }) if field == "moe.num_experts")
    );
    let mut w = v.clone();
    w["n_kv_heads"] = 3.into();
    assert!(matches!(
        parse(&w),
        Err(WeightsError::InvalidConfig {
            field: "num_key_value_heads",
            ..
        })
    ));

    // A params.json that is broken makes open fail on it, naming the file.
    let dir = write_pth_dir(b"");
    fs::write(dir.path().join("params.json"), "{]").unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&e, WeightsError::ConfigJson { file, .. } if file.ends_with("params.json")),
        "{e}"
    );

    // Tensor-parallel shards are not something we can map as one model.
    fs::write(dir.path().join("consolidated.01.pth"), b"").unwrap();
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(WeightsError::UnsupportedLayout { .. })
    ));
}

#[test]
fn corrupted_archives_never_panic() {
    let cfg = tiny_config();
    let (ts, st) = tiny_pth_parts(&cfg);
    let file = Path::new("consolidated.00.pth");
    for zip64 in [false, true] {
        let full = pth_archive(
            &ts,
            &st,
            &ZipOpts {
                zip64,
                ..Default::default()
            },
        );
        // Storage bytes are opaque; corrupt the pickle, local headers and directory densely.
        let pkl_end = 128 + state_dict_pickle(&ts).len();
        let tail = full.len() - (full.len() / 4).min(full.len());
        let mut opened = 0;
        // Every 5th byte with varying values keeps this to a few seconds in debug builds; the
        // cargo-fuzz targets explore further.
        for pos in (0..pkl_end.min(full.len()))
            .chain(tail..full.len())
            .step_by(5)
        {
            for val in [0x00, 0x01 + (pos % 7) as u8, 0xFF] {
                let mut bad = full.clone();
                if bad[pos] == val {
                    continue;
                }
                bad[pos] = val;
                if let Ok(tensors) = swarmlm_weights::pth::parse_archive(file, &bad) {
                    // Whatever still parses must describe in-bounds, consistently sized tensors.
                    for t in tensors {
                        assert!(t.start <= t.end && t.end <= bad.len() as u64);
                        let numel: u64 = t.shape.iter().map(|&d| d as u64).product();
                        assert_eq!(numel * t.dtype.size() as u64, t.end - t.start);
                    }
                    opened += 1;
                }
            }
        }
        // Some corruptions (CRC fields, padding, timestamps, tensor values) are harmless.
        assert!(opened > 0);
    }
}
