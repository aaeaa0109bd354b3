//! JSON comparison of two response bodies, field by field, for shadow
//! compare (`compare_body: "json"`). No host types here.
//!
//! Two documents are equal when their values are: key order and
//! whitespace never matter; array order does; numbers compare as numbers
//! (`1.0` = `1`, `1e2` = `100`), except that two integers (no `.`, no
//! exponent) compare by their exact text (`-0` = `0`), so integers beyond
//! 2^53 never round into each other.
//!
//! A difference is named by its field path, a JSON Pointer (RFC 6901:
//! `~` written `~0`, `/` written `~1`) normalised so that every array index
//! reads `*` (`/items/*/price`). A key on one side only, a type change, or
//! arrays of different lengths are each one difference at the path of that
//! key or array.
//!
//! Ignored fields are JSON Pointers whose segment `*` matches any array
//! index or object key at that level; a field under an ignored one is
//! ignored too. A key that is itself a literal `*` cannot be singled out:
//! the segment `*` matches it together with every other key at its level
//! (a segment like `a*b` is the literal key `a*b`).

use crate::config::json::Json;

/// Most differences named per comparison; beyond, counted only.
pub const MAX_FIELDS: usize = 16;

/// One segment of an ignore pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Any array index or object key.
    Any,
    /// An object key, or an array index written in decimal.
    Key(String),
}

/// An `ignore_fields` entry: a JSON Pointer where `*` matches any segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    text: String,
    segments: Vec<Segment>,
}

impl Pointer {
    /// Parses `text`; the reason when it is not a pointer this filter
    /// accepts (for `ignore_fields[i]: <reason>`).
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Err("must not be empty (the whole document cannot be ignored)".into());
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "must be a JSON Pointer starting with \"/\", got \"{}\"",
                text.escape_default()
            ));
        };
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            if raw == "*" {
                segments.push(Segment::Any);
                continue;
            }
            let mut key = String::new();
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    key.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => key.push('~'),
                    Some('1') => key.push('/'),
                    _ => {
                        return Err(format!(
                            "\"~\" must be followed by 0 or 1 (RFC 6901), got \"{}\"",
                            text.escape_default()
                        ))
                    }
                }
            }
            segments.push(Segment::Key(key));
        }
        Ok(Pointer {
            text: text.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn matches(&self, path: &[Step<'_>]) -> bool {
        self.segments.len() == path.len()
            && self.segments.iter().zip(path).all(|(s, p)| match (s, p) {
                (Segment::Any, _) => true,
                (Segment::Key(k), Step::Key(q)) => k == q,
                (Segment::Key(k), Step::Index(i)) => k.parse::<usize>().ok() == Some(*i),
            })
    }
}

/// A step of the path being compared.
#[derive(Debug, Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The normalised path of `path` (indices as `*`).
fn normalised(path: &[Step<'_>]) -> String {
    let mut out = String::new();
    for s in path {
        out.push('/');
        match s {
            Step::Index(_) => out.push('*'),
            Step::Key(k) => {
                for c in k.chars() {
                    match c {
                        '~' => out.push_str("~0"),
                        '/' => out.push_str("~1"),
                        c => out.push(c),
                    }
                }
            }
        }
    }
    out
}

/// The fields in which two documents differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Normalised paths, in document order of the first side, each once,
    /// at most [`MAX_FIELDS`].
    pub fields: Vec<String>,
    /// Differences found (a path met twice, e.g. two array elements,
    /// counts twice).
    pub count: usize,
    /// Some differing fields are not in `fields` (the bound).
    pub truncated: bool,
    /// The first difference's values (`absent` for a key on one side
    /// only), as compact JSON, each at most [`MAX_VALUE_BYTES`].
    pub values: Option<(String, String)>,
}

/// Longest value text kept for a log line.
pub const MAX_VALUE_BYTES: usize = 64;

fn shown(v: Option<&Json>) -> String {
    let Some(v) = v else {
        return "absent".into();
    };
    let text = v.to_string();
    if text.len() <= MAX_VALUE_BYTES {
        return text;
    }
    let mut cut = MAX_VALUE_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", text.get(..cut).unwrap_or_default())
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn add(&mut self, path: &[Step<'_>], a: Option<&Json>, b: Option<&Json>) {
        self.count += 1;
        if self.values.is_none() {
            self.values = Some((shown(a), shown(b)));
        }
        let n = normalised(path);
        if self.fields.contains(&n) {
            return;
        }
        if self.fields.len() >= MAX_FIELDS {
            self.truncated = true;
            return;
        }
        self.fields.push(n);
    }
}

/// A JSON number as an exact decimal: sign, significant digits (no
/// leading or trailing zeros) and the power of ten of the last digit.
/// Zero is `(false, "", 0)`.
fn decimal(text: &str) -> Option<(bool, String, i64)> {
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (
            rest.get(..i)?,
            rest.get(i + 1..)?
                .trim_start_matches('+')
                .parse::<i64>()
                .ok()?,
        ),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = int.chars().chain(frac.chars()).collect();
    let mut exp = exp.checked_sub(i64::try_from(frac.len()).ok()?)?;
    let lead = digits.len() - digits.trim_start_matches('0').len();
    digits.drain(..lead);
    while digits.ends_with('0') {
        digits.pop();
        exp = exp.checked_add(1)?;
    }
    if digits.is_empty() {
        return Some((false, String::new(), 0));
    }
    Some((neg, digits, exp))
}

/// Whether two number texts are the same number (see the module doc):
/// compared as exact decimals, so `1.0` = `1` = `1e0` = `0.1e1` and no
/// two different integers, however large, are ever equal.
pub fn same_number(a: &str, b: &str) -> bool {
    a == b || matches!((decimal(a), decimal(b)), (Some(x), Some(y)) if x == y)
}

/// The differences between `a` and `b`, fields matched by `ignore` left
/// out.
pub fn diff(a: &Json, b: &Json, ignore: &[Pointer]) -> Diff {
    let mut out = Diff::default();
    let mut path = Vec::new();
    walk(a, b, ignore, &mut path, &mut out);
    out
}

fn walk<'a>(
    a: &'a Json,
    b: &'a Json,
    ignore: &[Pointer],
    path: &mut Vec<Step<'a>>,
    out: &mut Diff,
) {
    if !path.is_empty() && ignore.iter().any(|p| p.matches(path)) {
        return;
    }
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => {
            for (k, v) in x {
                path.push(Step::Key(k));
                match y.iter().find(|(q, _)| q == k) {
                    Some((_, w)) => walk(v, w, ignore, path, out),
                    None => {
                        if !ignore.iter().any(|p| p.matches(path)) {
                            out.add(path, Some(v), None);
                        }
                    }
                }
                path.pop();
            }
            for (k, w) in y {
                if x.iter().any(|(q, _)| q == k) {
                    continue;
                }
                path.push(Step::Key(k));
                if !ignore.iter().any(|p| p.matches(path)) {
                    out.add(path, None, Some(w));
                }
                path.pop();
            }
        }
        (Json::Array(x), Json::Array(y)) => {
            if x.len() != y.len() {
                out.add(path, Some(a), Some(b));
                return;
            }
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                path.push(Step::Index(i));
                walk(v, w, ignore, path, out);
                path.pop();
            }
        }
        (Json::Number(x), Json::Number(y)) => {
            if !same_number(x, y) {
                out.add(path, Some(a), Some(b));
            }
        }
        (x, y) => {
            if x != y {
                out.add(path, Some(x), Some(y));
            }
        }
    }
}

