//! madvise / mincore / posix_fadvise on one tensor's pages, asserting only what the kernel
//! reliably guarantees: touched pages are resident; evicted clean, unshared pages of a regular
//! on-disk file are gone; neighbours' edge pages are left alone.

mod common;

use std::fs;

use common::*;
use swarmlm_weights::{Advice, Checkpoint, MixtralConfig};

const PAGE: usize = 4096;

fn is_tmpfs(p: &std::path::Path) -> bool {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statfs writes into a zeroed struct of the right type.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path pointer and struct.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut s) };
    rc == 0 && s.f_type == libc::TMPFS_MAGIC
}

#[test]
fn willneed_touch_then_drop_page_cache() {
    // A big vocabulary so the embedding spans many pages: 262144 × 16 × 2 bytes = 8 MiB. The
    // kernel caches files in folios of up to 2 MiB and evicts only whole folios; an 8 MiB range
    // always holds at least three whole aligned 2 MiB blocks, so most of it can be evicted.
    let mut cfg_json: serde_json::Value = serde_json::from_str(TINY_CONFIG).unwrap();
    cfg_json["vocab_size"] = 262_144.into();
    let cfg = MixtralConfig::from_hf_json(cfg_json.to_string().as_bytes()).unwrap();
    // Under the target dir, not /tmp: /tmp may be tmpfs, whose pages can never be evicted.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    fs::write(dir.path().join("config.json"), cfg_json.to_string()).unwrap();
    let path = dir.path().join("model.safetensors");
    write_safetensors(&path, &model_tensors(&cfg));
    // Start from an empty page cache so the tensor's pages are created by our own faults.
    let f = fs::File::open(&path).unwrap();
    // SAFETY: plain syscall on an open descriptor.
    unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };

    let ck = Checkpoint::open(dir.path()).unwrap();
    let name = "model.embed_tokens.weight";
    let loc = ck.location(name).unwrap();
    let v = ck.tensor(name).unwrap();
    let base = v.bytes.as_ptr() as usize;
    let first_page = base / PAGE;
    let last_page = (base + v.bytes.len() - 1) / PAGE;
    let outward = (last_page - first_page + 1) * PAGE;
    assert_eq!(loc.len as usize, 262_144 * 16 * 2);

    for advice in [Advice::Random, Advice::Sequential, Advice::WillNeed] {
        ck.advise(name, advice).unwrap();
    }
    let sum: u64 = v.bytes.iter().map(|&b| b as u64).sum();
    assert!(sum > 0);
    assert_eq!(
        ck.resident_bytes(name).unwrap(),
        outward,
        "touched tensor fully resident"
    );

    // DONTNEED only unmaps from this process; page-cache residency may remain. It must not
    // fail, and must leave the data readable (re-faulted from the cache or disk).
    ck.advise(name, Advice::DontNeed).unwrap();
    assert!(ck.resident_bytes(name).unwrap() <= outward);
    assert_eq!(v.bytes[v.bytes.len() / 2], v.bytes[v.bytes.len() / 2]);
    let again: u64 = v.bytes.iter().map(|&b| b as u64).sum();
    assert_eq!(again, sum);

    ck.drop_page_cache(name).unwrap();
    let after = ck.resident_bytes(name).unwrap();
    if is_tmpfs(dir.path()) {
        eprintln!("tmpfs: page cache cannot be dropped; residency {after}");
    } else {
        // The written file was fsynced, so its pages are clean; with no other mapper the kernel
        // evicts every folio wholly inside the range. Folios straddling the range's ends (up to
        // 2 MiB each) may stay, so assert that most, not all, of the tensor is gone.
        assert!(
            after < outward / 2,
            "after drop_page_cache {after} of {outward} bytes resident"
        );
    }
    // Reading again brings the bytes back unchanged.
    let third: u64 = v.bytes.iter().map(|&b| b as u64).sum();
    assert_eq!(third, sum);
    assert_eq!(ck.resident_bytes(name).unwrap(), outward);
}

#[test]
fn dontneed_never_touches_neighbour_pages() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    write_single(dir.path());
    let ck = Checkpoint::open(dir.path()).unwrap();
    // Tiny tensors share pages with neighbours: inward rounding leaves nothing to drop, and
    // the neighbour stays resident after being touched.
    let a = "model.layers.0.input_layernorm.weight";
    let b = "model.layers.0.post_attention_layernorm.weight";
    let vb = ck.tensor(b).unwrap();
    let _ = vb.bytes.iter().map(|&x| x as u32).sum::<u32>();
    let before = ck.resident_bytes(b).unwrap();
    assert_eq!(before, PAGE);
    ck.drop_page_cache(a).unwrap();
    ck.advise(a, Advice::DontNeed).unwrap();
    if !is_tmpfs(dir.path()) {
        assert_eq!(ck.resident_bytes(b).unwrap(), PAGE);
    }
    assert!(matches!(
        ck.resident_bytes("nope"),
        Err(swarmlm_weights::WeightsError::UnknownTensor { .. })
    ));
}

#[test]
fn huge_page_advice_is_accepted_and_leaves_bytes_alone() {
    let cfg = MixtralConfig::from_hf_json(TINY_CONFIG.as_bytes()).unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    fs::write(dir.path().join("config.json"), TINY_CONFIG).unwrap();
    let path = dir.path().join("model.safetensors");
    let tensors = model_tensors(&cfg);
    write_safetensors(&path, &tensors);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let before: Vec<Vec<u8>> = ck
        .tensor_names()
        .iter()
        .map(|n| ck.tensor(n).unwrap().bytes.to_vec())
        .collect();
    // A kernel built with transparent huge pages (it then has this sysfs directory) accepts
    // the advice on a file map; one without refuses it, which is reported, not an error.
    let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists();
    assert_eq!(ck.advise_huge_pages(), thp);
    for (n, b) in ck.tensor_names().iter().zip(&before) {
        assert_eq!(&ck.tensor(n).unwrap().bytes.to_vec(), b, "{n} changed");
    }
}
