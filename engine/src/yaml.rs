//! A YAML tree that remembers where every node came from, read by one loader with limits.
//!
//! Built from `yaml-rust2`'s event parser, so that a validation error can point at the line and column of
//! the exact key or value it is about. Plain scalars are typed by the YAML 1.2 core schema (as ruamel, which
//! promptflow uses, does): `yes` is a string, `true` a bool, `0x1f` an int, `.5` a float.
//!
//! Every YAML file Sluice reads (flows, connections, run files, Markdown front matter) goes through
//! [`Yaml::parse`] or [`load_document`], which bound what hostile input can cost ([`Limits`]): the input
//! size, the nesting depth, and how much aliases may copy (a few hundred bytes of `&a [*b, *b, ...]` can
//! otherwise expand to gigabytes). A key repeated in one mapping is an error with its position, as in
//! promptflow, instead of the last one silently winning.
//!
//! ```
//! use sluice_engine::yaml::load_document;
//! let doc = load_document("name: x\ntype: open_ai\n", std::path::Path::new("c.yaml")).unwrap();
//! assert_eq!(doc["name"].as_str(), Some("x"));
//! let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
//!             c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
//!             e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
//! assert!(load_document(bomb, std::path::Path::new("bomb.yaml")).is_err());
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use yaml_rust2::parser::{Event, Parser};
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

/// What one YAML document may cost. [`Limits::default`] is what every loader in Sluice uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest input, in bytes.
    pub max_input_bytes: usize,
    /// The deepest nesting of lists and mappings (aliases count with the depth of what they copy).
    pub max_depth: usize,
    /// How many nodes all aliases of a document may copy together.
    pub max_alias_nodes: usize,
    /// How many bytes of scalar text all aliases of a document may copy together.
    pub max_alias_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_bytes: 16 << 20,
            max_depth: 128,
            max_alias_nodes: 100_000,
            max_alias_bytes: 16 << 20,
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

/// A YAML document that cannot be read: a syntax error, a repeated key, or a limit passed.
///
/// Displays as `message`, or `file:line:col: message` when it came from [`load_document`].
/// [`YamlError::snippet`] shows the offending line, cut to a bounded width.
#[derive(Debug, thiserror::Error)]
pub struct YamlError {
    pub message: String,
    pub span: Span,
    /// The file, when the caller named one.
    pub file: Option<PathBuf>,
    /// The offending source line, already cut to at most [`SNIPPET_WIDTH`] characters around the column.
    line_text: Option<String>,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}:{}: {}", file.display(), self.span, self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl YamlError {
    fn new(message: impl Into<String>, span: Span) -> Self {
        YamlError {
            message: message.into(),
            span,
            file: None,
            line_text: None,
        }
    }

    /// The error with the offending line under it and a caret at the column, at most a few hundred
    /// bytes whatever the length of the line.
    pub fn snippet(&self) -> String {
        let mut out = self.to_string();
        if let Some(line) = &self.line_text {
            out.push('\n');
            out.push_str(line);
        }
        out
    }
}

/// How many characters of a source line an error shows, around the column it points at.
pub const SNIPPET_WIDTH: usize = 120;

/// The `line` of `text` with a caret under `span.col`, cut to [`SNIPPET_WIDTH`] characters around it
/// (`...` marks a cut), so an error in a 50 MB one-line file prints a line, not the file.
pub fn snippet_lines(text: &str, span: Span) -> Option<String> {
    let line = text.lines().nth(span.line.saturating_sub(1))?;
    let col = span.col.saturating_sub(1);
    let len = line.chars().count();
    let start = if len <= SNIPPET_WIDTH {
        0
    } else {
        col.saturating_sub(SNIPPET_WIDTH / 2)
            .min(len - SNIPPET_WIDTH)
    };
    let col = col.min(len);
    let mut shown: String = line.chars().skip(start).take(SNIPPET_WIDTH).collect();
    let mut caret = col - start;
    if start > 0 {
        shown.insert_str(0, "...");
        caret += 3;
    }
    if start + SNIPPET_WIDTH < len {
        shown.push_str("...");
    }
    let num = span.line.to_string();
    let pad = " ".repeat(num.len());
    Some(format!(
        "{pad} |\n{num} | {shown}\n{pad} | {}^\n",
        " ".repeat(caret)
    ))
}

