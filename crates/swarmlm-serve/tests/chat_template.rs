//! The chat template gives the ids Hugging Face's `apply_chat_template` gives (fixture made by
//! `tests/fixtures/chat_template_ids.py` with `transformers`), for a `tokenizer.json` and for a
//! SentencePiece `tokenizer.model` of the same vocabulary.

use std::path::{Path, PathBuf};

use serde_json::Value;
use swarmlm_engine::tokenizer::Tokenizer;
use swarmlm_serve::chat::{chat_ids, chat_text, Message, Role};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cases() -> Vec<(String, Vec<Message>, String, Vec<u32>)> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_template_ids.json"),
    )
    .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let messages = c["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| Message {
                    role: Role::parse(m["role"].as_str().unwrap()).unwrap(),
                    content: m["content"].as_str().unwrap().to_string(),
                })
                .collect();
            let ids = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect();
            (
                c["tokenizer"].as_str().unwrap().to_string(),
                messages,
                c["text"].as_str().unwrap().to_string(),
                ids,
            )
        })
        .collect()
}

fn check(tokenizer: &Tokenizer, which: &str) {
    let mut n = 0;
    for (name, messages, text, ids) in cases() {
        if name != which {
            continue;
        }
        n += 1;
        assert_eq!(chat_text(tokenizer, &messages).unwrap(), text);
        assert_eq!(
            chat_ids(tokenizer, &messages).unwrap(),
            ids,
            "{which}: {text:?}"
        );
    }
    assert!(n >= 4, "fixture has the {which} cases");
}

#[test]
fn shakespeare_tokenizer_json_matches_transformers() {
    let t = Tokenizer::from_model_dir(&repo().join("assets/models/shakespeare-moe")).unwrap();
    check(&t, "shakespeare-moe");
}

#[test]
fn mistral_v1_tokenizer_json_matches_transformers() {
    let t =
        Tokenizer::from_hf_json_file(repo().join("assets/tokenizers/mistral-v1/tokenizer.json"))
            .unwrap();
    check(&t, "mistral-v1");
}

#[test]
fn mistral_v1_sentencepiece_model_matches_transformers() {
    let t = Tokenizer::from_sentencepiece_file(
        repo().join("assets/tokenizers/mistral-v1/tokenizer.model"),
    )
    .unwrap();
    check(&t, "mistral-v1");
}
