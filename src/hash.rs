//! The bucket formula. This is a compatibility contract: every proxy of a
//! fleet and every version of this filter must put a key in the same bucket.
//!
//! `h = FNV-1a 64-bit` (offset basis 0xcbf29ce484222325, prime 0x100000001b3)
//! over the bytes of the route's salt followed by the bytes of the key (no
//! separator, no terminator), `bucket = h mod 10000`. A request goes to the
//! service iff `bucket < basis_points` where `basis_points = round(percent * 100)`.
//! Raising the percent therefore never moves an already-shifted key back.

use std::hash::Hasher;

/// Number of buckets: one per basis point (0.01 %).
pub const BUCKETS: u64 = 10_000;

/// The bucket (0..10000) of `key` under `salt`.
pub fn bucket(salt: &[u8], key: &[u8]) -> u16 {
    // `Hasher::write` of the fnv crate is plain FNV-1a over the bytes; unlike
    // `Hash for str` it appends no 0xff terminator.
    let mut h = fnv::FnvHasher::default();
    h.write(salt);
    h.write(key);
    // The remainder is < 10000, so it always fits in a u16.
    (h.finish() % BUCKETS) as u16
}

/// Plain FNV-1a 64 of `bytes` (for identifiers, not for the split).
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(bytes);
    h.finish()
}

/// Whether a key in `bucket` is shifted to the service at `basis_points`.
pub fn shifted(bucket: u16, basis_points: u16) -> bool {
    bucket < basis_points
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published FNV-1a 64 test vectors (Fowler/Noll/Vo), checked through
    /// the same hasher the formula uses.
    #[test]
    fn fnv1a_64_reference_vectors() {
        let raw = |data: &[u8]| {
            let mut h = fnv::FnvHasher::default();
            h.write(data);
            h.finish()
        };
        assert_eq!(raw(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(raw(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(raw(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn salt_and_key_are_concatenated_without_separator() {
        assert_eq!(bucket(b"foo", b"bar"), bucket(b"", b"foobar"));
        assert_eq!(
            bucket(b"", b"foobar"),
            (0x8594_4171_f739_67e8u64 % 10_000) as u16
        );
    }

    #[test]
    fn zero_percent_shifts_nothing_and_100_shifts_everything() {
        for b in [0u16, 1, 4999, 9999] {
            assert!(!shifted(b, 0));
            assert!(shifted(b, 10_000));
        }
        assert!(shifted(999, 1000));
        assert!(!shifted(1000, 1000));
    }
}
