//! Finding one cookie's value in a `Cookie` request header, on raw bytes
//! (clients may send anything, including non-UTF-8).

/// The value of the first cookie called `name` in a `Cookie` header value
/// (`a=1; b=2`). Surrounding whitespace is trimmed and one pair of double
/// quotes around the value is removed (RFC 6265 `cookie-value`).
pub fn find<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (k, v) = pair.split_at(eq);
        if trim(k) != name {
            return None;
        }
        let v = trim(v.get(1..)?);
        Some(match v {
            [b'"', inner @ .., b'"'] => inner,
            _ => v,
        })
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !first.is_ascii_whitespace() {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !last.is_ascii_whitespace() {
            break;
        }
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::find;

    #[test]
    fn finds_a_cookie_among_others() {
        let h = b"theme=dark; uid=u-42; lang=en";
        assert_eq!(find(h, b"uid"), Some(&b"u-42"[..]));
        assert_eq!(find(h, b"theme"), Some(&b"dark"[..]));
        assert_eq!(find(h, b"lang"), Some(&b"en"[..]));
    }

    #[test]
    fn missing_or_prefix_only_names_do_not_match() {
        let h = b"uidx=1; xuid=2";
        assert_eq!(find(h, b"uid"), None);
        assert_eq!(find(b"", b"uid"), None);
        assert_eq!(find(b"uid", b"uid"), None);
    }

    #[test]
    fn first_occurrence_wins_and_quotes_and_spaces_are_removed() {
        assert_eq!(find(b"uid=\"a\" ;uid=b", b"uid"), Some(&b"a"[..]));
        assert_eq!(find(b"  uid =  v  ", b"uid"), Some(&b"v"[..]));
        assert_eq!(find(b"uid=", b"uid"), Some(&b""[..]));
    }

    #[test]
    fn non_utf8_bytes_are_kept() {
        assert_eq!(find(b"uid=\xff\xfe", b"uid"), Some(&b"\xff\xfe"[..]));
    }
}
