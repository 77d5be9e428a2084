//! A fast loader for the common `tokenizer.json` (a BPE model): the same tokenizer as the
//! `tokenizers` crate's own parse, in a fraction of the time.
//!
//! Why: `tokenizers::Tokenizer::from_bytes` reads the `model` section through untagged and
//! internally tagged serde enums, which buffer the whole section (for Mixtral 3.5 MB: 32000
//! vocabulary entries and 59k merges) into serde's intermediate `Content` tree, then into a
//! `serde_json::Value`, then once more for the merges' untagged format enum, before the BPE is
//! built. That was ~0.1 s of the ~0.19 s from `swarmlm run` to the first token.
//!
//! This loader finds the `model.vocab` and `model.merges` values with a structural scan (no
//! decoding), then parses the merges on a second thread while this one parses the vocabulary
//! (straight into the map the builder takes) and the rest of the document (with those two
//! values cut out): the small sections (normalizer, pre-tokenizer, post-processor, decoder,
//! truncation, padding, added tokens) through the crate's own serde types. The BPE is built by
//! the crate's own `BpeBuilder` from the same vocabulary and merges, with the same options, as
//! the crate's BPE deserializer does, and the `Tokenizer` is assembled with the crate's
//! `TokenizerBuilder` and `add_tokens`, the same steps as its `Tokenizer` deserializer. The
//! `tokenizers` crate stays the encoder and decoder.
//!
//! Anything this loader does not fully understand (a model other than `"type": "BPE"`, BPE
//! dropout, unknown or repeated keys, another version, any parse or build error) makes it give
//! up with a reason, and the caller falls back to the crate's full parse, which then decides (and
//! words any error). Tests check that both give the same tokenizer (serialized form, encodings,
//! decodings).

use std::fmt;
use std::ops::Range;

use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use tokenizers::models::bpe::{BpeBuilder, Merges, Vocab, BPE};
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PaddingParams,
    PostProcessorWrapper, PreTokenizerWrapper, TokenizerBuilder, TruncationParams,
};

use super::hf::VocabFacts;

/// A tokenizer built by [`load`], with the facts about its model's vocabulary that
/// `HfTokenizer` needs (taken from the parsed map, before the builder consumes it).
pub(crate) struct Loaded {
    pub(crate) tokenizer: tokenizers::Tokenizer,
    pub(crate) model_vocab: VocabFacts,
}

/// The document with `model.vocab` and `model.merges` replaced by `null` (they are parsed
/// separately). Missing sections are `None`, as for the crate; unknown keys make the fast path
/// give up.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    truncation: Option<TruncationParams>,
    #[serde(default)]
    padding: Option<PaddingParams>,
    #[serde(default)]
    added_tokens: Vec<AddedTokenWithId>,
    #[serde(default)]
    normalizer: Option<NormalizerWrapper>,
    #[serde(default)]
    pre_tokenizer: Option<PreTokenizerWrapper>,
    #[serde(default)]
    post_processor: Option<PostProcessorWrapper>,
    #[serde(default)]
    decoder: Option<DecoderWrapper>,
    model: BpeOptions,
}

/// An entry of `added_tokens`, read as the crate reads it (its own type for this is private):
/// the id is only checked, `add_tokens` assigns the ids.
#[derive(serde::Deserialize)]
struct AddedTokenWithId {
    id: u32,
    #[serde(flatten)]
    token: AddedToken,
}

/// The small fields of the `model` section, already applied to a builder.
struct BpeOptions(BpeBuilder);

