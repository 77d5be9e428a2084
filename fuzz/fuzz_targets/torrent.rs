//! Fuzz the strict .torrent reader: no input may panic, and an accepted torrent must be
//! self-consistent (piece count, safe paths, magnet round trip).
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmlm_manifest::{check_relative_path, Magnet};
use swarmlm_swarm::torrent::{parse_info_dict, parse_torrent};

fuzz_target!(|data: &[u8]| {
    for parsed in [parse_torrent(data), parse_info_dict(data)] {
        let Ok(t) = parsed else { continue };
        assert_eq!(
            t.pieces.len() as u64,
            t.total_size.div_ceil(t.piece_length),
            "piece count"
        );
        assert!(t.total_size > 0);
        for f in &t.files {
            assert!(check_relative_path(&f.path).is_ok(), "{:?}", f.path);
        }
        let m = Magnet::parse(&t.magnet()).expect("our magnet must parse");
        assert_eq!(m.info_hash, t.info_hash);
    }
});
