//! Strict JSON for the configuration: a document tree that refuses
//! duplicate keys and keeps every number's text.
//!
//! `serde_json::Value` silently keeps the last of two equal keys
//! (`"percent": 10, "percent": 100` would run at 100 %) and turns numbers
//! into `f64`, which cannot tell `10.000000001` from `10`. [`read`] parses
//! with serde_json and its own visitor instead (serde's `MapAccess` hands
//! over every member, repeated keys included): every object keeps all its
//! members in document order, so a repeated key is found and named by its
//! path, and every number keeps the text it was written with, taken from a
//! scan of the bytes (serde_json hands numbers over in document order).
//!
//! It is serde_json's parser throughout, so malformed documents get its
//! messages, with line and column. (`serde_json::value::RawValue` could
//! also keep the text, but its visitor pulls serde's "invalid type"
//! messages, and their float formatting, about 20 KB, into the .wasm.)

use std::fmt::{self, Write};

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value whose objects have unique keys and whose numbers keep
/// their text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number as written, e.g. `10.000000001` or `1e2`.
    Number(String),
    String(String),
    Array(Vec<Json>),
    /// Members in document order ([`read`] refuses a repeated key).
    Object(Vec<(String, Json)>),
}

impl Json {
    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A number whose value is a non-negative integer that fits a `u64`,
    /// however written (`5`, `5.0`, `5e0`, `0.5e1`): the one number rule
    /// of the configuration is that a field judges a number's value, never
    /// its spelling.
    pub fn as_u64(&self) -> Option<u64> {
        let Json::Number(text) = self else {
            return None;
        };
        let d = Decimal::parse(text)?;
        if d.digits.is_empty() {
            return Some(0);
        }
        if d.negative || d.scale < 0 {
            return None;
        }
        let zeros = usize::try_from(d.scale).ok()?;
        if d.digits.len().saturating_add(zeros) > 20 {
            return None;
        }
        let mut n: u64 = 0;
        for b in d.digits.bytes().chain(std::iter::repeat_n(b'0', zeros)) {
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        }
        Some(n)
    }

    /// A number's value as `f64`, computed from its decimal digits by hand
    /// (the standard float parser adds tens of KB to the .wasm): exact for
    /// up to 19 significant digits and any exponent; `2`, `0.02`, `2e-2`
    /// and `20e-3` are the same value.
    pub fn as_f64(&self) -> Option<f64> {
        let Json::Number(text) = self else {
            return None;
        };
        let d = Decimal::parse(text)?;
        let keep = d.digits.len().min(19);
        let dropped = (d.digits.len() - keep) as i64;
        let mut m: u64 = 0;
        for b in d.digits.bytes().take(keep) {
            m = m * 10 + u64::from(b - b'0');
        }
        let scale = d.scale.saturating_add(dropped);
        let p = |e: i64| 10f64.powi(i32::try_from(e).unwrap_or(i32::MAX));
        let v = if m == 0 {
            0.0
        } else if scale >= 0 {
            m as f64 * p(scale)
        } else {
            m as f64 / p(-scale)
        };
        Some(if d.negative { -v } else { v })
    }

    /// The JSON type, for messages: `number`, `object`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "boolean",
            Json::Number(_) => "number",
            Json::String(_) => "string",
            Json::Array(_) => "array",
            Json::Object(_) => "object",
        }
    }
}

/// A JSON number's text as `digits x 10^scale`, digits without leading or
/// trailing zeros (empty for zero).
struct Decimal {
    negative: bool,
    digits: String,
    scale: i64,
}

impl Decimal {
    fn parse(text: &str) -> Option<Decimal> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
            // The JSON grammar leaves only overflow: a huge exponent,
            // saturated.
            Some((m, e)) => {
                let e = e.strip_prefix('+').unwrap_or(e);
                let sat = if e.starts_with('-') {
                    i64::MIN / 2
                } else {
                    i64::MAX / 2
                };
                (
                    m,
                    e.parse::<i64>()
                        .unwrap_or(sat)
                        .clamp(i64::MIN / 2, i64::MAX / 2),
                )
            }
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let all = format!("{int}{frac}");
        let lead = all.trim_start_matches('0');
        let digits = lead.trim_end_matches('0');
        let trailing = (lead.len() - digits.len()) as i64;
        Some(Decimal {
            negative,
            digits: digits.to_string(),
            scale: exponent - frac.len() as i64 + trailing,
        })
    }
}

