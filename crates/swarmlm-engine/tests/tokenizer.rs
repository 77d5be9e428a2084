//! Tokenizers against their reference implementations.
//!
//! `tests/fixtures/tokenizer/expected.json` holds the ids and decoded text that Python
//! `sentencepiece` and `tokenizers` give for every text of `corpus.txt` (written by
//! `scripts/make_tokenizer_fixtures.py`). These tests require ours to be identical, and the
//! stream decoder to reproduce `decode` exactly.

use std::path::PathBuf;

use serde_json::Value;
use swarmlm_engine::tokenizer::{Tokenizer, TokenizerError, TokenizerKind};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn repo_root() -> PathBuf {
    crate_dir().join("../..")
}

fn fixtures() -> PathBuf {
    crate_dir().join("tests/fixtures/tokenizer")
}

fn mistral_dir() -> PathBuf {
    repo_root().join("assets/tokenizers/mistral-v1")
}

fn shakespeare_dir() -> PathBuf {
    repo_root().join("assets/models/shakespeare-moe")
}

fn expected() -> &'static Value {
    static EXPECTED: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    EXPECTED.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn texts() -> Vec<String> {
    expected()["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

/// A scratch directory under cargo's per-target temp dir, emptied first.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tokenizer-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Everything `push` and `finish` return, concatenated.
fn stream(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut dec = tok.stream_decoder();
    let mut out = String::new();
    for &id in ids {
        if let Some(s) = dec.push(id) {
            assert!(!s.is_empty(), "push returned Some(\"\")");
            out.push_str(&s);
        }
    }
    out.extend(dec.finish());
    out
}

/// Checks one section of expected.json: encode, decode, decode of odd id lists, streaming.
fn check_section(tok: &Tokenizer, section: &str) {
    let sec = &expected()[section];
    let texts = texts();
    assert_eq!(tok.vocab_size() as u64, sec["vocab_size"].as_u64().unwrap());
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in sec["cases"].as_array().unwrap() {
        let text = &texts[case["i"].as_u64().unwrap() as usize];
        let want = ids_of(&case["ids"]);
        let want_text = case
            .get("decoded")
            .map_or(text.as_str(), |d| d.as_str().unwrap());
        let got = tok.encode(text, false).unwrap();
        if got != want {
            failures.push(format!(
                "encode {text:?}:\n   got  {got:?}\n   want {want:?}"
            ));
        }
        let decoded = tok.decode(&want);
        if decoded != want_text {
            failures.push(format!(
                "decode {want:?}: got {decoded:?}, want {want_text:?}"
            ));
        }
        let streamed = stream(tok, &want);
        if streamed != decoded {
            failures.push(format!(
                "stream {want:?}: {streamed:?} != decode {decoded:?}"
            ));
        }
        checked += 1;
    }
    for case in sec["decode_only"].as_array().unwrap() {
        let ids = ids_of(&case["ids"]);
        let want = case["decoded"].as_str().unwrap();
        let decoded = tok.decode(&ids);
        if decoded != want {
            failures.push(format!("decode {ids:?}: got {decoded:?}, want {want:?}"));
        }
        let streamed = stream(tok, &ids);
        if streamed != decoded {
            failures.push(format!(
                "stream {ids:?}: {streamed:?} != decode {decoded:?}"
            ));
        }
        checked += 1;
    }
    assert!(checked > 300, "{section}: only {checked} cases");
    assert!(
        failures.is_empty(),
        "{section}: {} of {checked} cases differ from the reference; first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(8)].join("\n")
    );
}

/// SentencePiece sections also hold `add_bos=True, add_eos=True` encodings.
fn check_bos_eos(tok: &Tokenizer, section: &str) {
    let sec = &expected()[section];
    let texts = texts();
    let (bos, eos) = (
        sec["bos_id"].as_u64().unwrap() as u32,
        sec["eos_id"].as_u64().unwrap() as u32,
    );
    assert_eq!(tok.bos_id(), Some(bos));
    assert_eq!(tok.eos_id(), Some(eos));
    let cases = sec["with_bos_eos"].as_array().unwrap();
    assert_eq!(cases.len(), 40);
    for case in cases {
        let text = &texts[case["i"].as_u64().unwrap() as usize];
        let want = ids_of(&case["ids"]);
        let (last, body) = want.split_last().unwrap();
        assert_eq!(*last, eos);
        assert_eq!(tok.encode(text, true).unwrap(), body, "{text:?}");
        let want_text = case
            .get("decoded")
            .map_or(text.as_str(), |d| d.as_str().unwrap());
        assert_eq!(tok.decode(&want), want_text, "BOS/EOS produce no text");
        assert_eq!(stream(tok, &want), want_text);
    }
}

fn mistral_sp() -> Tokenizer {
    Tokenizer::from_sentencepiece_file(mistral_dir().join("tokenizer.model")).unwrap()
}

fn mistral_hf() -> Tokenizer {
    Tokenizer::from_hf_json_file(mistral_dir().join("tokenizer.json")).unwrap()
}

#[test]
fn mistral_sentencepiece_matches_python_sentencepiece() {
    let tok = mistral_sp();
    assert_eq!(tok.kind(), TokenizerKind::SentencePiece);
    assert_eq!(tok.vocab_size(), 32000);
    assert!(tok.add_bos_by_default());
    let debug = format!("{tok:?}");
    assert!(
        debug.contains("vocab_size: 32000") && debug.len() < 1000,
        "{debug}"
    );
    check_section(&tok, "mistral_sp");
    check_bos_eos(&tok, "mistral_sp");
}

#[test]
fn mistral_known_reference_ids() {
    let tok = mistral_sp();
    let text = "Hello, world! Paris est la capitale de la France.";
    let want = [
        1, 22557, 28725, 1526, 28808, 5465, 934, 543, 16809, 883, 340, 543, 4843, 28723,
    ];
    assert_eq!(tok.encode(text, true).unwrap(), want);
    assert_eq!(tok.decode(&want), text);
    assert_eq!(mistral_hf().encode(text, true).unwrap(), want);
}

#[test]
fn runs_of_spaces_follow_sentencepiece_not_the_hf_conversion() {
    // The documented divergence: "x  y   z" is ▁x ▁ ▁y ▁▁ ▁z in SentencePiece, ▁x ▁▁ y ▁▁ ▁z in
    // the HF BPE conversion. Each back end must reproduce its own reference.
    let sp = mistral_sp();
    let hf = mistral_hf();
    let pieces = |tok: &Tokenizer, text: &str| -> Vec<String> {
        tok.encode(text, false)
            .unwrap()
            .iter()
            .map(|&id| tok.id_to_piece(id).unwrap())
            .collect()
    };
    assert_eq!(pieces(&sp, "x  y   z"), ["▁x", "▁", "▁y", "▁▁", "▁z"]);
    assert_eq!(pieces(&hf, "x  y   z"), ["▁x", "▁▁", "y", "▁▁", "▁z"]);
    assert_eq!(sp.decode(&sp.encode("x  y   z", true).unwrap()), "x  y   z");
    // Byte fallback: a newline and a rare CJK character have no piece of their own.
    assert_eq!(
        pieces(&sp, "a\n𠀀"),
        ["▁a", "<0x0A>", "<0xF0>", "<0xA0>", "<0x80>", "<0x80>"]
    );
    assert_eq!(sp.encode("", true).unwrap(), [1]);
    assert_eq!(sp.encode("", false).unwrap(), Vec::<u32>::new());
}

#[test]
fn mistral_tokenizer_json_matches_python_tokenizers() {
    let tok = mistral_hf();
    assert_eq!(tok.kind(), TokenizerKind::HfJson);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert!(tok.add_bos_by_default());
    check_section(&tok, "mistral_hf");
}

#[test]
fn shakespeare_tokenizer_json_matches_python_tokenizers() {
    let tok = Tokenizer::from_model_dir(&shakespeare_dir()).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::HfJson);
    assert_eq!(tok.vocab_size(), 4096);
    check_section(&tok, "shakespeare_hf");
}

#[test]
fn shakespeare_reference_prompts_generations_and_heldout() {
    let dir = shakespeare_dir();
    let tok = Tokenizer::from_model_dir(&dir).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert!(tok.add_bos_by_default());
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("reference/reference.json")).unwrap(),
    )
    .unwrap();
    for p in reference["prompts"].as_array().unwrap() {
        let prompt = p["prompt"].as_str().unwrap();
        let input_ids = ids_of(&p["input_ids"]);
        assert_eq!(tok.encode(prompt, true).unwrap(), input_ids, "{prompt:?}");
        for run in ["f32", "bf16"] {
            let new_ids = ids_of(&p[run]["greedy_new_ids"]);
            let text = p[run]["greedy_text"].as_str().unwrap();
            assert_eq!(tok.decode(&new_ids), text);
            assert_eq!(stream(&tok, &new_ids), text);
            let all: Vec<u32> = input_ids.iter().chain(&new_ids).copied().collect();
            let full = tok.decode(&all);
            if let Some(want) = p[run].get("full_text") {
                assert_eq!(full, want.as_str().unwrap());
            }
            // Generation streams after the prompt: the prompt's text plus the stream is the
            // full text, leading spaces included.
            let mut dec = tok.stream_decoder_after(&input_ids);
            let mut gen = String::new();
            for &id in &new_ids {
                gen.extend(dec.push(id));
            }
            gen.extend(dec.finish());
            assert_eq!(format!("{}{gen}", tok.decode(&input_ids)), full);
        }
    }
    let heldout = std::fs::read_to_string(dir.join("reference/heldout.txt")).unwrap();
    let want: Vec<u32> = ids_of(
        &serde_json::from_str::<Value>(
            &std::fs::read_to_string(dir.join("reference/heldout_ids.json")).unwrap(),
        )
        .unwrap(),
    );
    let got = tok.encode(&heldout, false).unwrap();
    assert_eq!(want.len(), 2048);
    assert_eq!(&got[..2048], &want[..], "held-out ids (first 2048) differ");
    assert_eq!(tok.decode(&got), heldout);
    assert_eq!(stream(&tok, &got), heldout);
}

