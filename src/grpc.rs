//! gRPC: which requests are gRPC, the status codes, which codes are
//! failures.
//!
//! A gRPC request is one whose `content-type` is `application/grpc`,
//! alone or followed by `+` (a message format: `application/grpc+proto`,
//! `+json`) or `;` (parameters). gRPC-Web (`application/grpc-web...`) is
//! not: its status travels in the body, which the filter does not parse.
//!
//! A failed RPC is an HTTP 200 whose `grpc-status` comes in the trailers,
//! or in the headers of a trailers-only response (an RPC failing before
//! any message). The outcome of a gRPC request is therefore its
//! `grpc-status`; an RPC whose HTTP status is not 200 is classified by
//! the HTTP status as any request.
//!
//! Default failure codes ([`DEFAULT_FAILURES`]): the codes whose HTTP
//! equivalent in gRPC's own mapping (google.rpc.Code, AIP-193) is a 5xx,
//! so that a route counts failures alike whether its clients speak REST or
//! gRPC: UNKNOWN (an unhandled error in the server), INTERNAL,
//! UNIMPLEMENTED (the service lacks a method the monolith had: a
//! migration failure), UNAVAILABLE, DATA_LOSS, DEADLINE_EXCEEDED.
//! Left out, as 4xx are: CANCELLED (the client gave up; counting it would
//! let clients open the breaker), RESOURCE_EXHAUSTED (429, quota), and
//! the client-error codes.

/// The 17 codes, by number.
pub const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The stats label of a `grpc-status` that is missing or not one of the
/// 17 codes.
pub const OTHER: &str = "other";

/// A set of codes (bit `n` = code `n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codes(u32);

/// UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
/// DATA_LOSS (see the module documentation for why).
pub const DEFAULT_FAILURES: Codes =
    Codes((1 << 2) | (1 << 4) | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 15));

impl Default for Codes {
    fn default() -> Codes {
        DEFAULT_FAILURES
    }
}

impl Codes {
    pub const EMPTY: Codes = Codes(0);

    pub fn with(self, code: u8) -> Codes {
        Codes(self.0 | 1u32.checked_shl(u32::from(code)).unwrap_or(0))
    }

    /// Whether `status` (a parsed `grpc-status`) is in the set; a missing
    /// or unknown status never is.
    pub fn contains(self, status: Option<u8>) -> bool {
        status.is_some_and(|c| c < 17 && self.0 & (1 << c) != 0)
    }

    /// The names of the codes in the set, by number.
    pub fn names(self) -> Vec<&'static str> {
        (0u8..17)
            .filter(|c| self.contains(Some(*c)))
            .filter_map(|c| NAMES.get(usize::from(c)).copied())
            .collect()
    }
}

/// A route's `grpc` block: the route carries gRPC (its stats count
/// responses by `grpc-status`), with these failure codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings {
    pub failures: Codes,
}

/// The number of the code named `name` (`"UNAVAILABLE"`).
pub fn code(name: &str) -> Option<u8> {
    NAMES.iter().position(|n| *n == name).map(|i| i as u8)
}

/// Whether a request with this `content-type` is gRPC (not gRPC-Web).
pub fn is_grpc(content_type: &[u8]) -> bool {
    const G: &[u8] = b"application/grpc";
    match content_type.get(..G.len()) {
        Some(p) if p.eq_ignore_ascii_case(G) => {
            matches!(content_type.get(G.len()), None | Some(b'+') | Some(b';'))
        }
        _ => false,
    }
}

/// A `grpc-status` value: its code if it is one of the 17.
pub fn parse_status(value: &[u8]) -> Option<u8> {
    let n: u8 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    (n < 17).then_some(n)
}

/// The stats label index of a status: 0..=16, 17 for [`OTHER`].
pub fn label_index(status: Option<u8>) -> usize {
    status.map_or(17, usize::from).min(17)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc+json",
            "Application/GRPC",
            "application/grpc; charset=utf-8",
        ] {
            assert!(is_grpc(ct.as_bytes()), "{ct}");
        }
        for ct in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpc-web-text",
            "application/json",
            "application/grp",
            "",
        ] {
            assert!(!is_grpc(ct.as_bytes()), "{ct}");
        }
    }

    #[test]
    fn statuses_and_the_default_set() {
        assert_eq!(parse_status(b"14"), Some(14));
        assert_eq!(parse_status(b"0"), Some(0));
        assert_eq!(parse_status(b"17"), None);
        assert_eq!(parse_status(b"x"), None);
        assert_eq!(
            DEFAULT_FAILURES.names(),
            [
                "UNKNOWN",
                "DEADLINE_EXCEEDED",
                "UNIMPLEMENTED",
                "INTERNAL",
                "UNAVAILABLE",
                "DATA_LOSS"
            ]
        );
        assert!(DEFAULT_FAILURES.contains(Some(14)));
        assert!(!DEFAULT_FAILURES.contains(Some(1)));
        assert!(!DEFAULT_FAILURES.contains(None));
        assert_eq!(code("UNAVAILABLE"), Some(14));
        assert_eq!(code("unavailable"), None);
        assert_eq!(label_index(Some(3)), 3);
        assert_eq!(label_index(None), 17);
        assert_eq!(Codes::EMPTY.with(5).names(), ["NOT_FOUND"]);
    }
}
