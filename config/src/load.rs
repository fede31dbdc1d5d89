//! Turning config text into typed, validated values.
//!
//! Two things matter to operators here: an error points at the key (so serde errors carry their path), and keys
//! this project does not use are collected rather than fatal, so a config written for gorouter or Cloud Foundry's
//! route-registrar starts as it is. The caller decides how to report the ignored keys (the binaries log one warning).

use crate::error::{ConfigError, Validate};
use serde::de::DeserializeOwned;

/// A parsed, validated document plus the keys it carried that nothing reads.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The typed value.
    pub value: T,
    /// Dotted paths of keys that were present but unused, in document order.
    pub ignored_keys: Vec<String>,
}

/// Parses YAML (JSON is YAML too) into `T`, then validates it.
pub fn parse_yaml<T: DeserializeOwned + Validate>(text: &str) -> Result<Loaded<T>, ConfigError> {
    // An empty file means "all defaults", which YAML would otherwise read as null.
    let text = if text.trim().is_empty() { "{}" } else { text };
    // The YAML error already ends with "at line L column C".
    tracked(serde_yaml_ng::Deserializer::from_str(text))
}

/// Parses JSON into `T`, then validates it.
pub fn parse_json<T: DeserializeOwned + Validate>(text: &str) -> Result<Loaded<T>, ConfigError> {
    tracked(&mut serde_json::Deserializer::from_str(text))
}

/// Deserialises while recording ignored keys and the path of any error, then validates.
fn tracked<'de, D, T>(deserializer: D) -> Result<Loaded<T>, ConfigError>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
    T: DeserializeOwned + Validate,
{
    let mut ignored_keys = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| ignored_keys.push(path.to_string());
    let value: T = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(deserializer, &mut record))
        .map_err(|err| ConfigError::new(key_of(err.path()), err.inner().to_string()))?;
    value.validate()?;
    Ok(Loaded { value, ignored_keys })
}

fn key_of(path: &serde_path_to_error::Path) -> String {
    let rendered = path.to_string();
    if rendered == "." { String::new() } else { rendered }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Sample {
        #[serde(default)]
        port: u16,
        #[serde(default)]
        nested: Nested,
    }

    #[derive(Debug, Default, Deserialize)]
    struct Nested {
        #[serde(default)]
        count: u32,
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.port == 1 {
                return Err(ConfigError::new("port", "must not be 1"));
            }
            Ok(())
        }
    }

    #[test]
    fn collects_unknown_keys_with_paths() {
        let loaded: Loaded<Sample> = parse_yaml("port: 80\nlogging: {level: debug}\nnested: {count: 2, extra: 1}\n").unwrap();
        assert_eq!(loaded.value.port, 80);
        assert_eq!(loaded.value.nested.count, 2);
        assert_eq!(loaded.ignored_keys, vec!["logging".to_owned(), "nested.extra".to_owned()]);
    }

    #[test]
    fn type_errors_name_the_key() {
        let err = parse_yaml::<Sample>("nested:\n  count: lots\n").unwrap_err();
        assert_eq!(err.key, "nested.count");
        assert!(err.problem.contains("invalid type"), "{}", err.problem);
        assert!(err.problem.contains("line 2"), "{}", err.problem);
    }

    #[test]
    fn validation_runs_after_parse() {
        let err = parse_yaml::<Sample>("port: 1").unwrap_err();
        assert_eq!(err.to_string(), "config key `port`: must not be 1");
    }

    #[test]
    fn empty_text_means_defaults() {
        let loaded: Loaded<Sample> = parse_yaml("  \n").unwrap();
        assert_eq!(loaded.value.port, 0);
    }

    #[test]
    fn json_errors_name_the_key() {
        let err = parse_json::<Sample>(r#"{"nested": {"count": -1}}"#).unwrap_err();
        assert_eq!(err.key, "nested.count");
    }
}