#[test]
fn tiny_models_exercise_the_other_sentencepiece_options() {
    // No byte fallback (unknown runs fold into one <unk>), remove_extra_whitespaces,
    // user-defined symbols, UNUSED pieces that are split back after merging.
    let a = Tokenizer::from_sentencepiece_file(fixtures().join("tiny-bpe-nobytes.model")).unwrap();
    check_section(&a, "tiny_nobytes_sp");
    check_bos_eos(&a, "tiny_nobytes_sp");
    // Whitespace as suffix, byte fallback.
    let b = Tokenizer::from_sentencepiece_file(fixtures().join("tiny-bpe-suffix.model")).unwrap();
    check_section(&b, "tiny_suffix_sp");
    check_bos_eos(&b, "tiny_suffix_sp");
}

/// `stream_decoder_after(context)` yields what the new ids add to `decode(context)`.
fn check_continuation(tok: &Tokenizer, section: &str) -> usize {
    let mut checked = 0;
    for case in expected()[section]["cases"].as_array().unwrap() {
        let ids = ids_of(&case["ids"]);
        for k in [1, ids.len() / 2, ids.len().saturating_sub(1)] {
            if k == 0 || k >= ids.len() {
                continue;
            }
            let full = tok.decode(&ids);
            let head = tok.decode(&ids[..k]);
            // A split inside a byte-fallback character changes the head's text (U+FFFD).
            let Some(tail_want) = full.strip_prefix(&head) else {
                continue;
            };
            let mut dec = tok.stream_decoder_after(&ids[..k]);
            let mut tail = String::new();
            for &id in &ids[k..] {
                tail.extend(dec.push(id));
            }
            tail.extend(dec.finish());
            assert_eq!(tail, tail_want, "{section}: ids {ids:?} split at {k}");
            checked += 1;
        }
    }
    checked
}