/// A scalar as the text it was written as (`1.50` stays `1.50`); `None` for lists, mappings and null.
pub fn scalar_text(y: &yaml_rust2::Yaml) -> Option<String> {
    use yaml_rust2::Yaml;
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads the first YAML document of `text` (from `file`, named in errors) with the default [`Limits`],
/// as a `yaml_rust2` tree. The loader for connection files, run files and front matter.
pub fn load_document(text: &str, file: &Path) -> Result<yaml_rust2::Yaml, YamlError> {
    Yaml::parse(text)
        .map(|y| y.to_yaml_rust2())
        .map_err(|mut e| {
            e.file = Some(file.to_path_buf());
            e.line_text = snippet_lines(text, e.span);
            e
        })
}

impl Yaml {
    /// Parses the first YAML document of `text` with the default [`Limits`]. An empty document is `Null`.
    pub fn parse(text: &str) -> Result<Yaml, YamlError> {
        Yaml::parse_with(text, &Limits::default())
    }

    /// Parses the first YAML document of `text` within `limits`.
    pub fn parse_with(text: &str, limits: &Limits) -> Result<Yaml, YamlError> {
        let start = Span { line: 1, col: 1 };
        if text.len() > limits.max_input_bytes {
            return Err(YamlError::new(
                format!(
                    "the file is {} bytes; YAML input is limited to {} bytes",
                    text.len(),
                    limits.max_input_bytes
                ),
                start,
            ));
        }
        let mut builder = Builder {
            limits: *limits,
            stack: vec![],
            anchors: HashMap::new(),
            root: None,
            alias_nodes: 0,
            alias_bytes: 0,
        };
        // The events are pulled one at a time (not through `Parser::load`, which recurses once per
        // nesting level), so no input can run the stack out, and the first error stops the work.
        let mut parser = Parser::new_from_str(text);
        loop {
            let (ev, mark) = parser
                .next_token()
                .map_err(|e| YamlError::new(e.info().to_string(), Span::from_marker(e.marker())))?;
            match ev {
                Event::StreamEnd | Event::DocumentEnd => break,
                ev => builder.on_event(ev, Span::from_marker(&mark))?,
            }
        }
        Ok(builder.root.map(|(y, _)| y).unwrap_or(Yaml {
            kind: YamlKind::Null,
            span: start,
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

    /// The node as a `yaml_rust2` tree (floats as their shortest text; `.inf`, `-.inf`, `.nan` as YAML
    /// writes them).
    pub fn to_yaml_rust2(&self) -> yaml_rust2::Yaml {
        use yaml_rust2::Yaml as Y;
        match &self.kind {
            YamlKind::Null => Y::Null,
            YamlKind::Bool(b) => Y::Boolean(*b),
            YamlKind::Int(i) => Y::Integer(*i),
            YamlKind::Float(f) => Y::Real(if f.is_nan() {
                ".nan".to_owned()
            } else if f.is_infinite() {
                if *f > 0.0 { ".inf" } else { "-.inf" }.to_owned()
            } else {
                format!("{f:?}")
            }),
            YamlKind::Str(s) => Y::String(s.clone()),
            YamlKind::Seq(items) => Y::Array(items.iter().map(Yaml::to_yaml_rust2).collect()),
            YamlKind::Map(entries) => Y::Hash(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_yaml_rust2(), v.to_yaml_rust2()))
                    .collect(),
            ),
        }
    }
}

/// What a finished node costs: how deep it nests, how many nodes and how many bytes of text it holds.
#[derive(Clone, Copy, Debug, Default)]
struct Cost {
    height: usize,
    nodes: usize,
    bytes: usize,
}

impl Cost {
    fn add_child(&mut self, child: Cost) {
        self.height = self.height.max(child.height + 1);
        self.nodes = self.nodes.saturating_add(child.nodes);
        self.bytes = self.bytes.saturating_add(child.bytes);
    }
}

struct Builder {
    limits: Limits,
    stack: Vec<Partial>,
    anchors: HashMap<usize, (Yaml, Cost)>,
    root: Option<(Yaml, Cost)>,
    alias_nodes: usize,
    alias_bytes: usize,
}

struct Partial {
    kind: PartialKind,
    span: Span,
    anchor: usize,
    cost: Cost,
}

enum PartialKind {
    Seq(Vec<Yaml>),
    Map {
        entries: Vec<(Yaml, Yaml)>,
        pending_key: Option<Yaml>,
        /// Scalar keys seen so far and where, to refuse a repeated one.
        seen: HashMap<KeyId, Span>,
    },
}

/// A scalar key's identity: YAML's `1` and `'1'` are different keys, `a` and `'a'` the same.
#[derive(PartialEq, Eq, Hash)]
enum KeyId {
    Null,
    Bool(bool),
    Int(i64),
    Float(u64),
    Str(String),
}

impl KeyId {
    fn of(y: &Yaml) -> Option<KeyId> {
        Some(match &y.kind {
            YamlKind::Null => KeyId::Null,
            YamlKind::Bool(b) => KeyId::Bool(*b),
            YamlKind::Int(i) => KeyId::Int(*i),
            YamlKind::Float(f) => KeyId::Float(f.to_bits()),
            YamlKind::Str(s) => KeyId::Str(s.clone()),
            YamlKind::Seq(_) | YamlKind::Map(_) => return None,
        })
    }
}

impl Builder {
    fn push_value(&mut self, node: Yaml, cost: Cost, anchor: usize) -> Result<(), YamlError> {
        if anchor > 0 {
            self.anchors.insert(anchor, (node.clone(), cost));
        }
        let Some(parent) = self.stack.last_mut() else {
            if self.root.is_none() {
                self.root = Some((node, cost));
            }
            return Ok(());
        };
        parent.cost.add_child(cost);
        match &mut parent.kind {
            PartialKind::Seq(items) => items.push(node),
            PartialKind::Map {
                entries,
                pending_key,
                seen,
            } => match pending_key.take() {
                None => {
                    if let Some(id) = KeyId::of(&node)
                        && let Some(first) = seen.insert(id, node.span)
                    {
                        return Err(YamlError::new(
                            format!(
                                "duplicate key `{}` (first at line {}, column {})",
                                truncate(&node.key_string(), 80),
                                first.line,
                                first.col
                            ),
                            node.span,
                        ));
                    }
                    *pending_key = Some(node)
                }
                Some(key) => entries.push((key, node)),
            },
        }
        Ok(())
    }

    fn open(&mut self, kind: PartialKind, span: Span, anchor: usize) -> Result<(), YamlError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(YamlError::new(
                format!(
                    "lists and mappings nest more than {} deep",
                    self.limits.max_depth
                ),
                span,
            ));
        }
        self.stack.push(Partial {
            kind,
            span,
            anchor,
            cost: Cost {
                height: 1,
                nodes: 1,
                bytes: 0,
            },
        });
        Ok(())
    }

    fn on_event(&mut self, ev: Event, span: Span) -> Result<(), YamlError> {
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let cost = Cost {
                    height: 0,
                    nodes: 1,
                    bytes: text.len(),
                };
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
                self.push_value(Yaml { kind, span }, cost, anchor)
            }
            Event::SequenceStart(anchor, _) => self.open(PartialKind::Seq(vec![]), span, anchor),
            Event::MappingStart(anchor, _) => self.open(
                PartialKind::Map {
                    entries: vec![],
                    pending_key: None,
                    seen: HashMap::new(),
                },
                span,
                anchor,
            ),
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(p) = self.stack.pop() else {
                    return Ok(());
                };
                let kind = match p.kind {
                    PartialKind::Seq(items) => YamlKind::Seq(items),
                    PartialKind::Map { entries, .. } => YamlKind::Map(entries),
                };
                self.push_value(Yaml { kind, span: p.span }, p.cost, p.anchor)
            }
            Event::Alias(id) => {
                let Some((node, cost)) = self.anchors.get(&id) else {
                    return Err(YamlError::new("unknown alias", span));
                };
                let cost = *cost;
                self.alias_nodes = self.alias_nodes.saturating_add(cost.nodes);
                self.alias_bytes = self.alias_bytes.saturating_add(cost.bytes);
                if self.alias_nodes > self.limits.max_alias_nodes
                    || self.alias_bytes > self.limits.max_alias_bytes
                {
                    return Err(YamlError::new(
                        format!(
                            "aliases expand to more than {} nodes or {} bytes (an alias bomb?)",
                            self.limits.max_alias_nodes, self.limits.max_alias_bytes
                        ),
                        span,
                    ));
                }
                if self.stack.len() + cost.height > self.limits.max_depth {
                    return Err(YamlError::new(
                        format!(
                            "lists and mappings nest more than {} deep (through an alias)",
                            self.limits.max_depth
                        ),
                        span,
                    ));
                }
                let mut node = node.clone();
                node.span = span;
                self.push_value(node, cost, 0)
            }
            _ => Ok(()),
        }
    }
}

