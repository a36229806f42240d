//! A JSON serializer that writes exactly what `serde_json::Serializer` writes with the same
//! [`Formatter`], but looks for the characters a string must escape eight bytes at a time.
//! `serde_json` looks at strings a byte at a time, and in run records (field names, times, statuses,
//! payload text) that scan was the largest single cost of writing a line.
//!
//! Everything but the scan is the formatter's: numbers, punctuation, escapes and string fragments
//! are written through its methods, so this module's `Words` and slot formatters behave here as they
//! do under `serde_json`.

use std::io;

use serde::ser::{self, Impossible, Serialize};
use serde_json::Error;
use serde_json::ser::{CharEscape, Formatter};

/// Serialises into `w`, formatted by `f`.
pub(crate) struct Compact<W, F> {
    w: W,
    f: F,
}

impl<W: io::Write, F: Formatter> Compact<W, F> {
    pub(crate) fn new(w: W, f: F) -> Self {
        Compact { w, f }
    }
}

/// Writes `s` as a JSON string: the runs that need no escape as fragments, each other character as
/// the formatter escapes it.
fn write_str<W: io::Write + ?Sized, F: Formatter + ?Sized>(
    w: &mut W,
    f: &mut F,
    s: &str,
) -> io::Result<()> {
    f.begin_string(w)?;
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(at) = next_escape(bytes, start) {
        if at > start {
            f.write_string_fragment(w, &s[start..at])?;
        }
        f.write_char_escape(w, char_escape(bytes[at]))?;
        start = at + 1;
    }
    if start < bytes.len() {
        f.write_string_fragment(w, &s[start..])?;
    }
    f.end_string(w)
}

/// Whether JSON escapes `b`: a control character, `"` or `\`.
fn escaped(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// The first byte at or after `from` that JSON escapes.
fn next_escape(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    /// Whether a byte of `x` is zero (exact as a whole: a borrow only flags bytes above a zero one).
    fn has_zero(x: u64) -> bool {
        x.wrapping_sub(ONES) & !x & HIGHS != 0
    }
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let x = u64::from_ne_bytes(chunk.try_into().expect("eight bytes"));
        // A byte below 0x20 (bytes from 0x80 up have their top bit set, and so are not flagged),
        // or equal to `"` or `\`.
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS != 0;
        if control
            || has_zero(x ^ (ONES * u64::from(b'"')))
            || has_zero(x ^ (ONES * u64::from(b'\\')))
        {
            break;
        }
        i += 8;
    }
    bytes[i..].iter().position(|&b| escaped(b)).map(|at| i + at)
}

/// How `serde_json` escapes `b` (one of [`escaped`]'s bytes).
fn char_escape(b: u8) -> CharEscape {
    match b {
        b'"' => CharEscape::Quote,
        b'\\' => CharEscape::ReverseSolidus,
        0x08 => CharEscape::Backspace,
        0x09 => CharEscape::Tab,
        0x0A => CharEscape::LineFeed,
        0x0C => CharEscape::FormFeed,
        0x0D => CharEscape::CarriageReturn,
        _ => CharEscape::AsciiControl(b),
    }
}

/// Where a compound value is: empty (closed already), before its first element, or after one.
#[derive(PartialEq, Eq)]
enum State {
    Empty,
    First,
    Rest,
}

pub(crate) struct Compound<'a, W, F> {
    ser: &'a mut Compact<W, F>,
    state: State,
}