/// Builds the tokenizer of a `tokenizer.json`, or says why this loader does not handle it.
///
/// The two big arrays are parsed in parallel: the merges on a second thread, started as soon as
/// the scan reaches them; the vocabulary and the rest of the document on this one.
pub(crate) fn load(bytes: &[u8]) -> Result<Loaded, String> {
    let parsed: Result<(Vocab, Document, Merges), String> = std::thread::scope(|s| {
        let mut merges_thread = None;
        let sections = scan::model_vocab_and_merges(bytes, |at| {
            merges_thread = std::thread::Builder::new()
                .name("tokenizer.json merges".to_string())
                .spawn_scoped(s, move || merges_from(&bytes[at..]))
                .ok();
        });
        let Some((vocab_at, merges_at)) = sections else {
            // Joined here so that a panic in it is not re-raised by the scope.
            if let Some(handle) = merges_thread {
                let _ = handle.join();
            }
            return Err("no single model.vocab and model.merges found".to_string());
        };
        let vocab = vocab_from(&bytes[vocab_at.clone()]);
        let doc = serde_json::from_slice::<Document>(&without(bytes, &vocab_at, &merges_at))
            .map_err(|e| e.to_string());
        let (merges, len) = match merges_thread {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err("the merges parser panicked".to_string())),
            None => merges_from(&bytes[merges_at.start..]),
        }?;
        if len != merges_at.len() {
            return Err("model.merges: the parse and the scan disagree".to_string());
        }
        Ok((vocab?, doc?, merges))
    });
    let (vocab, doc, merges) = parsed?;
    if let Some(v) = doc.version.as_deref().filter(|&v| v != "1.0") {
        return Err(format!("version {v:?}"));
    }
    let model_vocab = VocabFacts::of(vocab.iter().map(|(token, &id)| (token.as_str(), id)));
    let bpe = doc
        .model
        .0
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| e.to_string())?;
    let mut tokenizer = TokenizerBuilder::<
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_truncation(doc.truncation)
    .with_padding(doc.padding)
    .with_normalizer(doc.normalizer)
    .with_pre_tokenizer(doc.pre_tokenizer)
    .with_model(ModelWrapper::BPE(bpe))
    .with_decoder(doc.decoder)
    .with_post_processor(doc.post_processor)
    .build()
    .map_err(|e| e.to_string())?;
    for t in &doc.added_tokens {
        if let Some(id) = tokenizer.token_to_id(&t.token.content) {
            if id != t.id {
                tracing::warn!(
                    "tokenizer.json: added token {:?} is listed with id {} but has id {id}",
                    t.token.content,
                    t.id
                );
            }
        }
    }
    tokenizer
        .add_tokens(doc.added_tokens.into_iter().map(|t| t.token))
        .map_err(|e| e.to_string())?;
    Ok(Loaded {
        tokenizer: tokenizers::Tokenizer::from(tokenizer),
        model_vocab,
    })
}

/// Parses the merge list that `rest` starts with; returns it and its length in bytes.
fn merges_from(rest: &[u8]) -> Result<(Merges, usize), String> {
    let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<MergeList>();
    match stream.next() {
        Some(Ok(merges)) => Ok((merges.0, stream.byte_offset())),
        Some(Err(e)) => Err(format!("model.merges: {e}")),
        None => Err("model.merges: no value".to_string()),
    }
}

/// Parses `model.vocab` into a map allocated once at about its final size (a count of the `:`
/// in its text; a few more if tokens contain one).
fn vocab_from(text: &[u8]) -> Result<Vocab, String> {
    let capacity = text.iter().filter(|&&c| c == b':').count();
    let mut de = serde_json::Deserializer::from_slice(text);
    VocabSeed(capacity)
        .deserialize(&mut de)
        .and_then(|vocab| de.end().map(|()| vocab))
        .map_err(|e| format!("model.vocab: {e}"))
}

struct VocabSeed(usize);

impl<'de> DeserializeSeed<'de> for VocabSeed {
    type Value = Vocab;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vocab, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for VocabSeed {
    type Value = Vocab;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of tokens to ids")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vocab, A::Error> {
        let mut vocab = Vocab::with_capacity(self.0);
        // As the crate's map deserializer: a repeated token keeps its last id.
        while let Some((token, id)) = map.next_entry::<String, u32>()? {
            vocab.insert(token, id);
        }
        Ok(vocab)
    }
}

/// `bytes` with the values at `a` and `b` (disjoint) replaced by `null`.
fn without(bytes: &[u8], a: &Range<usize>, b: &Range<usize>) -> Vec<u8> {
    let (first, second) = if a.start < b.start { (a, b) } else { (b, a) };
    let mut out = Vec::with_capacity(bytes.len() - a.len() - b.len() + 8);
    out.extend_from_slice(&bytes[..first.start]);
    out.extend_from_slice(b"null");
    out.extend_from_slice(&bytes[first.end..second.start]);
    out.extend_from_slice(b"null");
    out.extend_from_slice(&bytes[second.end..]);
    out
}

