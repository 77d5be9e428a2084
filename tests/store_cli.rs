//! End-to-end: `swarmlm list`, `where` and `rm` on a private store holding a complete, a partial,
//! a changed-after-verification and a truncated model; and the catalogue's Mixtral 8x7B md5 checked
//! against the real `tokenizer.model` through `swarmlm verify`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use swarmlm_e2e::{swarmlm, write_store_model};

const MAGNET: &str = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model(root: &Path, name: &str, files: &[(&str, &[u8])], partial: &[(&str, &[u8])]) -> PathBuf {
    write_store_model(root, name, MAGNET, files, partial)
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.stdin(Stdio::null()).output().expect("run swarmlm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn list_json(home: &Path) -> serde_json::Value {
    let (code, out, err) = run(swarmlm(home).args(["list", "--json"]));
    assert_eq!(code, 0, "list failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("list --json: {e}: {out}"))
}

fn entry<'a>(list: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    list["store"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {list}"))
}

#[test]
fn list_where_rm_on_complete_partial_and_corrupt_models() {
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join("models");
    let config: &[u8] = b"{\"model_type\":\"mixtral\"}";
    let weights = vec![7u8; 3000];

    let good = model(
        &root,
        "good",
        &[("config.json", config), ("model.safetensors", &weights)],
        &[],
    );
    // Half of the bytes in place, the other file still in the partial area, 1000 of 3000 written.
    let half = model(
        &root,
        "half",
        &[("config.json", &[1u8; 1000])],
        &[("model.safetensors", &[2u8; 2000])],
    );
    let changed = model(
        &root,
        "changed",
        &[("config.json", config), ("model.safetensors", &weights)],
        &[],
    );
    let short = model(
        &root,
        "short",
        &[("config.json", config), ("model.safetensors", &weights)],
        &[],
    );
    std::fs::create_dir_all(root.join("unmanaged")).unwrap();
    std::fs::write(root.join("unmanaged/model.safetensors"), b"x").unwrap();

    for dir in [&good, &changed, &short] {
        let (code, _, err) = run(swarmlm(home.path()).arg("verify").arg(dir));
        assert_eq!(code, 0, "verify {}: {err}", dir.display());
    }
    // After verification: one byte flipped (new mtime), and one file cut short.
    let mut flipped = weights.clone();
    flipped[1234] ^= 0x01;
    std::fs::write(changed.join("model.safetensors"), &flipped).unwrap();
    std::fs::write(short.join("model.safetensors"), &weights[..2999]).unwrap();

    let list = list_json(home.path());
    assert_eq!(list["store_root"], root.to_str().unwrap());
    let names: Vec<&str> = list["store"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["changed", "good", "half", "short", "unmanaged"]);

    let g = entry(&list, "good");
    assert_eq!(g["state"], "verified");
    assert_eq!(g["complete"], true);
    assert_eq!(g["percent"], 100.0);
    assert_eq!(g["size"], (config.len() + weights.len()) as u64);
    assert_eq!(g["format"], "hf-safetensors");
    assert_eq!(g["info_hash"], "0123456789abcdef0123456789abcdef01234567");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = g["verified_at"].as_u64().expect("verified_at");
    assert!(at <= now && now - at < 600, "verified_at {at}, now {now}");

    let h = entry(&list, "half");
    assert_eq!(h["state"], "partial");
    assert_eq!(h["complete"], false);
    assert_eq!(h["verified_at"], serde_json::Value::Null);
    // 1000 bytes in place + 2000 written in the partial area, of 3000: the share of bytes on
    // disk (capped below 100 while anything is partial).
    let p = h["percent"].as_f64().unwrap();
    assert!(p > 99.0 && p < 100.0, "{p}");
    std::fs::remove_file(half.join(".swarmlm/partial/model.safetensors")).unwrap();
    let p = entry(&list_json(home.path()), "half")["percent"]
        .as_f64()
        .unwrap();
    assert!((p - 100.0 / 3.0).abs() < 0.01, "{p}");

    let c = entry(&list, "changed");
    assert_eq!(c["state"], "unverified");
    assert_eq!(c["complete"], true);
    assert_eq!(c["verified_at"], serde_json::Value::Null);
    let s = entry(&list, "short");
    assert_eq!(s["state"], "corrupt");
    assert_eq!(s["complete"], false);
    assert!(s["problems"][0]
        .as_str()
        .unwrap()
        .contains("model.safetensors: 2999 bytes"));
    assert_eq!(entry(&list, "unmanaged")["state"], "unmanaged");
    // The full check agrees with list's cheap one.
    let (code, out, _) = run(swarmlm(home.path()).arg("verify").arg(&changed));
    assert_eq!(code, 1);
    assert!(out.contains("HASH"), "{out}");

    // Text output names every entry and its state.
    let (code, out, _) = run(swarmlm(home.path()).arg("list"));
    assert_eq!(code, 0);
    assert!(out.contains("mixtral-8x7b-32kseqlen"), "{out}");
    for needle in [
        "good",
        "verified 20",
        "partial 33.3%",
        "unverified",
        "corrupt",
        "unmanaged",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }

    // where: the folder, or exit 1.
    let (code, out, _) = run(swarmlm(home.path()).args(["where", "good"]));
    assert_eq!(code, 0);
    assert_eq!(out.trim_end(), good.to_str().unwrap());
    let (code, out, err) = run(swarmlm(home.path()).args(["where", "mixtral-8x7b-32kseqlen"]));
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.contains("swarmlm fetch mixtral-8x7b-32kseqlen"),
        "{err}"
    );
    let (code, _, _) = run(swarmlm(home.path()).args(["where", "../models"]));
    assert_eq!(code, 1);

    // rm: refuses without --yes off a terminal, deletes with it, never outside the store.
    let (code, _, err) = run(swarmlm(home.path()).args(["rm", "short"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--yes"), "{err}");
    assert!(short.is_dir());
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious"), b"keep").unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("linked")).unwrap();
    for bad in ["..", "../models", "/tmp", ".swarmlm", "absent"] {
        let (code, _, _) = run(swarmlm(home.path()).args(["rm", bad, "--yes"]));
        assert_eq!(code, 1, "rm {bad:?}");
    }
    let (code, _, err) = run(swarmlm(home.path()).args(["rm", "linked", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert!(outside.path().join("precious").is_file());
    let (code, _, err) = run(swarmlm(home.path()).args(["rm", "short", "--yes"]));
    assert_eq!(code, 0, "{err}");
    assert!(!short.exists());
    assert!(good.is_dir() && half.is_dir() && changed.is_dir());
    let names: Vec<String> = list_json(home.path())["store"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["changed", "good", "half", "unmanaged"]);
}

#[test]
fn catalogue_lists_the_real_releases() {
    let home = tempfile::tempdir().unwrap();
    let list = list_json(home.path());
    let hashes: Vec<(&str, &str)> = list["catalogue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["info_hash"].as_str().unwrap(),
            )
        })
        .collect();
    for pinned in [
        (
            "mistral-7B-v0.1",
            "208b101a0f51514ecf285885a8b0f6fb1a1e4d7d",
        ),
        (
            "mixtral-8x7b-32kseqlen",
            "5546272da9065eddeb6fcd7ffddeef5b75be79a7",
        ),
        ("mixtral-8x22b", "9238b09245d0d8cd915be09927769d5f7584c1c9"),
    ] {
        assert!(hashes.contains(&pinned), "{pinned:?} not in {hashes:?}");
    }
    assert!(list["store"].as_array().unwrap().is_empty());
    // Mixtral 8x22B ships one consolidated.safetensors with Mistral's tensor names: its own format.
    let formats: Vec<(&str, &str)> = list["catalogue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["format"].as_str().unwrap()))
        .collect();
    assert!(
        formats.contains(&("mixtral-8x22b", "mistral-safetensors")),
        "{formats:?}"
    );
    assert!(formats.contains(&("mixtral-8x7b-32kseqlen", "mistral-pth")));
    assert!(formats.contains(&("shakespeare-moe", "hf-safetensors")));
}

/// The catalogue's Mixtral 8x7B manifest cut down to its `tokenizer.model` entry (the other
/// files are 87 GiB), exactly as written in magnets/.
fn tokenizer_only_manifest() -> String {
    let text = std::fs::read_to_string(repo().join("magnets/mixtral-8x7b-32kseqlen.toml")).unwrap();
    let mut parts = text.split("\n[[files]]\n");
    let head = parts.next().unwrap();
    let tok = parts
        .find(|p| p.starts_with("path = \"tokenizer.model\""))
        .expect("tokenizer.model entry");
    assert!(
        tok.contains("md5 = \"37974873eb68a7ab30c4912fc36264ae\""),
        "{tok}"
    );
    format!("{head}\n[[files]]\n{tok}")
}

#[test]
fn real_tokenizer_verifies_against_the_mixtral_release_md5() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("mixtral-8x7b-32kseqlen");
    std::fs::create_dir(&dir).unwrap();
    let real = std::fs::read(repo().join("assets/tokenizers/mistral-v1/tokenizer.model")).unwrap();
    std::fs::write(dir.join("tokenizer.model"), &real).unwrap();
    let manifest = work.path().join("m.toml");
    std::fs::write(&manifest, tokenizer_only_manifest()).unwrap();

    let verify = |home: &Path| {
        let (code, out, err) = run(swarmlm(home)
            .arg("verify")
            .arg(&dir)
            .arg("--manifest")
            .arg(&manifest)
            .arg("--json"));
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
        (code, v)
    };
    let (code, v) = verify(work.path());
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["files"][0]["path"], "tokenizer.model");
    assert_eq!(v["files"][0]["status"], "OK");
    assert_eq!(
        v["files"][0]["actual_md5"],
        "37974873eb68a7ab30c4912fc36264ae"
    );

    let mut bad = real.clone();
    bad[real.len() / 2] ^= 0x20;
    std::fs::write(dir.join("tokenizer.model"), &bad).unwrap();
    let (code, v) = verify(work.path());
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["files"][0]["status"], "HASH");
}
