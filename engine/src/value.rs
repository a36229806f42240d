//! The values that flow between nodes.
//!
//! A [`Value`] is JSON-shaped, with Python's distinction between integers and floats, plus one escape
//! hatch: [`Value::Opaque`] carries an object that only its producer understands (a Python object that is
//! not JSON, a generator). Opaque values pass unchanged between nodes of the kind that made them, render
//! through their own `str()`, and are serialised only when a flow output needs them.

use std::any::Any;
use std::fmt::{self, Debug, Write as _};
use std::sync::Arc;

use indexmap::IndexMap;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

/// How deep lists and maps may nest in a value that comes from outside (a tool's result). Every reader
/// of foreign values enforces it, so the recursive conversions here (JSON, `repr`, templates) stay
/// within any thread's stack.
pub const MAX_DEPTH: usize = 256;

/// An ordered string-keyed map, as Python dicts are.
pub type Map = IndexMap<String, Value>;

/// A value produced by a node, a flow input or a literal.
#[derive(Clone, Debug, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    List(Vec<Value>),
    Map(Map),
    Opaque(Arc<dyn Opaque>),
}

/// A stream (a generator) that failed before its end: what its producer said.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct StreamError {
    pub message: String,
}

impl StreamError {
    pub fn new(message: impl Into<String>) -> Self {
        StreamError {
            message: message.into(),
        }
    }
}

/// Why a value has no JSON form.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PlainError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("Object of type {type_name} is not JSON serializable")]
    NotJson { type_name: String },
}

/// An object owned by a node kind's runtime (for example a Python object).
pub trait Opaque: Debug + Send + Sync + 'static {
    /// The producer's type name, e.g. `generator`.
    fn type_name(&self) -> String;
    /// What `str()` gives; used when the value is rendered into a template.
    fn to_str(&self) -> String;
    /// What `repr()` gives; used in run records where the value is not JSON.
    fn repr(&self) -> String {
        self.to_str()
    }
    /// The value as plain JSON-shaped data, if it has such a form.
    fn to_plain(&self) -> Option<Value> {
        None
    }
    /// A stream (generator) is joined into one string when it becomes a flow output.
    fn is_stream(&self) -> bool {
        false
    }
    /// Media (an image) stays itself in plain values, so run outputs can write it to a file; it is
    /// its [`Opaque::to_plain`] form only when serialised.
    fn is_media(&self) -> bool {
        false
    }
    /// Drains a stream into its items' `str()`s. Only called when [`Opaque::is_stream`] is true.
    fn drain(&self) -> Result<Vec<String>, StreamError> {
        Err(StreamError::new(format!(
            "{} is not a stream",
            self.type_name()
        )))
    }
    /// Calls `f` with each item's `str()` as the stream produces it (a terminal prints them as they come).
    /// Blocks the thread; the default drains first.
    fn for_each_chunk(&self, f: &mut dyn FnMut(&str)) -> Result<(), StreamError> {
        for item in self.drain()? {
            f(&item);
        }
        Ok(())
    }
    /// What a stream reports once it has ended (an `llm` stream's tokens and timings), for the node
    /// run that made it; `None` before the end, or when it reports nothing.
    fn metrics(&self) -> Option<crate::NodeMetrics> {
        None
    }
    /// Asks a stream to stop: a stream being read stops at its next item, and its producer (a model's
    /// generation) is cancelled. Streams that cannot stop early ignore it.
    fn cancel(&self) {}
    /// Looks up `key` (an attribute or a dict key) or `index` for a reference path.
    fn lookup(&self, _step: &PathStep) -> Option<Value> {
        None
    }
    fn as_any(&self) -> &dyn Any;
}

/// One step of a reference's property path: `.key`, `['key']` or `[3]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathStep {
    Key(String),
    Index(usize),
}

