//! Real transfers between `swarmlm` processes over TCP on 127.0.0.1: fetch by magnet, manifest
//! and .torrent; two leechers at once with one of them seeding on; resume after `kill -9`.

#[path = "swarm_support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn fetch_by_magnet_manifest_and_torrent_gives_identical_verified_files() {
    let tmp = scratch();
    let home = tmp.path().join("home");
    let model = make_model(tmp.path(), "tiny-a", small_files(400, 1), 64 * 1024, None);
    let seeder = start_seeder(&home, &model.dir, &[]);
    assert!(
        seeder.magnet.contains(&model.info_hash),
        "{}",
        seeder.magnet
    );

    let sources = [
        ("magnet", seeder.magnet.clone()),
        ("manifest", model.manifest_arg()),
        ("torrent", model.torrent_arg()),
    ];
    for (label, source) in sources {
        let out = tmp.path().join(format!("out-{label}"));
        let o = run_fetch(&home, &source, &out, &[seeder.listen]);
        assert!(o.status.success(), "fetch by {label}: {}", text(&o));
        assert_identical(&model, &out);
        assert_recorded(&model, &out);
        assert!(
            !out.join(".swarmlm/partial").exists(),
            "{label}: partial area left behind"
        );
        let stored = std::fs::read_to_string(out.join(".swarmlm/manifest.toml")).unwrap();
        assert!(
            stored.contains(&model.info_hash),
            "{label}: stored manifest"
        );
        let events = json_events(&o);
        let done = events.last().expect("events");
        assert_eq!(done["event"], "done", "{label}: last event");
        assert_eq!(done["info_hash"], model.info_hash.as_str());
        assert_eq!(done["total_bytes"], model.total_len());
        assert!(done["downloaded_bytes"].as_u64().unwrap() >= model.total_len());
        let verified = events
            .iter()
            .filter(|e| e["event"] == "file_verified")
            .count();
        assert_eq!(verified, model.files.len(), "{label}: file_verified events");
        assert!(events.iter().any(|e| e["event"] == "metadata"));
    }

    // A bare magnet's manifest is derived on first use and pins every SHA-256.
    let derived =
        std::fs::read_to_string(tmp.path().join("out-magnet/.swarmlm/manifest.toml")).unwrap();
    assert_eq!(derived.matches("sha256 = ").count(), model.files.len());

    // Fetching again into a complete folder downloads nothing and keeps the files.
    let out = tmp.path().join("out-manifest");
    let o = run_fetch(&home, &model.manifest_arg(), &out, &[seeder.listen]);
    assert!(o.status.success(), "refetch: {}", text(&o));
    let events = json_events(&o);
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "file_skipped")
            .count(),
        model.files.len()
    );
    assert_eq!(events.last().unwrap()["downloaded_bytes"], 0);
    assert_identical(&model, &out);
    assert!(seeder.stop(), "seeder exits cleanly on SIGTERM");
}

#[test]
fn two_leechers_at_once_and_a_finished_leecher_seeds_a_third() {
    let tmp = scratch();
    let home = tmp.path().join("home");
    let model = make_model(tmp.path(), "tiny-b", small_files(1500, 7), 64 * 1024, None);
    let seeder = start_seeder(&home, &model.dir, &[]);

    // Leecher 1 keeps seeding after its download (`fetch --seed`); leecher 2 just fetches.
    let out1 = tmp.path().join("leecher1");
    let mut cmd1 = fetch_cmd(&home, &model.magnet, &out1, &[seeder.listen]);
    cmd1.arg("--seed");
    let out2 = tmp.path().join("leecher2");
    let cmd2 = fetch_cmd(&home, &model.manifest_arg(), &out2, &[seeder.listen]);
    let second = std::thread::spawn(move || run_with_timeout(cmd2, FETCH_TIMEOUT));
    let leecher1 = spawn_seeding(cmd1);
    let o2 = second.join().unwrap();
    assert!(o2.status.success(), "leecher 2: {}", text(&o2));
    assert_identical(&model, &out1);
    assert_identical(&model, &out2);
    assert_recorded(&model, &out1);
    assert!(seeder.stop());

    // The original seeder is gone: the third fetch can only get the bytes from leecher 1.
    let out3 = tmp.path().join("leecher3");
    let o3 = run_fetch(&home, &model.torrent_arg(), &out3, &[leecher1.listen]);
    assert!(o3.status.success(), "leecher 3: {}", text(&o3));
    assert_identical(&model, &out3);
    assert!(leecher1.stop(), "fetch --seed exits cleanly on SIGTERM");
    assert!(!out1.join(".swarmlm/partial").exists());
}

