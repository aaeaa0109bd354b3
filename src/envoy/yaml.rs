//! Writing YAML scalars by hand: the bootstrap is a fixed template, and the
//! only values put into it are names, addresses and the plugin
//! configuration's text.

use std::net::Ipv4Addr;

/// `s` as a YAML scalar: plain when it reads back as this very string (a
/// name, a path, an IPv4 address), else double-quoted with JSON's escapes,
/// which YAML's double-quoted style shares.
pub fn scalar(s: &str) -> String {
    let safe_chars = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b));
    let safe_start = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'/' || b == b'_');
    // Words YAML 1.1 or 1.2 readers take for booleans, null or numbers.
    const WORDS: [&str; 11] = [
        "true", "false", "null", "yes", "no", "on", "off", "y", "n", "nan", "inf",
    ];
    let word = WORDS.iter().any(|w| s.eq_ignore_ascii_case(w));
    if safe_chars && ((safe_start && !word) || s.parse::<Ipv4Addr>().is_ok()) {
        s.to_string()
    } else {
        serde_json::Value::from(s).to_string()
    }
}

/// `text` as a literal block scalar: the indicator (`|`, `|-` or `|+`,
/// whichever keeps its line ends) and the lines, each non-empty one
/// indented by `indent` spaces. `None` when a literal block cannot carry it
/// exactly (control characters, CR, a first line starting with a space);
/// then [`scalar`] can.
pub fn literal_block(text: &str, indent: usize) -> Option<(&'static str, String)> {
    let printable = text.chars().all(|c| {
        c == '\n'
            || c == '\t'
            || !(c.is_control() || matches!(c, '\u{feff}' | '\u{2028}' | '\u{2029}'))
    });
    let first = text.lines().find(|l| !l.is_empty())?;
    if !printable || first.starts_with([' ', '\t']) || text.starts_with('\n') {
        return None;
    }
    let body = text.trim_end_matches('\n');
    let indicator = match text.len() - body.len() {
        0 => "|-",
        1 => "|",
        _ => "|+",
    };
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for line in text.strip_suffix('\n').unwrap_or(text).split('\n') {
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str(line);
        }
        out.push('\n');
    }
    Some((indicator, out))
}

/// Every non-empty line of `text` indented by `n` spaces.
pub fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.split_inclusive('\n')
        .map(|l| {
            if l == "\n" {
                l.to_string()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_plain_and_anything_else_is_quoted() {
        assert_eq!(scalar("auth_service"), "auth_service");
        assert_eq!(scalar("127.0.0.1"), "127.0.0.1");
        assert_eq!(scalar("orders-service"), "orders-service");
        assert_eq!(
            scalar("/etc/envoy/traffic_shift.wasm"),
            "/etc/envoy/traffic_shift.wasm"
        );
        assert_eq!(scalar("yes"), "\"yes\"");
        assert_eq!(scalar("18080"), "\"18080\"");
        assert_eq!(scalar("::1"), "\"::1\"");
        assert_eq!(scalar("a b"), "\"a b\"");
        assert_eq!(scalar("a\"b"), "\"a\\\"b\"");
        assert_eq!(scalar(""), "\"\"");
    }

    #[test]
    fn a_literal_block_keeps_the_line_ends() {
        assert_eq!(
            literal_block("{\n  \"a\": 1\n}\n", 2),
            Some(("|", "  {\n    \"a\": 1\n  }\n".to_string()))
        );
        assert_eq!(literal_block("{}", 2), Some(("|-", "  {}\n".to_string())));
        assert_eq!(
            literal_block("{\n\n}\n\n", 1),
            Some(("|+", " {\n\n }\n\n".to_string()))
        );
        assert_eq!(literal_block(" {}", 2), None);
        assert_eq!(literal_block("{}\r\n", 2), None);
        assert_eq!(literal_block("", 2), None);
    }
}
