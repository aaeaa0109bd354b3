//! Why a request went where it went, for traces and access logs.
//!
//! The target itself is the header the filter writes (`x-shift-target` by
//! default), which Envoy can put on spans and log lines by itself. The
//! reason is published as Envoy filter state (proxy-wasm `set_property`):
//! a wasm filter's property `shift_reason` is the filter state object
//! [`FILTER_STATE_KEY`], read by `%FILTER_STATE(wasm.shift_reason:PLAIN)%`
//! in HCM `tracing.custom_tags` and access log formats.
//!
//! Reasons: `split`, `override`, `key_missing`, `guard` (the split chose
//! the service, the route's guard is tripped: monolith), `breaker_fallback`
//! (the split chose the service, its breaker is open: monolith) and
//! `breaker_reject` (the same with `on_open: reject`: a 503 from the
//! filter, no upstream).
//!
//! Publishing costs a host call, so the common reason, [`Reason::Split`],
//! is not published: the shipped configs read a request that has the
//! target header and no reason as a split (see README "Tracing").

/// The property the filter sets (proxy-wasm `set_property(["shift_reason"])`).
pub const PROPERTY: &str = "shift_reason";

/// The filter state key Envoy stores [`PROPERTY`] under.
pub const FILTER_STATE_KEY: &str = "wasm.shift_reason";

/// Which side a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Monolith,
    Service,
}

/// Why a request of one of the filter's routes went to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The hash of the key against the percent in force.
    Split,
    /// A valid override header chose the side.
    Override,
    /// The split chose the service, its breaker was open
    /// (`on_open: fallback`): sent to the monolith.
    BreakerFallback,
    /// No key (or an empty one): sent to the monolith.
    KeyMissing,
    /// The split at the route's percent chose the service, and the route's
    /// guard is tripped: sent to the monolith.
    Guard,
    /// The split chose the service, its breaker was open (`on_open:
    /// reject`): answered 503 by the filter, never sent upstream.
    BreakerReject,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 6] = [
        Reason::Split,
        Reason::Override,
        Reason::BreakerFallback,
        Reason::KeyMissing,
        Reason::Guard,
        Reason::BreakerReject,
    ];

    /// The reason of a decision before the breaker is asked: an override
    /// wins over a missing key (the request goes where it was forced to).
    /// The breaker can only turn a [`Reason::Split`] into
    /// [`Reason::BreakerFallback`] (a forced request is never stopped, and a
    /// missing key already means the monolith).
    pub fn of(forced: bool, key_missing: bool) -> Reason {
        if forced {
            Reason::Override
        } else if key_missing {
            Reason::KeyMissing
        } else {
            Reason::Split
        }
    }

    /// The side and reason once the route's guard is asked, for a decision
    /// of reason `self` that went to `target` at the route's own percent: a
    /// tripped guard turns a [`Reason::Split`] to the service into
    /// [`Reason::Guard`] to the monolith. Anything else stands (a forced
    /// request goes where it was forced to; a split to the monolith went
    /// there anyway, and is still a split).
    pub fn guarded(self, target: Target, tripped: bool) -> (Target, Reason) {
        match (self, target) {
            (Reason::Split, Target::Service) if tripped => (Target::Monolith, Reason::Guard),
            _ => (target, self),
        }
    }

    /// The value on spans and log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Split => "split",
            Reason::Override => "override",
            Reason::BreakerFallback => "breaker_fallback",
            Reason::KeyMissing => "key_missing",
            Reason::Guard => "guard",
            Reason::BreakerReject => "breaker_reject",
        }
    }

    /// The value the filter publishes, or `None` for the one it leaves to
    /// the config's default (no host call in the common case).
    pub fn published(self) -> Option<&'static str> {
        match self {
            Reason::Split => None,
            r => Some(r.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_the_documented_ones() {
        let all: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            all,
            [
                "split",
                "override",
                "breaker_fallback",
                "key_missing",
                "guard",
                "breaker_reject"
            ]
        );
    }

    #[test]
    fn a_tripped_guard_turns_only_a_split_to_the_service_into_guard() {
        use Target::{Monolith, Service};
        // Tripped: the service's share of the split goes to the monolith.
        assert_eq!(
            Reason::Split.guarded(Service, true),
            (Monolith, Reason::Guard)
        );
        // Keys the split gives the monolith went there anyway.
        assert_eq!(
            Reason::Split.guarded(Monolith, true),
            (Monolith, Reason::Split)
        );
        // A forced request and a missing key are not the guard's.
        assert_eq!(
            Reason::Override.guarded(Service, true),
            (Service, Reason::Override)
        );
        assert_eq!(
            Reason::KeyMissing.guarded(Monolith, true),
            (Monolith, Reason::KeyMissing)
        );
        // Not tripped: nothing changes.
        for r in [Reason::Split, Reason::Override] {
            for t in [Monolith, Service] {
                assert_eq!(r.guarded(t, false), (t, r));
            }
        }
    }

    #[test]
    fn only_split_is_left_unpublished() {
        for r in Reason::ALL {
            assert_eq!(
                r.published(),
                (r != Reason::Split).then_some(r.as_str()),
                "{r:?}"
            );
        }
    }

    #[test]
    fn an_override_wins_over_a_missing_key() {
        assert_eq!(Reason::of(false, false), Reason::Split);
        assert_eq!(Reason::of(false, true), Reason::KeyMissing);
        assert_eq!(Reason::of(true, false), Reason::Override);
        assert_eq!(Reason::of(true, true), Reason::Override);
    }

    #[test]
    fn the_filter_state_key_is_envoys_name_for_the_property() {
        assert_eq!(FILTER_STATE_KEY, format!("wasm.{PROPERTY}"));
    }
}