#[test]
fn kill_dash_nine_part_way_then_rerun_completes_without_refetching() {
    let tmp = scratch();
    let home = tmp.path().join("home");
    // ~6 MB served at 1.5 MiB/s: the fetch is still running when it is killed.
    let model = make_model(tmp.path(), "tiny-c", small_files(5000, 11), 64 * 1024, None);
    let total = model.total_len();
    let seeder = start_seeder(&home, &model.dir, &["--upload-limit", "1536K"]);
    let out = tmp.path().join("out");

    // Whatever stops the fetch acts only after this thread has read a progress line, and the
    // transfer runs on meanwhile: a thread kept off the CPU for the ~2.6 s the rest takes kills
    // a finished fetch. Such a run proves nothing about resuming; it is set aside and the
    // first run made again (what it received is counted in the seeder's upload below).
    let mut finished_early = 0;
    let have_at_kill = loop {
        if let Some(have) = fetch_then_kill_at(&home, &model, &out, seeder.listen, total / 3) {
            break have;
        }
        finished_early += 1;
        assert!(
            finished_early < 3,
            "the fetch finished before the kill in 3 runs"
        );
        std::fs::remove_dir_all(&out).unwrap();
    };

    let o = run_fetch(&home, &model.manifest_arg(), &out, &[seeder.listen]);
    assert!(o.status.success(), "rerun: {}", text(&o));
    assert_identical(&model, &out);
    assert_recorded(&model, &out);
    let events = json_events(&o);
    let resuming = events
        .iter()
        .position(|e| e["event"] == "resuming")
        .expect("the rerun says what the killed run left");
    let first_progress = events.iter().position(|e| e["event"] == "progress");
    assert!(
        first_progress.is_none_or(|p| resuming < p),
        "resuming comes before the check"
    );
    let resuming = &events[resuming];
    // Every verified byte was written before it counted, and sits either in a file already in
    // place or as data in a partial file (whatever the kernel's write-back is doing).
    let left =
        resuming["partial_bytes"].as_u64().unwrap() + resuming["in_place_bytes"].as_u64().unwrap();
    assert!(
        (have_at_kill..=total).contains(&left),
        "{resuming}: {have_at_kill} bytes were verified before the kill"
    );
    let skipped = events
        .iter()
        .filter(|e| e["event"] == "file_skipped")
        .count();
    assert_eq!(resuming["in_place_files"], skipped);
    let done = events.last().unwrap();
    let second = done["downloaded_bytes"].as_u64().unwrap();
    assert!(
        second <= total - have_at_kill + total / 5,
        "rerun downloaded {second} bytes of {total}; {have_at_kill} were verified before the kill"
    );

    // What the seeder sent over both runs (and any run set aside above): the payload plus what
    // was in flight at the kill. It reports once a second; wait for a report that covers at
    // least what the runs received.
    let received = have_at_kill + second + finished_early * total;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut uploaded = 0;
    while uploaded < received {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(e) = seeder.events.recv_timeout(left) else {
            panic!(
                "the seeder reported {uploaded} bytes uploaded, the leechers received {received}"
            );
        };
        if e["event"] == "seed_progress" {
            uploaded = uploaded.max(e["uploaded_bytes"].as_u64().unwrap());
        }
    }
    assert!(
        uploaded <= (1 + finished_early) * total + total / 4,
        "seeder uploaded {uploaded} bytes for a {total}-byte model ({finished_early} run(s) finished early)"
    );
    assert!(seeder.stop());
}

