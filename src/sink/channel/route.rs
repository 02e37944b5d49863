//! Which channels a record reaches: each channel's record filter (from
//! its `[[channel.stream]]` section), evaluated once per record per
//! channel when the sink appends the record to the replay log, and the
//! record's texts (one per masking among the channels it reaches).
//!
//! A record carries the result as a set of channel *slots* (bits, see
//! [`super::slots`]): slot 0 is the default channel (`[channel]`, no
//! filter: every record), slots 1 to 63 the streams. The replay log keeps
//! the set with the record, so `since=` replay, the live stream and
//! `lost` notices apply the filter as it was when the record arrived,
//! without reading the JSON again.
//!
//! # The filter
//!
//! Each key (`org_uuid`, `org_name`, `sub_org_uuid`, `sub_org_name`,
//! `service_id`, `service_name`, `package_uuid`, `package_name`,
//! `plan_uuid`, `plan_name`, `status`) is a list; a record matches a key
//! when its field equals one of the values (exactly; `status` takes
//! codes and classes such as `404` and `5xx`), and a channel when it
//! matches every key given. A record without the field (empty or `-`,
//! as a line without organization and no lookup table filling it)
//! matches no value: it reaches only channels whose filter does not name
//! the field. A channel without any key gets every record.
//!
//! Pure: no I/O; no allocation per record beyond the texts themselves
//! (one per masking that a reached channel uses; one in the common case).

use std::sync::Arc;

use super::replay::{key_digest, Item, Texts};
use super::request::{parse_status, StatusMatch};
use crate::mask::Masking;
use crate::record::{Field, Record, Shape};

/// The record fields a channel filter may name, with their config keys.
pub const FILTER_FIELDS: [Field; 10] = [
    Field::OrgUuid,
    Field::OrgName,
    Field::SubOrgUuid,
    Field::SubOrgName,
    Field::ServiceId,
    Field::ServiceName,
    Field::PackageUuid,
    Field::PackageName,
    Field::PlanUuid,
    Field::PlanName,
];

/// A channel's record filter (see the module docs). Empty: every record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteFilter {
    /// `(field, values)`: the record's field must equal one of the values.
    pub fields: Vec<(Field, Vec<String>)>,
    /// `status`: the record's `http_status_code` must match one term.
    pub statuses: Vec<StatusMatch>,
}