impl<'a, W: io::Write, F: Formatter> ser::Serializer for &'a mut Compact<W, F> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'a, W, F>;
    type SerializeTuple = Compound<'a, W, F>;
    type SerializeTupleStruct = Compound<'a, W, F>;
    type SerializeTupleVariant = Compound<'a, W, F>;
    type SerializeMap = Compound<'a, W, F>;
    type SerializeStruct = Compound<'a, W, F>;
    type SerializeStructVariant = Compound<'a, W, F>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.f.write_bool(&mut self.w, v).map_err(Error::io)
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.f.write_i8(&mut self.w, v).map_err(Error::io)
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.f.write_i16(&mut self.w, v).map_err(Error::io)
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.f.write_i32(&mut self.w, v).map_err(Error::io)
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.f.write_i64(&mut self.w, v).map_err(Error::io)
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        self.f.write_i128(&mut self.w, v).map_err(Error::io)
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.f.write_u8(&mut self.w, v).map_err(Error::io)
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.f.write_u16(&mut self.w, v).map_err(Error::io)
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.f.write_u32(&mut self.w, v).map_err(Error::io)
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.f.write_u64(&mut self.w, v).map_err(Error::io)
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        self.f.write_u128(&mut self.w, v).map_err(Error::io)
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        if v.is_finite() {
            self.f.write_f32(&mut self.w, v)
        } else {
            self.f.write_null(&mut self.w)
        }
        .map_err(Error::io)
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        if v.is_finite() {
            self.f.write_f64(&mut self.w, v)
        } else {
            self.f.write_null(&mut self.w)
        }
        .map_err(Error::io)
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        write_str(&mut self.w, &mut self.f, v).map_err(Error::io)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        self.f.write_byte_array(&mut self.w, v).map_err(Error::io)
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        self.f.write_null(&mut self.w).map_err(Error::io)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.open_variant(variant)?;
        value.serialize(&mut *self)?;
        self.close_variant()
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        self.f.begin_array(&mut self.w).map_err(Error::io)?;
        if len == Some(0) {
            self.f.end_array(&mut self.w).map_err(Error::io)?;
            Ok(Compound {
                ser: self,
                state: State::Empty,
            })
        } else {
            Ok(Compound {
                ser: self,
                state: State::First,
            })
        }
    }
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        self.open_variant(variant)?;
        self.serialize_seq(Some(len))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        self.f.begin_object(&mut self.w).map_err(Error::io)?;
        if len == Some(0) {
            self.f.end_object(&mut self.w).map_err(Error::io)?;
            Ok(Compound {
                ser: self,
                state: State::Empty,
            })
        } else {
            Ok(Compound {
                ser: self,
                state: State::First,
            })
        }
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, Error> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        self.open_variant(variant)?;
        self.serialize_map(Some(len))
    }
}

impl<W: io::Write, F: Formatter> Compact<W, F> {
    /// `{"variant":` of an enum variant with data.
    fn open_variant(&mut self, variant: &str) -> Result<(), Error> {
        let (w, f) = (&mut self.w, &mut self.f);
        f.begin_object(w)
            .and_then(|()| f.begin_object_key(w, true))
            .and_then(|()| write_str(w, f, variant))
            .and_then(|()| f.end_object_key(w))
            .and_then(|()| f.begin_object_value(w))
            .map_err(Error::io)
    }

    /// The `}` that closes [`Compact::open_variant`].
    fn close_variant(&mut self) -> Result<(), Error> {
        let (w, f) = (&mut self.w, &mut self.f);
        f.end_object_value(w)
            .and_then(|()| f.end_object(w))
            .map_err(Error::io)
    }
}

impl<W: io::Write, F: Formatter> Compound<'_, W, F> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let first = self.state == State::First;
        self.state = State::Rest;
        let ser = &mut *self.ser;
        ser.f
            .begin_array_value(&mut ser.w, first)
            .map_err(Error::io)?;
        value.serialize(&mut *ser)?;
        ser.f.end_array_value(&mut ser.w).map_err(Error::io)
    }

    fn end_array(self) -> Result<(), Error> {
        match self.state {
            State::Empty => Ok(()),
            _ => self.ser.f.end_array(&mut self.ser.w).map_err(Error::io),
        }
    }

    fn key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        let first = self.state == State::First;
        self.state = State::Rest;
        let ser = &mut *self.ser;
        ser.f
            .begin_object_key(&mut ser.w, first)
            .map_err(Error::io)?;
        key.serialize(KeySerializer { ser: &mut *ser })?;
        ser.f.end_object_key(&mut ser.w).map_err(Error::io)
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let ser = &mut *self.ser;
        ser.f.begin_object_value(&mut ser.w).map_err(Error::io)?;
        value.serialize(&mut *ser)?;
        ser.f.end_object_value(&mut ser.w).map_err(Error::io)
    }

    fn end_object(self) -> Result<(), Error> {
        match self.state {
            State::Empty => Ok(()),
            _ => self.ser.f.end_object(&mut self.ser.w).map_err(Error::io),
        }
    }
}