impl fmt::Display for PathStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathStep::Key(k) => write!(f, "['{k}']"),
            PathStep::Index(i) => write!(f, "[{i}]"),
        }
    }
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Python's type name of this value, for error messages.
    pub fn type_name(&self) -> String {
        match self {
            Value::Null => "NoneType".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::String(_) => "str".into(),
            Value::List(_) => "list".into(),
            Value::Map(_) => "dict".into(),
            Value::Opaque(o) => o.type_name(),
        }
    }

    /// Follows one path step as promptflow does: a dict key, a list index, or an opaque lookup.
    pub fn lookup(&self, step: &PathStep) -> Option<Value> {
        match (self, step) {
            (Value::Map(m), PathStep::Key(k)) => m.get(k).cloned(),
            (Value::List(l), PathStep::Index(i)) => l.get(*i).cloned(),
            (Value::Opaque(o), step) => o.lookup(step),
            _ => None,
        }
    }

    /// Python's `str()` of the value.
    pub fn py_str(&self) -> String {
        match self {
            Value::String(s) => s.clone(),
            Value::Opaque(o) => o.to_str(),
            other => other.py_repr(),
        }
    }

    /// Python's `repr()` of the value.
    pub fn py_repr(&self) -> String {
        let mut out = String::new();
        self.write_repr(&mut out);
        out
    }

    fn write_repr(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("None"),
            Value::Bool(true) => out.push_str("True"),
            Value::Bool(false) => out.push_str("False"),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Float(f) => out.push_str(&py_float_repr(*f)),
            Value::String(s) => out.push_str(&py_str_repr(s)),
            Value::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write_repr(out);
                }
                out.push(']');
            }
            Value::Map(map) => {
                out.push('{');
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(&py_str_repr(k));
                    out.push_str(": ");
                    v.write_repr(out);
                }
                out.push('}');
            }
            Value::Opaque(o) => out.push_str(&o.repr()),
        }
    }

    /// Python's `==` between two values (so `1 == 1.0 == True`, and `"true" != True`).
    pub fn py_eq(&self, other: &Value) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (String(a), String(b)) => a == b,
            (List(a), List(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.py_eq(y)),
            (Map(a), Map(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v.py_eq(w)))
            }
            (Opaque(a), Opaque(b)) => Arc::ptr_eq(a, b),
            (a, b) => match (a.as_number(), b.as_number()) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            },
        }
    }

    fn as_number(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Whether the value is its own [`Value::to_plain`]: it holds no object but images, at any depth,
    /// so turning it into JSON needs neither Python nor a stream.
    pub fn is_plain(&self) -> bool {
        match self {
            Value::List(items) => items.iter().all(Value::is_plain),
            Value::Map(map) => map.values().all(Value::is_plain),
            Value::Opaque(o) => o.is_media(),
            _ => true,
        }
    }

    /// The streams the value holds, at any depth.
    pub fn streams(&self) -> Vec<Arc<dyn Opaque>> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(v) = stack.pop() {
            match v {
                Value::List(items) => stack.extend(items),
                Value::Map(map) => stack.extend(map.values()),
                Value::Opaque(o) if o.is_stream() => out.push(o.clone()),
                _ => {}
            }
        }
        out
    }

    /// [`Value::to_plain`] for async code: a value holding a stream is read on a blocking thread, and
    /// dropping the future (a line that timed out or was cancelled) cancels its streams, so their
    /// producers stop at their next item instead of running on unseen.
    pub async fn into_plain(self) -> Result<Value, PlainError> {
        struct CancelOnDrop(Vec<Arc<dyn Opaque>>);
        impl Drop for CancelOnDrop {
            fn drop(&mut self) {
                for s in &self.0 {
                    s.cancel();
                }
            }
        }
        let streams = self.streams();
        if streams.is_empty() {
            return self.to_plain();
        }
        let mut guard = CancelOnDrop(streams);
        let out = crate::spawn::run_blocking(move || self.to_plain()).await;
        guard.0.clear();
        out
    }

    /// The value as JSON, or the path to the first part that has no JSON form.
    ///
    /// Streams are joined into one string (promptflow's `"".join(str(x) for x in it)`).
    pub fn to_plain(&self) -> Result<Value, PlainError> {
        match self {
            Value::List(items) => items
                .iter()
                .map(Value::to_plain)
                .collect::<Result<_, _>>()
                .map(Value::List),
            Value::Map(map) => map
                .iter()
                .map(|(k, v)| v.to_plain().map(|v| (k.clone(), v)))
                .collect::<Result<_, _>>()
                .map(Value::Map),
            Value::Opaque(o) if o.is_stream() => Ok(Value::String(o.drain()?.concat())),
            Value::Opaque(o) if o.is_media() => Ok(self.clone()),
            Value::Opaque(o) => o.to_plain().ok_or_else(|| PlainError::NotJson {
                type_name: o.type_name(),
            }),
            other => Ok(other.clone()),
        }
    }

    /// A copy to record: plain values are cloned as they are, and only non-JSON parts (a Python
    /// object, a stream) are turned into their JSON form now, before the node can consume them.
    pub fn frozen(&self) -> Value {
        match self {
            Value::List(items) => Value::List(items.iter().map(Value::frozen).collect()),
            Value::Map(map) => {
                Value::Map(map.iter().map(|(k, v)| (k.clone(), v.frozen())).collect())
            }
            Value::Opaque(o) if o.is_media() => self.clone(),
            Value::Opaque(_) => Value::from(self.to_json_lossy()),
            other => other.clone(),
        }
    }

    /// The map inside, or an empty map for any other value.
    pub fn into_map(self) -> Map {
        match self {
            Value::Map(m) => m,
            _ => Map::new(),
        }
    }

    /// Converts to `serde_json::Value`; non-JSON parts become their `repr()`, non-finite floats `null`.
    pub fn to_json_lossy(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Float(a), Float(b)) => a == b,
            (String(a), String(b)) => a == b,
            (List(a), List(b)) => a == b,
            (Map(a), Map(b)) => a == b,
            (Opaque(a), Opaque(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) if !f.is_finite() => crate::json::serialize_non_finite(*f, s),
            Value::Float(f) => s.serialize_f64(*f),
            Value::String(v) => s.serialize_str(v),
            Value::List(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            Value::Opaque(o) => match o.to_plain() {
                Some(plain) => plain.serialize(s),
                None => s.serialize_str(&o.repr()),
            },
        }
    }
}

impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// Builds a [`Value`] straight from a deserializer, without a `serde_json::Value` in between.
struct ValueVisitor;

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        serde::Deserialize::deserialize(d)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        // Past i64, as serde_json::Value does: the nearest float.
        Ok(i64::try_from(u).map_or(Value::Float(u as f64), Value::Int))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::with_capacity(map.size_hint().unwrap_or(0).min(4096));
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            out.insert(k, v);
        }
        Ok(Value::Map(out))
    }
}

impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::String(s),
            serde_json::Value::Array(a) => Value::List(a.into_iter().map(Value::from).collect()),
            serde_json::Value::Object(o) => {
                Value::Map(o.into_iter().map(|(k, v)| (k, Value::from(v))).collect())
            }
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

/// `From` for the types a variant holds as they are.
macro_rules! from_held {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl From<$ty> for Value {
            fn from(v: $ty) -> Self {
                Value::$variant(v)
            }
        }
    )*};
}

from_held!(String => String, i64 => Int, f64 => Float, bool => Bool);

/// `json.dumps(value)` as Python writes it: `", "` and `": "` separators.
pub fn py_json_dumps(value: &Value) -> String {
    use std::io::{Result, Write};
    struct PySeparators;
    /// `", "` before every item but the first.
    fn comma<W: ?Sized + Write>(w: &mut W, first: bool) -> Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    impl serde_json::ser::Formatter for PySeparators {
        fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> Result<()> {
            comma(w, first)
        }
        fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> Result<()> {
            comma(w, first)
        }
        fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PySeparators);
    let _ = value.serialize(&mut ser);
    String::from_utf8(out).unwrap_or_default()
}

/// Python's `repr(float)`: the shortest round-tripping digits, scientific below 1e-4 and from 1e16.
pub fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{f:e}"); // e.g. "1.5e-7", "-2e20"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let plain = format!("{f}");
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// Python's `repr(str)`: single quotes unless the text holds a single quote and no double quote.
pub fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        assert_eq!(py_float_repr(4.5), "4.5");
        assert_eq!(py_float_repr(3.0), "3.0");
        assert_eq!(py_float_repr(1e16), "1e+16");
        assert_eq!(py_float_repr(1e15), "1000000000000000.0");
        assert_eq!(py_float_repr(0.0001), "0.0001");
        assert_eq!(py_float_repr(0.00001), "1e-05");
        assert_eq!(py_float_repr(-2.5e-7), "-2.5e-07");
        assert_eq!(py_float_repr(0.1 + 0.2), "0.30000000000000004");
    }

    #[test]
    fn repr_of_containers_matches_python() {
        let v: Value = serde_json::json!({"a": [1, 2.0, true, null], "b": "it's"}).into();
        assert_eq!(v.py_repr(), r#"{'a': [1, 2.0, True, None], 'b': "it's"}"#);
        assert_eq!(Value::from("x").py_str(), "x");
    }

    #[test]
    fn a_value_is_plain_unless_it_holds_an_object_other_than_an_image() {
        #[derive(Debug)]
        struct Object {
            media: bool,
        }
        impl Opaque for Object {
            fn type_name(&self) -> String {
                "object".into()
            }
            fn to_str(&self) -> String {
                "<object>".into()
            }
            fn is_media(&self) -> bool {
                self.media
            }
            fn as_any(&self) -> &dyn Any {
                self
            }
        }
        let object = |media| Value::Opaque(Arc::new(Object { media }));
        let plain: Value = serde_json::json!({"a": [1, 2.5, null, {"b": "c"}]}).into();
        assert!(plain.is_plain());
        let with =
            |v: Value| Value::Map(Map::from_iter([("deep".to_owned(), Value::List(vec![v]))]));
        assert!(with(object(true)).is_plain(), "an image is plain");
        assert!(!with(object(false)).is_plain());
        assert!(!object(false).is_plain());
    }

    #[test]
    fn python_equality_has_no_string_coercion() {
        assert!(Value::Int(1).py_eq(&Value::Float(1.0)));
        assert!(Value::Bool(true).py_eq(&Value::Int(1)));
        assert!(!Value::from("true").py_eq(&Value::Bool(true)));
        assert!(!Value::from("1").py_eq(&Value::Int(1)));
    }
}