impl RouteFilter {
    /// A filter from the keys as written (`key` names the section in
    /// errors); `Err((key, message))` for a `status` term that is not a
    /// code or a class, or an empty value.
    pub fn new(fields: Vec<(Field, Vec<String>)>, statuses: &[String], key: &str) -> Result<RouteFilter, (String, String)> {
        let mut out = RouteFilter::default();
        for (field, mut values) in fields {
            if values.is_empty() {
                continue;
            }
            if values.iter().any(|v| v.is_empty() || v == "-") {
                return Err((
                    format!("{key}.{}", field.name()),
                    "an empty value (or `-`) matches nothing: a record without the field never matches a filter naming it".into(),
                ));
            }
            values.sort();
            values.dedup();
            out.fields.push((field, values));
        }
        out.fields.sort_by_key(|(f, _)| FILTER_FIELDS.iter().position(|x| x == f));
        for term in statuses {
            match parse_status(term.trim()) {
                Some(m) => out.statuses.push(m),
                None => {
                    return Err((
                        format!("{key}.status"),
                        format!("takes codes and classes such as \"200\", \"404\", \"5xx\"; {term:?} is neither"),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// True when the filter names no key (every record matches).
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.statuses.is_empty()
    }

    /// True when `r` passes every key the filter names.
    #[inline]
    pub fn matches(&self, r: &Record<'_>) -> bool {
        self.fields.iter().all(|(f, values)| {
            let v = r.get(*f);
            values.iter().any(|want| want == v)
        }) && (self.statuses.is_empty() || {
            let status: u16 = r.get(Field::HttpStatusCode).trim().parse().unwrap_or(0);
            self.statuses.iter().any(|m| m.matches(status))
        })
    }

    /// The filter as one line of text, for `check-config` and logs:
    /// `org_name=Partner A; status=5xx` (`every record` when empty).
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.fields.iter().map(|(f, v)| format!("{}={}", f.name(), v.join(","))).collect();
        if !self.statuses.is_empty() {
            parts.push(format!("status={}", self.statuses.iter().map(StatusMatch::to_string).collect::<Vec<_>>().join(",")));
        }
        if parts.is_empty() {
            "every record".into()
        } else {
            parts.join("; ")
        }
    }

    /// A stable text of the filter: two filters are the same exactly when
    /// their texts are (values sorted), so a changed filter is a new
    /// channel identity ([`super::slots`]).
    pub fn canonical(&self) -> String {
        let mut s = String::new();
        for (f, values) in &self.fields {
            s.push_str(f.name());
            for v in values {
                s.push('\u{1f}');
                s.push_str(v);
            }
            s.push('\u{1e}');
        }
        let mut st: Vec<String> = self.statuses.iter().map(StatusMatch::to_string).collect();
        st.sort();
        s.push_str("status");
        for t in st {
            s.push('\u{1f}');
            s.push_str(&t);
        }
        s
    }
}

/// One channel as the sink routes records to it.
#[derive(Debug, Clone)]
pub struct Route {
    /// The channel's slot bit (`1 << slot`).
    pub bit: u64,
    /// Its filter.
    pub filter: RouteFilter,
    /// Its masking (`mask_keep`).
    pub masking: Masking,
}

/// Every channel's route, as the sink uses them for a batch: swapped
/// whole when a reload changes a filter or a masking.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// The channels, the default one (if it has a token) first.
    pub routes: Vec<Route>,
    /// The distinct maskings, each with the bits of the channels using it.
    maskings: Vec<(Masking, u64)>,
}

impl Routes {
    /// The routes of these channels.
    pub fn new(routes: Vec<Route>) -> Routes {
        let mut maskings: Vec<(Masking, u64)> = Vec::new();
        for r in &routes {
            match maskings.iter_mut().find(|(m, _)| *m == r.masking) {
                Some((_, bits)) => *bits |= r.bit,
                None => maskings.push((r.masking, r.bit)),
            }
        }
        Routes { routes, maskings }
    }

    /// The record as the replay log keeps it: the channels it reaches and
    /// its text for each (masked as each channel masks); `filtered[i]` is
    /// incremented for every route `i` the record does not reach. `buf` is
    /// scratch space.
    pub fn item(&self, r: &Record<'_>, observed_ms: i64, filtered: &mut [u64], buf: &mut Vec<u8>) -> Item {
        let mut bits = 0u64;
        for (i, route) in self.routes.iter().enumerate() {
            if route.filter.matches(r) {
                bits |= route.bit;
            } else if let Some(n) = filtered.get_mut(i) {
                *n += 1;
            }
        }
        let mut texts: Vec<(u64, Box<str>)> = Vec::new();
        for (masking, mask_bits) in &self.maskings {
            let b = bits & mask_bits;
            if b != 0 {
                texts.push((b, text(r, *masking, buf)));
            }
        }
        Item {
            texts: Texts::from_vec(texts),
            service_id: r.get(Field::ServiceId).into(),
            // Of the key as the channel received it: the `api_key=` filter
            // takes the unmasked key.
            key_digest: key_digest(r.get(Field::ApiKey)),
            status: r.get(Field::HttpStatusCode).trim().parse().unwrap_or(0),
            observed_ms: r.ingestion_time.unwrap_or(observed_ms),
        }
    }
}

/// The record's `ecls` JSON, masked with `masking` (the one rule of
/// [`crate::mask`]).
fn text(r: &Record<'_>, masking: Masking, buf: &mut Vec<u8>) -> Box<str> {
    buf.clear();
    if masking.is_off() {
        r.write_json(Shape::Ecls, buf);
    } else {
        let mut m = r.clone();
        masking.apply(&mut m);
        m.write_json(Shape::Ecls, buf);
    }
    // Always UTF-8 (written from `&str`s); `from_utf8` checks it several
    // times faster than the lossy conversion's byte loop.
    match std::str::from_utf8(buf) {
        Ok(s) => s.into(),
        Err(_) => String::from_utf8_lossy(buf).into(),
    }
}

/// The routes shared between the sink and a reload.
pub type SharedRoutes = Arc<Routes>;

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(org: &str, status: &str, service: &str) -> Record<'static> {
        let mut r = Record::new_ml();
        r.set(Field::OrgName, org.to_string());
        r.set(Field::HttpStatusCode, status.to_string());
        r.set(Field::ServiceId, service.to_string());
        r.set(Field::ApiKey, "k7q2mzp4rb9d3hxw8cyn5ta6");
        r.into_owned()
    }

    fn filter(fields: Vec<(Field, Vec<&str>)>, statuses: &[&str]) -> RouteFilter {
        let fields = fields.into_iter().map(|(f, v)| (f, v.into_iter().map(str::to_string).collect())).collect();
        RouteFilter::new(fields, &statuses.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "channel.stream[0]").unwrap()
    }

    #[test]
    fn filters_match_every_key_given_and_any_value_of_each() {
        let check =
            |f: &RouteFilter, r: &Record<'_>, want: bool| assert_eq!(f.matches(r), want, "{} on {:?}", f.describe(), r.get(Field::OrgName));
        let a = filter(vec![(Field::OrgName, vec!["Partner A"])], &[]);
        check(&a, &rec("Partner A", "200", "s"), true);
        check(&a, &rec("Partner B", "200", "s"), false);
        check(&a, &rec("partner a", "200", "s"), false);
        // A record without organization reaches only channels that do not require one.
        check(&a, &rec("", "200", "s"), false);
        check(&a, &rec("-", "200", "s"), false);
        check(&RouteFilter::default(), &rec("", "200", "s"), true);
        let both = filter(vec![(Field::OrgName, vec!["A", "B"]), (Field::ServiceId, vec!["s1"])], &["5xx", "404"]);
        check(&both, &rec("B", "503", "s1"), true);
        check(&both, &rec("A", "404", "s1"), true);
        check(&both, &rec("A", "200", "s1"), false);
        check(&both, &rec("A", "500", "s2"), false);
        check(&both, &rec("C", "500", "s1"), false);
        assert_eq!(both.describe(), "org_name=A,B; service_id=s1; status=5xx,404");
        assert_eq!(RouteFilter::default().describe(), "every record");
        // The same filter written in another order is the same identity.
        let again = filter(vec![(Field::ServiceId, vec!["s1"]), (Field::OrgName, vec!["B", "A", "A"])], &["404", "5xx"]);
        assert_eq!(both.canonical(), again.canonical());
        assert_ne!(both.canonical(), a.canonical());
    }

    #[test]
    fn bad_terms_name_their_key() {
        let e = RouteFilter::new(vec![], &["6xx".into()], "channel.stream[2]").unwrap_err();
        assert_eq!(e.0, "channel.stream[2].status");
        let e = RouteFilter::new(vec![(Field::OrgUuid, vec!["".into()])], &[], "channel.stream[0]").unwrap_err();
        assert_eq!(e.0, "channel.stream[0].org_uuid");
    }

    #[test]
    fn a_record_gets_one_text_per_masking_of_the_channels_it_reaches() {
        let routes = Routes::new(vec![
            Route { bit: 1, filter: RouteFilter::default(), masking: Masking::default() },
            Route { bit: 2, filter: filter(vec![(Field::OrgName, vec!["A"])], &[]), masking: Masking::both(Some(2)) },
            Route { bit: 4, filter: filter(vec![(Field::OrgName, vec!["B"])], &[]), masking: Masking::both(Some(2)) },
        ]);
        let mut filtered = vec![0u64; 3];
        let mut buf = Vec::new();
        let a = routes.item(&rec("A", "200", "s"), 5, &mut filtered, &mut buf);
        assert_eq!(a.texts.bits(), 1 | 2);
        assert!(a.texts.text_for(1).unwrap().contains("k7q2mzp4rb9d3hxw8cyn5ta6"));
        assert!(a.texts.text_for(2).unwrap().contains("k7********************a6"));
        assert_eq!(a.texts.text_for(4), None);
        let none = routes.item(&rec("", "200", "s"), 5, &mut filtered, &mut buf);
        assert_eq!(none.texts.bits(), 1);
        assert_eq!(filtered, vec![0, 1, 2]);
        // Reaching no channel: no text at all.
        let only = Routes::new(vec![Route { bit: 2, filter: filter(vec![(Field::OrgName, vec!["A"])], &[]), masking: Masking::default() }]);
        let x = only.item(&rec("B", "200", "s"), 5, &mut [0], &mut buf);
        assert_eq!((x.texts.bits(), x.texts.bytes()), (0, 0));
    }
}
