//! JSON as promptflow writes and reads it: strict JSON, except that a float that is not a number or
//! is infinite is written `NaN`, `Infinity` or `-Infinity` (what Python's `json.dumps` writes), where
//! `serde_json` would silently write `null`. Every run file and every output printed goes through
//! [`to_string`] / [`to_string_pretty`] / [`to_writer`], and every reader of such files through
//! [`from_str`], which takes those three words back.
//!
//! How it works: [`crate::Value`] serialises a non-finite float by leaving it in a thread-local slot and
//! asking the serializer for an `f64`; `serde_json` turns a non-finite `f64` into a `null` call on its
//! formatter, and this module's formatter writes the slot's word instead. Any other serializer (or
//! `serde_json`'s own formatters) still sees the `null` it always did.

use std::cell::Cell;
use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::ser::{CompactFormatter, Formatter, PrettyFormatter};

mod compact;
use compact::Compact;

thread_local! {
    static NON_FINITE: Cell<Option<f64>> = const { Cell::new(None) };
    /// A template is being written: line numbers are left as slots.
    static TEMPLATE: Cell<bool> = const { Cell::new(false) };
    /// The next unsigned number written is a line number's slot.
    static SLOT_NEXT: Cell<bool> = const { Cell::new(false) };
}

/// Serialises a non-finite float: as its word through this module's writers, as `null` elsewhere.
pub(crate) fn serialize_non_finite<S: serde::Serializer>(f: f64, s: S) -> Result<S::Ok, S::Error> {
    NON_FINITE.with(|slot| slot.set(Some(f)));
    let result = s.serialize_f64(f);
    NON_FINITE.with(|slot| slot.set(None));
    result
}

/// The word Python's `json.dumps` writes for a non-finite float.
pub fn non_finite_word(f: f64) -> &'static str {
    if f.is_nan() {
        "NaN"
    } else if f > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

/// A formatter that writes a pending non-finite float as its word.
struct Words<F>(F);

/// Formatter methods that pass the call on to the wrapped formatter (`self.0`) unchanged.
macro_rules! pass_on {
    ($($method:ident($($arg:ident: $ty:ty)?)),* $(,)?) => {$(
        fn $method<W: ?Sized + io::Write>(&mut self, w: &mut W $(, $arg: $ty)?) -> io::Result<()> {
            self.0.$method(w $(, $arg)?)
        }
    )*};
}

impl<F: Formatter> Formatter for Words<F> {
    fn write_null<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        match NON_FINITE.with(|slot| slot.take()) {
            Some(f) => w.write_all(non_finite_word(f).as_bytes()),
            None => w.write_all(b"null"),
        }
    }
    fn write_u64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: u64) -> io::Result<()> {
        write_u64_or_slot(&mut self.0, w, value)
    }
    pass_on! {
        begin_array(), end_array(), begin_array_value(first: bool), end_array_value(),
        begin_object(), end_object(), begin_object_key(first: bool), end_object_key(),
        begin_object_value(), end_object_value(),
    }
}

/// serde_json's compact formatter, but for the line-number slots of a template.
struct Slots;

impl Formatter for Slots {
    fn write_u64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: u64) -> io::Result<()> {
        write_u64_or_slot(&mut CompactFormatter, w, value)
    }
}

fn write_u64_or_slot<F: Formatter, W: ?Sized + io::Write>(
    f: &mut F,
    w: &mut W,
    value: u64,
) -> io::Result<()> {
    if SLOT_NEXT.with(|next| next.replace(false)) {
        w.write_all(&[SLOT])
    } else {
        f.write_u64(w, value)
    }
}

/// The byte a template holds where a line number goes: a control character, which JSON text never
/// holds unescaped, so it cannot be confused with anything the value itself wrote.
pub const SLOT: u8 = 0x01;

/// Serialises a line number: the number itself, or a slot while [`to_template`] writes.
pub fn serialize_line_number<S: serde::Serializer>(n: &usize, s: S) -> Result<S::Ok, S::Error> {
    if TEMPLATE.with(Cell::get) {
        serialize_slot(s)
    } else {
        s.serialize_u64(*n as u64)
    }
}

