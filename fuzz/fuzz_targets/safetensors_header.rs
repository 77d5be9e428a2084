//! Fuzzes the strict safetensors header check: any input either errors or yields tensors whose
//! ranges lie inside the input, are aligned, sized by their shape, and do not overlap.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use swarmlm_weights::st_header::parse_header;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut entries) = parse_header(Path::new("fuzz.safetensors"), data) {
        for e in &entries {
            assert!(e.start <= e.end && e.end <= data.len() as u64);
            let size = e.dtype.size() as u64;
            assert_eq!(e.start % size, 0);
            let numel = e
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            assert_eq!(numel.map(|n| n * size), Some(e.end - e.start));
        }
        entries.retain(|e| e.start < e.end);
        entries.sort_by_key(|e| e.start);
        for w in entries.windows(2) {
            assert!(w[0].end <= w[1].start);
        }
    }
});
