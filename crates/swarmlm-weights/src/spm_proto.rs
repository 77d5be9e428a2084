//! A minimal protobuf reader for SentencePiece's `ModelProto` (`tokenizer.model`).
//!
//! Why hand-written: we need four messages and a dozen scalar fields of a stable, public schema
//! (`sentencepiece_model.proto`), and a protobuf code generator would add a build step and a
//! dependency tree for that. The reader follows the protobuf wire format exactly: unknown fields
//! are skipped, a repeated occurrence of a scalar field overwrites the earlier one, and repeated
//! occurrences of a message field are merged, as protobuf parsers do.
//!
//! It lives in swarmlm-weights rather than next to the engine's tokenizer because the forge reads
//! the same files (to write the vocabulary into GGUF) and must not depend on the engine.

use std::fmt;

/// What went wrong, and where (byte offset in the file), while reading the wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    /// Byte offset in the file where the bad data starts.
    pub offset: usize,
    /// The message and field being read, e.g. `ModelProto.pieces[17].piece`.
    pub context: String,
    /// What was expected.
    pub reason: String,
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at byte {} in {}: {}",
            self.offset, self.context, self.reason
        )
    }
}

impl std::error::Error for ProtoError {}

/// `ModelProto.SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_wire(v: u64) -> Option<PieceType> {
        Some(match v {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }
}

/// `ModelProto.SentencePiece`: one vocabulary entry; its id is its index.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// The `TrainerSpec` fields that change how text is encoded or decoded (defaults as in the
/// `.proto`).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerSpec {
    /// 1 UNIGRAM, 2 BPE, 3 WORD, 4 CHAR.
    pub model_type: u64,
    pub vocab_size: i64,
    pub treat_whitespace_as_suffix: bool,
    pub byte_fallback: bool,
    pub unk_id: i64,
    pub bos_id: i64,
    pub eos_id: i64,
    pub pad_id: i64,
    pub unk_surface: String,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        TrainerSpec {
            model_type: 1,
            vocab_size: 8000,
            treat_whitespace_as_suffix: false,
            byte_fallback: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            unk_surface: " \u{2047} ".to_string(),
        }
    }
}

/// `NormalizerSpec` (defaults as in the `.proto`).
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizerSpec {
    pub name: String,
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
    pub normalization_rule_tsv: String,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        NormalizerSpec {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
            normalization_rule_tsv: String::new(),
        }
    }
}

/// `ModelProto`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelProto {
    pub pieces: Vec<Piece>,
    pub trainer_spec: TrainerSpec,
    pub normalizer_spec: NormalizerSpec,
    /// Present only when the model declares a denormalizer (applied after decoding).
    pub denormalizer_spec: Option<NormalizerSpec>,
}

