//! YAML in and out: configuration files, the injector's manifests and its config.
//!
//! serde-saphyr: a YAML parser in safe Rust (`forbid(unsafe_code)`) with budgets on input
//! size, nesting and alias expansion (a "billion laughs" file is an error, not memory).
//! Chosen over serde_yaml_ng, whose parser is libyaml translated to unsafe Rust
//! (`unsafe-libyaml`, archived upstream). Duplicate keys are an error. Errors are one line
//! with the line and column (and the path of a value of the wrong shape), for a config
//! error's one-line message.

pub mod invalid;

use serde::de::DeserializeOwned;
use serde::Serialize;

fn options() -> serde_saphyr::Options {
    // YAML 1.2 booleans (true/false only): `on`, `y`, `no` stay strings, as they were with
    // serde_yaml_ng and as a config or manifest means them.
    serde_saphyr::options! { with_snippet: false, strict_booleans: true }
}

fn one_line(error: impl std::fmt::Display) -> String {
    error.to_string().replace('\n', " ")
}

/// One document; an empty one (comments only) is an empty mapping — every key at its
/// default. An error says where: the line and column, and for a value of the wrong shape
/// also its path (`listen[0]: invalid socket address syntax at line 1, column 10`).
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let value: serde_json::Value =
        serde_saphyr::from_str_with_options(text, options()).map_err(one_line)?;
    if value.is_null() {
        return serde_json::from_value(serde_json::Value::Object(serde_json::Map::new()))
            .map_err(one_line);
    }
    // The text itself for the line and column; the value again for the path (only when
    // something is wrong).
    serde_saphyr::from_str_with_options(text, options()).map_err(|direct| {
        let direct = one_line(direct);
        match serde_path_to_error::deserialize::<_, T>(value) {
            Err(e) if e.path().to_string() != "." => format!("{}: {direct}", e.path()),
            _ => direct,
        }
    })
}

/// Every document of a stream (`---` between them); empty and null documents are skipped.
pub fn from_documents<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, String> {
    serde_saphyr::from_multiple_with_options(text, options()).map_err(one_line)
}

pub fn to_string<T: Serialize>(value: &T) -> Result<String, String> {
    serde_saphyr::to_string(value).map_err(one_line)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    #[test]
    fn documents_round_trip_and_errors_are_one_line() {
        let docs: Vec<Value> = super::from_documents("a: 1\n---\n---\nb: [x, y]\n").unwrap();
        assert_eq!(docs, [json!({"a": 1}), json!({"b": ["x", "y"]})]);
        let text = super::to_string(&docs[1]).unwrap();
        assert_eq!(super::from_str::<Value>(&text).unwrap(), docs[1]);
        // Strings a YAML 1.1 reader (go-yaml v2, so kubectl) takes for booleans or numbers are
        // written quoted.
        let tricky = json!({"v": ["y", "on", "no", "0123", "1e3", "null", "~"]});
        let text = super::to_string(&tricky).unwrap();
        for word in ["y", "on", "no", "0123", "1e3", "null", "~"] {
            assert!(
                text.contains(&format!("\"{word}\"")) || text.contains(&format!("'{word}'")),
                "{word} unquoted in {text}"
            );
        }
        assert_eq!(super::from_str::<Value>(&text).unwrap(), tricky);
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Listen {
            listen: Vec<std::net::SocketAddr>,
        }
        let error = super::from_str::<Listen>("# addresses\nlisten: [127.0.0.1:53, nowhere]\n")
            .unwrap_err();
        assert!(error.starts_with("listen[1]: "), "{error}");
        assert!(error.contains("line 2"), "{error}");
        let error = super::from_str::<Value>("a: 1\na: 2\n").unwrap_err();
        assert!(!error.contains('\n'), "{error}");
        assert!(error.to_lowercase().contains("duplicate"), "{error}");
        // Alias expansion is bounded: a billion laughs is an error, not gigabytes.
        let mut laughs = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            laughs.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 9].join(", ")));
        }
        assert!(super::from_str::<Value>(&laughs).is_err());
    }
}
