//! Fuzzes the restricted pickle reader: any input either errors or yields a state dict of
//! tensor descriptions with bounded rank; nothing is executed, nothing panics or recurses.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use swarmlm_weights::pickle::{read_state_dict, MAX_DIMS};

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = read_state_dict(Path::new("fuzz/data.pkl"), data) {
        for t in tensors {
            assert!(t.size.len() <= MAX_DIMS && t.stride.len() <= MAX_DIMS);
        }
    }
});
