//! Which fields differ, counted per route: the counter
//! `traffic_shift_shadow_field{route,field,kind}` (`kind="diff"`: old vs
//! new, a difference that made a mismatch; `kind="noise"`: old vs old, a
//! noise call). No host types here.
//!
//! Bounded for the whole process: each route has at most
//! [`MAX_FIELDS_PER_ROUTE`] field labels, agreed by every worker through one
//! entry of the process-wide store (see [`Admitted`]); any other field is
//! counted as `field="other"`. A worker counts in memory and settles on its
//! tick: the store is read (and written, while the route has room) only on
//! a tick that has fields this worker has not seen admitted yet.

/// Field labels per route, process-wide (plus `other`).
pub const MAX_FIELDS_PER_ROUTE: usize = 32;

/// The label of every field beyond the bound.
pub const OTHER: &str = "other";

/// Distinct fields a worker holds counts for between two ticks, per route;
/// more go to `other` at once.
pub const MAX_PENDING: usize = 2 * MAX_FIELDS_PER_ROUTE;

/// Layout version of the store entry.
const VERSION: &str = "v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldKind {
    Diff,
    Noise,
}

impl FieldKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldKind::Diff => "diff",
            FieldKind::Noise => "noise",
        }
    }
}

/// The stat name of route `route`'s field counter.
pub fn stat_name(route: &str, field: &str, kind: FieldKind) -> String {
    format!(
        "{}.route.{route}.shadow_field.field.{field}.kind.{}",
        crate::stats::PREFIX,
        kind.as_str()
    )
}

/// The (route, field, kind) a name of [`stat_name`] holds (a host that
/// counts fields with labels of its own: the dynamic module); `None` for
/// any other name.
pub fn parse_stat_name(name: &str) -> Option<(&str, &str, FieldKind)> {
    let rest = name
        .strip_prefix(crate::stats::PREFIX)?
        .strip_prefix(".route.")?;
    let (route, rest) = rest.split_once(".shadow_field.field.")?;
    let (field, kind) = rest.rsplit_once(".kind.")?;
    let kind = [FieldKind::Diff, FieldKind::Noise]
        .into_iter()
        .find(|k| k.as_str() == kind)?;
    Some((route, field, kind))
}

/// The store key of route `route`'s admitted fields (filters of one VM id
/// with a route of the same name share its bound).
pub fn store_key(route: &str) -> String {
    format!("traffic_shift.shadow_fields.{route}")
}

/// One route's counts in one worker since its last tick.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pending {
    /// (sanitised field, kind, count), at most [`MAX_PENDING`] fields.
    pub counts: Vec<(String, FieldKind, u64)>,
    /// Counted as `other` already (no room in `counts`).
    pub other: [u64; 2],
}

impl Pending {
    /// Counts `field` (already sanitised).
    pub fn add(&mut self, field: &str, kind: FieldKind) {
        if let Some(c) = self
            .counts
            .iter_mut()
            .find(|(f, k, _)| f == field && *k == kind)
        {
            c.2 += 1;
        } else if self.counts.len() < MAX_PENDING {
            self.counts.push((field.to_string(), kind, 1));
        } else if let Some(o) = self.other.get_mut(kind as usize) {
            *o += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.other == [0, 0]
    }
}

/// The fields of a route that have a label, as the store holds them:
/// `v1` then one field per line. Read forward: an unknown version reads as
/// full (everything `other`), never as a licence to add.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub fields: Vec<String>,
    /// Written by a later layout: add nothing.
    pub foreign: bool,
}

impl Admitted {
    pub fn decode(bytes: &[u8]) -> Admitted {
        if bytes.is_empty() {
            return Admitted::default();
        }
        let text = String::from_utf8_lossy(bytes);
        let mut lines = text.lines();
        if lines.next() != Some(VERSION) {
            return Admitted {
                fields: Vec::new(),
                foreign: true,
            };
        }
        Admitted {
            fields: lines.take(MAX_FIELDS_PER_ROUTE).map(String::from).collect(),
            foreign: false,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::from(VERSION);
        for f in &self.fields {
            out.push('\n');
            out.push_str(f);
        }
        out.into_bytes()
    }

    pub fn has(&self, field: &str) -> bool {
        self.fields.iter().any(|f| f == field)
    }

    pub fn is_full(&self) -> bool {
        self.foreign || self.fields.len() >= MAX_FIELDS_PER_ROUTE
    }

    /// Adds the fields of `wanted` not yet admitted while there is room;
    /// whether anything was added.
    pub fn admit<'a>(&mut self, wanted: impl Iterator<Item = &'a str>) -> bool {
        let mut added = false;
        for f in wanted {
            if self.is_full() {
                break;
            }
            if f != OTHER && !self.has(f) {
                self.fields.push(f.to_string());
                added = true;
            }
        }
        added
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_field_stat_name_gives_back_its_route_field_and_kind() {
        for (route, field, kind) in [
            ("auth", "price", FieldKind::Diff),
            ("a-b_c", "items_x_etag", FieldKind::Noise),
            ("kind", "kind", FieldKind::Diff),
        ] {
            let name = stat_name(route, field, kind);
            assert_eq!(parse_stat_name(&name), Some((route, field, kind)), "{name}");
        }
        for other in [
            "traffic_shift.route.auth.shadow.result.match",
            "traffic_shift.route.auth.shadow_field.field.price.kind.other",
            "other.route.auth.shadow_field.field.price.kind.diff",
        ] {
            assert_eq!(parse_stat_name(other), None, "{other}");
        }
    }

    use super::*;

    #[test]
    fn pending_counts_are_bounded() {
        let mut p = Pending::default();
        for i in 0..MAX_PENDING + 10 {
            p.add(&format!("f{i}"), FieldKind::Diff);
        }
        p.add("f0", FieldKind::Diff);
        p.add("f0", FieldKind::Noise);
        assert_eq!(p.counts.len(), MAX_PENDING);
        assert_eq!(p.counts[0], ("f0".to_string(), FieldKind::Diff, 2));
        assert_eq!(p.other, [10, 1]);
    }

    #[test]
    fn admitted_fields_are_bounded_and_read_forward() {
        let mut a = Admitted::decode(b"");
        assert!(a.admit(["x", "other", "y", "x"].into_iter()));
        assert_eq!(a.fields, ["x", "y"]);
        assert_eq!(Admitted::decode(&a.encode()), a);
        let names: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        a.admit(names.iter().map(String::as_str));
        assert_eq!(a.fields.len(), MAX_FIELDS_PER_ROUTE);
        assert!(a.is_full() && !a.admit(["new"].into_iter()));
        let later = Admitted::decode(b"v2\nx");
        assert!(later.is_full() && !later.has("x"));
    }

    #[test]
    fn stat_names() {
        assert_eq!(
            stat_name("orders", "items_x_price", FieldKind::Noise),
            "traffic_shift.route.orders.shadow_field.field.items_x_price.kind.noise"
        );
    }
}
