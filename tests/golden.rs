//! Golden vectors of the decision formula. These values are a compatibility
//! contract: every proxy of a fleet and every future version must produce
//! them. They were computed by an independent FNV-1a implementation (a
//! ten-line Python loop), not by this crate. Never edit them to make a change
//! pass: a change here moves users between monolith and service.

use traffic_shift::config::{Config, Target};
use traffic_shift::hash::bucket;

/// (salt, key, bucket). The same table is in the README.
pub const GOLDEN: &[(&[u8], &[u8], u16)] = &[
    (b"", b"", 6037),
    (b"", b"a", 1996),
    (b"", b"foobar", 6968),
    (b"", b"42", 8691),
    (b"", b"user-42", 7419),
    (b"orders-v1", b"user-42", 362),
    (b"", b"7f3a9c12-4e8d-4f2a-a1b3-8d7e9f2c1a4b", 8374),
    (b"auth-2026", b"7f3a9c12-4e8d-4f2a-a1b3-8d7e9f2c1a4b", 4563),
    (b"checkout", b"alice@example.com", 554),
    (b"s", b"\xff\xfe", 6683),
];

#[test]
fn buckets_match_the_golden_vectors() {
    for &(salt, key, want) in GOLDEN {
        assert_eq!(
            bucket(salt, key),
            want,
            "salt {:?} key {:?}",
            String::from_utf8_lossy(salt),
            String::from_utf8_lossy(key)
        );
    }
}

/// A route sends a key to the service iff bucket < round(percent * 100).
#[test]
fn decisions_follow_the_golden_buckets_at_the_boundary() {
    // "user-42" with salt "orders-v1" is bucket 362: shifted at 3.63 %, not at 3.62 %.
    let decide = |percent: &str| {
        let json = format!(
            r#"{{"monolith": "m", "routes": [{{"name": "o", "prefix": "/", "service": "s",
                "percent": {percent}, "salt": "orders-v1", "hash_key": {{"header": "x-user-id"}}}}]}}"#
        );
        let config = Config::from_json(json.as_bytes()).unwrap();
        config.routes[0].decide(Some(b"user-42"))
    };
    assert_eq!(decide("3.62"), Target::Monolith);
    assert_eq!(decide("3.63"), Target::Service);
    assert_eq!(decide("0"), Target::Monolith);
    assert_eq!(decide("100"), Target::Service);
}

#[test]
fn a_missing_or_empty_key_goes_to_the_monolith_even_at_100_percent() {
    let config = Config::from_json(
        br#"{"monolith": "m", "routes": [{"name": "a", "prefix": "/", "service": "s", "percent": 100}]}"#,
    )
    .unwrap();
    assert_eq!(config.routes[0].decide(None), Target::Monolith);
    assert_eq!(config.routes[0].decide(Some(b"")), Target::Monolith);
    assert_eq!(config.routes[0].decide(Some(b"x")), Target::Service);
}
