//! The fast loader against the `tokenizers` crate's own full parse: same tokenizer (serialized
//! form and model), same encodings (ids, tokens, offsets, masks) and decodings, on the fixture
//! texts and generated ones; and documents it does not take fall back to the full parse.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::load;
use crate::tokenizer::hf::{full_parse, HfTokenizer};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn mistral_json() -> Vec<u8> {
    std::fs::read(repo_root().join("assets/tokenizers/mistral-v1/tokenizer.json")).unwrap()
}

fn shakespeare_json() -> Vec<u8> {
    std::fs::read(repo_root().join("assets/models/shakespeare-moe/tokenizer.json")).unwrap()
}

fn fixture_texts() -> Vec<String> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/expected.json");
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

/// Seeded random strings over pieces that stress the tokenizer: runs of spaces, digits,
/// characters outside the vocabulary (byte fallback), combining marks, special-token spellings.
fn generated_texts() -> Vec<String> {
    const PIECES: &[&str] = &[
        "a",
        "b",
        "Z",
        "the",
        " ",
        "  ",
        "   ",
        "\n",
        "\t",
        "\r\n",
        "0",
        "7",
        "42",
        "3.14",
        "é",
        "ß",
        "中",
        "文",
        "한",
        "😀",
        "🦀",
        "👩\u{200D}💻",
        "\u{0301}",
        "\u{FEFF}",
        "\u{E000}",
        "<s>",
        "</s>",
        "<unk>",
        "<0x41>",
        "▁",
        "▁▁",
        ".",
        ",",
        "!",
        "hello",
        " world",
        "Paris",
        "\u{7}",
        "ﬁ",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut texts = vec![String::new(), " ".to_string(), "<s></s><unk>".to_string()];
    for _ in 0..300 {
        let len = (next() % 24) as usize;
        texts.push(
            (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect(),
        );
    }
    texts
}

/// Asserts that the two tokenizers are the same: serialized form, model, and behaviour on all
/// test texts (with and without the post-processor's special tokens).
fn assert_same(fast: &tokenizers::Tokenizer, full: &tokenizers::Tokenizer, what: &str) {
    assert_eq!(
        serde_json::to_string(fast).unwrap(),
        serde_json::to_string(full).unwrap(),
        "{what}: serialized tokenizers differ"
    );
    assert!(
        fast.get_model() == full.get_model(),
        "{what}: models differ"
    );
    let texts: Vec<String> = fixture_texts()
        .into_iter()
        .chain(generated_texts())
        .collect();
    for text in &texts {
        for special in [false, true] {
            let a = fast.encode(text.as_str(), special).unwrap();
            let b = full.encode(text.as_str(), special).unwrap();
            let ctx = || format!("{what}: {text:?} (special tokens {special})");
            assert_eq!(a.get_ids(), b.get_ids(), "{}", ctx());
            assert_eq!(a.get_tokens(), b.get_tokens(), "{}", ctx());
            assert_eq!(a.get_offsets(), b.get_offsets(), "{}", ctx());
            assert_eq!(a.get_type_ids(), b.get_type_ids(), "{}", ctx());
            assert_eq!(
                a.get_special_tokens_mask(),
                b.get_special_tokens_mask(),
                "{}",
                ctx()
            );
            for skip in [false, true] {
                assert_eq!(
                    fast.decode(a.get_ids(), skip).unwrap(),
                    full.decode(b.get_ids(), skip).unwrap(),
                    "{} (skip special {skip})",
                    ctx()
                );
            }
        }
    }
}

/// The fast loader takes `bytes` and gives what the full parse gives.
fn check_fast(bytes: &[u8], what: &str) {
    let fast = load(bytes).unwrap_or_else(|why| panic!("{what}: fast loader declined: {why}"));
    let full = full_parse(bytes, Path::new(what)).unwrap();
    assert_same(&fast.tokenizer, &full, what);
    assert_facts_as_before(
        &HfTokenizer::from_bytes(bytes, Path::new(what)).unwrap(),
        what,
    );
}

/// `HfTokenizer`'s vocabulary facts are what the whole vocabulary map (added tokens included)
/// gives, as they were computed before the fast loader existed.
fn assert_facts_as_before(hf: &HfTokenizer, what: &str) {
    let vocab = hf.inner.get_vocab(true);
    let size = vocab.values().max().map_or(0, |&max| max as usize + 1);
    let mut is_byte = vec![false; size];
    for (token, &id) in &vocab {
        let hex = token.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'));
        if hex.is_some_and(|h| h.len() == 2 && u8::from_str_radix(h, 16).is_ok()) {
            is_byte[id as usize] = true;
        }
    }
    let mut is_special = vec![false; size];
    for (id, token) in hf.inner.get_added_tokens_decoder() {
        if token.special {
            is_special[id as usize] = true;
        }
    }
    assert_eq!(hf.vocab_size(), size, "{what}");
    assert!(hf.is_byte == is_byte, "{what}: byte tokens differ");
    assert!(hf.is_special == is_special, "{what}: special tokens differ");
}

/// The fast loader declines `bytes`, and `HfTokenizer` still loads them (through the full parse).
fn check_fallback(bytes: &[u8], what: &str) -> HfTokenizer {
    let why = match load(bytes) {
        Ok(_) => panic!("{what}: the fast loader should have declined"),
        Err(why) => why,
    };
    let full = full_parse(bytes, Path::new(what))
        .unwrap_or_else(|e| panic!("{what}: full parse failed ({e}); fast declined: {why}"));
    let hf = HfTokenizer::from_bytes(bytes, Path::new(what)).unwrap();
    assert_eq!(
        serde_json::to_string(&hf.inner).unwrap(),
        serde_json::to_string(&full).unwrap(),
        "{what}"
    );
    assert_facts_as_before(&hf, what);
    hf
}

fn edit(bytes: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(bytes).unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn mistral_tokenizer_json_loads_fast_and_equal() {
    check_fast(&mistral_json(), "mistral-v1");
}

#[test]
fn shakespeare_tokenizer_json_loads_fast_and_equal() {
    check_fast(&shakespeare_json(), "shakespeare-moe");
}

#[test]
fn forge_trimmed_tokenizer_json_loads_fast_and_equal() {
    let trimmed = swarmlm_forge::tokenizer::trim_tokenizer_json(&mistral_json(), 1000).unwrap();
    check_fast(&trimmed, "mistral-v1 trimmed to 1000");
}

#[test]
fn legacy_merge_strings_load_fast_and_equal() {
    let bytes = edit(&mistral_json(), |v| {
        let merges = v["model"]["merges"].as_array_mut().unwrap();
        let mut legacy: Vec<Value> = vec![json!("#version: 0.2")];
        legacy.extend(merges.iter().map(|m| {
            json!(format!(
                "{} {}",
                m[0].as_str().unwrap(),
                m[1].as_str().unwrap()
            ))
        }));
        *merges = legacy;
    });
    check_fast(&bytes, "mistral-v1, legacy merges");
}

#[test]
fn other_bpe_options_added_tokens_and_sections_load_fast_and_equal() {
    // Keys in another order (serde_json sorts them), every BPE option the fast path takes
    // (except continuing_subword_prefix, whose merge arithmetic needs a matching vocabulary),
    // more added tokens (special and not, normalized, stripping, one already in the vocabulary
    // under another id), truncation and padding.
    let bytes = edit(&shakespeare_json(), |v| {
        let model = &mut v["model"];
        model["ignore_merges"] = json!(true);
        model["fuse_unk"] = json!(false);
        model["byte_fallback"] = json!(false);
        model["end_of_word_suffix"] = json!("</w>");
        model["dropout"] = Value::Null;
        let added = v["added_tokens"].as_array_mut().unwrap();
        let token = |id: u32, content: &str, special: bool, normalized: bool, strip: bool| {
            json!({"id": id, "content": content, "single_word": strip, "lstrip": strip,
                   "rstrip": strip, "normalized": normalized, "special": special})
        };
        added.push(token(5000, "<|im_start|>", true, false, true));
        added.push(token(5001, "hello world", false, true, false));
        added.push(token(7, "the", false, false, false));
        v["truncation"] = json!({"direction": "Right", "max_length": 16, "strategy": "LongestFirst", "stride": 0});
        v["padding"] = json!({"strategy": {"Fixed": 20}, "direction": "Left", "pad_to_multiple_of": null,
                              "pad_id": 0, "pad_type_id": 0, "pad_token": "<unk>"});
    });
    check_fast(&bytes, "shakespeare-moe, options");
}

#[test]
fn brackets_quotes_and_escapes_inside_strings_do_not_confuse_the_scan() {
    // Vocabulary entries and an added token whose text looks like JSON structure, keys with
    // escaped spellings elsewhere, and a normalizer string with escapes.
    let bytes = edit(&shakespeare_json(), |v| {
        let vocab = v["model"]["vocab"].as_object_mut().unwrap();
        for (i, t) in ["\"]},{\"model\":[", "\\", "\\\"", "}}]]", "\u{1F980}\n\t"]
            .iter()
            .enumerate()
        {
            vocab.insert(t.to_string(), json!(4096 + i));
        }
        v["added_tokens"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": 5000,
            "content": "\"merges\": [\"", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}));
        v["normalizer"] = json!({"type": "Replace", "pattern": {"String": "\"vocab\""},
                                 "content": "\\}"});
    });
    check_fast(&bytes, "structure-like strings");
    // The same, pretty-printed (whitespace everywhere the grammar allows).
    let pretty =
        serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&bytes).unwrap()).unwrap();
    check_fast(&pretty, "structure-like strings, pretty");
}

