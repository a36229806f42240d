//! Metadata filters on retrieval: `{key: value}` pairs that must all hold. A list of values matches any
//! of them; a list in a chunk's metadata (front matter `tags: [a, b]`) matches when it holds the value.

use std::collections::HashSet;

use serde_json::{Map, Value as Json};

use super::error::FilterError;

/// A parsed filter; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter(Vec<(String, Vec<Json>)>);

impl Filter {
    /// From a JSON object of scalars or lists of scalars.
    pub fn from_json(v: &Json) -> Result<Filter, FilterError> {
        let Json::Object(map) = v else {
            return Err(FilterError::NotAMapping { got: v.to_string() });
        };
        let mut out = Vec::new();
        for (k, v) in map {
            let values = match v {
                Json::Array(items) => items.clone(),
                other => vec![other.clone()],
            };
            if let Some(bad) = values
                .iter()
                .find(|x| matches!(x, Json::Object(_) | Json::Array(_) | Json::Null))
            {
                return Err(FilterError::BadValue {
                    key: k.clone(),
                    got: bad.to_string(),
                });
            }
            if values.is_empty() {
                return Err(FilterError::EmptyList { key: k.clone() });
            }
            out.push((k.clone(), values));
        }
        Ok(Filter(out))
    }

    /// From `key=value` pairs (the command line); values that parse as JSON scalars are taken as such.
    pub fn from_pairs(pairs: &[String]) -> Result<Filter, FilterError> {
        let mut map = Map::new();
        for p in pairs {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| FilterError::NotAPair { pair: p.clone() })?;
            let v = match serde_json::from_str::<Json>(v) {
                Ok(j @ (Json::Number(_) | Json::Bool(_))) => j,
                _ => Json::String(v.to_owned()),
            };
            match map.get_mut(k) {
                Some(Json::Array(list)) => list.push(v),
                Some(prev) => *prev = Json::Array(vec![prev.clone(), v]),
                None => {
                    map.insert(k.to_owned(), v);
                }
            }
        }
        Filter::from_json(&Json::Object(map))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a chunk's metadata passes.
    pub fn matches(&self, meta: &Map<String, Json>) -> bool {
        self.0.iter().all(|(k, wanted)| match meta.get(k) {
            Some(Json::Array(have)) => have.iter().any(|h| wanted.iter().any(|w| same(h, w))),
            Some(h) => wanted.iter().any(|w| same(h, w)),
            None => false,
        })
    }

    /// The filter as a Chroma `where` clause; `list_keys` are the keys that hold lists.
    pub fn to_chroma(&self, list_keys: &HashSet<String>) -> Option<Json> {
        let mut clauses: Vec<Json> = self
            .0
            .iter()
            .map(|(k, values)| {
                if list_keys.contains(k) {
                    let mut any: Vec<Json> = values
                        .iter()
                        .map(|v| serde_json::json!({ k: { "$contains": v } }))
                        .collect();
                    if any.len() == 1 {
                        any.remove(0)
                    } else {
                        serde_json::json!({ "$or": any })
                    }
                } else if values.len() == 1 {
                    serde_json::json!({ k: { "$eq": values[0] } })
                } else {
                    serde_json::json!({ k: { "$in": values } })
                }
            })
            .collect();
        match clauses.len() {
            0 => None,
            1 => clauses.pop(),
            _ => Some(serde_json::json!({ "$and": clauses })),
        }
    }
}

fn same(a: &Json, b: &Json) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_lists_and_numbers() {
        let meta = json!({"file": "a.md", "tags": ["runs", "batch"], "level": 2});
        let meta = meta.as_object().unwrap();
        let f = |v: Json| Filter::from_json(&v).unwrap().matches(meta);
        assert!(f(json!({"tags": "runs"})));
        assert!(f(json!({"tags": ["x", "batch"], "file": "a.md"})));
        assert!(f(json!({"level": 2.0})));
        assert!(!f(json!({"tags": "x"})));
        assert!(!f(json!({"file": "a.md", "missing": 1})));
        assert!(Filter::from_json(&json!({"a": {"b": 1}})).is_err());
        let pairs = Filter::from_pairs(&["tags=runs".into(), "tags=x".into(), "level=2".into()]);
        assert_eq!(
            pairs.unwrap(),
            Filter::from_json(&json!({"tags": ["runs", "x"], "level": 2})).unwrap()
        );
    }

    #[test]
    fn chroma_where() {
        let f = Filter::from_json(&json!({"tags": "runs", "file": ["a.md", "b.md"]})).unwrap();
        let lists = HashSet::from(["tags".to_owned()]);
        assert_eq!(
            f.to_chroma(&lists).unwrap(),
            json!({"$and": [{"tags": {"$contains": "runs"}}, {"file": {"$in": ["a.md", "b.md"]}}]})
        );
    }
}
