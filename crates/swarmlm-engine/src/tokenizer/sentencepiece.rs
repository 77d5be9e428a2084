//! SentencePiece BPE (`tokenizer.model`), re-implemented to give exactly the ids and text of
//! Google's `sentencepiece` library.
//!
//! Why: the original Mistral/Mixtral releases ship only `tokenizer.model`, and the C++ library
//! is a heavy native dependency. Each step below mirrors the library's source (v0.2.x:
//! `normalizer.cc`, `bpe_model.cc`, `sentencepiece_processor.cc`, `model_interface.cc`),
//! including its quirks: pieces are merged by piece score (not by a merge list), ties go to the
//! leftmost pair, UNUSED pieces are split back after merging, unknown characters become their
//! UTF-8 bytes when `byte_fallback` is on (otherwise runs of them fold into one `<unk>`), and
//! decoding maps each invalid byte to U+FFFD and strips the one leading space the encoder added.
//! The test suite checks all of it against the Python `sentencepiece` package on a committed
//! corpus.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use super::proto::{parse_model_proto, ModelProto, NormalizerSpec, PieceType};
use super::TokenizerError;

/// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's visible stand-in for a space.
const SPACE_SYMBOL: &str = "\u{2581}";
const REPLACEMENT: &str = "\u{FFFD}";
const MODEL_TYPE_BPE: u64 = 2;

/// A loaded SentencePiece BPE model.
pub(crate) struct SentencePiece {
    pieces: Vec<(String, f32, PieceType)>,
    /// NORMAL, USER_DEFINED and UNUSED pieces: what BPE merges may produce.
    normal: HashMap<String, u32>,
    /// CONTROL, UNKNOWN and BYTE pieces.
    reserved: HashMap<String, u32>,
    /// User-defined symbols grouped by first char, longest first: they are never split or merged.
    user_defined: HashMap<char, Vec<String>>,
    unk_id: u32,
    /// Id of `<0xNN>` for every byte, when byte fallback is on.
    byte_ids: Option<Box<[u32; 256]>>,
    /// Inverse of `byte_ids`: the byte of each BYTE piece.
    byte_of: HashMap<u32, u8>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    treat_whitespace_as_suffix: bool,
    unk_surface: String,
    pub(crate) bos_id: Option<u32>,
    pub(crate) eos_id: Option<u32>,
}

impl std::fmt::Debug for SentencePiece {
    /// The settings, not the 32k-entry vocabulary.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentencePiece")
            .field("vocab_size", &self.pieces.len())
            .field("byte_fallback", &self.byte_ids.is_some())
            .field("add_dummy_prefix", &self.add_dummy_prefix)
            .field("remove_extra_whitespaces", &self.remove_extra_whitespaces)
            .field(
                "treat_whitespace_as_suffix",
                &self.treat_whitespace_as_suffix,
            )
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("unk_id", &self.unk_id)
            .finish_non_exhaustive()
    }
}

