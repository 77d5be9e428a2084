//! End-to-end: `swarmlm fetch NAME` falls back to the catalogue compiled into the binary, and a
//! manifest that leaves sizes and SHA-256 open (Mistral's magnet-only releases) is completed in
//! the user's copy by the first verified fetch (trust on first use).

#[path = "swarm_support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(90);

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn fetch_by_catalogue_name_from_any_folder() {
    let tmp = scratch();
    let home = tmp.path().join("home");
    // A seeder holding the bundled model: the files magnets/shakespeare-moe.toml lists.
    let published = std::fs::read_to_string(repo().join("magnets/shakespeare-moe.toml")).unwrap();
    let seed_dir = tmp.path().join("seed/shakespeare-moe");
    std::fs::create_dir_all(seed_dir.join(".swarmlm")).unwrap();
    std::fs::write(seed_dir.join(".swarmlm/manifest.toml"), &published).unwrap();
    let src = repo().join("assets/models/shakespeare-moe");
    let paths: Vec<&str> = published
        .lines()
        .filter_map(|l| l.strip_prefix("path = \""))
        .map(|p| p.trim_end_matches('"'))
        .collect();
    for p in &paths {
        std::fs::copy(src.join(p), seed_dir.join(p)).unwrap();
    }
    let seeder = start_seeder(&home, &seed_dir, &[]);

    // An empty working folder: no magnets/ to find, only the built-in catalogue.
    let cwd = tmp.path().join("elsewhere");
    std::fs::create_dir(&cwd).unwrap();
    let mut cmd = swarmlm_e2e::swarmlm(&home);
    cmd.current_dir(&cwd)
        .args([
            "fetch",
            "shakespeare-moe",
            "--no-dht",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--json", "--stall-timeout", "20s", "--peer"])
        .arg(seeder.listen.to_string());
    let o = run_with_timeout(cmd, T);
    assert!(o.status.success(), "{}", text(&o));
    let out = home.join("models/shakespeare-moe");
    for p in &paths {
        assert_eq!(
            std::fs::read(out.join(p)).unwrap(),
            std::fs::read(src.join(p)).unwrap(),
            "{p}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join(".swarmlm/manifest.toml")).unwrap(),
        published
    );
    assert!(seeder.stop());
}

/// The manifest text with every size, SHA-256, total_size and piece_length removed.
fn unpinned(text: &str) -> String {
    text.lines()
        .filter(|l| {
            !l.starts_with("size = ")
                && !l.starts_with("sha256 = ")
                && !l.starts_with("total_size = ")
                && !l.starts_with("piece_length = ")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn first_verified_fetch_pins_what_the_manifest_left_open() {
    let tmp = scratch();
    let home = tmp.path().join("home");
    let model = make_model(tmp.path(), "tofu", small_files(300, 5), 32 * 1024, None);
    let pinned_text = std::fs::read_to_string(&model.manifest_path).unwrap();
    let open_text = unpinned(&pinned_text);
    assert!(!open_text.contains("sha256"), "{open_text}");
    let open_manifest = tmp.path().join("open.toml");
    std::fs::write(&open_manifest, &open_text).unwrap();
    let seeder = start_seeder(&home, &model.dir, &[]);

    let out = tmp.path().join("out");
    let src = open_manifest.display().to_string();
    let o = run_with_timeout(fetch_cmd(&home, &src, &out, &[seeder.listen]), T);
    assert!(o.status.success(), "{}", text(&o));
    assert_identical(&model, &out);
    // The user's copy now pins exactly what the publisher could have: same sizes, same SHA-256,
    // total size and piece length; the published (open) manifest is untouched.
    let user_copy = std::fs::read_to_string(out.join(".swarmlm/manifest.toml")).unwrap();
    assert_eq!(user_copy, pinned_text);
    assert_eq!(std::fs::read_to_string(&open_manifest).unwrap(), open_text);

    // A second fetch with the open manifest finds everything in place: nothing transferred.
    let o = run_with_timeout(fetch_cmd(&home, &src, &out, &[seeder.listen]), T);
    assert!(o.status.success(), "{}", text(&o));
    let done = json_events(&o).into_iter().last().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["downloaded_bytes"], 0, "{done}");
    assert!(seeder.stop());

    // From now on the folder is held to the pinned hashes.
    let shard = out.join("model-00001-of-00002.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&shard, &bytes).unwrap();
    let v = swarmlm_e2e::swarmlm(&home)
        .arg("verify")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(
        v.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
}
