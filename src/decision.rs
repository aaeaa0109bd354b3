//! Why a request went where it went, for traces and access logs.
//!
//! The target itself is the header the filter writes (`x-shift-target` by
//! default), which Envoy can put on spans and log lines by itself. The
//! reason is published as Envoy filter state (proxy-wasm `set_property`):
//! a wasm filter's property `shift_reason` is the filter state object
//! [`FILTER_STATE_KEY`], read by `%FILTER_STATE(wasm.shift_reason:PLAIN)%`
//! in HCM `tracing.custom_tags` and access log formats.
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
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 4] = [
        Reason::Split,
        Reason::Override,
        Reason::BreakerFallback,
        Reason::KeyMissing,
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

    /// The value on spans and log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Split => "split",
            Reason::Override => "override",
            Reason::BreakerFallback => "breaker_fallback",
            Reason::KeyMissing => "key_missing",
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
            ["split", "override", "breaker_fallback", "key_missing"]
        );
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
