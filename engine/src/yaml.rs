//! A YAML tree that remembers where every node came from.
//!
//! Built from `yaml-rust2`'s event parser, so that a validation error can point at the line and column of
//! the exact key or value it is about. Plain scalars are typed by the YAML 1.2 core schema (as ruamel, which
//! promptflow uses, does): `yes` is a string, `true` a bool, `0x1f` an int, `.5` a float.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::value::{Map, Value};

/// A position in a source file, 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

impl Span {
    fn from_marker(m: &Marker) -> Self {
        Span {
            line: m.line(),
            col: m.col() + 1,
        }
    }
}

/// A YAML node and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Yaml {
    pub kind: YamlKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum YamlKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Yaml>),
    /// Keys keep their order and their own spans.
    Map(Vec<(Yaml, Yaml)>),
}

/// A YAML syntax error.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    pub message: String,
    pub span: Span,
}

impl Yaml {
    /// Parses one YAML document. An empty document is `Null`.
    pub fn parse(text: &str) -> Result<Yaml, YamlError> {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        parser.load(&mut builder, false).map_err(|e| YamlError {
            message: e.info().to_string(),
            span: Span::from_marker(e.marker()),
        })?;
        if let Some(err) = builder.error {
            return Err(err);
        }
        Ok(builder.root.unwrap_or(Yaml {
            kind: YamlKind::Null,
            span: Span { line: 1, col: 1 },
        }))
    }

    /// The entry for `key` in a mapping, with the key's own node.
    pub fn entry(&self, key: &str) -> Option<(&Yaml, &Yaml)> {
        match &self.kind {
            YamlKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.kind, YamlKind::Str(s) if s == key))
                .map(|(k, v)| (k, v)),
            _ => None,
        }
    }

    /// The value for `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Yaml> {
        self.entry(key).map(|(_, v)| v)
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            YamlKind::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match &self.kind {
            YamlKind::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.kind, YamlKind::Null)
    }

    /// A short name of the node's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            YamlKind::Null => "null",
            YamlKind::Bool(_) => "a boolean",
            YamlKind::Int(_) => "an integer",
            YamlKind::Float(_) => "a number",
            YamlKind::Str(_) => "a string",
            YamlKind::Seq(_) => "a list",
            YamlKind::Map(_) => "a mapping",
        }
    }

    /// The node as a plain value (mapping keys become strings, as JSON requires).
    pub fn to_value(&self) -> Value {
        match &self.kind {
            YamlKind::Null => Value::Null,
            YamlKind::Bool(b) => Value::Bool(*b),
            YamlKind::Int(i) => Value::Int(*i),
            YamlKind::Float(f) => Value::Float(*f),
            YamlKind::Str(s) => Value::String(s.clone()),
            YamlKind::Seq(items) => Value::List(items.iter().map(Yaml::to_value).collect()),
            YamlKind::Map(entries) => {
                let map: Map = entries
                    .iter()
                    .map(|(k, v)| (k.key_string(), v.to_value()))
                    .collect();
                Value::Map(map)
            }
        }
    }

    /// The node as a mapping key: scalars by their text.
    pub fn key_string(&self) -> String {
        match &self.kind {
            YamlKind::Str(s) => s.clone(),
            _ => self.to_value().py_str(),
        }
    }
}

#[derive(Default)]
struct Builder {
    stack: Vec<Partial>,
    anchors: HashMap<usize, Yaml>,
    root: Option<Yaml>,
    error: Option<YamlError>,
}

enum Partial {
    Seq {
        items: Vec<Yaml>,
        span: Span,
        anchor: usize,
    },
    Map {
        entries: Vec<(Yaml, Yaml)>,
        pending_key: Option<Yaml>,
        span: Span,
        anchor: usize,
    },
}