#[test]
fn stream_decoder_after_context_continues_the_text() {
    assert!(check_continuation(&mistral_sp(), "mistral_sp") > 500);
    assert!(check_continuation(&mistral_hf(), "mistral_hf") > 500);
    let sp = mistral_sp();
    let ctx = sp.encode("Hello", true).unwrap();
    let world = sp.encode("Hello world", true).unwrap()[ctx.len()..].to_vec();
    let mut dec = sp.stream_decoder_after(&ctx);
    assert_eq!(dec.push(world[0]).as_deref(), Some(" world"));
    let mut fresh = sp.stream_decoder();
    assert_eq!(fresh.push(world[0]).as_deref(), Some("world"));
}

#[test]
fn stream_after_a_context_that_ends_inside_a_character_completes_it() {
    // 𠀀 has no piece: ▁a <0xF0> <0xA0> <0x80> <0x80> b. Cut the context after two of its bytes.
    for tok in [mistral_sp(), mistral_hf()] {
        let ids = tok.encode("a𠀀b", false).unwrap();
        assert_eq!(ids.len(), 6, "{:?}", tok.kind());
        let mut dec = tok.stream_decoder_after(&ids[..3]);
        let mut out = String::new();
        for &id in &ids[3..] {
            out.extend(dec.push(id));
        }
        out.extend(dec.finish());
        assert_eq!(out, "𠀀b", "{:?}", tok.kind());
    }
}

#[test]
fn stream_decoder_holds_back_incomplete_characters() {
    let tok = mistral_sp();
    // 😀 = F0 9F 98 80, spelled with byte-fallback pieces (<0xNN> = id 3 + NN).
    let ids: Vec<u32> = [0xF0u32, 0x9F, 0x98, 0x80].iter().map(|b| 3 + b).collect();
    let mut dec = tok.stream_decoder();
    assert_eq!(dec.push(ids[0]), None);
    assert_eq!(dec.push(ids[1]), None);
    assert_eq!(dec.push(ids[2]), None);
    assert_eq!(dec.push(ids[3]).as_deref(), Some("😀"));
    assert_eq!(dec.finish(), None);
    // Cut short: each byte of the incomplete sequence becomes U+FFFD, as in decode.
    let mut dec = tok.stream_decoder();
    assert_eq!(dec.push(ids[0]), None);
    assert_eq!(dec.push(ids[1]), None);
    assert_eq!(dec.finish().as_deref(), Some("\u{FFFD}\u{FFFD}"));
    assert_eq!(tok.decode(&ids[..2]), "\u{FFFD}\u{FFFD}");
    // A byte that cannot continue the sequence settles it at once.
    let mut dec = tok.stream_decoder();
    assert_eq!(dec.push(3 + 0xE4), None);
    assert_eq!(dec.push(3 + 0x41).as_deref(), Some("\u{FFFD}A"));
    // Ids outside the vocabulary are skipped.
    assert_eq!(tok.decode(&[22557, 99_999, 1526]), "Hello world");
    assert_eq!(mistral_hf().decode(&[22557, 99_999, 1526]), "Hello world");
}

