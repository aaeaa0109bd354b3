//! The request headers as the host hands them over in one call.
//!
//! `proxy_get_header_map_pairs` copies every header into the VM at once
//! (one host call, one allocation) in this layout, all integers u32
//! little-endian:
//!
//! ```text
//! count | (name_len, value_len) x count | name NUL value NUL ... x count
//! ```
//!
//! [`HeaderMap`] reads it in place: no copy, no allocation per header. A
//! truncated or inconsistent buffer ends the iteration early (never a
//! panic). Names arrive in lower case (Envoy's HTTP/1 and HTTP/2 codecs
//! normalize them). A name that appears several times yields its first
//! value, as `proxy_get_header_map_value` does.

/// A serialized header map.
#[derive(Debug, Clone, Copy)]
pub struct HeaderMap<'a> {
    bytes: &'a [u8],
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?) as usize)
}

impl<'a> HeaderMap<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        HeaderMap { bytes }
    }

    /// Every `(name, value)` in order.
    pub fn iter(&self) -> Pairs<'a> {
        let count = u32_at(self.bytes, 0).unwrap_or(0);
        let data = count
            .checked_mul(8)
            .and_then(|n| n.checked_add(4))
            .unwrap_or(usize::MAX);
        Pairs {
            bytes: self.bytes,
            count,
            index: 0,
            data,
        }
    }

    /// The first value of `name` (lower case).
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// Iterator over a [`HeaderMap`].
pub struct Pairs<'a> {
    bytes: &'a [u8],
    count: usize,
    index: usize,
    /// Offset of the next name.
    data: usize,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let sizes = 4 + self.index * 8;
        let pair = (|| {
            let name_len = u32_at(self.bytes, sizes)?;
            let value_len = u32_at(self.bytes, sizes + 4)?;
            let name_end = self.data.checked_add(name_len)?;
            let name = self.bytes.get(self.data..name_end)?;
            let value_start = name_end.checked_add(1)?;
            let value_end = value_start.checked_add(value_len)?;
            let value = self.bytes.get(value_start..value_end)?;
            Some((name, value, value_end.checked_add(1)?))
        })();
        match pair {
            Some((name, value, next)) => {
                self.index += 1;
                self.data = next;
                Some((name, value))
            }
            None => {
                self.index = self.count;
                None
            }
        }
    }
}

/// Serializes pairs in the host's layout (tests, benchmarks, fuzzing).
pub fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        serialize(&[
            (b":method", b"GET"),
            (b":path", b"/api/auth/login?x=1"),
            (b"x-user-id", b"42"),
            (b"x-user-id", b"43"),
            (b"empty", b""),
            (b"x-bin", b"\xff\xfe\x00\x01"),
        ])
    }

    #[test]
    fn reads_every_pair_in_order() {
        let bytes = sample();
        let m = HeaderMap::new(&bytes);
        let pairs: Vec<_> = m.iter().collect();
        assert_eq!(pairs.len(), 6);
        assert_eq!(pairs[1], (&b":path"[..], &b"/api/auth/login?x=1"[..]));
        assert_eq!(pairs[5].1, b"\xff\xfe\x00\x01");
    }

    #[test]
    fn get_returns_the_first_value() {
        let bytes = sample();
        let m = HeaderMap::new(&bytes);
        assert_eq!(m.get(b"x-user-id"), Some(&b"42"[..]));
        assert_eq!(m.get(b"empty"), Some(&b""[..]));
        assert_eq!(m.get(b"absent"), None);
        assert_eq!(m.get(b":method"), Some(&b"GET"[..]));
    }

    #[test]
    fn empty_and_malformed_buffers_end_early_without_panicking() {
        assert_eq!(HeaderMap::new(&[]).iter().count(), 0);
        let bytes = sample();
        for cut in 0..bytes.len() {
            let m = HeaderMap::new(&bytes[..cut]);
            assert!(m.iter().count() <= 6);
        }
        // A count far beyond the data.
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(HeaderMap::new(&huge).iter().count() <= 6);
        // Lengths pointing past the end.
        let mut bad = bytes.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderMap::new(&bad).iter().count(), 0);
    }
}
