//! Torrent creation: reproducible info hashes, exact piece hashes, links followed, bad folders
//! refused; and the strict .torrent reader on hostile input.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use sha1::{Digest as _, Sha1};
use swarmlm_swarm::create::{create_torrent, CreateError, CreateOptions, PieceSize};
use swarmlm_swarm::torrent::{parse_info_dict, parse_torrent, TorrentError};

/// The pinned input: its info hash and SHA-256s were computed independently (a 20-line Python
/// bencoder + hashlib), not by this code.
fn pinned_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("config.json", b"{\"model_type\":\"mixtral\"}\n".to_vec()),
        (
            "model-00001-of-00002.safetensors",
            (0..40000u32).map(|i| ((i * 7 + 3) % 256) as u8).collect(),
        ),
        (
            "sub/model-00002-of-00002.safetensors",
            (0..30001u32).map(|i| ((i * 13 + 1) % 256) as u8).collect(),
        ),
    ]
}
const PINNED_INFO_HASH: &str = "6f47e545325b4a6f1d56055722c475547087bf77";

fn write_files(dir: &Path, files: &[(&str, Vec<u8>)]) {
    for (path, data) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

fn opts(name: &str, piece: u64) -> CreateOptions {
    CreateOptions {
        name: Some(name.into()),
        piece_size: PieceSize::Fixed(piece),
        ..Default::default()
    }
}

#[test]
fn known_input_gives_the_pinned_info_hash() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &pinned_files());
    let c = create_torrent(dir.path(), &opts("tiny", 16384)).unwrap();
    assert_eq!(hex::encode(c.info_hash), PINNED_INFO_HASH);
    assert_eq!(
        c.magnet,
        format!("magnet:?xt=urn:btih:{PINNED_INFO_HASH}&dn=tiny")
    );
    let m = &c.manifest;
    assert_eq!(m.name, "tiny");
    assert_eq!(m.piece_length, Some(16384));
    assert_eq!(m.total_size, Some(70026));
    assert_eq!(m.format, swarmlm_manifest::ModelFormat::HfSafetensors);
    let sums: Vec<(String, String)> = m
        .files
        .iter()
        .map(|f| (f.path.clone(), hex::encode(f.sha256.unwrap())))
        .collect();
    assert_eq!(
        sums,
        vec![
            (
                "config.json".into(),
                "0d4bfec61616329dfbf131387f88d88c16e0b483ab0f6448a450558ccb6d7b58".into()
            ),
            (
                "model-00001-of-00002.safetensors".into(),
                "58d781cc597bca703812517d600f71acae3a22beb8ef6759384281a860d037eb".into()
            ),
            (
                "sub/model-00002-of-00002.safetensors".into(),
                "ff1d592e350b378f8fd0169914c01d3b15685f2a2d0d437f1f541ea7ed167490".into()
            ),
        ]
    );
    // The manifest text round-trips and agrees with the torrent.
    let text = m.to_toml_string();
    assert_eq!(
        swarmlm_manifest::Manifest::from_toml_str(&text).unwrap(),
        *m
    );
    let t = parse_torrent(&c.torrent_bytes).unwrap();
    assert_eq!(t.info_hash, c.info_hash);
    assert_eq!(t.pieces.len(), 5); // ceil(70026 / 16384)
    assert!(!t.single_file);
    assert!(t.trackers.is_empty());
    t.check_manifest(m).unwrap();
    assert_eq!(t.magnet(), c.magnet);
}

