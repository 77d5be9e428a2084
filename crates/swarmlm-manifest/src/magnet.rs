//! Magnet URIs (BEP 9): the one string a user pastes to name a swarm.
//!
//! A manifest stores its magnet verbatim (so the text round-trips), but everything that trusts it
//! goes through [`Magnet::parse`], which insists on exactly one v1 `xt=urn:btih:` topic (40 hex
//! digits or 32 base32 characters) and decodes `dn` and `tr`. [`Magnet::to_uri`] writes the
//! canonical form that `swarmlm create` prints.

use std::fmt::Write as _;

/// Why a magnet URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MagnetError {
    #[error("a magnet URI must start with `magnet:?`")]
    Scheme,
    #[error("the magnet URI has no `xt=urn:btih:` topic (a BitTorrent v1 info hash)")]
    NoTopic,
    #[error(
        "the magnet URI has more than one `xt` topic; swarmlm expects exactly one v1 info hash"
    )]
    SeveralTopics,
    #[error("`xt={0}` is not `urn:btih:` followed by 40 hex digits or 32 base32 characters")]
    BadTopic(String),
    #[error("parameter `{name}` is not valid percent-encoded UTF-8")]
    BadEncoding { name: String },
    #[error("parameter `{0}` appears more than once")]
    Duplicate(String),
}

/// The parts of a magnet URI swarmlm uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    /// BitTorrent v1 info hash: SHA-1 of the bencoded `info` dictionary.
    pub info_hash: [u8; 20],
    /// `dn`, the display name (normally the torrent's `info.name`).
    pub display_name: Option<String>,
    /// `tr` parameters, in order.
    pub trackers: Vec<String>,
}

impl Magnet {
    /// Parse and validate a magnet URI. Parameters other than `xt`, `dn` and `tr` are allowed and
    /// ignored (e.g. `x.pe`, which librqbit ignores anyway).
    pub fn parse(uri: &str) -> Result<Self, MagnetError> {
        let query = uri.strip_prefix("magnet:?").ok_or(MagnetError::Scheme)?;
        let mut info_hash = None;
        let mut display_name = None;
        let mut trackers = Vec::new();
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (name, raw) = param.split_once('=').unwrap_or((param, ""));
            match name {
                "xt" => {
                    let value = percent_decode(raw).ok_or_else(|| MagnetError::BadEncoding {
                        name: name.to_string(),
                    })?;
                    if info_hash.is_some() {
                        return Err(MagnetError::SeveralTopics);
                    }
                    info_hash = Some(parse_btih(&value)?);
                }
                "dn" => {
                    if display_name.is_some() {
                        return Err(MagnetError::Duplicate("dn".into()));
                    }
                    display_name =
                        Some(percent_decode(raw).ok_or_else(|| MagnetError::BadEncoding {
                            name: name.to_string(),
                        })?);
                }
                "tr" => {
                    trackers.push(percent_decode(raw).ok_or_else(|| MagnetError::BadEncoding {
                        name: name.to_string(),
                    })?)
                }
                _ => {}
            }
        }
        Ok(Magnet {
            info_hash: info_hash.ok_or(MagnetError::NoTopic)?,
            display_name,
            trackers,
        })
    }

    /// The canonical URI: `magnet:?xt=urn:btih:<lowercase hex>&dn=<name>&tr=<url>...`, with `dn`
    /// and every `tr` percent-encoded (everything but RFC 3986 unreserved characters).
    pub fn to_uri(&self) -> String {
        let mut uri = format!("magnet:?xt=urn:btih:{}", hex::encode(self.info_hash));
        if let Some(dn) = &self.display_name {
            uri.push_str("&dn=");
            uri.push_str(&percent_encode(dn));
        }
        for tr in &self.trackers {
            uri.push_str("&tr=");
            uri.push_str(&percent_encode(tr));
        }
        uri
    }
}

fn parse_btih(xt: &str) -> Result<[u8; 20], MagnetError> {
    let bad = || MagnetError::BadTopic(xt.to_string());
    let digits = xt.strip_prefix("urn:btih:").ok_or_else(bad)?;
    let mut out = [0u8; 20];
    match digits.len() {
        40 => hex::decode_to_slice(digits, &mut out).map_err(|_| bad())?,
        32 => out = base32_decode_20(digits).ok_or_else(bad)?,
        _ => return Err(bad()),
    }
    Ok(out)
}