/// [`serialize_line_number`] for the line number of a node's run (`index`).
pub fn serialize_line_index<S: serde::Serializer>(
    n: &Option<usize>,
    s: S,
) -> Result<S::Ok, S::Error> {
    if TEMPLATE.with(Cell::get) {
        serialize_slot(s)
    } else {
        n.serialize(s)
    }
}

fn serialize_slot<S: serde::Serializer>(s: S) -> Result<S::Ok, S::Error> {
    SLOT_NEXT.with(|next| next.set(true));
    let result = s.serialize_u64(0);
    SLOT_NEXT.with(|next| next.set(false));
    result
}

/// Writes `value` as compact JSON with its line numbers left as [`SLOT`]s, for [`fill_template`] to
/// number later: a record can be serialised where its data is (the thread that made it) before the
/// number it gets is known. `words`: non-finite floats as words, as [`to_writer`] writes them, or as
/// serde_json's `null`.
pub fn to_template<W: io::Write, T: Serialize + ?Sized>(
    w: W,
    value: &T,
    words: bool,
) -> serde_json::Result<()> {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            TEMPLATE.with(|t| t.set(false));
            SLOT_NEXT.with(|next| next.set(false));
        }
    }
    TEMPLATE.with(|t| t.set(true));
    let _reset = Reset;
    if words {
        value.serialize(&mut Compact::new(w, Words(CompactFormatter)))
    } else {
        value.serialize(&mut Compact::new(w, Slots))
    }
}

/// Writes `template` (from [`to_template`]) with each slot replaced by `n`; returns the bytes
/// written.
pub fn fill_template<W: io::Write + ?Sized>(
    template: &[u8],
    n: usize,
    w: &mut W,
) -> io::Result<usize> {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest_of_n = n;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest_of_n % 10) as u8;
        rest_of_n /= 10;
        if rest_of_n == 0 {
            break;
        }
    }
    let number = &digits[start..];
    let mut written = 0;
    let mut rest = template;
    while let Some(at) = memchr::memchr(SLOT, rest) {
        w.write_all(&rest[..at])?;
        w.write_all(number)?;
        written += at + number.len();
        rest = &rest[at + 1..];
    }
    w.write_all(rest)?;
    Ok(written + rest.len())
}

/// Writes `value` as compact JSON, non-finite floats as words.
pub fn to_writer<W: io::Write, T: Serialize + ?Sized>(w: W, value: &T) -> serde_json::Result<()> {
    value.serialize(&mut Compact::new(w, Words(CompactFormatter)))
}

/// `value` as compact JSON, non-finite floats as words.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let mut out = Vec::with_capacity(128);
    to_writer(&mut out, value)?;
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// `value` as indented JSON, non-finite floats as words.
pub fn to_string_pretty<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Words(PrettyFormatter::new()));
    value.serialize(&mut ser)?;
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

/// Why a JSON text did not parse.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    message: String,
    /// The 1-based line and column, when the parser knows them.
    pub position: Option<(usize, usize)>,
}

/// Parses JSON that may hold `NaN`, `Infinity` and `-Infinity` (as Python writes them). Strict JSON
/// takes the fast path; only text that fails it and holds one of the three words is parsed again,
/// as JSON5 (a superset of JSON that has them). Errors are the strict parser's.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(strict) => {
            if (text.contains("NaN") || text.contains("Infinity"))
                && nesting(text) <= MAX_LENIENT_NESTING
                && let Ok(v) = json5::from_str(text)
            {
                return Ok(v);
            }
            Err(ParseError {
                position: (strict.line() > 0).then(|| (strict.line(), strict.column())),
                message: strict.to_string(),
            })
        }
    }
}

/// The deepest nesting the JSON5 fallback is given: its parser recurses, so deeper text keeps the
/// strict parser's error (which stops at 128 levels) instead of risking the stack.
const MAX_LENIENT_NESTING: usize = 128;

/// How deep `[` and `{` nest in `text`, outside strings.
fn nesting(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Serialises a UTC time as chrono's own `Serialize` does (RFC 3339, `Z`, the fraction at 0, 3, 6 or
/// 9 digits, whichever holds it exactly) without going through `fmt`: run records hold several
/// times a line, and formatting them was a fifth of the cost of writing a line. Years outside
/// 0–9999 and leap seconds, which the short form does not cover, are left to chrono.
pub fn serialize_utc<S: serde::Serializer>(
    t: &chrono::DateTime<chrono::Utc>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 30];
    match utc_text(t, &mut buf) {
        Some(text) => s.serialize_str(text),
        None => t.serialize(s),
    }
}