impl<W: io::Write, F: Formatter> ser::SerializeSeq for Compound<'_, W, F> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.end_array()
    }
}

impl<W: io::Write, F: Formatter> ser::SerializeTuple for Compound<'_, W, F> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.end_array()
    }
}

impl<W: io::Write, F: Formatter> ser::SerializeTupleStruct for Compound<'_, W, F> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        self.end_array()
    }
}

impl<W: io::Write, F: Formatter> ser::SerializeTupleVariant for Compound<'_, W, F> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }
    fn end(self) -> Result<(), Error> {
        let ser = &mut *self.ser;
        if self.state != State::Empty {
            ser.f.end_array(&mut ser.w).map_err(Error::io)?;
        }
        ser.close_variant()
    }
}

impl<W: io::Write, F: Formatter> ser::SerializeMap for Compound<'_, W, F> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key(key)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.value(value)
    }
    fn end(self) -> Result<(), Error> {
        self.end_object()
    }
}

impl<W: io::Write, F: Formatter> ser::SerializeStruct for Compound<'_, W, F> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.key(key)?;
        self.value(value)
    }
    fn end(self) -> Result<(), Error> {
        self.end_object()
    }
}

impl<W: io::Write, F: Formatter> ser::SerializeStructVariant for Compound<'_, W, F> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.key(key)?;
        self.value(value)
    }
    fn end(self) -> Result<(), Error> {
        let ser = &mut *self.ser;
        if self.state != State::Empty {
            ser.f.end_object(&mut ser.w).map_err(Error::io)?;
        }
        ser.close_variant()
    }
}

/// An object's key: a string, or a number, `bool` or `char` written as one, as `serde_json` takes
/// them; anything else is the error `serde_json` gives.
struct KeySerializer<'a, W, F> {
    ser: &'a mut Compact<W, F>,
}

impl<W: io::Write, F: Formatter> KeySerializer<'_, W, F> {
    /// Writes a key that is not a string in quotes, as `write` writes it.
    fn quoted(self, write: impl FnOnce(&mut F, &mut W) -> io::Result<()>) -> Result<(), Error> {
        let Compact { w, f } = self.ser;
        f.begin_string(w)
            .and_then(|()| write(f, w))
            .and_then(|()| f.end_string(w))
            .map_err(Error::io)
    }
}

fn key_must_be_a_string() -> Error {
    ser::Error::custom("key must be a string")
}