/// Compact JSON as serde_json writes it, but numbers as written; for
/// messages (`got "503"`).
impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Number(text) => f.write_str(text),
            Json::String(s) => write_string(f, s),
            Json::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Json::Object(members) => {
                f.write_str("{")?;
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write_string(f, k)?;
                    write!(f, ":{v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// `s` as a JSON string literal.
fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            '\u{8}' => f.write_str("\\b")?,
            '\u{c}' => f.write_str("\\f")?,
            c if c < ' ' => write!(f, "\\u{:04x}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    f.write_str("\"")
}

/// Why a document was not read.
#[derive(Debug)]
pub enum ReadError {
    /// Not JSON; serde_json's message (with line and column).
    Syntax(String),
    /// The field path of every repeated key, in document order, each once:
    /// `routes[0].percent`.
    DuplicateKeys(Vec<String>),
}

/// Reads a JSON document strictly (see the module documentation).
pub fn read(bytes: &[u8]) -> Result<Json, ReadError> {
    let texts = number_texts(bytes);
    let mut numbers = Numbers {
        texts: texts.iter(),
        missing: false,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let json = Node {
        numbers: &mut numbers,
    }
    .deserialize(&mut de)
    .and_then(|json| de.end().map(|()| json))
    .map_err(|e| ReadError::Syntax(e.to_string()))?;
    if numbers.missing || numbers.texts.next().is_some() {
        // Not reached: the scan and the parse see the same numbers.
        return Err(ReadError::Syntax("cannot read the numbers' text".into()));
    }
    let mut duplicates = Vec::new();
    find_duplicates(&json, "", &mut duplicates);
    if duplicates.is_empty() {
        Ok(json)
    } else {
        Err(ReadError::DuplicateKeys(duplicates))
    }
}

/// The text of every number token in `bytes`, in document order (which is
/// the order serde_json hands the numbers to [`NodeVisitor`]). Outside
/// strings, a token starting with `-` or a digit is a number.
fn number_texts(bytes: &[u8]) -> Vec<&str> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'"' {
            i += 1;
            while let Some(&c) = bytes.get(i) {
                i += if c == b'\\' { 2 } else { 1 };
                if c == b'"' {
                    break;
                }
            }
        } else if b == b'-' || b.is_ascii_digit() {
            let len = bytes
                .get(i..)
                .unwrap_or_default()
                .iter()
                .take_while(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
                .count();
            let token = bytes.get(i..i + len).unwrap_or_default();
            // ASCII by construction.
            out.push(std::str::from_utf8(token).unwrap_or_default());
            i += len;
        } else {
            i += 1;
        }
    }
    out
}

/// Each object's repeated keys, once each, in document order.
fn find_duplicates(json: &Json, path: &str, out: &mut Vec<String>) {
    match json {
        Json::Object(members) => {
            for (i, (key, value)) in members.iter().enumerate() {
                let at = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let earlier = members.get(..i).unwrap_or_default();
                let count = earlier.iter().filter(|(k, _)| k == key).count();
                if count == 1 {
                    out.push(at.clone());
                }
                find_duplicates(value, &at, out);
            }
        }
        Json::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                find_duplicates(item, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The number texts still to hand out, in document order.
struct Numbers<'b> {
    texts: std::slice::Iter<'b, &'b str>,
    /// The parse met more numbers than the scan.
    missing: bool,
}

/// Deserializes one value, taking each number's text from `numbers`.
struct Node<'s, 'b> {
    numbers: &'s mut Numbers<'b>,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
    type Value = Json;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        d.deserialize_any(NodeVisitor {
            numbers: self.numbers,
        })
    }
}

/// Accepts every kind of value (a visitor refusing one would also pull
/// serde's "invalid type" messages, with float formatting, into the .wasm).
/// An object keeps every member, repeated keys included: serde's map access
/// hands each one over, where a map type would keep only the last.
struct NodeVisitor<'s, 'b> {
    numbers: &'s mut Numbers<'b>,
}

impl NodeVisitor<'_, '_> {
    fn number(self) -> Json {
        let text = self.numbers.texts.next().copied().unwrap_or_else(|| {
            self.numbers.missing = true;
            ""
        });
        Json::Number(text.to_string())
    }
}

impl<'de> Visitor<'de> for NodeVisitor<'_, '_> {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Json, M::Error> {
        let mut members = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(Node {
                numbers: &mut *self.numbers,
            })?;
            members.push((key, value));
        }
        Ok(Json::Object(members))
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Json, S::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Node {
            numbers: &mut *self.numbers,
        })? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::String(s.to_string()))
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Json, E> {
        Ok(self.number())
    }

    fn visit_u64<E>(self, _: u64) -> Result<Json, E> {
        Ok(self.number())
    }

    fn visit_f64<E>(self, _: f64) -> Result<Json, E> {
        Ok(self.number())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dups(json: &str) -> Vec<String> {
        match read(json.as_bytes()) {
            Err(ReadError::DuplicateKeys(paths)) => paths,
            other => panic!("{json}: {other:?}"),
        }
    }

    #[test]
    fn keeps_number_text_and_member_order() {
        let j =
            read(br#" {"b": 10.000000001, "a": [1e2, -0, "x\n"], "c": {"d": null, "e": true}} "#)
                .unwrap();
        assert_eq!(j.get("b"), Some(&Json::Number("10.000000001".into())));
        assert_eq!(
            j.to_string(),
            r#"{"b":10.000000001,"a":[1e2,-0,"x\n"],"c":{"d":null,"e":true}}"#
        );
        assert_eq!(j.get("a").map(Json::kind), Some("array"));
        let n = |t: &str| Json::Number(t.into());
        assert_eq!(n("5").as_u64(), Some(5));
        assert_eq!(n("5.0").as_u64(), Some(5));
        assert_eq!(n("0.5e1").as_u64(), Some(5));
        assert_eq!(n("500e-2").as_u64(), Some(5));
        assert_eq!(n("-0").as_u64(), Some(0));
        assert_eq!(n("5.5").as_u64(), None);
        assert_eq!(n("-1").as_u64(), None);
        assert_eq!(n("18446744073709551615").as_u64(), Some(u64::MAX));
        assert_eq!(n("18446744073709551616").as_u64(), None);
        assert_eq!(n("1e400").as_u64(), None);
        assert_eq!(n("9.5e-1").as_f64(), Some(0.95));
        assert_eq!(n("0.95").as_f64(), Some(0.95));
        assert_eq!(n("95e-2").as_f64(), Some(0.95));
        assert_eq!(n("0.020").as_f64(), Some(0.02));
        assert_eq!(n("-1.5").as_f64(), Some(-1.5));
        assert_eq!(n("1e400").as_f64(), Some(f64::INFINITY));
        assert_eq!(n("1e-400").as_f64(), Some(0.0));
    }

    #[test]
    fn displays_as_serde_json_writes_it() {
        // Keys in order: Value sorts them.
        let doc = br#"{"a": [null, true, false, 7, -2, {}], "o": {"k": []}, "s": "q\"b\\n\nr\rt\tb\bf\fu\u0001\u007f\u00e9"}"#;
        let want = serde_json::from_slice::<serde_json::Value>(doc)
            .unwrap()
            .to_string();
        assert_eq!(read(doc).unwrap().to_string(), want);
    }

    #[test]
    fn names_every_repeated_key_once_at_any_depth() {
        assert_eq!(dups(r#"{"a": 1, "a": 2}"#), ["a"]);
        assert_eq!(dups(r#"{"a": 1, "a": 2, "a": 3}"#), ["a"]);
        assert_eq!(
            dups(r#"{"r": [{"p": 1}, {"p": 1, "q": {"x": 1, "x": 2}, "p": 2}], "r": 1}"#),
            ["r[1].q.x", "r[1].p", "r"]
        );
        // Document order: a repeated key before what its value repeats.
        assert_eq!(
            dups(r#"{"a": {"x": 1, "x": 2}, "a": {"y": 1, "y": 2}}"#),
            ["a.x", "a", "a.y"]
        );
        // Keys compare after unescaping.
        assert_eq!(dups(r#"{"a": 1, "\u0061": 2}"#), ["a"]);
    }

    #[test]
    fn number_texts_skip_strings() {
        assert_eq!(
            number_texts(br#"{"a1": -1.5e+3, "b\"2": [0, "3", 4E2], "c": "\\", "d": 5}"#),
            ["-1.5e+3", "0", "4E2", "5"]
        );
    }

    #[test]
    fn malformed_documents_get_the_messages_serde_json_value_gives() {
        for bad in [
            &b"{\"a\": 1,"[..],
            b"",
            b"[1e400]",
            b"{\"p\": -1e999}",
            b"\"\xff\"",
            b"{\"a\": [1,]}",
            b"{\"a\": 1,}",
            b"{} x",
            b"{\"a\" 1}",
            b"{1: 2}",
            b"[01]",
            b"[1.]",
            b"\"\\x\"",
            b"nul",
            &[b'['; 200],
        ] {
            let want = serde_json::from_slice::<serde_json::Value>(bad)
                .unwrap_err()
                .to_string();
            match read(bad) {
                Err(ReadError::Syntax(e)) => assert_eq!(e, want),
                other => panic!("{other:?}"),
            }
        }
    }
}