#[test]
fn same_content_same_hash_across_runs_copies_and_trackers() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write_files(a.path(), &pinned_files());
    // A copy under another folder name, written in reverse order, with old mtimes.
    let mut rev = pinned_files();
    rev.reverse();
    let copy = b.path().join("some-other-name");
    write_files(&copy, &rev);
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    for (p, _) in &rev {
        std::fs::File::options()
            .write(true)
            .open(copy.join(p))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let o = CreateOptions {
        name: Some("tiny".into()),
        ..Default::default()
    };
    let first = create_torrent(a.path(), &o).unwrap();
    let second = create_torrent(a.path(), &o).unwrap();
    let third = create_torrent(&copy, &o).unwrap();
    assert_eq!(first.torrent_bytes, second.torrent_bytes);
    assert_eq!(first.torrent_bytes, third.torrent_bytes);
    assert_eq!(first.manifest, third.manifest);
    // Auto piece size for 70 kB is the 256 KiB minimum: one piece.
    assert_eq!(first.manifest.piece_length, Some(256 * 1024));

    // Bookkeeping of ours does not change anything.
    std::fs::create_dir_all(a.path().join(".swarmlm")).unwrap();
    std::fs::write(a.path().join(".swarmlm/verified.json"), b"{}").unwrap();
    let with_state = create_torrent(a.path(), &o).unwrap();
    assert_eq!(with_state.info_hash, first.info_hash);

    // Trackers live outside `info`: same info hash, different file, magnet lists them.
    let with_trackers = create_torrent(
        a.path(),
        &CreateOptions {
            trackers: vec![
                "http://127.0.0.1:6969/announce".into(),
                "udp://127.0.0.1:6969".into(),
            ],
            ..o.clone()
        },
    )
    .unwrap();
    assert_eq!(with_trackers.info_hash, first.info_hash);
    assert_ne!(with_trackers.torrent_bytes, first.torrent_bytes);
    assert!(with_trackers
        .magnet
        .ends_with("&tr=http%3A%2F%2F127.0.0.1%3A6969%2Fannounce&tr=udp%3A%2F%2F127.0.0.1%3A6969"));
    let t = parse_torrent(&with_trackers.torrent_bytes).unwrap();
    assert_eq!(
        t.trackers,
        vec!["http://127.0.0.1:6969/announce", "udp://127.0.0.1:6969"]
    );

    // A different name is a different torrent.
    let renamed = create_torrent(
        a.path(),
        &CreateOptions {
            name: Some("tiny2".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_ne!(renamed.info_hash, first.info_hash);
    // Without --name the folder's own name is used.
    let unnamed = create_torrent(&copy, &CreateOptions::default()).unwrap();
    assert_eq!(unnamed.manifest.name, "some-other-name");
}

/// Piece hashes span file boundaries; check every piece against SHA-1 of the concatenation, for
/// totals just below, at and above piece multiples (trap 4).
#[test]
fn piece_hashes_are_exact_at_boundaries() {
    const PL: usize = 16384;
    for total in [1, PL - 1, PL, PL + 1, 3 * PL, 3 * PL + 7, 5 * PL - 1] {
        let dir = tempfile::tempdir().unwrap();
        let blob: Vec<u8> = (0..total).map(|i| (i * 31 % 257) as u8).collect();
        // Split into three files (some possibly empty) at awkward offsets.
        let cut1 = total / 3;
        let cut2 = (total * 2 / 3 + 5).min(total);
        let files = vec![
            ("a.safetensors", blob[..cut1].to_vec()),
            ("b/c.safetensors", blob[cut1..cut2].to_vec()),
            ("b/d", blob[cut2..].to_vec()),
        ];
        write_files(dir.path(), &files);
        let c = create_torrent(dir.path(), &opts("p", PL as u64)).unwrap();
        let t = parse_torrent(&c.torrent_bytes).unwrap();
        assert_eq!(t.pieces.len(), total.div_ceil(PL), "total {total}");
        for (i, piece) in blob.chunks(PL).enumerate() {
            let expected: [u8; 20] = Sha1::digest(piece).into();
            assert_eq!(t.pieces[i], expected, "total {total}, piece {i}");
        }
        assert_eq!(t.total_size, total as u64);
        let lengths: Vec<u64> = t.files.iter().map(|f| f.length).collect();
        assert_eq!(
            lengths,
            vec![cut1 as u64, (cut2 - cut1) as u64, (total - cut2) as u64]
        );
    }
}

/// A Hugging Face cache snapshot is a folder of relative links into `../../blobs/`.
#[test]
fn hf_cache_snapshot_of_links_gives_the_same_torrent_as_plain_files() {
    let root = tempfile::tempdir().unwrap();
    let repo = root.path().join("models--tiny");
    let blobs = repo.join("blobs");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(snap.join("sub")).unwrap();
    for (i, (path, data)) in pinned_files().iter().enumerate() {
        let blob = blobs.join(format!("blob{i}"));
        std::fs::write(&blob, data).unwrap();
        let depth = path.matches('/').count();
        let target = format!("{}../../blobs/blob{i}", "../".repeat(depth));
        std::os::unix::fs::symlink(target, snap.join(path)).unwrap();
    }
    let c = create_torrent(&snap, &opts("tiny", 16384)).unwrap();
    assert_eq!(hex::encode(c.info_hash), PINNED_INFO_HASH);

    // A linked folder is followed too.
    let outer = root.path().join("outer");
    std::fs::create_dir_all(&outer).unwrap();
    std::os::unix::fs::symlink(&snap, outer.join("linked")).unwrap();
    let c2 = create_torrent(&outer, &opts("tiny", 16384)).unwrap();
    assert_eq!(c2.manifest.files[0].path, "linked/config.json");
}

fn refused(dir: &Path) -> CreateError {
    match create_torrent(dir, &opts("x", 16384)) {
        Ok(c) => panic!("created {} from a folder that should be refused", c.magnet),
        Err(e) => e,
    }
}

#[test]
fn bad_folders_are_refused_with_the_path_named() {
    let base = tempfile::tempdir().unwrap();
    let mk = |name: &str| {
        let d = base.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("model.safetensors"), b"weights").unwrap();
        d
    };

    let d = mk("dangling");
    std::os::unix::fs::symlink("nowhere", d.join("gone.json")).unwrap();
    let e = refused(&d);
    assert!(matches!(e, CreateError::DanglingLink { .. }), "{e}");
    assert!(e.to_string().contains("gone.json"), "{e}");

    let d = mk("loop");
    std::os::unix::fs::symlink("b", d.join("a")).unwrap();
    std::os::unix::fs::symlink("a", d.join("b")).unwrap();
    let e = refused(&d);
    assert!(matches!(e, CreateError::LinkLoop { .. }), "{e}");

    let d = mk("dirloop");
    std::fs::create_dir(d.join("sub")).unwrap();
    std::os::unix::fs::symlink("..", d.join("sub/up")).unwrap();
    let e = refused(&d);
    assert!(matches!(e, CreateError::LinkLoop { .. }), "{e}");
    assert!(e.to_string().contains("up"), "{e}");

    let d = mk("fifo");
    let st = std::process::Command::new("mkfifo")
        .arg(d.join("pipe"))
        .status()
        .unwrap();
    assert!(st.success());
    let e = refused(&d);
    assert!(
        matches!(e, CreateError::SpecialFile { kind: "fifo", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("pipe"), "{e}");

    let d = mk("socket");
    let _listener = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    let e = refused(&d);
    assert!(
        matches!(e, CreateError::SpecialFile { kind: "socket", .. }),
        "{e}"
    );

    let d = base.path().join("empty");
    std::fs::create_dir_all(d.join("only/empty/dirs")).unwrap();
    assert!(matches!(refused(&d), CreateError::Empty { .. }));
    std::fs::write(d.join("zero"), b"").unwrap();
    assert!(matches!(refused(&d), CreateError::Empty { .. }));

    let d = mk("nonutf8");
    std::fs::write(d.join(std::ffi::OsStr::from_bytes(b"bad\xffname")), b"x").unwrap();
    assert!(matches!(refused(&d), CreateError::NotUtf8 { .. }));

    let d = mk("backslash");
    std::fs::write(d.join("a\\b"), b"x").unwrap();
    assert!(matches!(refused(&d), CreateError::UnsafeName { .. }));

    for partial in ["model-00002.safetensors.part", "x.incomplete", "y.aria2"] {
        let d = mk(&format!("partial-{partial}"));
        std::fs::write(d.join(partial), b"x").unwrap();
        let e = refused(&d);
        assert!(matches!(e, CreateError::Partial { .. }), "{e}");
        assert!(e.to_string().contains(partial), "{e}");
    }
    let d = mk("partial-area");
    std::fs::create_dir_all(d.join(".swarmlm/partial")).unwrap();
    std::fs::write(d.join(".swarmlm/partial/model.safetensors"), b"half").unwrap();
    assert!(matches!(refused(&d), CreateError::Partial { .. }));

    let d = mk("file");
    let e = refused(&d.join("model.safetensors"));
    assert!(matches!(e, CreateError::NotADirectory { .. }), "{e}");
    let e = refused(&base.path().join("absent"));
    assert!(matches!(e, CreateError::Io { .. }), "{e}");

    let d = mk("options");
    for bad in [
        CreateOptions {
            name: Some("a/b".into()),
            ..Default::default()
        },
        CreateOptions {
            name: Some("..".into()),
            ..Default::default()
        },
        opts("x", 300_000),
        opts("x", 8192),
        CreateOptions {
            trackers: vec!["not a url".into()],
            ..opts("x", 16384)
        },
    ] {
        assert!(create_torrent(&d, &bad).is_err(), "{bad:?}");
    }

    let d = base.path().join("noformat");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("data.bin"), b"x").unwrap();
    assert!(matches!(refused(&d), CreateError::UnknownFormat));
    let with_format = CreateOptions {
        format: Some(swarmlm_manifest::ModelFormat::MistralPth),
        ..opts("x", 16384)
    };
    assert!(create_torrent(&d, &with_format).is_ok());
}

#[test]
fn librqbit_reads_our_torrents_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &pinned_files());
    let c = create_torrent(
        dir.path(),
        &CreateOptions {
            trackers: vec!["http://127.0.0.1:1/announce".into()],
            ..opts("tiny", 16384)
        },
    )
    .unwrap();
    let t = librqbit_core::torrent_metainfo::torrent_from_bytes(&c.torrent_bytes).unwrap();
    assert_eq!(t.info_hash.0, c.info_hash);
    assert_eq!(t.info.data.piece_length, 16384);
    assert_eq!(t.info.data.pieces.as_ref().len(), 5 * 20);
    let validated = t.info.data.clone().validate().unwrap();
    let names: Vec<(String, u64)> = validated
        .iter_file_details()
        .map(|d| (d.filename.to_vec().join("/"), d.len))
        .collect();
    let ours: Vec<(String, u64)> = c
        .manifest
        .files
        .iter()
        .map(|f| (f.path.clone(), f.size.unwrap()))
        .collect();
    assert_eq!(names, ours);
}

// ---- the reader on hostile input ----

/// A minimal bencoder for building hostile torrents (independent of the crate's own).
#[derive(Clone)]
enum B {
    I(i64),
    S(Vec<u8>),
    L(Vec<B>),
    D(BTreeMap<Vec<u8>, B>),
}

fn s(x: &str) -> B {
    B::S(x.as_bytes().to_vec())
}

fn enc(v: &B) -> Vec<u8> {
    match v {
        B::I(i) => format!("i{i}e").into_bytes(),
        B::S(b) => [format!("{}:", b.len()).into_bytes(), b.clone()].concat(),
        B::L(l) => [
            b"l".to_vec(),
            l.iter().flat_map(enc).collect(),
            b"e".to_vec(),
        ]
        .concat(),
        B::D(d) => {
            let mut out = b"d".to_vec();
            for (k, v) in d {
                out.extend(enc(&B::S(k.clone())));
                out.extend(enc(v));
            }
            out.push(b'e');
            out
        }
    }
}

fn dict(entries: Vec<(&str, B)>) -> BTreeMap<Vec<u8>, B> {
    entries
        .into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v))
        .collect()
}