fn invalid(path: &Path, field: &str, reason: impl Into<String>) -> TokenizerError {
    TokenizerError::Invalid {
        path: path.to_path_buf(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// `<0x41>` → 0x41, exactly the spelling SentencePiece writes (two upper-case hex digits).
fn piece_to_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

fn optional_id(id: i64, n: usize) -> Option<u32> {
    (0..n as i64).contains(&id).then_some(id as u32)
}

impl SentencePiece {
    pub(crate) fn from_file(path: &Path) -> Result<SentencePiece, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let proto = parse_model_proto(&bytes).map_err(|source| TokenizerError::Proto {
            path: path.to_path_buf(),
            source,
        })?;
        SentencePiece::from_proto(proto, path)
    }

    pub(crate) fn from_proto(
        proto: ModelProto,
        path: &Path,
    ) -> Result<SentencePiece, TokenizerError> {
        let trainer = &proto.trainer_spec;
        if trainer.model_type != MODEL_TYPE_BPE {
            let name = match trainer.model_type {
                1 => "UNIGRAM",
                3 => "WORD",
                4 => "CHAR",
                _ => "unknown",
            };
            return Err(invalid(
                path,
                "trainer_spec.model_type",
                format!(
                    "is {} ({name}); this reader implements SentencePiece BPE (2), the model type \
                     of Mistral/Llama tokenizers",
                    trainer.model_type
                ),
            ));
        }
        check_identity_normalizer(&proto.normalizer_spec, "normalizer_spec", path)?;
        if let Some(spec) = &proto.denormalizer_spec {
            check_identity_normalizer(spec, "denormalizer_spec", path)?;
        }
        if proto.pieces.is_empty() {
            return Err(invalid(path, "pieces", "the model has no pieces"));
        }
        if proto.pieces.len() > u32::MAX as usize {
            return Err(invalid(path, "pieces", "more than 2^32 pieces"));
        }

        // The same checks as ModelInterface::InitializePieces.
        let mut normal = HashMap::new();
        let mut reserved = HashMap::new();
        let mut user_defined: HashMap<char, Vec<String>> = HashMap::new();
        let mut unk_id = None;
        let mut byte_ids = [u32::MAX; 256];
        let mut byte_of = HashMap::new();
        for (i, p) in proto.pieces.iter().enumerate() {
            let id = i as u32;
            let field = || format!("pieces[{i}]");
            if p.piece.is_empty() {
                return Err(invalid(path, &field(), "piece must not be empty"));
            }
            let is_normal = matches!(
                p.kind,
                PieceType::Normal | PieceType::UserDefined | PieceType::Unused
            );
            let map = if is_normal {
                &mut normal
            } else {
                &mut reserved
            };
            if map.insert(p.piece.clone(), id).is_some() {
                return Err(invalid(
                    path,
                    &field(),
                    format!("piece {:?} is defined twice", p.piece),
                ));
            }
            match p.kind {
                PieceType::UserDefined => {
                    // Non-empty (checked above), so it has a first char.
                    let first = p.piece.chars().next().unwrap_or_default();
                    user_defined.entry(first).or_default().push(p.piece.clone());
                }
                PieceType::Unknown => {
                    if let Some(first) = unk_id {
                        return Err(invalid(
                            path,
                            &field(),
                            format!("a second UNKNOWN piece (the first is id {first})"),
                        ));
                    }
                    unk_id = Some(id);
                }
                PieceType::Byte => {
                    if !trainer.byte_fallback {
                        return Err(invalid(
                            path,
                            &field(),
                            format!(
                                "byte piece {:?} although trainer_spec.byte_fallback is false",
                                p.piece
                            ),
                        ));
                    }
                    let b = piece_to_byte(&p.piece).ok_or_else(|| {
                        invalid(
                            path,
                            &field(),
                            format!("byte piece {:?} is not of the form <0xNN>", p.piece),
                        )
                    })?;
                    byte_ids[b as usize] = id;
                    byte_of.insert(id, b);
                }
                _ => {}
            }
        }
        let unk_id = unk_id.ok_or_else(|| invalid(path, "pieces", "no UNKNOWN piece"))?;
        let byte_ids = if trainer.byte_fallback {
            if let Some(b) = byte_ids.iter().position(|&id| id == u32::MAX) {
                return Err(invalid(
                    path,
                    "pieces",
                    format!("trainer_spec.byte_fallback is true but there is no piece <0x{b:02X}>"),
                ));
            }
            Some(Box::new(byte_ids))
        } else {
            None
        };
        for list in user_defined.values_mut() {
            list.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
        let n = proto.pieces.len();
        Ok(SentencePiece {
            bos_id: optional_id(trainer.bos_id, n),
            eos_id: optional_id(trainer.eos_id, n),
            unk_surface: trainer.unk_surface.clone(),
            treat_whitespace_as_suffix: trainer.treat_whitespace_as_suffix,
            add_dummy_prefix: proto.normalizer_spec.add_dummy_prefix,
            remove_extra_whitespaces: proto.normalizer_spec.remove_extra_whitespaces,
            escape_whitespaces: proto.normalizer_spec.escape_whitespaces,
            pieces: proto
                .pieces
                .into_iter()
                .map(|p| (p.piece, p.score, p.kind))
                .collect(),
            normal,
            reserved,
            user_defined,
            unk_id,
            byte_ids,
            byte_of,
        })
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Id of a piece by its exact spelling (e.g. `"<s>"` named in `tokenizer_config.json`).
    pub(crate) fn token_id(&self, piece: &str) -> Option<u32> {
        self.reserved
            .get(piece)
            .or_else(|| self.normal.get(piece))
            .copied()
    }

    pub(crate) fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|p| p.0.as_str())
    }

    fn kind(&self, id: u32) -> Option<PieceType> {
        self.pieces.get(id as usize).map(|p| p.2)
    }

    /// ModelInterface::PieceToId: reserved pieces first, then normal ones, else `<unk>`.
    fn piece_to_id(&self, piece: &str) -> u32 {
        self.reserved
            .get(piece)
            .or_else(|| self.normal.get(piece))
            .copied()
            .unwrap_or(self.unk_id)
    }

    /// Length in bytes of the longest user-defined symbol at the start of `s`, if any.
    fn user_defined_prefix(&self, s: &str) -> Option<usize> {
        let first = s.chars().next()?;
        self.user_defined
            .get(&first)?
            .iter()
            .find(|sym| s.starts_with(sym.as_str()))
            .map(|sym| sym.len())
    }

    /// PrefixMatcher::PrefixMatch: a user-defined symbol (frozen) or one character.
    fn next_symbol_len(&self, s: &str) -> (usize, bool) {
        match self.user_defined_prefix(s) {
            Some(len) => (len, true),
            None => (s.chars().next().map_or(0, char::len_utf8), false),
        }
    }

    /// Normalizer::Normalize for a model without a precompiled charsmap (identity mapping).
    fn normalize(&self, input: &str) -> String {
        let mut input = input;
        if input.is_empty() {
            return String::new();
        }
        // NormalizePrefix: a user-defined symbol is kept whole, anything else is one char.
        let prefix = |s: &str| -> usize {
            self.user_defined_prefix(s)
                .unwrap_or_else(|| s.chars().next().map_or(0, char::len_utf8))
        };
        if self.remove_extra_whitespaces {
            while !input.is_empty() {
                let n = prefix(input);
                if &input[..n] != " " {
                    break;
                }
                input = &input[n..];
            }
            if input.is_empty() {
                return String::new();
            }
        }
        let space = if self.escape_whitespaces {
            SPACE_SYMBOL
        } else {
            " "
        };
        let mut out = String::with_capacity(input.len() * 3);
        if !self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.push_str(space);
        }
        let mut is_prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let n = prefix(input);
            let mut sp = &input[..n];
            if is_prev_space {
                sp = sp.trim_start_matches(' ');
            }
            if !sp.is_empty() {
                for ch in sp.chars() {
                    if self.escape_whitespaces && ch == ' ' {
                        out.push_str(SPACE_SYMBOL);
                    } else {
                        out.push(ch);
                    }
                }
                is_prev_space = sp.ends_with(' ');
            }
            input = &input[n..];
            if !self.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        if self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.push_str(space);
        }
        out
    }

    /// bpe::Model::Encode: the pieces of a normalized string, as byte ranges and ids.
    fn bpe(&self, normalized: &str) -> Vec<(usize, usize, u32)> {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(normalized.len());
        let mut pos = 0;
        while pos < normalized.len() {
            let (len, freeze) = self.next_symbol_len(&normalized[pos..]);
            let index = symbols.len();
            symbols.push(Symbol {
                prev: index.checked_sub(1),
                next: (pos + len < normalized.len()).then_some(index + 1),
                freeze,
                start: pos,
                len,
            });
            pos += len;
        }
        if symbols.is_empty() {
            return Vec::new();
        }

        let mut agenda = BinaryHeap::new();
        // Merged UNUSED piece → the two pieces it was last made from (later pairs overwrite,
        // as in the C++ `rev_merge[piece] = ...`).
        let mut rev_merge: HashMap<&str, (&str, &str)> = HashMap::new();

        for i in 1..symbols.len() {
            self.maybe_add_pair(
                normalized,
                &symbols,
                &mut agenda,
                &mut rev_merge,
                Some(i - 1),
                Some(i),
            );
        }

        while let Some(top) = agenda.pop() {
            let (l, r) = (top.left, top.right);
            // Stale entry: one side was merged away or has grown since it was queued.
            if symbols[l].len == 0
                || symbols[r].len == 0
                || symbols[l].len + symbols[r].len != top.size
            {
                continue;
            }
            symbols[l].len += symbols[r].len;
            symbols[l].next = symbols[r].next;
            if let Some(n) = symbols[r].next {
                symbols[n].prev = Some(l);
            }
            symbols[r].len = 0;
            let prev = symbols[l].prev;
            self.maybe_add_pair(
                normalized,
                &symbols,
                &mut agenda,
                &mut rev_merge,
                prev,
                Some(l),
            );
            let next = symbols[l].next;
            self.maybe_add_pair(
                normalized,
                &symbols,
                &mut agenda,
                &mut rev_merge,
                Some(l),
                next,
            );
        }

        let mut out = Vec::new();
        let mut index = Some(0);
        while let Some(i) = index {
            let s = &symbols[i];
            self.resegment(normalized, s.start, s.len, &rev_merge, &mut out);
            index = s.next;
        }
        out
    }

    /// Queues the pair `(left, right)` if their concatenation is a piece (MaybeAddNewSymbolPair).
    fn maybe_add_pair<'a>(
        &self,
        normalized: &'a str,
        symbols: &[Symbol],
        agenda: &mut BinaryHeap<Pair>,
        rev_merge: &mut HashMap<&'a str, (&'a str, &'a str)>,
        left: Option<usize>,
        right: Option<usize>,
    ) {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let (sl, sr) = (&symbols[l], &symbols[r]);
        if sl.freeze || sr.freeze {
            return;
        }
        let merged = &normalized[sl.start..sl.start + sl.len + sr.len];
        let Some(&id) = self.normal.get(merged) else {
            return;
        };
        let (_, score, kind) = &self.pieces[id as usize];
        agenda.push(Pair {
            score: *score,
            left: l,
            right: r,
            size: merged.len(),
        });
        if *kind == PieceType::Unused {
            let left = &normalized[sl.start..sl.start + sl.len];
            let right = &normalized[sr.start..sr.start + sr.len];
            rev_merge.insert(merged, (left, right));
        }
    }

    /// Splits a merged UNUSED piece back into the pieces it was made from, recursively.
    fn resegment(
        &self,
        normalized: &str,
        start: usize,
        len: usize,
        rev_merge: &HashMap<&str, (&str, &str)>,
        out: &mut Vec<(usize, usize, u32)>,
    ) {
        let w = &normalized[start..start + len];
        let id = self.piece_to_id(w);
        if self.kind(id) != Some(PieceType::Unused) {
            out.push((start, len, id));
            return;
        }
        match rev_merge.get(w) {
            Some((left, right)) => {
                // Both halves are spelled by the same bytes as `w`, so they map onto its range.
                self.resegment(normalized, start, left.len(), rev_merge, out);
                self.resegment(normalized, start + left.len(), right.len(), rev_merge, out);
            }
            None => out.push((start, len, id)),
        }
    }

    /// SentencePieceProcessor::Encode → ids (PopulateSentencePieceText's byte fallback and
    /// folding of unknown runs included).
    pub(crate) fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        let normalized = self.normalize(text);
        let pieces = self.bpe(&normalized);
        let mut ids = Vec::with_capacity(pieces.len() + 1);
        if add_bos {
            if let Some(bos) = self.bos_id {
                ids.push(bos);
            }
        }
        let mut prev_unk = false;
        for (start, len, id) in pieces {
            let is_unk = self.kind(id) == Some(PieceType::Unknown);
            match (&self.byte_ids, is_unk) {
                (Some(byte_ids), true) => {
                    ids.extend(
                        normalized.as_bytes()[start..start + len]
                            .iter()
                            .map(|&b| byte_ids[b as usize]),
                    );
                }
                // A run of unknown pieces becomes one `<unk>`.
                (None, true) if prev_unk => {}
                _ => ids.push(id),
            }
            prev_unk = is_unk;
        }
        ids
    }

    /// The text of one non-byte piece, and whether it consumed the leading space the encoder
    /// added (DecodeSentencePiece).
    fn decode_piece(&self, id: u32, is_bos_ws: bool) -> (String, bool) {
        let (piece, _, kind) = &self.pieces[id as usize];
        match kind {
            PieceType::Control => return (String::new(), false),
            PieceType::Unknown => return (self.unk_surface.clone(), false),
            _ => {}
        }
        let mut piece = piece.as_str();
        let mut has_bos_ws = false;
        if is_bos_ws && (self.add_dummy_prefix || self.remove_extra_whitespaces) {
            if let Some(rest) = piece.strip_prefix(SPACE_SYMBOL) {
                piece = rest;
                has_bos_ws = true;
            }
            if self.remove_extra_whitespaces {
                has_bos_ws = false;
            }
        }
        (piece.replace(SPACE_SYMBOL, " "), has_bos_ws)
    }
}