impl<'de> Deserialize<'de> for BpeOptions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(BpeOptionsVisitor)
    }
}

struct BpeOptionsVisitor;

/// Applies an optional builder setting, as the crate's BPE deserializer does (`null` leaves the
/// builder's default).
fn set<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    builder: BpeBuilder,
    setter: fn(BpeBuilder, T) -> BpeBuilder,
) -> Result<BpeBuilder, A::Error> {
    Ok(match map.next_value::<Option<T>>()? {
        Some(v) => setter(builder, v),
        None => builder,
    })
}

impl<'de> Visitor<'de> for BpeOptionsVisitor {
    type Value = BpeOptions;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a BPE model object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BpeOptions, A::Error> {
        let mut builder = BPE::builder();
        let mut typed = false;
        let mut seen: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format!("model.{key} given twice")));
            }
            match key.as_str() {
                "type" => {
                    let t: String = map.next_value()?;
                    if t != "BPE" {
                        return Err(de::Error::custom(format!("model type {t:?}")));
                    }
                    typed = true;
                }
                "dropout" => {
                    if map.next_value::<Option<f32>>()?.is_some() {
                        return Err(de::Error::custom("BPE dropout"));
                    }
                }
                "unk_token" => builder = set(&mut map, builder, BpeBuilder::unk_token)?,
                "continuing_subword_prefix" => {
                    builder = set(&mut map, builder, BpeBuilder::continuing_subword_prefix)?
                }
                "end_of_word_suffix" => {
                    builder = set(&mut map, builder, BpeBuilder::end_of_word_suffix)?
                }
                "fuse_unk" => builder = set(&mut map, builder, BpeBuilder::fuse_unk)?,
                "byte_fallback" => builder = set(&mut map, builder, BpeBuilder::byte_fallback)?,
                "ignore_merges" => builder = set(&mut map, builder, BpeBuilder::ignore_merges)?,
                // Cut out of the document and parsed on their own; what is left is `null`.
                "vocab" | "merges" => map.next_value::<()>()?,
                other => return Err(de::Error::custom(format!("model.{other}"))),
            }
            seen.push(key);
        }
        if !typed {
            return Err(de::Error::custom("model without \"type\""));
        }
        Ok(BpeOptions(builder))
    }
}

/// `model.merges` in either of the crate's formats: all `["a", "b"]` pairs, or all legacy
/// `"a b"` strings (where, as in the crate, lines starting with `#version` are skipped and each
/// other line must split on ' ' into exactly two parts).
struct MergeList(Merges);

impl<'de> Deserialize<'de> for MergeList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(MergeListVisitor)
    }
}

struct MergeListVisitor;

impl<'de> Visitor<'de> for MergeListVisitor {
    type Value = MergeList;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of merges")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MergeList, A::Error> {
        let mut merges = Merges::with_capacity(seq.size_hint().unwrap_or(0));
        let mut legacy = None;
        while let Some(entry) = seq.next_element::<MergeEntry>()? {
            match entry {
                MergeEntry::Pair(a, b) if legacy != Some(true) => {
                    legacy = Some(false);
                    merges.push((a, b));
                }
                MergeEntry::Legacy(line) if legacy != Some(false) => {
                    legacy = Some(true);
                    if line.starts_with("#version") {
                        continue;
                    }
                    let mut parts = line.split(' ');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
                        _ => return Err(de::Error::custom(format!("merge {line:?}"))),
                    }
                }
                _ => return Err(de::Error::custom("merges mix pairs and strings")),
            }
        }
        Ok(MergeList(merges))
    }
}

enum MergeEntry {
    Pair(String, String),
    Legacy(String),
}

impl<'de> Deserialize<'de> for MergeEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MergeEntryVisitor)
    }
}

struct MergeEntryVisitor;

