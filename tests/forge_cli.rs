//! `swarmlm forge --format gguf`: one GGUF file instead of a folder, with `--json` naming what
//! was written; shapes llama.cpp cannot take are usage errors (exit 2) before anything is
//! written, and an existing file is never replaced (exit 1). The file's contents are checked
//! tensor by tensor against the folder in swarmlm-forge's own tests.

use swarmlm_e2e::{output, swarmlm};

#[test]
fn gguf_format_writes_one_file_and_refuses_what_it_cannot_write() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("models/tiny.gguf");
    let (code, stdout, stderr) = output(
        swarmlm(home.path())
            .args([
                "forge", "--preset", "tiny", "--seed", "3", "--format", "gguf", "--json", "--out",
            ])
            .arg(&out),
    );
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[..8], b"GGUF\x03\0\0\0");
    assert_eq!(report["format"], "gguf");
    assert_eq!(report["total_bytes"], bytes.len() as u64);
    assert_eq!(report["tensor_count"], 23);
    assert_eq!(report["config"]["num_hidden_layers"], 2);
    let left: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().collect();
    assert_eq!(left.len(), 1, "no .partial file left behind");

    // Written again: refused, the file untouched.
    let (code, _, stderr) = output(
        swarmlm(home.path())
            .args([
                "forge", "--preset", "tiny", "--seed", "4", "--format", "gguf", "--out",
            ])
            .arg(&out),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("refusing to replace") && stderr.contains("tiny.gguf"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), bytes);

    // A trimmed vocabulary has no SentencePiece model to convert: a usage error, nothing written.
    let small = home.path().join("v1000.gguf");
    let (code, _, stderr) = output(
        swarmlm(home.path())
            .args([
                "forge", "--preset", "tiny", "--vocab", "1000", "--format", "gguf", "--out",
            ])
            .arg(&small),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("vocab_size") && stderr.contains("32000"),
        "{stderr}"
    );
    assert!(!small.exists());
}