/// RFC 4648 base32 (case-insensitive, no padding) of exactly 20 bytes = 32 characters.
fn base32_decode_20(s: &str) -> Option<[u8; 20]> {
    let mut out = [0u8; 20];
    let mut acc: u64 = 0;
    let mut bits = 0;
    let mut n = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out[n] = (acc >> bits) as u8;
            n += 1;
            acc &= (1 << bits) - 1;
        }
    }
    (n == 20 && bits == 0).then_some(out)
}

/// Percent-encode everything except RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decode `%XX` escapes and `+` (as space, as form encoding does); `None` when an escape is
/// malformed or the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXTRAL: &str = "magnet:?xt=urn:btih:5546272da9065eddeb6fcd7ffddeef5b75be79a7&dn=mixtral-8x7b-32kseqlen&tr=udp%3A%2F%2Fopentracker.i2p.rocks%3A6969%2Fannounce&tr=http%3A%2F%2Ftracker.openbittorrent.com%3A80%2Fannounce";

    #[test]
    fn parses_a_real_release_magnet() {
        let m = Magnet::parse(MIXTRAL).unwrap();
        assert_eq!(
            hex::encode(m.info_hash),
            "5546272da9065eddeb6fcd7ffddeef5b75be79a7"
        );
        assert_eq!(m.display_name.as_deref(), Some("mixtral-8x7b-32kseqlen"));
        assert_eq!(
            m.trackers,
            vec![
                "udp://opentracker.i2p.rocks:6969/announce".to_string(),
                "http://tracker.openbittorrent.com:80/announce".to_string()
            ]
        );
        assert_eq!(m.to_uri(), MIXTRAL);
    }

    #[test]
    fn base32_topic_equals_hex_topic() {
        // 20 bytes 0x00..0x13 in base32 (RFC 4648).
        let bytes: Vec<u8> = (0u8..20).collect();
        let b32 = "AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT";
        let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{b32}")).unwrap();
        assert_eq!(m.info_hash.to_vec(), bytes);
        let lower = Magnet::parse(&format!("magnet:?xt=urn:btih:{}", b32.to_lowercase())).unwrap();
        assert_eq!(lower.info_hash.to_vec(), bytes);
    }

    #[test]
    fn refuses_bad_magnets() {
        let h = "5546272da9065eddeb6fcd7ffddeef5b75be79a7";
        assert_eq!(
            Magnet::parse(&format!("http://x/?xt=urn:btih:{h}")),
            Err(MagnetError::Scheme)
        );
        assert_eq!(Magnet::parse("magnet:?dn=x"), Err(MagnetError::NoTopic));
        assert!(matches!(
            Magnet::parse("magnet:?xt=urn:btih:5546272da9065eddeb6fcd7ffddeef5b75be79a"),
            Err(MagnetError::BadTopic(_))
        ));
        assert!(matches!(
            Magnet::parse("magnet:?xt=urn:btih:zz46272da9065eddeb6fcd7ffddeef5b75be79a7"),
            Err(MagnetError::BadTopic(_))
        ));
        assert!(matches!(
            Magnet::parse("magnet:?xt=urn:btmh:1220aaaa"),
            Err(MagnetError::BadTopic(_))
        ));
        assert!(matches!(
            Magnet::parse("magnet:?xt=urn:btih:AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQ1"),
            Err(MagnetError::BadTopic(_))
        ));
        assert_eq!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{h}&xt=urn:btih:{h}")),
            Err(MagnetError::SeveralTopics)
        );
        assert!(matches!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{h}&dn=%ff")),
            Err(MagnetError::BadEncoding { .. })
        ));
        assert!(matches!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{h}&tr=%2")),
            Err(MagnetError::BadEncoding { .. })
        ));
    }

    #[test]
    fn encoding_round_trips_odd_names() {
        let m = Magnet {
            info_hash: [0xab; 20],
            display_name: Some("Mixtral 8x7B & friends/ü".into()),
            trackers: vec!["http://127.0.0.1:6969/announce?a=b&c=d".into()],
        };
        let uri = m.to_uri();
        assert!(!uri.contains(' ') && !uri.contains("&c=d"));
        assert_eq!(Magnet::parse(&uri).unwrap(), m);
    }
}