/// Appends `t` to `out` as a JSON string, as [`serialize_utc`] writes it; false (and nothing
/// appended) for a time it leaves to chrono.
pub fn write_utc(out: &mut Vec<u8>, t: &chrono::DateTime<chrono::Utc>) -> bool {
    let mut buf = [0u8; 30];
    match utc_text(t, &mut buf) {
        Some(text) => {
            out.push(b'"');
            out.extend_from_slice(text.as_bytes());
            out.push(b'"');
            true
        }
        None => false,
    }
}

/// Whether [`serialize_utc`] writes `t` in its short form: not for a year outside 0–9999 or a leap
/// second, which it leaves to chrono.
pub fn is_short_utc(t: &chrono::DateTime<chrono::Utc>) -> bool {
    use chrono::{Datelike, Timelike};
    // The naive time's fields: the `DateTime`'s would apply the (zero) offset first.
    let t = t.naive_utc();
    (0..=9999).contains(&t.year()) && t.nanosecond() < 1_000_000_000
}

/// `t` in [`serialize_utc`]'s short form, written in `buf`; None where [`is_short_utc`] is false.
fn utc_text<'b>(t: &chrono::DateTime<chrono::Utc>, buf: &'b mut [u8; 30]) -> Option<&'b str> {
    use chrono::{Datelike, Timelike};
    if !is_short_utc(t) {
        return None;
    }
    // The UTC fields are read from the naive time itself: through the `DateTime`, each field would
    // apply the (zero) offset again.
    let t = t.naive_utc();
    let mut put = |at: usize, n: u32, digits: usize| {
        let mut n = n;
        for i in (0..digits).rev() {
            buf[at + i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, t.year() as u32, 4);
    put(5, t.month(), 2);
    put(8, t.day(), 2);
    put(11, t.hour(), 2);
    put(14, t.minute(), 2);
    put(17, t.second(), 2);
    buf[4] = b'-';
    buf[7] = b'-';
    buf[10] = b'T';
    buf[13] = b':';
    buf[16] = b':';
    let end = 19 + put_fraction(t.nanosecond(), &mut buf[19..]);
    buf[end] = b'Z';
    std::str::from_utf8(&buf[..=end]).ok()
}

/// Writes `nanos` as the short form's fraction at the start of `buf`: nothing for 0, else `.` and 3,
/// 6 or 9 digits, whichever holds it exactly. Returns its length.
fn put_fraction(nanos: u32, buf: &mut [u8]) -> usize {
    let (digits, mut n) = match nanos {
        0 => return 0,
        n if n % 1_000_000 == 0 => (3, n / 1_000_000),
        n if n % 1_000 == 0 => (6, n / 1_000),
        n => (9, n),
    };
    buf[0] = b'.';
    // Two digits a step, from the right.
    let mut at = digits;
    while at > 1 {
        let pair = &PAIRS[2 * (n % 100) as usize..][..2];
        buf[at - 1..=at].copy_from_slice(pair);
        n /= 100;
        at -= 2;
    }
    if at == 1 {
        buf[1] = b'0' + n as u8;
    }
    digits + 1
}

/// `00` to `99`, two bytes each.
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Appends times as [`write_utc`] does, keeping the text of the last second it wrote: the times of
/// a run record, and of records made together, mostly fall within one second, and the date and
/// time of day are most of the work of writing one.
#[derive(Clone, Debug, Default)]
pub struct UtcWriter {
    /// The last second written (its date and second of the day) and its text,
    /// `YYYY-MM-DDTHH:MM:SS`.
    last: Option<((chrono::NaiveDate, u32), [u8; 19])>,
}

impl UtcWriter {
    /// Appends `t` to `out` as a JSON string, as [`write_utc`] would; false (and nothing appended)
    /// for a time that [`serialize_utc`] leaves to chrono.
    pub fn write(&mut self, out: &mut Vec<u8>, t: &chrono::DateTime<chrono::Utc>) -> bool {
        use chrono::Timelike;
        // The naive time's fields, read as they are stored.
        let naive = t.naive_utc();
        let time = naive.time();
        let second = (naive.date(), time.num_seconds_from_midnight());
        // `"`, the second, up to ten bytes of fraction, `Z"`.
        let mut text = [0u8; 32];
        match &self.last {
            Some((s, head)) if *s == second && time.nanosecond() < 1_000_000_000 => {
                text[1..20].copy_from_slice(head);
            }
            _ => {
                let mut buf = [0u8; 30];
                if utc_text(t, &mut buf).is_none() {
                    return false;
                }
                text[1..20].copy_from_slice(&buf[..19]);
                let mut head = [0u8; 19];
                head.copy_from_slice(&buf[..19]);
                self.last = Some((second, head));
            }
        }
        text[0] = b'"';
        let end = 20 + put_fraction(time.nanosecond(), &mut text[20..]);
        text[end] = b'Z';
        text[end + 1] = b'"';
        out.extend_from_slice(&text[..end + 2]);
        true
    }
}

/// [`serialize_utc`] for an optional time.
pub fn serialize_utc_opt<S: serde::Serializer>(
    t: &Option<chrono::DateTime<chrono::Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize_utc(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_template_numbered_later_equals_the_record_written_with_its_number() {
        use chrono::{TimeZone, Utc};
        let t = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let mut map = crate::Map::new();
        map.insert("index".into(), crate::Value::Int(7));
        map.insert("nan".into(), crate::Value::Float(f64::NAN));
        map.insert(
            "text".into(),
            crate::Value::String("a \u{1} b\n\"index\":".into()),
        );
        let run = |index| crate::exec::NodeRunInfo {
            node: "n".into(),
            status: crate::Status::Completed,
            inputs: map.clone(),
            output: crate::Value::Map(map.clone()),
            error: None,
            start_time: t,
            end_time: t,
            index,
            system_metrics: Default::default(),
            api_calls: vec![serde_json::json!({"big": u64::MAX})],
        };
        for n in [0usize, 7, 12345] {
            let line = crate::LineResult {
                line_number: Some(n),
                status: crate::Status::Completed,
                inputs: map.clone(),
                output: map.clone(),
                error: None,
                node_runs: vec![run(Some(n)), run(Some(n))],
                aggregation_inputs: crate::Map::new(),
                start_time: t,
                end_time: t,
            };
            let record = crate::store::LineRecordRef::new(&line);
            let mut direct = Vec::new();
            to_writer(&mut direct, &record).unwrap();
            let mut template = Vec::new();
            to_template(&mut template, &record, true).unwrap();
            assert_eq!(template.iter().filter(|&&b| b == SLOT).count(), 3);
            let mut filled = Vec::new();
            let size = fill_template(&template, n, &mut filled).unwrap();
            assert_eq!(
                String::from_utf8(filled).unwrap(),
                String::from_utf8(direct.clone()).unwrap()
            );
            assert_eq!(size, direct.len());
        }
        // Outside a template, the fields are plain numbers.
        let mut plain = Vec::new();
        serialize_line_number(&5, &mut serde_json::Serializer::new(&mut plain)).unwrap();
        assert_eq!(plain, b"5");
    }

    #[test]
    fn times_serialise_as_chrono_does() {
        use chrono::{TimeZone, Utc};
        let base = Utc.with_ymd_and_hms(2026, 12, 1, 23, 59, 19).unwrap();
        let mut times = vec![
            base,
            Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-5, 3, 4, 5, 6, 7).unwrap(),
            // The second before a leap second, then the leap second (the same second since the epoch).
            Utc.with_ymd_and_hms(2016, 12, 31, 23, 59, 59).unwrap()
                + chrono::Duration::milliseconds(250),
            Utc.from_utc_datetime(
                &chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
                    .unwrap()
                    .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
                    .unwrap(),
            ),
        ];
        for nanos in [
            1,
            9,
            10,
            999,
            1_000,
            1_001,
            120_000,
            999_999,
            1_000_000,
            1_000_001,
            29_863_254,
            100_000_000,
            500_000_000,
            999_999_999,
        ] {
            times.push(base + chrono::Duration::nanoseconds(nanos));
        }
        times.push(base + chrono::Duration::nanoseconds(1_000_000_007));
        times.push(base);
        // One writer for all: times of the second it wrote last, and of others.
        let mut writer = UtcWriter::default();
        for t in times {
            let ours = {
                let mut out = Vec::new();
                serialize_utc(&t, &mut serde_json::Serializer::new(&mut out)).unwrap();
                String::from_utf8(out).unwrap()
            };
            assert_eq!(ours, serde_json::to_string(&t).unwrap(), "{t:?}");
            let mut written = b"x".to_vec();
            if writer.write(&mut written, &t) {
                assert_eq!(&written[1..], ours.as_bytes(), "{t:?}");
            } else {
                assert_eq!(written, b"x");
                assert!(!is_short_utc(&t), "{t:?}");
            }
        }
        let none: Option<chrono::DateTime<Utc>> = None;
        let mut out = Vec::new();
        serialize_utc_opt(&none, &mut serde_json::Serializer::new(&mut out)).unwrap();
        assert_eq!(out, b"null");
    }

    use super::*;
    use crate::{Map, Value};

    fn sample() -> Value {
        let map: Map = [
            ("nan".to_string(), Value::Float(f64::NAN)),
            ("inf".to_string(), Value::Float(f64::INFINITY)),
            ("ninf".to_string(), Value::Float(f64::NEG_INFINITY)),
            ("none".to_string(), Value::Null),
            ("x".to_string(), Value::Float(0.5)),
            (
                "list".to_string(),
                Value::List(vec![Value::Float(f64::NAN), Value::Null, Value::Int(1)]),
            ),
        ]
        .into_iter()
        .collect();
        Value::Map(map)
    }

    #[test]
    fn non_finite_floats_are_written_as_python_writes_them() {
        assert_eq!(
            to_string(&sample()).unwrap(),
            r#"{"nan":NaN,"inf":Infinity,"ninf":-Infinity,"none":null,"x":0.5,"list":[NaN,null,1]}"#
        );
        assert!(
            to_string_pretty(&sample())
                .unwrap()
                .contains("\"nan\": NaN,")
        );
        // serde_json's own writers keep writing null, and nothing is left pending for them.
        assert_eq!(
            serde_json::to_string(&sample()).unwrap(),
            r#"{"nan":null,"inf":null,"ninf":null,"none":null,"x":0.5,"list":[null,null,1]}"#
        );
        assert_eq!(to_string(&Value::Null).unwrap(), "null");
    }

    #[test]
    fn what_is_written_reads_back() {
        let text = to_string(&sample()).unwrap();
        let back: Value = from_str(&text).unwrap();
        let Value::Map(m) = back else {
            panic!("{back:?}")
        };
        assert!(matches!(m["nan"], Value::Float(f) if f.is_nan()));
        assert!(matches!(m["inf"], Value::Float(f) if f == f64::INFINITY));
        assert!(matches!(m["ninf"], Value::Float(f) if f == f64::NEG_INFINITY));
        assert_eq!(m["none"], Value::Null);
        assert_eq!(m["x"], Value::Float(0.5));
        let Value::List(items) = &m["list"] else {
            panic!("{:?}", m["list"])
        };
        assert!(matches!(items[0], Value::Float(f) if f.is_nan()));
        assert_eq!(items[1..], [Value::Null, Value::Int(1)]);
    }

    #[test]
    fn a_word_inside_a_string_is_text_and_bad_json_keeps_its_position() {
        let v: Value = from_str(r#"{"a": "NaN Infinity"}"#).unwrap();
        assert_eq!(
            v,
            Value::Map(
                [("a".to_string(), Value::from("NaN Infinity"))]
                    .into_iter()
                    .collect()
            )
        );
        let e = from_str::<Value>("{\"a\": NaN,\n \"b\": }").unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(1));
        assert!(
            from_str::<Value>("nan").is_err(),
            "only Python's spelling is JSON"
        );
        let deep = format!("{}NaN{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(
            from_str::<Value>(&deep).is_err(),
            "deep text keeps the strict error"
        );
        assert_eq!(nesting(r#"{"a": ["[[", {"b": "\"{"}]}"#), 3);
    }
}
