//! swarmlm against real third-party BitTorrent software on 127.0.0.1: Debian's opentracker
//! (closed mode, whitelist) as the only way two swarmlm peers can find each other, and aria2c
//! downloading from and seeding to swarmlm. These tools are required: CI installs them.

#[path = "swarm_support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(120);

/// Waits until the tracker counts `seeders` complete peers for the torrent.
fn wait_for_seeders(tracker: &Tracker, info_hash: &str, seeders: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some((complete, _)) = tracker.seeders_and_leechers(info_hash) {
            if complete >= seeders {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "tracker never counted {seeders} seeder(s) for {info_hash}: {:?}",
        tracker.seeders_and_leechers(info_hash)
    );
}

#[test]
fn seeder_and_leecher_find_each_other_only_through_opentracker() {
    let tmp = scratch();
    let home = tmp.path().join("home");
    // The info hash must be known before the tracker starts (closed mode): build the torrent
    // for a port chosen in advance.
    let port = free_port();
    let announce = format!("http://127.0.0.1:{port}/announce");
    let files = small_files(800, 71);
    let (_, info_hash) = build_torrent("via-tracker", &files, 64 * 1024, Some(&announce));
    let tracker = start_tracker_on(port, &[&info_hash]);
    let model = make_model(tmp.path(), "via-tracker", files, 64 * 1024, Some(&announce));
    assert_eq!(model.info_hash, info_hash);

    let seeder = start_seeder(&home, &model.dir, &[]);
    wait_for_seeders(&tracker, &model.info_hash, 1);

    // No --peer: the magnet's tracker is the only source of peers.
    let out = tmp.path().join("out");
    let o = run_with_timeout(fetch_cmd(&home, &model.magnet, &out, &[]), T);
    assert!(o.status.success(), "{}", text(&o));
    assert_identical(&model, &out);
    assert_recorded(&model, &out);
    assert!(seeder.stop());
}

#[test]
fn aria2c_downloads_from_swarmlm_seed_and_swarmlm_fetches_from_aria2c() {
    let tmp = scratch();
    let home = tmp.path().join("home");
    let port = free_port();
    let announce = format!("http://127.0.0.1:{port}/announce");
    let files = small_files(900, 81);
    let (_, info_hash) = build_torrent("interop", &files, 64 * 1024, Some(&announce));
    let tracker = start_tracker_on(port, &[&info_hash]);
    let model = make_model(tmp.path(), "interop", files, 64 * 1024, Some(&announce));

    // 1. aria2c leeches from `swarmlm seed`; it ignores x.pe, so it finds us via the tracker.
    let seeder = start_seeder(&home, &model.dir, &[]);
    wait_for_seeders(&tracker, &model.info_hash, 1);
    let aria_out = tmp.path().join("aria-out");
    let mut aria = Command::new(require_tool("aria2c"));
    aria.arg(&model.torrent_path)
        .arg(format!("--dir={}", aria_out.display()))
        .args([
            "--seed-time=0",
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--interface=127.0.0.1",
            "--disable-ipv6=true",
            "--file-allocation=none",
            "--summary-interval=0",
            "--console-log-level=warn",
            "--bt-tracker-interval=1",
        ])
        .arg(format!("--listen-port={}", free_port()));
    let o = run_with_timeout(aria, T);
    assert!(o.status.success(), "aria2c: {}", text(&o));
    assert_identical(&model, &aria_out.join(&model.name));
    assert!(seeder.stop());

    // 2. swarmlm fetches from aria2c seeding the data it just downloaded (verified by aria2c).
    let aria_port = free_port();
    let mut aria_seed = start_aria2_seeder(&model.torrent_path, &aria_out, aria_port, false);
    wait_listening(aria_port, Duration::from_secs(30));
    let out = tmp.path().join("out");
    let peer = format!("127.0.0.1:{aria_port}").parse().unwrap();
    let o = run_with_timeout(fetch_cmd(&home, &model.manifest_arg(), &out, &[peer]), T);
    let _ = aria_seed.kill();
    let _ = aria_seed.wait();
    assert!(o.status.success(), "fetch from aria2c: {}", text(&o));
    assert_identical(&model, &out);
    assert_recorded(&model, &out);
    drop(tracker);
}
