//! Bencode (BEP 3), just enough to write reproducible .torrent files and read them strictly.
//!
//! The writer sorts dictionary keys by raw bytes (a `BTreeMap<Vec<u8>, _>`), which BEP 3 requires
//! and which makes the info hash a pure function of the content. The reader is strict because a
//! .torrent is untrusted input: canonical integers only, sorted unique keys, lengths checked
//! against the input before any allocation, and a nesting limit so hostile input cannot exhaust
//! the stack. It also keeps each value's raw bytes, so the info hash is computed over exactly the
//! bytes that were received.

use std::collections::BTreeMap;

/// A value to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Value::Bytes(b) => {
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(b);
            }
            Value::List(items) => {
                out.push(b'l');
                for v in items {
                    v.encode_into(out);
                }
                out.push(b'e');
            }
            Value::Dict(map) => {
                out.push(b'd');
                for (k, v) in map {
                    out.extend_from_slice(k.len().to_string().as_bytes());
                    out.push(b':');
                    out.extend_from_slice(k);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }
}

/// A decoded value borrowing from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Vec<Decoded<'a>>),
    /// Entries in input order (which the reader has checked is sorted and unique).
    Dict(Vec<DictEntry<'a>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DictEntry<'a> {
    pub key: &'a [u8],
    pub value: Decoded<'a>,
    /// The value's exact encoded bytes.
    pub raw: &'a [u8],
}

impl<'a> Decoded<'a> {
    /// The entry for `key` in a dictionary.
    pub fn get(&self, key: &str) -> Option<&DictEntry<'a>> {
        match self {
            Decoded::Dict(entries) => entries.iter().find(|e| e.key == key.as_bytes()),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Decoded::Int(_) => "an integer",
            Decoded::Bytes(_) => "a string",
            Decoded::List(_) => "a list",
            Decoded::Dict(_) => "a dictionary",
        }
    }
}

/// Where and why the input is not strict bencode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad bencode at byte {offset}: {problem}")]
pub struct DecodeError {
    pub offset: usize,
    pub problem: String,
}

/// Deeper nesting than any real .torrent needs; bounds recursion on hostile input.
const MAX_DEPTH: usize = 64;

/// Decode exactly one value spanning the whole input.
pub fn decode(input: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    let mut p = Parser { input, pos: 0 };
    let v = p.value(0)?;
    if p.pos != input.len() {
        return Err(p.err(format!(
            "{} trailing bytes after the value",
            input.len() - p.pos
        )));
    }
    Ok(v)
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, problem: impl Into<String>) -> DecodeError {
        DecodeError {
            offset: self.pos,
            problem: problem.into(),
        }
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.err("unexpected end of input"))
    }

    fn value(&mut self, depth: usize) -> Result<Decoded<'a>, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let i = self.integer(b'e')?;
                Ok(Decoded::Int(i))
            }
            b'0'..=b'9' => Ok(Decoded::Bytes(self.bytes()?)),
            b'l' => {
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Decoded::List(items))
            }
            b'd' => {
                self.pos += 1;
                let mut entries: Vec<DictEntry<'a>> = Vec::new();
                while self.peek()? != b'e' {
                    let key_at = self.pos;
                    if !self.peek()?.is_ascii_digit() {
                        return Err(self.err("dictionary key is not a string"));
                    }
                    let key = self.bytes()?;
                    if let Some(prev) = entries.last() {
                        if prev.key >= key {
                            return Err(DecodeError {
                                offset: key_at,
                                problem: format!(
                                    "dictionary key {:?} is {} (keys must be sorted and unique)",
                                    String::from_utf8_lossy(key),
                                    if prev.key == key {
                                        "repeated"
                                    } else {
                                        "out of order"
                                    }
                                ),
                            });
                        }
                    }
                    let start = self.pos;
                    let value = self.value(depth + 1)?;
                    entries.push(DictEntry {
                        key,
                        value,
                        raw: &self.input[start..self.pos],
                    });
                }
                self.pos += 1;
                Ok(Decoded::Dict(entries))
            }
            other => Err(self.err(format!("unexpected byte 0x{other:02x}"))),
        }
    }

    /// Digits up to `end`, canonical: no leading zeros, no `-0`, no empty number, fits i64.
    fn integer(&mut self, end: u8) -> Result<i64, DecodeError> {
        let start = self.pos;
        let rest = &self.input[start..];
        let len = rest
            .iter()
            .position(|&b| b == end)
            .ok_or_else(|| self.err("unterminated integer"))?;
        let digits = &rest[..len];
        let text = std::str::from_utf8(digits).map_err(|_| self.err("integer is not ASCII"))?;
        let unsigned = text.strip_prefix('-').unwrap_or(text);
        let canonical = !unsigned.is_empty()
            && unsigned.bytes().all(|b| b.is_ascii_digit())
            && !(unsigned.len() > 1 && unsigned.starts_with('0'))
            && text != "-0";
        if !canonical {
            return Err(self.err(format!("{text:?} is not a canonical integer")));
        }
        let value = text
            .parse::<i64>()
            .map_err(|_| self.err(format!("integer {text} does not fit 64 bits")))?;
        self.pos = start + len + 1;
        Ok(value)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.integer(b':')?;
        if len < 0 {
            return Err(self.err("negative string length"));
        }
        let len = len as usize;
        let available = self.input.len() - self.pos;
        if len > available {
            return Err(self.err(format!(
                "string of {len} bytes but only {available} bytes left"
            )));
        }
        let s = &self.input[self.pos..self.pos + len];
        self.pos += len;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_sorted_keys() {
        let mut d = BTreeMap::new();
        d.insert(b"zeta".to_vec(), Value::Int(-3));
        d.insert(
            b"alpha".to_vec(),
            Value::List(vec![Value::str("x"), Value::Int(0)]),
        );
        let enc = Value::Dict(d).encode();
        assert_eq!(enc, b"d5:alphal1:xi0ee4:zetai-3ee");
        let dec = decode(&enc).unwrap();
        let alpha = dec.get("alpha").unwrap();
        assert_eq!(alpha.raw, b"l1:xi0ee");
        assert_eq!(dec.get("zeta").unwrap().value, Decoded::Int(-3));
    }

    #[test]
    fn refuses_non_canonical_and_hostile_input() {
        for bad in [
            &b"i01e"[..],
            b"i-0e",
            b"ie",
            b"i1",
            b"i99999999999999999999e",
            b"01:a",
            b"5:abc",
            b"d1:bi1e1:ai2ee",
            b"d1:ai1e1:ai2ee",
            b"di1ei2ee",
            b"l",
            b"i1ei2e",
            b"x",
            b"",
            b"-1:a",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = [vec![b'l'; 1000], vec![b'e'; 1000]].concat();
        assert!(decode(&deep).unwrap_err().problem.contains("nested"));
        assert_eq!(decode(b"i-12e").unwrap(), Decoded::Int(-12));
    }
}
