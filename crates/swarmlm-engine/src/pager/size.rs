//! Byte sizes as people type them (`2GiB`, `1.5 GB`, `65536`), for `--memory-budget`.
//!
//! Binary (KiB/MiB/GiB/TiB) and decimal (KB/MB/GB/TB) units are both accepted because users
//! copy numbers from `free -h` (binary) and from disk vendors (decimal); a bare number is bytes.

use super::PagerError;

/// Parses `text` into bytes. Units are case-insensitive; a space between number and unit is
/// allowed; fractions are allowed with a unit (`1.5GiB`) and rounded down to whole bytes.
pub fn parse_size(text: &str) -> Result<u64, PagerError> {
    let bad = |why: &str| PagerError::BadSize {
        text: text.to_string(),
        expected: why.to_string(),
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (t[..split].trim(), t[split..].trim());
    if num.is_empty() {
        return Err(bad(
            "a number of bytes, optionally with a unit (e.g. 2GiB, 512MB, 1048576)",
        ));
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad("a unit among B, KiB, MiB, GiB, TiB, KB, MB, GB, TB")),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(mult)
            .ok_or_else(|| bad("a size below 16 EiB"));
    }
    let f: f64 = num
        .parse()
        .map_err(|_| bad("a decimal number such as 2, 1.5 or 512"))?;
    let bytes = f * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad("a size below 16 EiB"));
    }
    Ok(bytes as u64)
}

/// `bytes` in the largest binary unit that keeps the number ≥ 1, two decimals (`1.50 GiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::{format_size, parse_size};

    #[test]
    fn units_and_forms() {
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("2 gib").unwrap(), 2 << 30);
        assert_eq!(parse_size("512MB").unwrap(), 512_000_000);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("3kb").unwrap(), 3000);
        assert_eq!(parse_size("7B").unwrap(), 7);
    }

    #[test]
    fn refusals_name_the_input() {
        for bad in ["", "GiB", "2XB", "1.2.3GB", "-1", "99999999999TiB"] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_size(100), "100 B");
        assert_eq!(format_size(3 << 29), "1.50 GiB");
    }
}