impl<W: io::Write, F: Formatter> ser::Serializer for KeySerializer<'_, W, F> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Impossible<(), Error>;
    type SerializeStructVariant = Impossible<(), Error>;

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        write_str(&mut self.ser.w, &mut self.ser.f, v).map_err(Error::io)
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.quoted(|f, w| f.write_bool(w, v))
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.quoted(|f, w| f.write_i8(w, v))
    }
    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.quoted(|f, w| f.write_i16(w, v))
    }
    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.quoted(|f, w| f.write_i32(w, v))
    }
    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.quoted(|f, w| f.write_i64(w, v))
    }
    fn serialize_i128(self, v: i128) -> Result<(), Error> {
        self.quoted(|f, w| f.write_i128(w, v))
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.quoted(|f, w| f.write_u8(w, v))
    }
    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.quoted(|f, w| f.write_u16(w, v))
    }
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.quoted(|f, w| f.write_u32(w, v))
    }
    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.quoted(|f, w| f.write_u64(w, v))
    }
    fn serialize_u128(self, v: u128) -> Result<(), Error> {
        self.quoted(|f, w| f.write_u128(w, v))
    }
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        if !v.is_finite() {
            return Err(ser::Error::custom("float key must be finite"));
        }
        self.quoted(|f, w| f.write_f32(w, v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        if !v.is_finite() {
            return Err(ser::Error::custom("float key must be finite"));
        }
        self.quoted(|f, w| f.write_f64(w, v))
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_none(self) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit(self) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Error> {
        Err(key_must_be_a_string())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(key_must_be_a_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;
    use serde_json::ser::CompactFormatter;

    use super::*;

    fn both<T: Serialize>(value: &T) -> (String, String) {
        let mut ours = Vec::new();
        let ours = value
            .serialize(&mut Compact::new(&mut ours, CompactFormatter))
            .map(|()| String::from_utf8(ours).unwrap());
        let theirs = serde_json::to_string(value);
        match (ours, theirs) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(a), Err(b)) => (a.to_string(), b.to_string()),
            (a, b) => panic!("{a:?} against {b:?}"),
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut texts: Vec<String> = vec![
            String::new(),
            "plain".into(),
            "exactly8".into(),
            "sixteen bytes!!!".into(),
            "quote\" and backslash\\ and / solidus".into(),
            "ünïcödé → 日本語 🦀 and \u{7f} delete".into(),
            "\u{2028}\u{2029} line separators".into(),
        ];
        // Every byte JSON escapes, at every place within an eight-byte word and across the
        // boundary between two.
        for b in (0u8..0x20).chain([b'"', b'\\']) {
            for at in 0..17 {
                let mut s = "abcdefghijklmnopq".to_string();
                s.insert(at, b as char);
                texts.push(s);
            }
        }
        texts.push("\u{0}\u{1}\u{1f}\u{8}\u{c}\r\n\t".into());
        for text in &texts {
            let (ours, theirs) = both(text);
            assert_eq!(ours, theirs, "{text:?}");
        }
    }

    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        #[derive(serde::Serialize)]
        enum E {
            Unit,
            New(i32),
            Tuple(u8, String),
            Struct { a: f64, b: Option<bool> },
        }
        #[derive(serde::Serialize)]
        struct S<'a> {
            name: &'a str,
            empty: Vec<u8>,
            bytes: &'a serde_bytes_like::Bytes,
            units: Vec<E>,
            nothing: (),
            big: (u64, i64, u128, i128),
            floats: (f32, f64, f64, f64),
        }
        mod serde_bytes_like {
            pub struct Bytes(pub Vec<u8>);
            impl serde::Serialize for Bytes {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_bytes(&self.0)
                }
            }
        }
        let value = S {
            name: "n\"ame",
            empty: vec![],
            bytes: &serde_bytes_like::Bytes(vec![0, 1, 255]),
            units: vec![
                E::Unit,
                E::New(-3),
                E::Tuple(7, "x".into()),
                E::Struct { a: 0.1, b: None },
            ],
            nothing: (),
            big: (u64::MAX, i64::MIN, u128::MAX, i128::MIN),
            floats: (1.5, f64::NAN, f64::INFINITY, 1e300),
        };
        let (ours, theirs) = both(&value);
        assert_eq!(ours, theirs);

        let mut keys: BTreeMap<i64, &str> = BTreeMap::new();
        keys.insert(-1, "a");
        keys.insert(20, "b");
        assert_eq!(both(&keys).0, both(&keys).1);
        let bools: BTreeMap<bool, u8> = [(false, 0), (true, 1)].into_iter().collect();
        assert_eq!(both(&bools).0, both(&bools).1);
        let chars: BTreeMap<char, u8> = [('"', 0), ('k', 1)].into_iter().collect();
        assert_eq!(both(&chars).0, both(&chars).1);
        let nested = json!({"a": [1, {"b": [], "c": {}}, [[]]], "": null, "e\u{1}": "f\n"});
        assert_eq!(both(&nested).0, both(&nested).1);
        // Keys serde_json refuses are refused.
        let bad: BTreeMap<Vec<u8>, u8> = [(vec![1], 0)].into_iter().collect();
        let (ours, theirs) = both(&bad);
        assert_eq!(ours, theirs);
    }
}