/// At most `max` characters of `s`, with `...` when cut.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
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
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = t.parse::<i64>()
    {
        return YamlKind::Int(i);
    }
    if let Some(hex) = t.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return YamlKind::Int(i);
    }
    if let Some(oct) = t.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return YamlKind::Int(i);
    }
    let looks_float = digits
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit());
    if looks_float && let Ok(f) = t.parse::<f64>() {
        return YamlKind::Float(f);
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

    /// A few hundred bytes whose aliases expand to 9^8 (43 million) nodes.
    fn alias_bomb() -> String {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            s.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        s
    }

    #[test]
    fn an_alias_bomb_is_an_error_not_an_abort() {
        let text = alias_bomb();
        assert!(text.len() < 700);
        let start = std::time::Instant::now();
        let err = Yaml::parse(&text).unwrap_err();
        assert!(err.message.contains("alias"), "{err}");
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        let err = load_document(&text, Path::new("bomb.yaml")).unwrap_err();
        assert!(err.to_string().starts_with("bomb.yaml:"), "{err}");
    }

    #[test]
    fn a_long_string_copied_by_aliases_is_bounded_too() {
        let mut text = format!("a: &a '{}'\nb: [", "x".repeat(1 << 20));
        text.push_str(&"*a, ".repeat(40));
        text.push_str("]\n");
        let err = Yaml::parse(&text).unwrap_err();
        assert!(err.message.contains("alias"), "{err}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        for text in [
            "[".repeat(100_000),
            "- ".repeat(100_000) + "x",
            (0..1_000)
                .map(|i| format!("{}k:\n", " ".repeat(i)))
                .collect(),
        ] {
            let err = Yaml::parse(&text).unwrap_err();
            assert!(
                err.message.contains("deep") || err.message.contains("recursion"),
                "{err}"
            );
        }
        // Aliases count with the depth of what they copy.
        let mut text = String::from("a: &a ");
        text.push_str(&"[".repeat(100));
        text.push_str(&"]".repeat(100));
        text.push_str(
            "\nb: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
        );
        let err = Yaml::parse(&text).unwrap_err();
        assert!(err.message.contains("deep"), "{err}");
        // Ordinary nesting is fine.
        Yaml::parse(&("[".repeat(100) + &"]".repeat(100))).unwrap();
    }

    #[test]
    fn duplicate_keys_are_an_error_with_both_positions() {
        let err = Yaml::parse("a: 1\nb:\n  c: 1\n  c: 2\n").unwrap_err();
        assert_eq!(err.span, Span { line: 4, col: 3 });
        assert!(err.message.contains("duplicate key `c`"), "{err}");
        assert!(err.message.contains("line 3, column 3"), "{err}");
        assert!(Yaml::parse("{a: 1, 'a': 2}").is_err());
        // Different scalars are different keys, and the same key in different mappings is fine.
        Yaml::parse("1: a\n'1': b\nx: {k: 1}\ny: {k: 1}\n").unwrap();
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let limits = Limits {
            max_input_bytes: 10,
            ..Limits::default()
        };
        let err = Yaml::parse_with("a: 12345678901", &limits).unwrap_err();
        assert!(err.message.contains("limited to 10 bytes"), "{err}");
    }

    #[test]
    fn an_error_on_a_huge_line_shows_a_bounded_snippet() {
        let text = format!("a: [{}", "x, ".repeat(1_000_000));
        let err = load_document(&text, Path::new("big.yaml")).unwrap_err();
        let shown = err.snippet();
        assert!(shown.len() < 1000, "{} bytes", shown.len());
        let lines = snippet_lines(
            &text,
            Span {
                line: 1,
                col: 2_000_000,
            },
        )
        .unwrap();
        assert!(lines.len() < 600, "{} bytes", lines.len());
        assert!(lines.contains("..."));
    }

    #[test]
    fn load_document_gives_a_yaml_rust2_tree() {
        let y = load_document(
            "name: c\ntimeout: 1e300\nn: .inf\nl: [1, 'a', true, ~]\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(y["name"].as_str(), Some("c"));
        assert_eq!(y["timeout"].as_f64(), Some(1e300));
        assert_eq!(y["n"].as_f64(), Some(f64::INFINITY));
        assert_eq!(y["l"][0].as_i64(), Some(1));
        assert!(y["l"][3].is_null());
        assert!(load_document("", Path::new("e.yaml")).unwrap().is_null());
    }
}