impl<'de> Visitor<'de> for MergeEntryVisitor {
    type Value = MergeEntry;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a merge: [\"a\", \"b\"] or \"a b\"")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<MergeEntry, E> {
        Ok(MergeEntry::Legacy(s.to_string()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<MergeEntry, E> {
        Ok(MergeEntry::Legacy(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MergeEntry, A::Error> {
        let a: String = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let b: String = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(3, &self));
        }
        Ok(MergeEntry::Pair(a, b))
    }
}

/// A structural scan of a JSON document that finds where `model.vocab` and `model.merges` are,
/// without decoding anything. Strings are skipped by their quotes and backslash escapes, so
/// brackets inside strings do not count. Keys are compared as written (a key spelled with
/// escapes is not found, and the document is then declined). Anything unexpected gives `None`;
/// whatever it returns is then parsed strictly by serde_json, so a wrong guess here can only
/// make the fast path decline, never accept a broken document.
mod scan {
    use std::ops::Range;

    /// serde_json's default nesting limit.
    const MAX_DEPTH: usize = 128;

    fn ws(b: &[u8], mut i: usize) -> usize {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    }

    /// `b[i]` is the opening quote; returns the index after the closing quote.
    fn string(b: &[u8], mut i: usize) -> Option<usize> {
        i += 1;
        loop {
            match b.get(i)? {
                b'"' => return Some(i + 1),
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
    }

    /// Returns the index after the value starting at `b[i]`.
    fn value(b: &[u8], i: usize, depth: usize) -> Option<usize> {
        if depth > MAX_DEPTH {
            return None;
        }
        match b.get(i)? {
            b'"' => string(b, i),
            b'{' => members(b, i, |_, at| value(b, at, depth + 1)),
            b'[' => {
                let mut i = ws(b, i + 1);
                if b.get(i) == Some(&b']') {
                    return Some(i + 1);
                }
                loop {
                    i = ws(b, value(b, i, depth + 1)?);
                    match b.get(i)? {
                        b',' => i = ws(b, i + 1),
                        b']' => return Some(i + 1),
                        _ => return None,
                    }
                }
            }
            _ => {
                // A number, true, false or null: up to the next delimiter.
                let end = b[i..]
                    .iter()
                    .position(|c| matches!(c, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'))
                    .map_or(b.len(), |n| i + n);
                (end > i).then_some(end)
            }
        }
    }

    /// Visits the members of the object starting at `b[i]` (keys as written, without quotes,
    /// and the value's start); returns the index after the object.
    fn members(
        b: &[u8],
        i: usize,
        mut each: impl FnMut(&[u8], usize) -> Option<usize>,
    ) -> Option<usize> {
        (b.get(i) == Some(&b'{')).then_some(())?;
        let mut i = ws(b, i + 1);
        if b.get(i) == Some(&b'}') {
            return Some(i + 1);
        }
        loop {
            (b.get(i) == Some(&b'"')).then_some(())?;
            let key_end = string(b, i)?;
            let key = &b[i + 1..key_end - 1];
            i = ws(b, key_end);
            (b.get(i) == Some(&b':')).then_some(())?;
            let at = ws(b, i + 1);
            i = ws(b, each(key, at)?);
            match b.get(i)? {
                b',' => i = ws(b, i + 1),
                b'}' => return Some(i + 1),
                _ => return None,
            }
        }
    }

    /// Byte ranges of the values of `model.vocab` and `model.merges`, each found exactly once.
    /// `merges_start` is called with the start of the merges as soon as it is found (the scan
    /// then still has to find where they end).
    pub(super) fn model_vocab_and_merges(
        b: &[u8],
        merges_start: impl FnOnce(usize),
    ) -> Option<(Range<usize>, Range<usize>)> {
        let mut merges_start = Some(merges_start);
        let mut model_seen = false;
        let (mut vocab, mut merges) = (None, None);
        let end = members(b, ws(b, 0), |key, at| {
            if key != b"model" {
                return value(b, at, 2);
            }
            if std::mem::replace(&mut model_seen, true) {
                return None;
            }
            members(b, at, |key, at| {
                if key == b"merges" {
                    merges_start.take()?(at);
                }
                let end = value(b, at, 3)?;
                let slot = match key {
                    b"vocab" => &mut vocab,
                    b"merges" => &mut merges,
                    _ => return Some(end),
                };
                slot.replace(at..end).is_none().then_some(end)
            })
        })?;
        (ws(b, end) == b.len()).then_some(())?;
        Some((vocab?, merges?))
    }
}

#[cfg(test)]
#[path = "hf_fast_tests.rs"]
mod tests;