#[test]
fn documents_the_fast_path_does_not_take_fall_back_to_the_full_parse() {
    let base = shakespeare_json();
    // BPE dropout (even 0.0), a model without "type", an unknown model key: declined, loaded
    // in full.
    let dropout = edit(&base, |v| v["model"]["dropout"] = json!(0.0));
    check_fallback(&dropout, "dropout");
    let untyped = edit(&base, |v| {
        v["model"].as_object_mut().unwrap().remove("type");
    });
    check_fallback(&untyped, "untyped model");
    let unknown_model = edit(&base, |v| v["model"]["comment"] = json!(1));
    check_fallback(&unknown_model, "unknown model key");
    // A key spelled with an escape: serde_json reads it as "model", the scan does not.
    let text = String::from_utf8(base.clone()).unwrap();
    let escaped = text.replacen("\"model\":", "\"mod\\u0065l\":", 1);
    assert_ne!(escaped, text);
    check_fallback(escaped.as_bytes(), "escaped model key");
    // Keys given twice (the crate takes the last one).
    let twice = text.replacen("\"vocab\":", "\"vocab\": {\"a\": 0}, \"vocab\":", 1);
    assert_ne!(twice, text);
    check_fallback(twice.as_bytes(), "vocab given twice");

    // Another model type entirely: a WordLevel tokenizer.
    let word_level = serde_json::to_vec(&json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "hello": 1, "world": 2},
                  "unk_token": "[UNK]"}
    }))
    .unwrap();
    let hf = check_fallback(&word_level, "WordLevel");
    assert_eq!(hf.encode("hello world again").unwrap(), vec![1, 2, 0]);
    assert_eq!(hf.vocab_size(), 3);
}

#[test]
fn broken_documents_keep_the_full_parse_errors() {
    let base = shakespeare_json();
    let cases = [
        (edit(&base, |v| v["version"] = json!("2.0")), "version"),
        (
            edit(&base, |v| {
                v["model"]["merges"].as_array_mut().unwrap()[0] = json!(["▁", "no-such-token"])
            }),
            "no-such-token",
        ),
        (b"{\"model\": 42}".to_vec(), "Model"),
        // The crate's parser does not skip the values of unknown top-level keys.
        (
            edit(&base, |v| v["comment"] = json!("made by hand")),
            "expected",
        ),
        (base[..1000].to_vec(), "EOF"),
    ];
    for (bytes, needle) in cases {
        assert!(
            load(&bytes).is_err(),
            "{needle}: the fast loader accepted a broken document"
        );
        let err = HfTokenizer::from_bytes(&bytes, Path::new("dir/tokenizer.json")).unwrap_err();
        let full = full_parse(&bytes, Path::new("dir/tokenizer.json")).unwrap_err();
        assert_eq!(err.to_string(), full.to_string());
        let msg = err.to_string();
        assert!(
            msg.contains("dir/tokenizer.json") && msg.contains(needle),
            "{msg}"
        );
    }
}
