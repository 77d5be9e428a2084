//! Peers and inputs that lie: a seeder serving corrupt bytes (aria2c told not to verify what
//! it serves), a manifest that disagrees with the swarm, malformed magnets, torrents and
//! manifests. Every case must end in a clear error or a correct result, never a panic, a hang
//! or a file marked verified that is not.

#[path = "swarm_support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

/// A copy of the model's folder for aria2c with every byte of every file flipped.
fn corrupt_copy(model: &Model, root: &Path) -> std::path::PathBuf {
    // aria2c puts a multi-file torrent under <dir>/<name>/.
    let dir = root.join("corrupt");
    for (p, d) in &model.files {
        let full = dir.join(&model.name).join(p);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, d.iter().map(|b| !b).collect::<Vec<u8>>()).unwrap();
    }
    dir
}

fn no_panic(out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "panic: {}", text(out));
}

#[test]
fn honest_and_corrupting_seeder_gives_verified_result_and_names_the_bad_peer() {
    let tmp = scratch();
    let home = tmp.path().join("home");
    let model = make_model(tmp.path(), "adv-a", small_files(3000, 21), 64 * 1024, None);
    // The honest seeder is throttled (3.6 MB at 1 MB/s) and the corrupt peer unchokes at once
    // and answers instantly, so the leecher is sure to take pieces from the corrupt one.
    let honest = start_seeder(&home, &model.dir, &["--upload-limit", "1M"]);
    let bad = CorruptPeer::start(&model);

    let out = tmp.path().join("out");
    let o = run_fetch(
        &home,
        &model.manifest_arg(),
        &out,
        &[bad.addr, honest.listen],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(bad.served.load(std::sync::atomic::Ordering::SeqCst) > 0);
    assert_identical(&model, &out);
    assert_recorded(&model, &out);
    let done = json_events(&o).pop().unwrap();
    assert_eq!(done["event"], "done", "{done}");
    let rejected = done["rejected_peers"].as_array().unwrap();
    assert!(
        rejected.iter().any(|p| p["addr"] == bad.addr.to_string()
            && !p["pieces_rejected"].as_array().unwrap().is_empty()),
        "the corrupting peer {} is reported: {done}",
        bad.addr
    );
    assert!(
        !rejected
            .iter()
            .any(|p| p["addr"] == honest.listen.to_string()),
        "the honest peer is not blamed: {done}"
    );
    assert!(honest.stop());
}

#[test]
fn only_a_corrupting_seeder_fails_within_the_stall_timeout_and_marks_nothing_verified() {
    let tmp = scratch();
    let home = tmp.path().join("home");
    let model = make_model(tmp.path(), "adv-b", small_files(600, 31), 64 * 1024, None);
    let bad_dir = corrupt_copy(&model, tmp.path());
    let bad_port = free_port();
    let mut bad = start_aria2_seeder(&model.torrent_path, &bad_dir, bad_port, true);
    wait_listening(bad_port, Duration::from_secs(20));

    let out = tmp.path().join("out");
    let bad_addr: std::net::SocketAddr = format!("127.0.0.1:{bad_port}").parse().unwrap();
    let mut cmd = fetch_cmd(&home, &model.torrent_arg(), &out, &[bad_addr]);
    cmd.args(["--stall-timeout", "8s"]);
    let started = Instant::now();
    let o = run_with_timeout(cmd, FETCH_TIMEOUT);
    let took = started.elapsed();
    let _ = bad.kill();
    let _ = bad.wait();
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(took < Duration::from_secs(40), "took {took:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("stalled"), "{err}");
    assert!(err.contains(&bad_addr.to_string()), "names the peer: {err}");
    assert!(err.contains("rejected"), "{err}");
    for (p, _) in &model.files {
        assert!(!out.join(p).exists(), "{p} must not be placed");
    }
    let record = std::fs::read_to_string(out.join(".swarmlm/verified.json")).unwrap_or_default();
    for (p, _) in &model.files {
        assert!(
            !record.contains(p.as_str()),
            "{p} must not be recorded: {record}"
        );
    }
}

#[test]
fn manifest_disagreeing_with_the_swarm_fails_and_leaves_the_file_partial() {
    let tmp = scratch();
    let home = tmp.path().join("home");
    let model = make_model(tmp.path(), "adv-c", small_files(300, 41), 64 * 1024, None);
    let seeder = start_seeder(&home, &model.dir, &[]);
    let victim = "model-00002-of-00002.safetensors";
    let lying = tmp.path().join("lying.toml");
    std::fs::write(
        &lying,
        manifest_text(
            &model.name,
            &model.magnet,
            model.piece_length,
            &model.files,
            Some((victim, [7u8; 32])),
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = run_fetch(&home, &lying.display().to_string(), &out, &[seeder.listen]);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(victim) && err.contains("does not match"),
        "{err}"
    );
    assert!(err.contains(&hex::encode([7u8; 32])), "{err}");
    assert!(
        !out.join(victim).exists(),
        "the mismatching file was placed"
    );
    assert!(
        out.join(".swarmlm/partial").join(victim).exists(),
        "kept partial"
    );
    let record = std::fs::read_to_string(out.join(".swarmlm/verified.json")).unwrap_or_default();
    assert!(!record.contains(victim), "{record}");
    assert!(seeder.stop());
}

#[test]
fn existing_different_file_is_never_overwritten() {
    let tmp = scratch();
    let home = tmp.path().join("home");
    let model = make_model(tmp.path(), "adv-d", small_files(100, 51), 64 * 1024, None);
    let seeder = start_seeder(&home, &model.dir, &[]);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("config.json"), b"my own config").unwrap();
    let o = run_fetch(&home, &model.manifest_arg(), &out, &[seeder.listen]);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        b"my own config"
    );
    assert!(seeder.stop());
}

#[test]
fn magnet_with_no_reachable_peer_fails_within_the_timeout() {
    let tmp = scratch();
    let home = tmp.path().join("home");
    let closed = free_port();
    let peer: std::net::SocketAddr = format!("127.0.0.1:{closed}").parse().unwrap();
    let mut cmd = fetch_cmd(
        &home,
        "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=nobody",
        &tmp.path().join("out"),
        &[peer],
    );
    cmd.args(["--stall-timeout", "3s"]);
    let started = Instant::now();
    let o = run_with_timeout(cmd, FETCH_TIMEOUT);
    no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(started.elapsed() < Duration::from_secs(30));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no metadata"), "{err}");
    assert!(err.contains(&peer.to_string()), "{err}");
}

#[test]
fn bad_inputs_give_clear_errors_without_panics() {
    let tmp = scratch();
    let home = tmp.path().join("home");
    let out = tmp.path().join("out");
    let files = small_files(1, 61);

    let mut cases: Vec<(String, &str)> = vec![
        ("magnet:?xt=urn:btih:zzzz".into(), "not a valid magnet"),
        ("magnet:?dn=no-topic".into(), "not a valid magnet"),
        ("magnet:".into(), "not a valid magnet"),
        ("no-such-model-anywhere".into(), "no manifest named"),
    ];
    let garbage = tmp.path().join("garbage.torrent");
    std::fs::write(&garbage, pseudo_random(3000, 5)).unwrap();
    cases.push((garbage.display().to_string(), "not a valid .torrent"));
    let (good, _) = build_torrent("t", &files, 16 * 1024, None);
    let truncated = tmp.path().join("truncated.torrent");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    cases.push((truncated.display().to_string(), "not a valid .torrent"));
    let evil_files = vec![("../../evil.safetensors".to_string(), pseudo_random(100, 1))];
    let (evil, _) = build_torrent("evil", &evil_files, 16 * 1024, None);
    let evil_path = tmp.path().join("evil.torrent");
    std::fs::write(&evil_path, evil).unwrap();
    cases.push((evil_path.display().to_string(), "not a valid .torrent"));

    let magnet = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567";
    let hostile = [
        (
            "traversal.toml",
            format!(
                "name = \"x\"\nformat = \"hf-safetensors\"\nmagnet = \"{magnet}\"\n\n[[files]]\npath = \"../../etc/passwd\"\n"
            ),
        ),
        (
            "absolute.toml",
            format!(
                "name = \"x\"\nformat = \"hf-safetensors\"\nmagnet = \"{magnet}\"\n\n[[files]]\npath = \"/etc/passwd\"\n"
            ),
        ),
        (
            "badhex.toml",
            format!(
                "name = \"x\"\nformat = \"hf-safetensors\"\nmagnet = \"{magnet}\"\n\n[[files]]\npath = \"a\"\nsha256 = \"xyz\"\n"
            ),
        ),
        ("notoml.toml", "this is = = not toml [".to_string()),
        (
            "badname.toml",
            format!(
                "name = \"../up\"\nformat = \"hf-safetensors\"\nmagnet = \"{magnet}\"\n\n[[files]]\npath = \"a\"\n"
            ),
        ),
    ];
    for (name, body) in &hostile {
        let p = tmp.path().join(name);
        std::fs::write(&p, body).unwrap();
        cases.push((p.display().to_string(), "manifest"));
    }

    for (input, expect) in &cases {
        let started = Instant::now();
        let o = run_fetch(&home, input, &out, &[]);
        no_panic(&o);
        assert_eq!(o.status.code(), Some(1), "{input}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.starts_with("error: "), "{input}: {err}");
        assert!(
            err.contains(expect),
            "{input}: expected {expect:?} in {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{input} took too long"
        );
    }
    // Nothing was written for any of them.
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().count() == 0);

    // Bad flag values are usage errors (exit 2).
    let o = run_with_timeout(
        {
            let mut c = swarmlm(&home);
            c.args(["fetch", magnet, "--stall-timeout", "soon"]);
            c
        },
        FETCH_TIMEOUT,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn seed_refuses_a_folder_whose_file_rotted_on_disk() {
    // librqbit serves whatever is on disk (trap 14) and trusts its fast-resume record (trap
    // 17): `seed` must check the files itself and refuse, naming the file.
    let tmp = scratch();
    let home = tmp.path().join("home");
    let victim = "model-00002-of-00002.safetensors";
    let seed_once = |dir: &Path, extra: &[&str]| {
        let mut cmd = swarmlm(&home);
        cmd.arg("seed")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--no-dht"])
            .args(extra);
        run_with_timeout(cmd, FETCH_TIMEOUT)
    };
    let refused = |o: &std::process::Output| {
        no_panic(o);
        assert_eq!(o.status.code(), Some(1), "{}", text(o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(victim) && err.contains("HASH"), "{err}");
    };
    for (name, keep_mtime) in [("adv-rot", false), ("adv-bitflip", true)] {
        let model = make_model(tmp.path(), name, small_files(50, 91), 64 * 1024, None);
        // A first seed verifies in full and writes the verification record.
        let seeder = start_seeder(&home, &model.dir, &[]);
        assert!(seeder.stop());
        assert!(model.dir.join(".swarmlm/verified.json").is_file());

        let path = model.dir.join(victim);
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[1000] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        if keep_mtime {
            // A bit flip under the file system: size and mtime still match the record, so
            // `--recheck` is how a user forces the full pass that finds it.
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
            refused(&seed_once(&model.dir, &["--recheck"]));
        } else {
            // The mtime changed: the record no longer vouches for the file, it is hashed.
            refused(&seed_once(&model.dir, &[]));
        }
    }
}