fn file(path: &[&str], length: i64) -> B {
    B::D(dict(vec![
        ("length", B::I(length)),
        ("path", B::L(path.iter().map(|p| s(p)).collect())),
    ]))
}

fn torrent(info: BTreeMap<Vec<u8>, B>) -> Vec<u8> {
    enc(&B::D(dict(vec![("info", B::D(info))])))
}

fn good_info() -> BTreeMap<Vec<u8>, B> {
    dict(vec![
        ("name", s("m")),
        ("piece length", B::I(16384)),
        ("pieces", B::S(vec![7; 40])),
        (
            "files",
            B::L(vec![file(&["a"], 20000), file(&["d", "b"], 100)]),
        ),
    ])
}

fn field_error(bytes: &[u8]) -> String {
    match parse_torrent(bytes) {
        Err(TorrentError::Field { field, .. }) => field,
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn hostile_torrents_are_refused_naming_the_field() {
    let ok = parse_torrent(&torrent(good_info())).unwrap();
    assert_eq!(ok.files[1].path, "d/b");
    assert_eq!(ok.total_size, 20100);

    let with = |k: &str, v: B| {
        let mut i = good_info();
        i.insert(k.as_bytes().to_vec(), v);
        torrent(i)
    };
    let files = |fs: Vec<B>| with("files", B::L(fs));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (files(vec![file(&[".."], 20100)]), "info.files[0].path"),
        (
            files(vec![file(&["a", "..", "b"], 20100)]),
            "info.files[0].path",
        ),
        (files(vec![file(&[""], 20100)]), "info.files[0].path"),
        (files(vec![file(&["a/b"], 20100)]), "info.files[0].path"),
        (files(vec![file(&[], 20100)]), "info.files[0].path"),
        (
            files(vec![file(&["a"], 100), file(&["a"], 20000)]),
            "info.files[1].path",
        ),
        (
            files(vec![file(&["a"], 100), file(&["a", "b"], 20000)]),
            "info.files[1].path",
        ),
        (files(vec![file(&["a"], -1)]), "info.files[0].length"),
        (files(vec![]), "info.files"),
        (
            files(vec![B::D(dict(vec![
                ("length", B::I(20100)),
                ("path", B::L(vec![B::S(b"\xff".to_vec())])),
            ]))]),
            "info.files[0].path",
        ),
        (
            files(vec![
                file(&["a"], 16000),
                B::D(dict(vec![
                    ("attr", s("p")),
                    ("length", B::I(100)),
                    ("path", B::L(vec![s(".pad"), s("100")])),
                ])),
                file(&["b"], 4000),
            ]),
            "info.files[1].attr",
        ),
        (with("name", s("..")), "info.name"),
        (with("name", B::S(b"\xfe".to_vec())), "info.name"),
        (with("name", B::I(3)), "info.name"),
        (with("piece length", B::I(20000)), "info.piece length"),
        (with("piece length", B::I(0)), "info.piece length"),
        // Trap 4: one piece hash too many, one too few, not a multiple of 20.
        (with("pieces", B::S(vec![7; 60])), "info.pieces"),
        (with("pieces", B::S(vec![7; 20])), "info.pieces"),
        (with("pieces", B::S(vec![7; 41])), "info.pieces"),
        (with("length", B::I(5)), "info.files"),
        (files(vec![file(&["a"], 0)]), "info.files"),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            field_error(&bytes),
            expected,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let mut no_files = good_info();
    no_files.remove(b"files".as_slice());
    assert_eq!(field_error(&torrent(no_files)), "info.files");
    assert_eq!(field_error(b"le"), "(top level)");
    assert_eq!(field_error(b"de"), "info");

    // Single-file form.
    let single = dict(vec![
        ("name", s("model.safetensors")),
        ("piece length", B::I(16384)),
        ("pieces", B::S(vec![1; 20])),
        ("length", B::I(10)),
    ]);
    let t = parse_torrent(&torrent(single.clone())).unwrap();
    assert!(t.single_file);
    assert_eq!(t.files[0].path, "model.safetensors");
    // The bare info dictionary (BEP 9 metadata) hashes to the same info hash.
    let bare = parse_info_dict(&enc(&B::D(single))).unwrap();
    assert_eq!(bare.info_hash, t.info_hash);

    // Trackers: non-UTF-8 refused, duplicates merged.
    let mut root = dict(vec![("info", B::D(good_info()))]);
    root.insert(b"announce".to_vec(), s("http://127.0.0.1:1/a"));
    root.insert(
        b"announce-list".to_vec(),
        B::L(vec![
            B::L(vec![s("http://127.0.0.1:1/a")]),
            B::L(vec![s("udp://127.0.0.1:2")]),
        ]),
    );
    let t = parse_torrent(&enc(&B::D(root.clone()))).unwrap();
    assert_eq!(
        t.trackers,
        vec!["http://127.0.0.1:1/a", "udp://127.0.0.1:2"]
    );
    root.insert(
        b"announce-list".to_vec(),
        B::L(vec![B::L(vec![B::S(b"\xff".to_vec())])]),
    );
    assert_eq!(field_error(&enc(&B::D(root))), "announce-list[0][0]");
}

#[test]
fn garbage_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &pinned_files());
    let good = create_torrent(
        dir.path(),
        &CreateOptions {
            trackers: vec!["http://127.0.0.1:1/announce".into()],
            ..opts("tiny", 16384)
        },
    )
    .unwrap()
    .torrent_bytes;
    assert!(parse_torrent(&good).is_ok());
    // Every truncation.
    for n in 0..good.len() {
        assert!(parse_torrent(&good[..n]).is_err(), "prefix {n}");
    }
    // Every single-byte change to a few interesting values: an error or a valid parse, never a
    // panic; a valid parse must still be self-consistent.
    for i in 0..good.len() {
        for b in [
            b'0',
            b'9',
            b'e',
            b'i',
            b'l',
            b'd',
            b':',
            b'-',
            0xff,
            good[i] ^ 1,
        ] {
            let mut m = good.clone();
            m[i] = b;
            if let Ok(t) = parse_torrent(&m) {
                assert_eq!(t.pieces.len() as u64, t.total_size.div_ceil(t.piece_length));
            }
        }
    }
    // Pseudo-random bytes, and random bytes after a plausible prefix.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..3000 {
        let len = (next() % 200) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if next() % 2 == 0 {
            bytes.splice(0..0, b"d4:infod".iter().copied());
        }
        let _ = parse_torrent(&bytes);
        let _ = parse_info_dict(&bytes);
    }
    // Huge declared lengths and deep nesting.
    assert!(parse_torrent(b"d4:info99999999999999:xe").is_err());
    assert!(parse_torrent(&[b'l'; 100_000]).is_err());
}

/// More files than the reader's buffer pool (8): each file's final empty read used to drop a
/// buffer without returning it, so the ninth file waited forever for one.
#[test]
fn a_folder_of_many_files_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..20u8)
        .map(|i| {
            (
                format!("f{i:02}.safetensors"),
                vec![i; 1000 + usize::from(i)],
            )
        })
        .collect();
    for (p, d) in &files {
        std::fs::write(dir.path().join(p), d).unwrap();
    }
    let c = create_torrent(dir.path(), &opts("many", 16384)).unwrap();
    assert_eq!(c.manifest.files.len(), 20);
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(c.manifest.total_size, Some(total));
    for ((p, d), f) in files.iter().zip(&c.manifest.files) {
        assert_eq!(&f.path, p);
        let want: [u8; 32] = sha2::Sha256::digest(d).into();
        assert_eq!(f.sha256, Some(want), "{p}");
    }
}
