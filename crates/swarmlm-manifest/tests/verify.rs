//! Verifying folders: every per-file outcome, RELEASE md5 lists, and the verification record.

use std::path::Path;

use sha2::Digest as _;
use swarmlm_manifest::{
    manifest_from_dir, record_matches, verify_dir, FileEntry, FileStatus, HashAlgorithm, Manifest,
    ManifestMeta, ModelFormat, Record, TorrentFacts, VerifyOptions,
};

const MAGNET: &str = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=m";

fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("config.json", b"{\"model_type\": \"mixtral\"}".to_vec()),
        (
            "model-00001-of-00002.safetensors",
            (0..3_000_000u32).map(|i| (i % 253) as u8).collect(),
        ),
        (
            "sub/model-00002-of-00002.safetensors",
            (0..1_500_000u32).map(|i| (i % 241) as u8).collect(),
        ),
    ]
}

fn write_folder(dir: &Path) -> Manifest {
    let mut entries = Vec::new();
    for (path, data) in files() {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &data).unwrap();
        entries.push(FileEntry {
            path: path.to_string(),
            size: Some(data.len() as u64),
            sha256: Some(sha2::Sha256::digest(&data).into()),
            md5: None,
        });
    }
    let total = entries.iter().map(|e| e.size.unwrap()).sum();
    let m = Manifest {
        name: "m".into(),
        description: String::new(),
        license: String::new(),
        source: String::new(),
        format: ModelFormat::HfSafetensors,
        magnet: MAGNET.into(),
        info_hash: hex::decode("0123456789abcdef0123456789abcdef01234567")
            .unwrap()
            .try_into()
            .unwrap(),
        piece_length: Some(262144),
        total_size: Some(total),
        files: entries,
    };
    m.validate().unwrap();
    m
}

fn status_of<'a>(r: &'a swarmlm_manifest::VerifyReport, path: &str) -> &'a FileStatus {
    &r.files.iter().find(|f| f.path == path).unwrap().status
}

#[test]
fn intact_folder_verifies_ok_on_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_folder(dir.path());
    let opts = VerifyOptions {
        threads: 2,
        ..Default::default()
    };
    let r = verify_dir(dir.path(), &m, &opts).unwrap();
    assert!(r.ok(), "{r:?}");
    assert!(r.files.iter().all(|f| f.status == FileStatus::Ok));
    assert_eq!(r.files[1].actual_sha256, m.files[1].sha256);
    assert_eq!(r.files[1].size, Some(3_000_000));
    assert!(r.release.is_none());
}

#[test]
fn missing_size_and_flipped_byte_are_each_reported() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_folder(dir.path());
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    // Same size, one byte flipped in the middle: only a hash can tell.
    let p = dir.path().join("model-00001-of-00002.safetensors");
    let mut data = std::fs::read(&p).unwrap();
    data[1_234_567] ^= 0x01;
    std::fs::write(&p, &data).unwrap();
    // Truncated.
    let q = dir.path().join("sub/model-00002-of-00002.safetensors");
    std::fs::write(&q, b"short").unwrap();

    let r = verify_dir(dir.path(), &m, &VerifyOptions::default()).unwrap();
    assert!(!r.ok());
    assert_eq!(status_of(&r, "config.json"), &FileStatus::Missing);
    match status_of(&r, "model-00001-of-00002.safetensors") {
        FileStatus::Hash {
            algorithm,
            expected,
            actual,
        } => {
            assert_eq!(*algorithm, HashAlgorithm::Sha256);
            assert_eq!(expected, &hex::encode(m.files[1].sha256.unwrap()));
            assert_eq!(actual, &hex::encode(sha2::Sha256::digest(&data)));
        }
        other => panic!("expected HASH, got {other:?}"),
    }
    assert_eq!(
        status_of(&r, "sub/model-00002-of-00002.safetensors"),
        &FileStatus::Size {
            expected: 1_500_000,
            actual: 5
        }
    );
    assert_eq!(r.failures().count(), 3);
    // Nothing that failed is in the record.
    let record = Record::load(dir.path()).unwrap();
    assert!(record.files.is_empty(), "{record:?}");
}

#[test]
fn record_is_written_reused_and_invalidated_by_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_folder(dir.path());
    assert!(!record_matches(dir.path(), &m), "no record yet");
    let r = verify_dir(dir.path(), &m, &VerifyOptions::default()).unwrap();
    assert!(r.ok());
    assert!(r.record_error.is_none());
    let record = Record::load(dir.path()).unwrap();
    assert_eq!(record.files.len(), 3);
    let e = &record.files["config.json"];
    assert_eq!(e.sha256, hex::encode(m.files[0].sha256.unwrap()));
    assert_eq!(e.size, m.files[0].size.unwrap());
    assert!(e.verified_at > 1_600_000_000);
    assert!(record_matches(dir.path(), &m));

    // Reuse: with trust_record nothing is re-hashed.
    let opts = VerifyOptions {
        trust_record: true,
        ..Default::default()
    };
    let r2 = verify_dir(dir.path(), &m, &opts).unwrap();
    assert!(r2.ok() && r2.files.iter().all(|f| f.from_record), "{r2:?}");

    // Touch one file's mtime (content unchanged): the record no longer vouches for it.
    let p = dir.path().join("config.json");
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    assert!(!record_matches(dir.path(), &m));
    let r3 = verify_dir(dir.path(), &m, &opts).unwrap();
    let cfg = r3.files.iter().find(|f| f.path == "config.json").unwrap();
    assert!(!cfg.from_record && cfg.status == FileStatus::Ok);
    // That verification refreshed the record.
    assert!(record_matches(dir.path(), &m));

    // A record that disagrees with the manifest vouches for nothing.
    let mut other = m.clone();
    other.files[0].sha256 = Some([7; 32]);
    assert!(!record_matches(dir.path(), &other));

    // A corrupt record is "no", not an error.
    std::fs::write(dir.path().join(".swarmlm/verified.json"), b"{nope").unwrap();
    assert!(!record_matches(dir.path(), &m));
}