/// A protobuf field value as it appears on the wire.
enum Value<'a> {
    Varint(u64),
    /// No field we read is 64-bit fixed; its value is skipped.
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf[0]` in the whole file, for error messages.
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    fn err(&self, context: &str, reason: impl Into<String>) -> ProtoError {
        ProtoError {
            offset: self.base + self.pos,
            context: context.to_string(),
            reason: reason.into(),
        }
    }

    fn varint(&mut self, context: &str) -> Result<u64, ProtoError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                self.pos = start;
                return Err(self.err(context, "truncated varint"));
            };
            self.pos += 1;
            // The tenth byte may only carry the top bit of a u64.
            if i == 9 && b > 1 {
                self.pos = start;
                return Err(self.err(context, "varint longer than 64 bits"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        self.pos = start;
        Err(self.err(context, "varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize, context: &str) -> Result<&'a [u8], ProtoError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                self.err(
                    context,
                    format!(
                        "field needs {n} bytes but only {} remain",
                        self.buf.len() - self.pos
                    ),
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Next `(field number, value, offset of the value)`, or `None` at the end of the message.
    fn field(&mut self, context: &str) -> Result<Option<(u64, Value<'a>, usize)>, ProtoError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint(context)?;
        let number = key >> 3;
        if number == 0 {
            return Err(self.err(context, "field number 0 is not valid protobuf"));
        }
        let at = self.base + self.pos;
        let value = match key & 7 {
            0 => Value::Varint(self.varint(context)?),
            1 => {
                self.take(8, context)?;
                Value::Fixed64
            }
            2 => {
                let len = self.varint(context)?;
                let len = usize::try_from(len)
                    .map_err(|_| self.err(context, "length does not fit in memory"))?;
                let at_payload = self.base + self.pos;
                let bytes = self.take(len, context)?;
                return Ok(Some((number, Value::Bytes(bytes), at_payload)));
            }
            5 => {
                let b = self.take(4, context)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => {
                // Wire types 3/4 (groups) are not used by sentencepiece_model.proto; 6/7 do not exist.
                return Err(self.err(
                    context,
                    format!("unsupported wire type {w} for field {number}"),
                ));
            }
        };
        Ok(Some((number, value, at)))
    }
}

fn expect_varint(v: &Value<'_>, at: usize, ctx: &str) -> Result<u64, ProtoError> {
    match v {
        Value::Varint(x) => Ok(*x),
        _ => Err(wire_mismatch(at, ctx, "a varint")),
    }
}

fn expect_bytes<'a>(v: &Value<'a>, at: usize, ctx: &str) -> Result<&'a [u8], ProtoError> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(wire_mismatch(at, ctx, "a length-delimited value")),
    }
}

fn expect_string(v: &Value<'_>, at: usize, ctx: &str) -> Result<String, ProtoError> {
    let b = expect_bytes(v, at, ctx)?;
    String::from_utf8(b.to_vec()).map_err(|e| ProtoError {
        offset: at + e.utf8_error().valid_up_to(),
        context: ctx.to_string(),
        reason: "string is not valid UTF-8".to_string(),
    })
}

/// int32 fields are encoded as the sign-extended 64-bit varint.
fn as_i32(x: u64) -> i64 {
    i64::from(x as i32)
}

fn wire_mismatch(at: usize, ctx: &str, expected: &str) -> ProtoError {
    ProtoError {
        offset: at,
        context: ctx.to_string(),
        reason: format!("expected {expected} (wrong wire type)"),
    }
}

/// Parses a serialized `ModelProto`.
pub fn parse_model_proto(buf: &[u8]) -> Result<ModelProto, ProtoError> {
    let mut model = ModelProto::default();
    let mut r = Reader::new(buf, 0);
    while let Some((number, value, at)) = r.field("ModelProto")? {
        match number {
            1 => {
                let ctx = format!("ModelProto.pieces[{}]", model.pieces.len());
                let b = expect_bytes(&value, at, &ctx)?;
                model.pieces.push(parse_piece(b, at, &ctx)?);
            }
            2 => {
                let b = expect_bytes(&value, at, "ModelProto.trainer_spec")?;
                parse_trainer_spec(b, at, &mut model.trainer_spec)?;
            }
            3 => {
                let b = expect_bytes(&value, at, "ModelProto.normalizer_spec")?;
                parse_normalizer_spec(
                    b,
                    at,
                    "ModelProto.normalizer_spec",
                    &mut model.normalizer_spec,
                )?;
            }
            5 => {
                let b = expect_bytes(&value, at, "ModelProto.denormalizer_spec")?;
                let spec = model.denormalizer_spec.get_or_insert_with(Default::default);
                parse_normalizer_spec(b, at, "ModelProto.denormalizer_spec", spec)?;
            }
            _ => {}
        }
    }
    Ok(model)
}

fn parse_piece(buf: &[u8], base: usize, ctx: &str) -> Result<Piece, ProtoError> {
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    let mut r = Reader::new(buf, base);
    while let Some((number, value, at)) = r.field(ctx)? {
        match number {
            1 => piece.piece = expect_string(&value, at, &format!("{ctx}.piece"))?,
            2 => match value {
                Value::Fixed32(bits) => piece.score = f32::from_bits(bits),
                _ => return Err(wire_mismatch(at, &format!("{ctx}.score"), "a 32-bit float")),
            },
            3 => {
                let v = expect_varint(&value, at, &format!("{ctx}.type"))?;
                piece.kind = PieceType::from_wire(v).ok_or_else(|| ProtoError {
                    offset: at,
                    context: format!("{ctx}.type"),
                    reason: format!("unknown piece type {v} (expected 1..=6)"),
                })?;
            }
            _ => {}
        }
    }
    Ok(piece)
}

fn parse_trainer_spec(buf: &[u8], base: usize, spec: &mut TrainerSpec) -> Result<(), ProtoError> {
    const CTX: &str = "ModelProto.trainer_spec";
    let mut r = Reader::new(buf, base);
    while let Some((number, value, at)) = r.field(CTX)? {
        let varint = |name: &str| expect_varint(&value, at, &format!("{CTX}.{name}"));
        match number {
            3 => spec.model_type = varint("model_type")?,
            4 => spec.vocab_size = as_i32(varint("vocab_size")?),
            24 => spec.treat_whitespace_as_suffix = varint("treat_whitespace_as_suffix")? != 0,
            35 => spec.byte_fallback = varint("byte_fallback")? != 0,
            40 => spec.unk_id = as_i32(varint("unk_id")?),
            41 => spec.bos_id = as_i32(varint("bos_id")?),
            42 => spec.eos_id = as_i32(varint("eos_id")?),
            43 => spec.pad_id = as_i32(varint("pad_id")?),
            44 => spec.unk_surface = expect_string(&value, at, &format!("{CTX}.unk_surface"))?,
            _ => {}
        }
    }
    Ok(())
}

fn parse_normalizer_spec(
    buf: &[u8],
    base: usize,
    ctx: &str,
    spec: &mut NormalizerSpec,
) -> Result<(), ProtoError> {
    let mut r = Reader::new(buf, base);
    while let Some((number, value, at)) = r.field(ctx)? {
        let varint = |name: &str| expect_varint(&value, at, &format!("{ctx}.{name}"));
        match number {
            1 => spec.name = expect_string(&value, at, &format!("{ctx}.name"))?,
            2 => {
                spec.precompiled_charsmap =
                    expect_bytes(&value, at, &format!("{ctx}.precompiled_charsmap"))?.to_vec()
            }
            3 => spec.add_dummy_prefix = varint("add_dummy_prefix")? != 0,
            4 => spec.remove_extra_whitespaces = varint("remove_extra_whitespaces")? != 0,
            5 => spec.escape_whitespaces = varint("escape_whitespaces")? != 0,
            6 => {
                spec.normalization_rule_tsv =
                    expect_string(&value, at, &format!("{ctx}.normalization_rule_tsv"))?
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field_bytes(number: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn field_varint(number: u64, v: u64, out: &mut Vec<u8>) {
        varint(number << 3, out);
        varint(v, out);
    }

    #[test]
    fn parses_pieces_specs_defaults_and_skips_unknown_fields() {
        let mut piece = Vec::new();
        field_bytes(1, "▁a".as_bytes(), &mut piece);
        varint(2 << 3 | 5, &mut piece);
        piece.extend_from_slice(&(-1.5f32).to_le_bytes());
        field_varint(3, 4, &mut piece);
        field_varint(99, 7, &mut piece); // unknown: skipped

        let mut trainer = Vec::new();
        field_varint(3, 2, &mut trainer);
        field_varint(35, 1, &mut trainer);
        field_varint(43, (-1i64) as u64, &mut trainer); // int32 -1: 10-byte varint
        field_varint(41, 5, &mut trainer);

        let mut normalizer = Vec::new();
        field_varint(4, 0, &mut normalizer);

        let mut model = Vec::new();
        field_bytes(1, &piece, &mut model);
        field_bytes(2, &trainer, &mut model);
        field_bytes(3, &normalizer, &mut model);
        varint(7 << 3 | 1, &mut model); // unknown fixed64
        model.extend_from_slice(&[0; 8]);

        let m = parse_model_proto(&model).unwrap();
        assert_eq!(
            m.pieces,
            vec![Piece {
                piece: "▁a".into(),
                score: -1.5,
                kind: PieceType::UserDefined
            }]
        );
        assert_eq!(m.trainer_spec.model_type, 2);
        assert!(m.trainer_spec.byte_fallback);
        assert_eq!(m.trainer_spec.pad_id, -1);
        assert_eq!(m.trainer_spec.bos_id, 5);
        assert_eq!(m.trainer_spec.eos_id, 2, "default kept");
        assert!(!m.normalizer_spec.remove_extra_whitespaces);
        assert!(m.normalizer_spec.add_dummy_prefix, "default kept");
        assert!(m.denormalizer_spec.is_none());
    }

    #[test]
    fn truncated_input_is_an_error_with_offset() {
        let mut model = Vec::new();
        field_bytes(1, b"\x0a\x05ab", &mut model); // piece claims 5 bytes, has 2
        let e = parse_model_proto(&model).unwrap_err();
        assert_eq!(e.context, "ModelProto.pieces[0]");
        assert_eq!(e.offset, 4);
        assert!(e.reason.contains("needs 5 bytes"), "{e}");

        let e = parse_model_proto(&[0x0a, 0xff]).unwrap_err();
        assert!(e.reason.contains("truncated varint"), "{e}");
        let e = parse_model_proto(&[0x0b]).unwrap_err();
        assert!(e.reason.contains("wire type 3"), "{e}");
    }
}
