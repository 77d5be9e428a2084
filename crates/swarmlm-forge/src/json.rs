//! A canonical JSON writer: object keys sorted, fixed spacing. serde_json's own key order
//! depends on whether some crate in the build turned on its `preserve_order` feature; forged
//! files must not change bytes with the build, so every JSON file forge writes goes through here.

use serde_json::Value;

/// `v` with sorted keys, indented by two spaces, with a final newline (the layout of
/// Python's `json.dumps(v, indent=2, sort_keys=True)`, which is how the hub's files look).
pub fn pretty(v: &Value) -> String {
    let mut out = String::new();
    write(v, Some(0), &mut out);
    out.push('\n');
    out
}

/// `v` with sorted keys and no whitespace.
pub fn compact(v: &Value) -> String {
    let mut out = String::new();
    write(v, None, &mut out);
    out
}

/// A JSON string literal.
pub fn string(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serialises")
}

fn newline(indent: Option<usize>, out: &mut String) {
    if let Some(n) = indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', n));
    }
}

fn write(v: &Value, indent: Option<usize>, out: &mut String) {
    let inner = indent.map(|n| n + 2);
    match v {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                newline(inner, out);
                write(item, inner, out);
            }
            newline(indent, out);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (k, key) in keys.into_iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                newline(inner, out);
                out.push_str(&string(key));
                out.push_str(if indent.is_some() { ": " } else { ":" });
                write(&map[key.as_str()], inner, out);
            }
            newline(indent, out);
            out.push('}');
        }
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => out.push_str(&u.to_string()),
            (None, Some(i), _) => out.push_str(&i.to_string()),
            // Rust's shortest round-trip form (1e-5, 0.02, 1000000.0), so the bytes do not
            // depend on which float formatter a serde_json version uses.
            (None, None, Some(f)) => out.push_str(&format!("{f:?}")),
            (None, None, None) => out.push_str(&n.to_string()),
        },
        scalar => out.push_str(&serde_json::to_string(scalar).expect("scalars always serialise")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn layout_matches_python_sorted_indent_2() {
        let v = json!({"b": [1, {"y": null, "x": 1e-5}], "a": {}, "c": [], "d": "é\"", "e": 1e6});
        assert_eq!(
            pretty(&v),
            "{\n  \"a\": {},\n  \"b\": [\n    1,\n    {\n      \"x\": 1e-5,\n      \"y\": null\n    }\n  ],\n  \"c\": [],\n  \"d\": \"é\\\"\",\n  \"e\": 1000000.0\n}\n"
        );
        assert_eq!(
            compact(&v),
            "{\"a\":{},\"b\":[1,{\"x\":1e-5,\"y\":null}],\"c\":[],\"d\":\"é\\\"\",\"e\":1000000.0}"
        );
    }
}