#[test]
fn rotten_file_with_fresh_record_is_caught_without_trusting_record() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_folder(dir.path());
    verify_dir(dir.path(), &m, &VerifyOptions::default()).unwrap();
    let p = dir.path().join("config.json");
    let meta = std::fs::metadata(&p).unwrap();
    let mut data = std::fs::read(&p).unwrap();
    data[0] ^= 0xff;
    std::fs::write(&p, &data).unwrap();
    // Put the old mtime back: the record cannot tell, a full verify can.
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(meta.modified().unwrap())
        .unwrap();
    assert!(record_matches(dir.path(), &m));
    let r = verify_dir(dir.path(), &m, &VerifyOptions::default()).unwrap();
    assert_eq!(status_of(&r, "config.json").label(), "HASH");
    assert!(!record_matches(dir.path(), &m));
}

#[test]
fn md5_only_entries_and_release_list_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let pth: Vec<u8> = (0..2_500_000u32).map(|i| (i % 199) as u8).collect();
    let tok = b"sentencepiece".to_vec();
    std::fs::write(dir.path().join("consolidated.00.pth"), &pth).unwrap();
    std::fs::write(dir.path().join("tokenizer.model"), &tok).unwrap();
    std::fs::write(dir.path().join("params.json"), b"{}").unwrap();
    let md5_pth: [u8; 16] = md5::Md5::digest(&pth).into();
    let md5_tok: [u8; 16] = md5::Md5::digest(&tok).into();
    let release = format!(
        "mixtral-test\n\nmd5sums:\n{}  consolidated.00.pth\n{} *tokenizer.model\n",
        hex::encode(md5_pth),
        hex::encode(md5_tok)
    );
    std::fs::write(dir.path().join("RELEASE"), &release).unwrap();
    let text = format!(
        r#"name = "mixtral-test"
description = ""
license = ""
source = ""
format = "mistral-pth"
magnet = "{MAGNET}"

[[files]]
path = "RELEASE"

[[files]]
path = "consolidated.00.pth"
md5 = "{}"

[[files]]
path = "params.json"

[[files]]
path = "tokenizer.model"
"#,
        hex::encode(md5_pth)
    );
    let mut m = Manifest::from_toml_str(&text).unwrap();
    let r = verify_dir(dir.path(), &m, &VerifyOptions::default()).unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!(status_of(&r, "consolidated.00.pth"), &FileStatus::Ok);
    assert_eq!(status_of(&r, "params.json"), &FileStatus::Unpinned);
    let rel = r.release.as_ref().unwrap();
    assert_eq!(rel.len(), 2);
    assert!(rel.iter().all(|e| e.status == FileStatus::Ok));
    let pth_report = r
        .files
        .iter()
        .find(|f| f.path == "consolidated.00.pth")
        .unwrap();
    assert_eq!(pth_report.actual_md5, Some(md5_pth));
    assert_eq!(
        pth_report.actual_sha256,
        Some(sha2::Sha256::digest(&pth).into())
    );

    // Trust on first use: pin what was seen, and the pinned manifest verifies by SHA-256.
    assert_eq!(m.pin_unknowns(&r), 4);
    assert_eq!(
        m.total_size,
        Some((pth.len() + tok.len() + 2 + release.len()) as u64)
    );
    m.validate().unwrap();
    let again = Manifest::from_toml_str(&m.to_toml_string()).unwrap();
    assert_eq!(again, m);
    assert!(verify_dir(dir.path(), &m, &VerifyOptions::default())
        .unwrap()
        .ok());

    // Corrupt the tokenizer: the RELEASE list catches it even though the manifest pinned nothing
    // for it before (here it is pinned now, so both catch it).
    std::fs::write(dir.path().join("tokenizer.model"), b"sentencepiecE").unwrap();
    let r = verify_dir(dir.path(), &m, &VerifyOptions::default()).unwrap();
    assert!(!r.ok());
    let rel = r.release.unwrap();
    let t = rel.iter().find(|e| e.path == "tokenizer.model").unwrap();
    assert!(
        matches!(
            &t.status,
            FileStatus::Hash {
                algorithm: HashAlgorithm::Md5,
                ..
            }
        ),
        "{t:?}"
    );
}

#[test]
fn manifest_from_dir_hashes_and_checks_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let expected = write_folder(dir.path());
    let facts = TorrentFacts {
        magnet: MAGNET.into(),
        piece_length: 262144,
        files: expected
            .files
            .iter()
            .map(|f| (f.path.clone(), f.size.unwrap()))
            .collect(),
    };
    let meta = ManifestMeta {
        name: "m".into(),
        description: String::new(),
        license: String::new(),
        source: String::new(),
        format: None,
    };
    let built = manifest_from_dir(dir.path(), &meta, &facts).unwrap();
    assert_eq!(built, expected);

    let mut wrong = facts.clone();
    wrong.files[0].1 += 1;
    let err = manifest_from_dir(dir.path(), &meta, &wrong).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn verify_refuses_a_missing_folder() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_folder(dir.path());
    let err = verify_dir(&dir.path().join("nope"), &m, &VerifyOptions::default()).unwrap_err();
    assert!(err.to_string().contains("nope"));
}
