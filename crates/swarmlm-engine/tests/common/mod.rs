//! Shared helpers of the engine's integration tests: fixture paths and readers, comparisons.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shipped trained model.
pub fn shakespeare_dir() -> PathBuf {
    repo_root().join("assets/models/shakespeare-moe")
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// A tensor of a safetensors file as (shape, f32 values); I32/I64 are widened.
pub fn st_tensor(path: &std::path::Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let data = t.data();
    let vals = match t.dtype() {
        safetensors::Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::I32 => data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        safetensors::Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        d => panic!("{name}: unexpected dtype {d:?}"),
    };
    (t.shape().to_vec(), vals)
}

pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Asserts `got` (rows of `vocab`) matches `want` within `tol` and with equal argmax per row
/// (unless the reference's own top two are closer than 1e-5: a tie within float noise).
pub fn assert_logits_close(what: &str, got: &[f32], want: &[f32], vocab: usize, tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    eprintln!("{what}: max |Δ| = {:.3e}", max_abs_diff(got, want));
    for (row, (g, w)) in got
        .chunks_exact(vocab)
        .zip(want.chunks_exact(vocab))
        .enumerate()
    {
        let d = max_abs_diff(g, w);
        assert!(d <= tol, "{what}: position {row}: max |Δ| = {d} > {tol}");
        let (ag, aw) = (argmax(g), argmax(w));
        assert!(
            ag == aw || (w[aw] - w[ag]).abs() < 1e-5,
            "{what}: position {row}: argmax {ag} vs reference {aw}"
        );
    }
}
