//! A read-only view of the zip container PyTorch writes (`torch.save`), enough to locate each
//! stored entry's bytes inside the mapped file — nothing is ever extracted or copied.
//!
//! PyTorch archives are written uncompressed ("stored") with 64-byte-aligned entry data, and a
//! real Mixtral checkpoint (87 GiB) needs ZIP64 sizes and offsets, so both are handled. We read
//! the central directory (the authoritative entry list), then each entry's local header only to
//! learn where its data starts. Compressed or encrypted entries, split archives, and any offset
//! or size outside the file are errors. CRCs are not checked: that would read every byte at
//! open, and the files are SHA-256 verified against the manifest before they get here.

use std::collections::BTreeMap;
use std::path::Path;

use crate::WeightsError;

const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
const CDIR_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

/// Where one stored entry's data lies in the archive (absolute file offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZipEntry {
    pub start: u64,
    pub len: u64,
}

fn rd<const N: usize>(b: &[u8], at: u64) -> Option<[u8; N]> {
    let at = usize::try_from(at).ok()?;
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], at: u64) -> Option<u16> {
    rd::<2>(b, at).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], at: u64) -> Option<u32> {
    rd::<4>(b, at).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], at: u64) -> Option<u64> {
    rd::<8>(b, at).map(u64::from_le_bytes)
}

