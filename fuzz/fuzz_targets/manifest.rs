//! Fuzz the manifest reader (the trust root's parser) and the magnet parser: no input may panic,
//! and whatever is accepted must survive a canonical round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmlm_manifest::{Magnet, Manifest};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Magnet::parse(text) {
        let again = Magnet::parse(&m.to_uri()).expect("canonical magnet must parse");
        assert_eq!(again, m);
    }
    if let Ok(m) = Manifest::from_toml_str(text) {
        let canonical = m.to_toml_string();
        let back = Manifest::from_toml_str(&canonical).expect("canonical text must parse");
        assert_eq!(back, m);
        assert_eq!(back.to_toml_string(), canonical);
    }
});
