//! List-valued settings as operators write them: a TOML or JSON array, or — what a Kubernetes manifest
//! or a shell gives an environment variable — one comma-separated string
//! (`SCORE_WORKER__SCYLLA__NODES=10.0.0.1:9042,10.0.0.2:9042`).

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// Deserializes an array of strings, or a string split at commas (each item trimmed; an empty item,
/// as in `a,,b` or a trailing comma, is an error rather than silently dropped).
pub(super) fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_any(Strings)
}

struct Strings;

impl<'de> Visitor<'de> for Strings {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of strings, or one comma-separated string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        split(text).map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element::<String>()? {
            items.push(item);
        }
        Ok(items)
    }
}

fn split(text: &str) -> Result<Vec<String>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|item| match item.trim() {
            "" => Err(format!("`{text}` has an empty item")),
            item => Ok(item.to_string()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_split_and_items_are_trimmed() {
        assert_eq!(
            split("10.0.0.1:9042, 10.0.0.2:9042").unwrap(),
            ["10.0.0.1:9042", "10.0.0.2:9042"]
        );
        assert_eq!(split("one").unwrap(), ["one"]);
        assert!(split("").unwrap().is_empty());
    }

    #[test]
    fn an_empty_item_is_an_error() {
        assert!(split("a,,b").unwrap_err().contains("empty item"));
        assert!(split("a,").is_err());
    }
}
