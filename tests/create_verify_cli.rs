//! `swarmlm create` and `swarmlm verify` as a user drives them: files written, magnet printed,
//! nothing overwritten, per-file statuses and exit codes, JSON output.

use std::path::Path;

use sha2::Digest as _;
use swarmlm_e2e::{output_ok, swarmlm};

fn model(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("config.json"), b"{\"model_type\":\"mixtral\"}\n").unwrap();
    let weights: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("model-00001-of-00001.safetensors"), weights).unwrap();
    std::fs::write(dir.join("sub/tokenizer.json"), b"{}").unwrap();
}

#[test]
fn create_then_verify_round_trip() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("tiny-model");
    model(&dir);

    // Defaults: <name>.torrent and <name>.toml in the current directory; magnet on stdout.
    let out = output_ok(swarmlm(home.path()).current_dir(work.path()).args([
        "create",
        "tiny-model",
        "--name",
        "tiny",
        "--piece-size",
        "16384",
    ]));
    let magnet = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(magnet.starts_with("magnet:?xt=urn:btih:"), "{magnet}");
    assert!(magnet.ends_with("&dn=tiny"), "{magnet}");
    let torrent = std::fs::read(work.path().join("tiny.torrent")).unwrap();
    let info_hash = &magnet["magnet:?xt=urn:btih:".len()..][..40];
    // The info hash is SHA-1 of the bencoded info dictionary: find it in the file and check.
    let start = torrent.windows(7).position(|w| w == b"4:infod").unwrap() + 6;
    let info = &torrent[start..torrent.len() - 1];
    assert_eq!(hex::encode(sha1::Sha1::digest(info)), info_hash);
    let manifest = std::fs::read_to_string(work.path().join("tiny.toml")).unwrap();
    assert!(
        manifest.contains(&format!("magnet = \"{magnet}\"")),
        "{manifest}"
    );
    assert!(manifest.contains("path = \"sub/tokenizer.json\""));
    assert!(manifest.contains("piece_length = 16384"));

    // Running again with the same result is fine; JSON mode reports the same hash.
    let out = output_ok(swarmlm(home.path()).current_dir(work.path()).args([
        "create",
        "tiny-model",
        "--name",
        "tiny",
        "--piece-size",
        "16384",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["info_hash"], info_hash);
    assert_eq!(v["files"], 3);
    assert_eq!(v["total_size"], 300_000 + 25 + 2);

    // A different torrent would replace tiny.torrent: refused, and nothing is written.
    let out = swarmlm(home.path())
        .current_dir(work.path())
        .args(["create", "tiny-model", "--name", "tiny"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read(work.path().join("tiny.torrent")).unwrap(),
        torrent
    );

    // Verify: all OK, exit 0, record written.
    let toml = work.path().join("tiny.toml");
    let out = output_ok(
        swarmlm(home.path())
            .arg("verify")
            .arg(&dir)
            .arg("--manifest")
            .arg(&toml),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("OK")).count(),
        3,
        "{text}"
    );
    assert!(dir.join(".swarmlm/verified.json").is_file());

    // Flip a byte, delete a file: exit 1, statuses in JSON.
    let w = dir.join("model-00001-of-00001.safetensors");
    let mut data = std::fs::read(&w).unwrap();
    data[100_000] ^= 0x80;
    std::fs::write(&w, &data).unwrap();
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let out = swarmlm(home.path())
        .arg("verify")
        .arg(&dir)
        .arg("--manifest")
        .arg(&toml)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let status = |p: &str| {
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == p)
            .unwrap()
            .clone()
    };
    assert_eq!(status("config.json")["status"], "MISSING");
    let bad = status("model-00001-of-00001.safetensors");
    assert_eq!(bad["status"], "HASH");
    assert_eq!(
        bad["actual_sha256"],
        hex::encode(sha2::Sha256::digest(&data))
    );
    assert_ne!(bad["expected_sha256"], bad["actual_sha256"]);
    assert_eq!(status("sub/tokenizer.json")["status"], "OK");
}

#[test]
fn verify_without_a_manifest_says_how_to_give_one() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    model(work.path());
    let out = swarmlm(home.path())
        .arg("verify")
        .arg(work.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--manifest"), "{err}");
}

#[test]
fn create_refuses_a_partial_download_naming_it() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    model(work.path());
    std::fs::write(work.path().join("model-00002.safetensors.part"), b"half").unwrap();
    let out = swarmlm(home.path())
        .current_dir(work.path())
        .arg("create")
        .arg(work.path())
        .args(["--name", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model-00002.safetensors.part"), "{err}");
    assert!(!work.path().join("x.torrent").exists());
}
