//! The manifest format: exact round trips, and every hostile manifest refused with its field named.

use swarmlm_manifest::{FileEntry, Manifest, ManifestError, ModelFormat};

const CANONICAL: &str = r#"name = "tiny-mixtral"
description = "A 2-layer synthetic Mixtral for tests"
license = "Apache-2.0"
source = "swarmlm forge --seed 7"
format = "hf-safetensors"
magnet = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=tiny-mixtral&tr=http%3A%2F%2F127.0.0.1%3A6969%2Fannounce"
piece_length = 262144
total_size = 300

[[files]]
path = "config.json"
size = 100
sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

[[files]]
path = "sub dir/model-00001-of-00001.safetensors"
size = 200
sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
md5 = "900150983cd24fb0d6963f7d28e17f72"
"#;

/// The Mixtral 8x7B magnet release as known before download: md5s from the publisher, sizes and
/// SHA-256 unknown in advance.
const MAGNET_ONLY: &str = r#"name = "mixtral-8x7b-32kseqlen"
description = "Mixtral 8x7B, Mistral AI's original magnet release"
license = "Apache-2.0"
source = "Mistral AI, December 2023"
format = "mistral-pth"
magnet = "magnet:?xt=urn:btih:5546272da9065eddeb6fcd7ffddeef5b75be79a7&dn=mixtral-8x7b-32kseqlen"

[[files]]
path = "RELEASE"

[[files]]
path = "consolidated.00.pth"
md5 = "1faa9bc9b20fcfe81fcd4eb7166a79e6"

[[files]]
path = "params.json"

[[files]]
path = "tokenizer.model"
md5 = "37974873eb68a7ab30c4912fc36264ae"
"#;

#[test]
fn canonical_text_round_trips_exactly() {
    let m = Manifest::from_toml_str(CANONICAL).unwrap();
    assert_eq!(m.name, "tiny-mixtral");
    assert_eq!(m.format, ModelFormat::HfSafetensors);
    assert_eq!(
        hex::encode(m.info_hash),
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(m.piece_length, Some(262144));
    assert_eq!(m.total_size, Some(300));
    assert_eq!(
        m.files[1],
        FileEntry {
            path: "sub dir/model-00001-of-00001.safetensors".into(),
            size: Some(200),
            sha256: Some(
                hex::decode("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
                    .unwrap()
                    .try_into()
                    .unwrap()
            ),
            md5: Some(
                hex::decode("900150983cd24fb0d6963f7d28e17f72")
                    .unwrap()
                    .try_into()
                    .unwrap()
            ),
        }
    );
    assert_eq!(m.to_toml_string(), CANONICAL);
}

#[test]
fn load_save_load_through_files_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.toml");
    let b = dir.path().join("b.toml");
    std::fs::write(&a, CANONICAL).unwrap();
    let m = Manifest::load(&a).unwrap();
    m.save(&b).unwrap();
    assert_eq!(std::fs::read_to_string(&b).unwrap(), CANONICAL);
    assert_eq!(Manifest::load(&b).unwrap(), m);
}

#[test]
fn unknown_sizes_and_hashes_are_representable_and_round_trip() {
    let m = Manifest::from_toml_str(MAGNET_ONLY).unwrap();
    assert_eq!(m.format, ModelFormat::MistralPth);
    assert_eq!(m.total_size, None);
    assert_eq!(m.piece_length, None);
    assert!(m
        .files
        .iter()
        .all(|f| f.size.is_none() && f.sha256.is_none()));
    assert!(m.files[1].md5.is_some());
    assert_eq!(m.to_toml_string(), MAGNET_ONLY);
}

#[test]
fn odd_strings_survive_a_round_trip() {
    let mut m = Manifest::from_toml_str(CANONICAL).unwrap();
    m.description = "quote \" backslash \\ newline \n tab \t bell \u{7} ünïcødé".into();
    let text = m.to_toml_string();
    let back = Manifest::from_toml_str(&text).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.to_toml_string(), text);
}

fn field_of(text: &str) -> String {
    match Manifest::from_toml_str(text) {
        Ok(_) => panic!("accepted a hostile manifest:\n{text}"),
        Err(e) => {
            let shown = e.to_string();
            let field = e.field_name().map(str::to_string);
            field.unwrap_or_else(|| panic!("error names no field: {shown}"))
        }
    }
}

fn with_file_path(path: &str) -> String {
    CANONICAL.replace(
        "path = \"config.json\"",
        &format!("path = {}", toml::Value::String(path.to_string())),
    )
}

#[test]
fn hostile_paths_are_refused_naming_the_field() {
    for bad in [
        "/etc/passwd",
        "../outside",
        "a/../../b",
        "a//b",
        "a/",
        "./a",
        "",
        "a\\b",
        "nul\u{0}byte",
    ] {
        assert_eq!(
            field_of(&with_file_path(bad)),
            "files[0].path",
            "path {bad:?}"
        );
    }
    // Duplicate path.
    let dup = with_file_path("sub dir/model-00001-of-00001.safetensors");
    assert_eq!(field_of(&dup), "files[1].path");
    // A file that is also a folder of another file.
    assert_eq!(field_of(&with_file_path("sub dir")), "files[1].path");
}

