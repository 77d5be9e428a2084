//! Small parsers and paths the fetch/seed commands share: durations like "30s" or "2m",
//! `--only` globs, and the default model store.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A duration written as one or more `<number><unit>` parts: "500ms", "30s", "2m", "1h30m".
/// A bare number means seconds.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration (expected e.g. 30s, 2m, 1h)".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("{input:?}: missing a unit after {rest:?} (ms, s, m, h)"))?;
        if digits == 0 {
            return Err(format!("{input:?}: expected a number before {rest:?}"));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{input:?}: {:?} is not a number", &rest[..digits]))?;
        let after = &rest[digits..];
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let unit = &after[..unit_len];
        let scale = match unit {
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hours" => 3600.0,
            other => {
                return Err(format!(
                    "{input:?}: unknown unit {other:?} (expected ms, s, m or h)"
                ))
            }
        };
        total += Duration::from_secs_f64(number * scale);
        rest = &after[unit_len..];
    }
    Ok(total)
}

/// Shell-style glob over '/'-separated paths: `*` and `?` stay within one component,
/// `**` spans components. Used by `--only`.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn inner(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = if p.get(2) == Some(&b'/') {
                    &p[3..]
                } else {
                    &p[2..]
                };
                (0..=s.len()).any(|i| inner(rest, &s[i..]))
            }
            Some(b'*') => {
                let rest = &p[1..];
                for i in 0..=s.len() {
                    if inner(rest, &s[i..]) {
                        return true;
                    }
                    if i < s.len() && s[i] == b'/' {
                        break;
                    }
                }
                false
            }
            Some(b'?') => !s.is_empty() && s[0] != b'/' && inner(&p[1..], &s[1..]),
            Some(&c) => !s.is_empty() && s[0] == c && inner(&p[1..], &s[1..]),
        }
    }
    inner(pattern.as_bytes(), path.as_bytes())
}

/// Where models live unless `--out` says otherwise:
/// `$SWARMLM_HOME/models`, else `$XDG_DATA_HOME/swarmlm/models`, else
/// `~/.local/share/swarmlm/models`.
/// The rule lives in `swarmlm_manifest::store::models_root`, shared by every crate.
pub fn default_store() -> Option<PathBuf> {
    swarmlm_manifest::store::models_root()
}

/// A model name is used as one directory component of the store: keep it to one.
pub fn safe_dir_name(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0');
    ok.then_some(name)
}

/// Checks one torrent file path (as '/'-joined components) before it becomes a path on
/// disk: relative, no `..`, no empty or `.` components (trap 16: a manifest is a second
/// source of names).
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') || path.starts_with('\\') {
        return Err("absolute path".into());
    }
    for comp in path.split('/') {
        match comp {
            "" => return Err("empty path component".into()),
            "." | ".." => return Err(format!("{comp:?} component")),
            c if c.contains('\\') || c.contains('\0') => {
                return Err("backslash or NUL in a component".into())
            }
            _ => {}
        }
    }
    if Path::new(path).is_absolute() {
        return Err("absolute path".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("ten").is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.json", "config.json"));
        assert!(!glob_match("*.json", "sub/config.json"));
        assert!(glob_match("**/*.json", "sub/config.json"));
        assert!(glob_match("**/*.json", "config.json"));
        assert!(glob_match(
            "model-0000?-of-*.safetensors",
            "model-00001-of-00003.safetensors"
        ));
        assert!(!glob_match("model-*.bin", "model-1.safetensors"));
        assert!(glob_match("sub/**", "sub/a/b"));
    }

    #[test]
    fn relative_paths() {
        assert!(check_relative_path("a/b.bin").is_ok());
        assert!(check_relative_path("../etc/passwd").is_err());
        assert!(check_relative_path("/etc/passwd").is_err());
        assert!(check_relative_path("a//b").is_err());
        assert!(check_relative_path("a/./b").is_err());
        assert!(check_relative_path("").is_err());
        assert!(safe_dir_name("mixtral").is_some());
        assert!(safe_dir_name("..").is_none());
        assert!(safe_dir_name("a/b").is_none());
    }
}