#[test]
fn rerun_after_a_kill_between_files_says_which_files_are_in_place() {
    // The state a kill leaves when it lands right after a file was put in place and before any
    // byte of the others arrived: that file in place, the partial area there but empty.
    let tmp = scratch();
    let home = tmp.path().join("home");
    let model = make_model(tmp.path(), "tiny-d", small_files(400, 17), 64 * 1024, None);
    let seeder = start_seeder(&home, &model.dir, &[]);
    let out = tmp.path().join("out");
    let first = "model-00002-of-00002.safetensors";
    let mut cmd = fetch_cmd(&home, &model.manifest_arg(), &out, &[seeder.listen]);
    cmd.args(["--only", first]);
    let o = run_with_timeout(cmd, FETCH_TIMEOUT);
    assert!(o.status.success(), "--only: {}", text(&o));
    let events = json_events(&o);
    assert!(
        !events.iter().any(|e| e["event"] == "resuming"),
        "a first fetch resumes nothing"
    );
    std::fs::create_dir(out.join(".swarmlm/partial")).unwrap();

    let o = run_fetch(&home, &model.manifest_arg(), &out, &[seeder.listen]);
    assert!(o.status.success(), "rerun: {}", text(&o));
    assert_identical(&model, &out);
    let events = json_events(&o);
    let resuming = events
        .iter()
        .find(|e| e["event"] == "resuming")
        .expect("the rerun says what the interrupted run left");
    let first_len = model
        .files
        .iter()
        .find(|(p, _)| p == first)
        .unwrap()
        .1
        .len() as u64;
    assert_eq!(resuming["in_place_files"], 1, "{resuming}");
    assert_eq!(resuming["in_place_bytes"], first_len, "{resuming}");
    assert_eq!(resuming["partial_bytes"], 0, "{resuming}");
    // Not downloaded again, apart from the two pieces it shares with its neighbours.
    let downloaded = events.last().unwrap()["downloaded_bytes"].as_u64().unwrap();
    assert!(
        downloaded <= model.total_len() - first_len + 2 * 64 * 1024,
        "rerun downloaded {downloaded} bytes"
    );
    assert!(seeder.stop());
}

/// Starts a fetch of `model` into `out` from `seeder`, `kill -9`s it once it reports `mark`
/// bytes, and returns the bytes it had verified then; `None` when it finished all the same.
fn fetch_then_kill_at(
    home: &std::path::Path,
    model: &Model,
    out: &std::path::Path,
    seeder: std::net::SocketAddr,
    mark: u64,
) -> Option<u64> {
    let mut cmd = fetch_cmd(home, &model.manifest_arg(), out, &[seeder]);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + FETCH_TIMEOUT;
    let mut have_at_kill = None;
    let mut done = false;
    for line in lines.by_ref() {
        assert!(Instant::now() < deadline, "no progress before the deadline");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line.unwrap()) else {
            continue;
        };
        if v["event"] == "progress" && v["have_bytes"].as_u64().unwrap() >= mark {
            have_at_kill = v["have_bytes"].as_u64();
            break;
        }
        done |= v["event"] == "done";
    }
    // SIGKILL: no chance to clean up or save anything.
    let _ = child.kill();
    child.wait().unwrap();
    // What it wrote until the kill took effect: a `done` there means it finished first.
    for line in lines.map_while(Result::ok) {
        let v = serde_json::from_str::<serde_json::Value>(&line).unwrap_or_default();
        done |= v["event"] == "done";
    }
    if done {
        return None;
    }
    let have = have_at_kill.expect("the fetch ended without reaching the mark or finishing");
    assert!(out.join(".swarmlm/partial").exists());
    Some(have)
}