#[test]
fn hostile_values_are_refused_naming_the_field() {
    let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let cases: Vec<(String, &str)> = vec![
        (CANONICAL.replace(sha, &sha[..62]), "files[0].sha256"),
        (
            CANONICAL.replace(sha, &format!("{}zz", &sha[..62])),
            "files[0].sha256",
        ),
        (
            CANONICAL.replace("900150983cd24fb0d6963f7d28e17f72", "900150983cd24fb0"),
            "files[1].md5",
        ),
        (
            CANONICAL.replace("total_size = 300", "total_size = 301"),
            "total_size",
        ),
        (CANONICAL.replace("size = 100", "size = 99"), "total_size"),
        (CANONICAL.replace("total_size = 300\n", ""), "total_size"),
        (
            CANONICAL.replace("size = 100", "size = -1"),
            "files[0].size",
        ),
        (
            CANONICAL.replace("size = 100", "size = \"100\""),
            "files[0].size",
        ),
        (
            CANONICAL.replace("\"hf-safetensors\"", "\"gguf\""),
            "format",
        ),
        (
            CANONICAL.replace("btih:0123456789abcdef0123456789abcdef01234567", "btih:0123"),
            "magnet",
        ),
        (
            CANONICAL.replace("magnet:?xt", "http://example.invalid/?xt"),
            "magnet",
        ),
        (CANONICAL.replace("urn:btih:", "urn:sha1:"), "magnet"),
        (
            CANONICAL.replace("piece_length = 262144", "piece_length = 300000"),
            "piece_length",
        ),
        (
            CANONICAL.replace("name = \"tiny-mixtral\"", "name = \"a/b\""),
            "name",
        ),
        (
            CANONICAL.replace("name = \"tiny-mixtral\"", "name = \"..\""),
            "name",
        ),
        (CANONICAL.replace("name = \"tiny-mixtral\"\n", ""), "name"),
        (format!("color = \"blue\"\n{CANONICAL}"), "color"),
        (
            CANONICAL.replace("size = 100", "size = 100\nowner = \"x\""),
            "files[0].owner",
        ),
        (
            CANONICAL.split("\n[[files]]").next().unwrap().to_string(),
            "files",
        ),
    ];
    for (text, field) in cases {
        assert_eq!(field_of(&text), field, "manifest:\n{text}");
    }
}

#[test]
fn non_utf8_and_bad_syntax_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    let mut bytes = CANONICAL.as_bytes().to_vec();
    bytes[10] = 0xff;
    std::fs::write(&p, &bytes).unwrap();
    let err = Manifest::load(&p).unwrap_err();
    assert!(
        matches!(&err, ManifestError::InFile { inner, .. } if matches!(**inner, ManifestError::NotUtf8 { offset: 10 })),
        "{err:?}"
    );
    assert!(err.to_string().contains("bad.toml"));

    let err = Manifest::from_toml_str("name = \"x\"\n[[files]\n").unwrap_err();
    assert!(matches!(err, ManifestError::Syntax { .. }), "{err:?}");
    let err = Manifest::load(&dir.path().join("absent.toml")).unwrap_err();
    assert!(matches!(err, ManifestError::Read { .. }), "{err:?}");
}

#[test]
fn magnet_and_info_hash_must_agree_when_built_in_code() {
    let mut m = Manifest::from_toml_str(CANONICAL).unwrap();
    m.info_hash[0] ^= 1;
    let err = m.validate().unwrap_err();
    assert_eq!(err.field_name(), Some("magnet"));
    let dir = tempfile::tempdir().unwrap();
    assert!(m.save(&dir.path().join("m.toml")).is_err());
}

#[test]
fn format_detection_from_file_names() {
    assert_eq!(
        ModelFormat::detect(["config.json", "model-00001-of-00002.safetensors"]),
        Some(ModelFormat::HfSafetensors)
    );
    assert_eq!(
        ModelFormat::detect(["params.json", "consolidated.00.pth"]),
        Some(ModelFormat::MistralPth)
    );
    assert_eq!(ModelFormat::detect(["a.bin"]), None);
    // Mixtral 8x22B as Mistral released it.
    let mixtral_8x22b = [
        "RELEASE",
        "consolidated.safetensors",
        "params.json",
        "tokenizer.model",
    ];
    assert_eq!(
        ModelFormat::detect(mixtral_8x22b),
        Some(ModelFormat::MistralSafetensors)
    );
    assert_eq!(
        ModelFormat::parse("mistral-safetensors"),
        Some(ModelFormat::MistralSafetensors)
    );
    assert_eq!(
        ModelFormat::MistralSafetensors.as_str(),
        "mistral-safetensors"
    );
    // The hub layout keeps its name even with a params.json lying around.
    assert_eq!(
        ModelFormat::detect(["config.json", "params.json", "consolidated.safetensors"]),
        Some(ModelFormat::HfSafetensors)
    );
}