impl Builder {
    fn push_value(&mut self, node: Yaml, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Partial::Seq { items, .. }) => items.push(node),
            Some(Partial::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let span = Span::from_marker(&mark);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let kind = if style != TScalarStyle::Plain {
                    YamlKind::Str(text)
                } else if let Some(tag) = tag
                    .as_ref()
                    .filter(|t| t.handle == "!!" || t.handle == "tag:yaml.org,2002:")
                {
                    match tag.suffix.as_str() {
                        "str" => YamlKind::Str(text),
                        _ => resolve_plain(text),
                    }
                } else {
                    resolve_plain(text)
                };
                self.push_value(Yaml { kind, span }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Partial::Seq {
                items: vec![],
                span,
                anchor,
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Partial::Map {
                entries: vec![],
                pending_key: None,
                span,
                anchor,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Partial::Seq {
                        items,
                        span,
                        anchor,
                    }) => (
                        Yaml {
                            kind: YamlKind::Seq(items),
                            span,
                        },
                        anchor,
                    ),
                    Some(Partial::Map {
                        entries,
                        span,
                        anchor,
                        ..
                    }) => (
                        Yaml {
                            kind: YamlKind::Map(entries),
                            span,
                        },
                        anchor,
                    ),
                    None => return,
                };
                self.push_value(node, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(mut node) => {
                    node.span = span;
                    self.push_value(node, 0);
                }
                None => {
                    self.error.get_or_insert(YamlError {
                        message: "unknown alias".into(),
                        span,
                    });
                }
            },
            _ => {}
        }
    }
}

/// Types a plain scalar by the YAML 1.2 core schema.
fn resolve_plain(text: String) -> YamlKind {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return YamlKind::Null,
        "true" | "True" | "TRUE" => return YamlKind::Bool(true),
        "false" | "False" | "FALSE" => return YamlKind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return YamlKind::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return YamlKind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return YamlKind::Float(f64::NAN),
        _ => {}
    }
    let t = text.as_str();
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = t.parse::<i64>() {
            return YamlKind::Int(i);
        }
    }
    if let Some(hex) = t.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return YamlKind::Int(i);
        }
    }
    if let Some(oct) = t.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return YamlKind::Int(i);
        }
    }
    let looks_float = digits
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit());
    if looks_float {
        if let Ok(f) = t.parse::<f64>() {
            return YamlKind::Float(f);
        }
    }
    YamlKind::Str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_follow_the_core_schema() {
        let y =
            Yaml::parse("a: yes\nb: true\nc: 3\nd: 2.5\ne: ~\nf: '3'\ng: 1e3\nh: .5\ni: 1.2.3\n")
                .unwrap();
        assert_eq!(y.get("a").unwrap().kind, YamlKind::Str("yes".into()));
        assert_eq!(y.get("b").unwrap().kind, YamlKind::Bool(true));
        assert_eq!(y.get("c").unwrap().kind, YamlKind::Int(3));
        assert_eq!(y.get("d").unwrap().kind, YamlKind::Float(2.5));
        assert!(y.get("e").unwrap().is_null());
        assert_eq!(y.get("f").unwrap().kind, YamlKind::Str("3".into()));
        assert_eq!(y.get("g").unwrap().kind, YamlKind::Float(1000.0));
        assert_eq!(y.get("h").unwrap().kind, YamlKind::Float(0.5));
        assert_eq!(y.get("i").unwrap().kind, YamlKind::Str("1.2.3".into()));
    }

    #[test]
    fn spans_point_at_keys_and_values() {
        let y = Yaml::parse("nodes:\n- name: a\n  type: python\n").unwrap();
        let nodes = y.get("nodes").unwrap();
        let YamlKind::Seq(items) = &nodes.kind else {
            panic!()
        };
        let (key, val) = items[0].entry("type").unwrap();
        assert_eq!(key.span, Span { line: 3, col: 3 });
        assert_eq!(val.span, Span { line: 3, col: 9 });
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = Yaml::parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.span.line >= 1, "{err:?}");
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let y = Yaml::parse("a: &x {k: 1}\nb: *x\n").unwrap();
        assert_eq!(
            y.get("b").unwrap().to_value(),
            y.get("a").unwrap().to_value()
        );
    }
}