#[test]
fn from_model_dir_prefers_tokenizer_json_and_names_what_it_looked_for() {
    let both = scratch("both");
    for f in ["tokenizer.json", "tokenizer.model", "tokenizer_config.json"] {
        std::fs::copy(mistral_dir().join(f), both.join(f)).unwrap();
    }
    assert_eq!(
        Tokenizer::from_model_dir(&both).unwrap().kind(),
        TokenizerKind::HfJson
    );

    let sp_only = scratch("sp-only");
    std::fs::copy(
        mistral_dir().join("tokenizer.model"),
        sp_only.join("tokenizer.model"),
    )
    .unwrap();
    let tok = Tokenizer::from_model_dir(&sp_only).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::SentencePiece);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert!(tok.add_bos_by_default(), "no config: BOS by default");

    // tokenizer_config.json next to the model decides add_bos_token.
    std::fs::write(
        sp_only.join("tokenizer_config.json"),
        r#"{"add_bos_token": false, "eos_token": {"content": "</s>"}}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_model_dir(&sp_only).unwrap();
    assert!(!tok.add_bos_by_default());
    assert_eq!(tok.eos_id(), Some(2));

    std::fs::write(
        sp_only.join("tokenizer_config.json"),
        r#"{"add_bos_token": "yes"}"#,
    )
    .unwrap();
    let err = Tokenizer::from_model_dir(&sp_only).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::Invalid { field, .. } if field == "add_bos_token"),
        "{err}"
    );
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");

    let empty = scratch("empty");
    let err = Tokenizer::from_model_dir(&empty).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TokenizerError::NotFound { .. }));
    assert!(
        msg.contains("tokenizer.json") && msg.contains("tokenizer.model"),
        "{msg}"
    );
}

#[test]
fn bad_files_are_typed_errors_naming_the_file() {
    let dir = scratch("bad");
    let model = std::fs::read(mistral_dir().join("tokenizer.model")).unwrap();

    let truncated = dir.join("truncated.model");
    std::fs::write(&truncated, &model[..1000]).unwrap();
    let err = Tokenizer::from_sentencepiece_file(&truncated).unwrap_err();
    assert!(matches!(err, TokenizerError::Proto { .. }), "{err}");
    assert!(err.to_string().contains("truncated.model"), "{err}");

    // The same model declared UNIGRAM: field 2 (trainer_spec) gets a later model_type = 1,
    // which protobuf merging applies on top of the original.
    let mut unigram = model.clone();
    unigram.extend_from_slice(&[0x12, 0x02, 0x18, 0x01]);
    let path = dir.join("unigram.model");
    std::fs::write(&path, &unigram).unwrap();
    let err = Tokenizer::from_sentencepiece_file(&path).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::Invalid { field, .. } if field == "trainer_spec.model_type"),
        "{err}"
    );

    // A byte piece removed from the vocabulary while byte_fallback is on.
    let mut no_bytes = model.clone();
    let needle = b"<0x41>";
    let at = no_bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    no_bytes[at..at + needle.len()].copy_from_slice(b"<0xZZ>");
    let path = dir.join("bad-byte.model");
    std::fs::write(&path, &no_bytes).unwrap();
    let err = Tokenizer::from_sentencepiece_file(&path).unwrap_err();
    assert!(err.to_string().contains("<0xZZ>"), "{err}");

    let path = dir.join("tokenizer.json");
    std::fs::write(&path, "{\"model\": 42}").unwrap();
    let err = Tokenizer::from_hf_json_file(&path).unwrap_err();
    assert!(matches!(err, TokenizerError::HfLoad { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    let err = Tokenizer::from_sentencepiece_file(dir.join("missing.model")).unwrap_err();
    assert!(matches!(err, TokenizerError::Io { .. }), "{err}");
}

#[test]
fn tokenizer_is_shareable_across_threads() {
    let tok = std::sync::Arc::new(mistral_sp());
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let tok = tok.clone();
            std::thread::spawn(move || tok.encode(&format!("thread {i}"), true).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap()[0], 1);
    }
}