/// One symbol of the BPE working list: a byte range of the normalized text, linked to its
/// neighbours (merged-away symbols keep `len == 0`).
struct Symbol {
    prev: Option<usize>,
    next: Option<usize>,
    freeze: bool,
    start: usize,
    len: usize,
}

/// Agenda entry: the pair `(left, right)` whose merged piece has `score` and `size` bytes.
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Ord for Pair {
    /// Max-heap order: higher score first; equal scores → leftmost first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pair {}

fn check_identity_normalizer(
    spec: &NormalizerSpec,
    field: &str,
    path: &Path,
) -> Result<(), TokenizerError> {
    if spec.precompiled_charsmap.is_empty() {
        return Ok(());
    }
    Err(invalid(
        path,
        &format!("{field}.precompiled_charsmap"),
        format!(
            "the model normalizes text with a compiled character map (rule {:?}, {} bytes); this \
             reader supports the identity normalizer of Mistral/Llama tokenizers only",
            spec.name,
            spec.precompiled_charsmap.len()
        ),
    ))
}

/// The decoder's state between ids: SentencePiece decodes a whole id list at once, and this is
/// the same algorithm made incremental, so that a full decode and a stream of pushes produce the
/// same text by construction.
#[derive(Debug, Clone)]
pub(crate) struct SpDecodeState {
    /// Still at the start: the next piece's leading `▁` is the encoder's dummy prefix.
    is_bos_ws: bool,
    /// The previous non-byte piece consumed the dummy prefix.
    bos_ws_seen: bool,
    /// Some non-empty text has been produced.
    text_nonempty: bool,
    /// Bytes of byte pieces not yet turned into text (an incomplete UTF-8 sequence).
    pending: Vec<u8>,
}

impl Default for SpDecodeState {
    fn default() -> Self {
        SpDecodeState {
            is_bos_ws: true,
            bos_ws_seen: false,
            text_nonempty: false,
            pending: Vec::new(),
        }
    }
}

/// Bytes a UTF-8 sequence starting with `b` needs, as SentencePiece's DecodeUTF8 sees it
/// (1 for ASCII and for bytes that cannot start a sequence).
fn utf8_need(b: u8) -> usize {
    match b {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

fn is_trail(b: u8) -> bool {
    b & 0xC0 == 0x80
}

/// string_util::IsValidDecodeUTF8 on `bytes`: the length of the valid character at the start,
/// or `None` when the first byte must become U+FFFD on its own.
fn valid_char_len(bytes: &[u8]) -> Option<usize> {
    let need = utf8_need(bytes[0]);
    if need == 1 {
        return (bytes[0] < 0x80).then_some(1);
    }
    if bytes.len() < need || !bytes[1..need].iter().all(|&b| is_trail(b)) {
        return None;
    }
    let mut cp = u32::from(bytes[0]) & (0x7F >> need);
    for &b in &bytes[1..need] {
        cp = cp << 6 | u32::from(b & 0x3F);
    }
    let min = [0, 0, 0x80, 0x800, 0x10000][need];
    let valid_cp = cp < 0xD800 || (0xE000..=0x10FFFF).contains(&cp);
    (cp >= min && valid_cp).then_some(need)
}

impl SpDecodeState {
    /// Turns pending bytes into text; with `end` the byte run is over, so an incomplete
    /// sequence is invalid rather than waiting for more bytes.
    fn drain(&mut self, end: bool, out: &mut String) {
        let mut off = 0;
        while off < self.pending.len() {
            let rest = &self.pending[off..];
            let need = utf8_need(rest[0]);
            let decidable = end
                || rest.len() >= need
                // A non-continuation byte already makes the sequence invalid.
                || rest[1..].iter().any(|&b| !is_trail(b));
            if !decidable {
                break;
            }
            // valid_char_len accepts exactly the well-formed sequences, which std agrees are UTF-8.
            let valid =
                valid_char_len(rest).and_then(|n| Some((n, std::str::from_utf8(&rest[..n]).ok()?)));
            match valid {
                Some((n, ch)) => {
                    out.push_str(ch);
                    off += n;
                }
                None => {
                    out.push_str(REPLACEMENT);
                    off += 1;
                }
            }
            self.text_nonempty = true;
        }
        self.pending.drain(..off);
    }

    /// Appends the text `id` adds. Ids outside the vocabulary are skipped.
    pub(crate) fn push(&mut self, model: &SentencePiece, id: u32, out: &mut String) {
        let Some(kind) = model.kind(id) else {
            return;
        };
        if kind == PieceType::Byte {
            // Every BYTE piece has an entry (checked when the model was loaded).
            if let Some(&b) = model.byte_of.get(&id) {
                self.pending.push(b);
                self.drain(false, out);
            }
            return;
        }
        self.drain(true, out);
        if self.bos_ws_seen || self.text_nonempty {
            self.is_bos_ws = false;
        }
        let (text, consumed) = model.decode_piece(id, self.is_bos_ws);
        self.bos_ws_seen = consumed;
        self.text_nonempty |= !text.is_empty();
        out.push_str(&text);
    }

    /// Flushes bytes still pending at the end of the ids.
    pub(crate) fn finish(&mut self, out: &mut String) {
        self.drain(true, out);
    }
}

impl SentencePiece {
    pub(crate) fn decode(&self, ids: &[u32]) -> String {
        let mut state = SpDecodeState::default();
        let mut out = String::new();
        for &id in ids {
            state.push(self, id, &mut out);
        }
        state.finish(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_validity_matches_sentencepiece_rules() {
        assert_eq!(valid_char_len(b"A"), Some(1));
        assert_eq!(valid_char_len(&[0x80]), None, "lone continuation byte");
        assert_eq!(valid_char_len(&[0xC3, 0xA9]), Some(2), "é");
        assert_eq!(valid_char_len(&[0xC0, 0x80]), None, "overlong NUL");
        assert_eq!(valid_char_len(&[0xE4, 0xB8, 0xAD]), Some(3), "中");
        assert_eq!(valid_char_len(&[0xED, 0xA0, 0x80]), None, "surrogate");
        assert_eq!(
            valid_char_len(&[0xEF, 0xBF, 0xBD]),
            Some(3),
            "U+FFFD itself is valid"
        );
        assert_eq!(valid_char_len(&[0xF0, 0x9F, 0x98, 0x80]), Some(4), "😀");
        assert_eq!(
            valid_char_len(&[0xF4, 0x90, 0x80, 0x80]),
            None,
            "above U+10FFFF"
        );
        assert_eq!(valid_char_len(&[0xE4, 0xB8]), None, "truncated");
        assert_eq!(valid_char_len(&[0xFF]), None);
    }

    #[test]
    fn piece_to_byte_accepts_only_sentencepiece_spelling() {
        assert_eq!(piece_to_byte("<0x0A>"), Some(0x0A));
        assert_eq!(piece_to_byte("<0xFF>"), Some(0xFF));
        assert_eq!(piece_to_byte("<0xff>"), None);
        assert_eq!(piece_to_byte("<0x1>"), None);
        assert_eq!(piece_to_byte("0x41"), None);
    }
}
