//! Shared-data state written by an earlier release must read the same in
//! this one: a new `.wasm` loaded with the same `vm_id` in a running Envoy
//! finds the old module's values (integration/tests/reload.rs shows it in
//! Envoy). The fixtures in tests/fixtures/ are such values, kept as they
//! were written; never edit them to make a change pass.

use traffic_shift::breaker::{Admission, Breaker, Settings, State};

/// The bytes of a fixture: hex digits, `#` comments and spaces ignored.
fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let hex: String = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

const UNTIL: u64 = 1_700_000_060_000;

fn settings() -> Settings {
    Settings {
        base_ejection_ms: 60_000,
        ..Settings::default()
    }
}

/// The open breaker of the fixture, as this release sees it.
fn assert_open_as_written(b: &mut Breaker) {
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.ejections(), 1);
    let (admission, t) = b.admit(&settings(), UNTIL - 20_000);
    assert_eq!(
        admission,
        Admission::Blocked {
            retry_after_ms: 20_000
        }
    );
    assert_eq!(t, None);
    let (admission, _) = b.admit(&settings(), UNTIL);
    assert!(
        matches!(admission, Admission::Probe { .. }),
        "{admission:?}"
    );
}

#[test]
fn an_open_breaker_in_layout_2_reads_as_open() {
    let bytes = fixture("breaker-v2-open.hex");
    assert_eq!(bytes.len(), 46);
    let mut b = Breaker::decode(&bytes).expect("layout 2 decodes");
    // This release still writes layout 2: the value round-trips.
    assert_eq!(b.encode(), bytes);
    assert_open_as_written(&mut b);
}

/// The rule that lets a release be rolled back, or two releases share a
/// vm_id while Envoy swaps modules: a later layout keeps layout 2's bytes
/// and appends; a reader that knows only layout 2 reads that prefix
/// instead of taking the value for a fresh (closed) breaker.
#[test]
fn a_later_layout_reads_as_its_layout_2_prefix() {
    let mut bytes = fixture("breaker-v2-open.hex");
    bytes[0] = 3;
    bytes.extend_from_slice(&[0xab; 12]);
    let mut b = Breaker::decode(&bytes).expect("a later layout decodes");
    assert_open_as_written(&mut b);
}

/// Layout 1 (development builds before the probe rounds, commit 6778f6e):
/// the same open breaker, built field by field as that encoder wrote it.
#[test]
fn an_open_breaker_in_layout_1_reads_as_open() {
    let mut bytes = vec![1u8, 1];
    for v in [0u32, 1, 0, 0] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    for v in [UNTIL, 60_000] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(bytes.len(), 34);
    assert_open_as_written(&mut Breaker::decode(&bytes).expect("layout 1 decodes"));
    // With the failure-rate window that layout appended (dropped).
    bytes.extend_from_slice(&[7; 160]);
    assert_open_as_written(&mut Breaker::decode(&bytes).expect("layout 1 decodes"));
}

#[test]
fn values_that_are_no_layout_do_not_decode() {
    let bytes = fixture("breaker-v2-open.hex");
    for v in [0u8, 1] {
        let mut other = bytes.clone();
        other[0] = v;
        assert_eq!(Breaker::decode(&other), None, "version {v}");
    }
    assert_eq!(Breaker::decode(&bytes[..45]), None);
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        Breaker::decode(&longer),
        None,
        "layout 2 has exactly 46 bytes"
    );
    let mut bad_state = bytes.clone();
    bad_state[1] = 3;
    assert_eq!(Breaker::decode(&bad_state), None);
}
