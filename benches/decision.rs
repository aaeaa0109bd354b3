//! The per-request decision path, natively: route lookup + hash (+ the
//! breaker check) with 1, 100 and 1,000 routes. Targets (issue 7): <= 100 ns
//! with 1 route, <= 150 ns with 1,000, flat in the number of routes.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use traffic_shift::breaker::Breaker;
use traffic_shift::config::{Config, Target};
use traffic_shift::headers::{self, HeaderMap};

/// `n` routes: two thirds prefixes, one third exact paths, one of each
/// restricted to POST, all with a breaker when `outlier`.
fn config(n: usize, outlier: bool) -> Config {
    let routes: Vec<String> = (0..n)
        .map(|i| {
            let matcher = if i % 3 == 2 {
                format!(r#""path": "/api/v1/svc{i}/items""#)
            } else {
                format!(r#""prefix": "/api/v1/svc{i}/""#)
            };
            let methods = if i % 7 == 6 { r#", "methods": ["POST"]"# } else { "" };
            let o = if outlier { r#", "outlier": {}"# } else { "" };
            format!(
                r#"{{"name": "r{i}", {matcher}{methods}, "service": "svc{i}", "percent": 10, "salt": "s{i}"{o}}}"#
            )
        })
        .collect();
    let json = format!(
        r#"{{"monolith": "monolith", "routes": [{}]}}"#,
        routes.join(",")
    );
    Config::from_json(json.as_bytes()).expect("bench config is valid")
}

fn decision(c: &mut Criterion) {
    let key = b"7f3a9c12-4e8d-4f2a-a1b3-8d7e9f2c1a4b";
    let mut group = c.benchmark_group("decision");
    group.bench_function("hash only (36-byte key)", |b| {
        b.iter(|| traffic_shift::hash::bucket(black_box(b"s1"), black_box(key)))
    });
    for n in [1usize, 100, 1000] {
        let cfg = config(n, false);
        // A prefix route for any method, in the middle of the table.
        let i = (0..=n / 2)
            .rev()
            .find(|i| i % 3 != 2 && i % 7 != 6)
            .unwrap_or(0);
        let path = format!("/api/v1/svc{i}/items/42?page=2");
        assert!(cfg.route(b"GET", path.as_bytes()).is_some());
        group.bench_with_input(BenchmarkId::new("route+hash", n), &path, |b, path| {
            b.iter(|| {
                let (_, route) = cfg.route(black_box(b"GET"), black_box(path.as_bytes()))?;
                Some(cfg.cluster(route, route.decide(Some(black_box(key)))).len())
            })
        });
        group.bench_with_input(BenchmarkId::new("unmatched", n), &n, |b, _| {
            b.iter(|| {
                cfg.route(black_box(b"GET"), black_box(b"/static/app.js"))
                    .is_none()
            })
        });

        // With the breaker: the filter reads the shared-data bytes (empty
        // while healthy), and only decodes, admits and re-encodes (to
        // compare) when they are not.
        let cfg = config(n, true);
        let state = Breaker::default().encode();
        let salt = format!("s{i}");
        let shifted = (0..)
            .map(|j| format!("user-{j}"))
            .find(|k| traffic_shift::hash::bucket(salt.as_bytes(), k.as_bytes()) < 1000)
            .expect("some key is shifted at 10 %");
        group.bench_with_input(
            BenchmarkId::new("route+hash+breaker", n),
            &path,
            |b, path| {
                b.iter(|| {
                    let (_, route) = cfg.route(black_box(b"GET"), black_box(path.as_bytes()))?;
                    let target = route.decide(Some(black_box(shifted.as_bytes())));
                    assert_eq!(target, Target::Service);
                    if let (Target::Service, Some(s)) = (target, &route.outlier) {
                        let state = black_box(&state);
                        if !state.is_empty() {
                            let mut br = Breaker::decode(state).unwrap_or_default();
                            let admission = br.admit(s, black_box(1_700_000_000_000));
                            black_box((admission, br.encode() == *state));
                        }
                    }
                    Some(target)
                })
            },
        );
    }
    group.finish();

    // Picking the filter's headers out of the serialized map the host hands
    // over in one call: a bare request (5 headers) and a browser-like one
    // (15), the key last.
    let mut group = c.benchmark_group("headers");
    let base: Vec<(&[u8], &[u8])> = vec![
        (b":authority", b"shop.example.com"),
        (b":path", b"/api/auth/login?next=%2Fcart"),
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b"x-request-id", key),
    ];
    let extra: Vec<(&[u8], &[u8])> = vec![
        (
            b"user-agent",
            b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36",
        ),
        (
            b"accept",
            b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        (b"accept-language", b"en-US,en;q=0.9"),
        (b"accept-encoding", b"gzip, deflate, br"),
        (b"cookie", b"session=abc123; theme=dark; cart=42"),
        (b"referer", b"https://shop.example.com/"),
        (b"x-forwarded-for", b"203.0.113.7"),
        (b"x-forwarded-proto", b"https"),
        (b"x-envoy-expected-rq-timeout-ms", b"15000"),
        (
            b"traceparent",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ];
    for (label, pairs) in [
        ("5 headers", base.clone()),
        ("15 headers", {
            let mut p = extra.clone();
            p.extend(base.iter().copied());
            p
        }),
    ] {
        let bytes = headers::serialize(&pairs);
        group.bench_function(label, |b| {
            b.iter(|| {
                let m = HeaderMap::new(black_box(&bytes));
                (
                    m.get(b":method"),
                    m.get(b":path"),
                    m.get(b"x-shift-target"),
                    m.get(b"x-request-id"),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