/// Parses the archive `bytes` (the whole mapped file) into its entries by name.
pub fn read_entries(file: &Path, bytes: &[u8]) -> Result<BTreeMap<String, ZipEntry>, WeightsError> {
    let err = |reason: String| WeightsError::Zip {
        file: file.to_path_buf(),
        reason,
    };
    let short = |what: &str| err(format!("truncated: {what} runs past the end of the file"));
    let len = bytes.len() as u64;
    if len < 22 {
        return Err(err(format!(
            "{len} bytes is too short for an end-of-central-directory record"
        )));
    }
    // The end record is the last 22 bytes plus a comment of up to 64 KiB; search backwards.
    let lowest = len.saturating_sub(22 + 0xFFFF);
    let mut eocd = None;
    let mut at = len - 22;
    loop {
        if u32_at(bytes, at) == Some(EOCD_SIG)
            && u16_at(bytes, at + 20).map(|c| at + 22 + c as u64) == Some(len)
        {
            eocd = Some(at);
            break;
        }
        if at == lowest {
            break;
        }
        at -= 1;
    }
    let eocd = eocd.ok_or_else(|| {
        err("no end-of-central-directory record (not a zip archive, or truncated)".into())
    })?;
    let disk = u16_at(bytes, eocd + 4).ok_or_else(|| short("end record"))?;
    let cd_disk = u16_at(bytes, eocd + 6).ok_or_else(|| short("end record"))?;
    let mut count = u16_at(bytes, eocd + 10).ok_or_else(|| short("end record"))? as u64;
    let mut cd_size = u32_at(bytes, eocd + 12).ok_or_else(|| short("end record"))? as u64;
    let mut cd_off = u32_at(bytes, eocd + 16).ok_or_else(|| short("end record"))? as u64;
    if (disk != 0 && disk != 0xFFFF) || (cd_disk != 0 && cd_disk != 0xFFFF) {
        return Err(err("split (multi-disk) archives are not supported".into()));
    }
    if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_off == 0xFFFF_FFFF {
        // ZIP64: the locator sits just before the end record and points to the ZIP64 end record.
        let loc = eocd
            .checked_sub(20)
            .filter(|&l| u32_at(bytes, l) == Some(EOCD64_LOCATOR_SIG))
            .ok_or_else(|| err("ZIP64 sizes are used but the ZIP64 locator is missing".into()))?;
        let rec = u64_at(bytes, loc + 8).ok_or_else(|| short("ZIP64 locator"))?;
        if u32_at(bytes, rec) != Some(EOCD64_SIG) {
            return Err(err(format!("no ZIP64 end record at offset {rec}")));
        }
        count = u64_at(bytes, rec + 32).ok_or_else(|| short("ZIP64 end record"))?;
        cd_size = u64_at(bytes, rec + 40).ok_or_else(|| short("ZIP64 end record"))?;
        cd_off = u64_at(bytes, rec + 48).ok_or_else(|| short("ZIP64 end record"))?;
    }
    let cd_end = cd_off
        .checked_add(cd_size)
        .filter(|&e| e <= eocd)
        .ok_or_else(|| {
            err(format!(
                "central directory {cd_off}+{cd_size} lies outside the archive before its end record at {eocd}"
            ))
        })?;
    // Each central record is at least 46 bytes; a count that cannot fit is a lie, not a reason
    // to loop for long.
    if count > cd_size / 46 {
        return Err(err(format!(
            "{count} entries cannot fit in a {cd_size}-byte central directory"
        )));
    }

    let mut out = BTreeMap::new();
    let mut p = cd_off;
    for i in 0..count {
        if p + 46 > cd_end || u32_at(bytes, p) != Some(CDIR_SIG) {
            return Err(err(format!(
                "central directory record {i} at offset {p} is malformed"
            )));
        }
        let flags = u16_at(bytes, p + 8).unwrap_or(0);
        let method = u16_at(bytes, p + 10).unwrap_or(0);
        let mut csize = u32_at(bytes, p + 20).unwrap_or(0) as u64;
        let mut usize_ = u32_at(bytes, p + 24).unwrap_or(0) as u64;
        let name_len = u16_at(bytes, p + 28).unwrap_or(0) as u64;
        let extra_len = u16_at(bytes, p + 30).unwrap_or(0) as u64;
        let comment_len = u16_at(bytes, p + 32).unwrap_or(0) as u64;
        let mut local = u32_at(bytes, p + 42).unwrap_or(0) as u64;
        let name_at = p + 46;
        let extra_at = name_at + name_len;
        let next = extra_at + extra_len + comment_len;
        if next > cd_end {
            return Err(err(format!(
                "central directory record {i} runs past the directory's end"
            )));
        }
        let name_bytes = &bytes[name_at as usize..extra_at as usize];
        let name = std::str::from_utf8(name_bytes)
            .map_err(|_| err(format!("entry name of record {i} is not UTF-8")))?
            .to_string();
        // ZIP64 extended information: the 64-bit values present are those whose 32-bit field
        // is saturated, in this order.
        let mut x = extra_at;
        let x_end = extra_at + extra_len;
        while x + 4 <= x_end {
            let id = u16_at(bytes, x).unwrap_or(0);
            let sz = u16_at(bytes, x + 2).unwrap_or(0) as u64;
            let body = x + 4;
            if body + sz > x_end {
                return Err(err(format!(
                    "entry `{name}`: extra field runs past its record"
                )));
            }
            if id == 0x0001 {
                let mut q = body;
                let mut take = |field: &mut u64, what: &str| -> Result<(), WeightsError> {
                    if *field == 0xFFFF_FFFF {
                        if q + 8 > body + sz {
                            return Err(err(format!(
                                "entry `{name}`: ZIP64 field lacks the {what}"
                            )));
                        }
                        *field = u64_at(bytes, q).unwrap_or(0);
                        q += 8;
                    }
                    Ok(())
                };
                take(&mut usize_, "uncompressed size")?;
                take(&mut csize, "compressed size")?;
                take(&mut local, "local header offset")?;
            }
            x = body + sz;
        }
        if flags & 1 != 0 {
            return Err(err(format!("entry `{name}` is encrypted")));
        }
        if method != 0 {
            return Err(WeightsError::ZipCompressed {
                file: file.to_path_buf(),
                entry: name,
                method,
            });
        }
        if csize != usize_ {
            return Err(err(format!(
                "stored entry `{name}` has compressed size {csize} ≠ size {usize_}"
            )));
        }
        if local.saturating_add(30) > cd_off || u32_at(bytes, local) != Some(LOCAL_SIG) {
            return Err(err(format!(
                "entry `{name}`: no local header at offset {local}"
            )));
        }
        let l_name_len = u16_at(bytes, local + 26).unwrap_or(0) as u64;
        let l_extra_len = u16_at(bytes, local + 28).unwrap_or(0) as u64;
        let l_name_at = local + 30;
        if l_name_at + l_name_len > cd_off
            || bytes[l_name_at as usize..(l_name_at + l_name_len) as usize] != *name_bytes
        {
            return Err(err(format!(
                "entry `{name}`: local header names a different entry"
            )));
        }
        let start = l_name_at + l_name_len + l_extra_len;
        let end = start
            .checked_add(csize)
            .filter(|&e| e <= cd_off)
            .ok_or_else(|| {
                err(format!(
                    "entry `{name}`: data {start}+{csize} runs past the start of the central directory at {cd_off} (truncated?)"
                ))
            })?;
        if out
            .insert(
                name.clone(),
                ZipEntry {
                    start,
                    len: end - start,
                },
            )
            .is_some()
        {
            return Err(err(format!("entry `{name}` appears twice")));
        }
        p = next;
    }
    Ok(out)
}