/// Whether a `content-type` value is JSON (`application/json`, or any
/// `+json` type), parameters aside.
pub fn is_json_type(value: &[u8]) -> bool {
    let essence = value.split(|b| *b == b';').next().unwrap_or_default();
    let essence = essence.trim_ascii().to_ascii_lowercase();
    essence == b"application/json" || essence.ends_with(b"+json")
}

/// A field path as a stat name segment: ASCII letters, digits, `_` and
/// `-` kept, `*` as `x`, any other character as `_`, at most 64
/// characters, the leading `/` dropped (`/items/*/price` reads
/// `items_x_price`; the empty path reads `root`).
pub fn stat_name(field: &str) -> String {
    let mut out: String = field
        .trim_start_matches('/')
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => c,
            '*' => 'x',
            _ => '_',
        })
        .take(64)
        .collect();
    if out.is_empty() {
        out.push_str("root");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::json::read;

    fn j(s: &str) -> Json {
        read(s.as_bytes()).unwrap()
    }

    fn d(a: &str, b: &str, ignore: &[&str]) -> Vec<String> {
        let ignore: Vec<Pointer> = ignore.iter().map(|p| Pointer::parse(p).unwrap()).collect();
        diff(&j(a), &j(b), &ignore).fields
    }

    #[test]
    fn key_order_and_whitespace_never_matter_array_order_does() {
        assert!(d(
            r#"{"a":1,"b":[1,2]}"#,
            "{ \"b\" : [1, 2],\n \"a\": 1 }",
            &[]
        )
        .is_empty());
        assert_eq!(d(r#"{"b":[1,2]}"#, r#"{"b":[2,1]}"#, &[]), ["/b/*"]);
        assert_eq!(d(r#"{"b":[1,2]}"#, r#"{"b":[1]}"#, &[]), ["/b"]);
    }

    #[test]
    fn numbers_compare_as_numbers_big_integers_by_text() {
        assert!(d("[1.0, 1e2, -0]", "[1, 100, 0]", &[]).is_empty());
        assert_eq!(
            d("[9007199254740993]", "[9007199254740992]", &[]),
            ["/*"],
            "2^53 + 1 is not 2^53"
        );
        assert_eq!(d("[1]", r#"["1"]"#, &[]), ["/*"], "a type change");
        assert!(same_number("0.1", "1e-1"));
        assert!(same_number("-12.50", "-1.25E+1"));
        assert!(same_number("0.0", "-0e5"));
        assert!(!same_number("1", "2"));
        assert!(!same_number("1", "-1"));
        assert!(
            !same_number("0.1", "0.1000000000000000055"),
            "not through f64"
        );
        assert!(
            !same_number("1e99999999999999999999", "1"),
            "exponent overflow: text"
        );
    }

    #[test]
    fn names_each_differing_field_once_normalised() {
        let a = r#"{"id":"a1","items":[{"p":1,"etag":"x"},{"p":2,"etag":"y"}],"only_a":1,"k/~":1}"#;
        let b = r#"{"id":"b2","items":[{"p":1,"etag":"z"},{"p":3,"etag":"w"}],"only_b":1,"k/~":2}"#;
        let diff = diff(&j(a), &j(b), &[]);
        assert_eq!(
            diff.fields,
            [
                "/id",
                "/items/*/etag",
                "/items/*/p",
                "/only_a",
                "/k~1~0",
                "/only_b"
            ]
        );
        assert_eq!(diff.count, 7);
        assert_eq!(diff.values, Some(("\"a1\"".into(), "\"b2\"".into())));
        let long = format!("[\"{}\"]", "v".repeat(100));
        let d = super::diff(&j(&long), &j("[1]"), &[]);
        assert_eq!(d.values.unwrap().0, format!("\"{}...", "v".repeat(63)));
    }

    #[test]
    fn ignored_fields_and_wildcards() {
        let a = r#"{"meta":{"at":1,"id":"x"},"items":[{"etag":"1","v":1}],"m":{"k1":{"t":1},"k2":{"t":2}}}"#;
        let b = r#"{"meta":{"at":2,"id":"y"},"items":[{"etag":"2","v":1}],"m":{"k1":{"t":3},"k2":{"t":4}}}"#;
        assert_eq!(
            d(a, b, &["/meta/at", "/items/*/etag"]),
            ["/meta/id", "/m/k1/t", "/m/k2/t"]
        );
        assert!(d(a, b, &["/meta", "/items/*/etag", "/m/*/t"]).is_empty());
        assert!(
            d(a, b, &["/meta", "/items/0/etag", "/m/*"]).is_empty(),
            "an index by number"
        );
        // A key on one side only is ignored too.
        assert!(d(r#"{"x":1}"#, r#"{"x":1,"at":2}"#, &["/at"]).is_empty());
    }

    #[test]
    fn pointer_errors() {
        assert_eq!(
            Pointer::parse("meta/at").unwrap_err(),
            r#"must be a JSON Pointer starting with "/", got "meta/at""#
        );
        assert_eq!(
            Pointer::parse("").unwrap_err(),
            "must not be empty (the whole document cannot be ignored)"
        );
        assert_eq!(
            Pointer::parse("/a~2b").unwrap_err(),
            r#""~" must be followed by 0 or 1 (RFC 6901), got "/a~2b""#
        );
        let p = Pointer::parse("/a~1b/~0/*/a*b").unwrap();
        assert_eq!(
            p.segments,
            [
                Segment::Key("a/b".into()),
                Segment::Key("~".into()),
                Segment::Any,
                Segment::Key("a*b".into())
            ]
        );
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_type(b"application/json"));
        assert!(is_json_type(b"Application/JSON; charset=utf-8"));
        assert!(is_json_type(b"application/problem+json"));
        assert!(!is_json_type(b"text/plain"));
        assert!(!is_json_type(b"application/jsonx"));
    }

    #[test]
    fn stat_names_are_sanitised() {
        assert_eq!(stat_name("/items/*/price"), "items_x_price");
        assert_eq!(stat_name("/a.b{c}=d;"), "a_b_c__d_");
        assert_eq!(stat_name(""), "root");
        assert_eq!(stat_name(&format!("/{}", "k".repeat(100))).len(), 64);
    }
}
