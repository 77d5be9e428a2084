//! Fuzzes the whole `.pth` path (zip directory + pickle + tensor checks): any input either
//! errors or yields tensors whose byte ranges lie inside the archive and match their shapes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use swarmlm_weights::pth::parse_archive;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = parse_archive(Path::new("fuzz.pth"), data) {
        for t in tensors {
            assert!(t.start <= t.end && t.end <= data.len() as u64);
            let numel: u64 = t.shape.iter().map(|&d| d as u64).product();
            assert_eq!(numel * t.dtype.size() as u64, t.end - t.start);
        }
    }
});
