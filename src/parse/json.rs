//! The JSON machinery shared by `le-json` and `ecls`: a serde visitor that
//! walks one flat JSON object straight into a [`Record`], without building
//! a map or a `serde_json::Value`.
//!
//! Invariant: values are borrowed from the line. A key or string holding a
//! JSON escape is the only case that copies; numbers keep the exact text the
//! source wrote (`0.000` stays `0.000`) because they are read as raw JSON.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::parse::normalize::field_for_name;
use crate::parse::{Reject, RejectReason};
use crate::record::{is_absent, Field, Kind, Record};

/// A JSON object key, borrowed when it holds no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The text of a scalar JSON value as the record holds it: strings
/// unquoted, numbers as written, `null` as empty, booleans as `1`/`0` for
/// numeric fields and `true`/`false` otherwise.
fn scalar<'de>(raw: &'de RawValue, f: Field) -> Result<Cow<'de, str>, String> {
    let s = raw.get();
    match s.as_bytes().first() {
        Some(b'"') => {
            let inner = &s[1..s.len() - 1];
            if inner.contains('\\') {
                serde_json::from_str::<String>(s).map(Cow::Owned).map_err(|e| e.to_string())
            } else {
                Ok(Cow::Borrowed(inner))
            }
        }
        Some(b'n') => Ok(Cow::Borrowed("")),
        Some(b't') => Ok(Cow::Borrowed(if f.kind() == Kind::Str { "true" } else { "1" })),
        Some(b'f') => Ok(Cow::Borrowed(if f.kind() == Kind::Str { "false" } else { "0" })),
        Some(b'{') | Some(b'[') => Err(format!("{} holds an object or array, expected a string or number", f.name())),
        _ => Ok(Cow::Borrowed(s)),
    }
}

/// Visits one JSON object and pushes the record it describes (not yet
/// normalised) onto `out`.
pub struct RecordSeed<'r, 'de> {
    /// Where the record goes.
    pub out: &'r mut Vec<Record<'de>>,
    /// Also keep the bridge's own fields a bridge wrote (`sync_delay_ms`,
    /// `host`, `ingestion_time` in either shape): a hub reading records an
    /// edge bridge sent through Kafka. Files leave them to the stamping.
    pub bridge: bool,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object (one call-log record)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut rec = Record::default();
        // The field expected next: bridges (and the hosted stream) write
        // the fields in schema order, so one comparison usually finds the
        // field instead of a search through forty names.
        let mut next = 0;
        while let Some(Key(name)) = map.next_key::<Key<'de>>()? {
            let field = match Field::ALL.get(next) {
                Some(&f) if f.name() == name.as_ref() => Some(f),
                // A bridge's own member is not a field (never a search).
                _ if self.bridge && matches!(name.as_ref(), "host" | "sync_delay_ms" | "ingestion_time") => None,
                _ => field_for_name(&name),
            };
            match field {
                Some(f) => {
                    next = f.index() + 1;
                    let raw: &'de RawValue = map.next_value()?;
                    let v = scalar(raw, f).map_err(de::Error::custom)?;
                    // Two names for one field (`proxy` and `traffic_manager`):
                    // a value beats an absent one, otherwise the later wins.
                    if !is_absent(&v) || rec.get(f).is_empty() {
                        rec.fields[f.index()] = v;
                    }
                }
                None if name == "ingestion_time" => {
                    let raw: &'de RawValue = map.next_value()?;
                    let s = raw.get().trim_matches('"');
                    rec.ingestion_time = s.parse::<i64>().ok();
                    if self.bridge && rec.ingestion_time.is_none() {
                        // The ndjson shape spells it in ISO 8601.
                        rec.ingestion_time = crate::time::parse_iso(s);
                    }
                }
                None if self.bridge && name == "sync_delay_ms" => {
                    let raw: &'de RawValue = map.next_value()?;
                    rec.sync_delay_ms = raw.get().trim_matches('"').parse::<i64>().ok();
                }
                None if self.bridge && name == "host" => {
                    let raw: &'de RawValue = map.next_value()?;
                    rec.host = scalar(raw, Field::RequestHostName).map_err(de::Error::custom)?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        self.out.push(rec);
        Ok(())
    }
}

/// Visits a stream message `{"data":[record, ...]}` and pushes its records.
pub struct MessageSeed<'r, 'de> {
    /// Where the records go.
    pub out: &'r mut Vec<Record<'de>>,
    /// As [`RecordSeed::bridge`].
    pub bridge: bool,
}

impl<'de> DeserializeSeed<'de> for MessageSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a stream message {\"data\":[...]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let out = self.out;
        let mut seen = false;
        while let Some(Key(name)) = map.next_key::<Key<'de>>()? {
            if name == "data" && !seen {
                seen = true;
                map.next_value_seed(DataSeed { out: &mut *out, bridge: self.bridge })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if !seen {
            return Err(de::Error::custom("no \"data\" array"));
        }
        Ok(())
    }
}

/// The `data` array of a stream message.
struct DataSeed<'r, 'de> {
    /// Where the records go.
    out: &'r mut Vec<Record<'de>>,
    /// As [`RecordSeed::bridge`].
    bridge: bool,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (out, bridge) = (self.out, self.bridge);
        while seq.next_element_seed(RecordSeed { out: &mut *out, bridge })?.is_some() {}
        Ok(())
    }
}

/// Runs a seed over a whole line; trailing non-whitespace is an error.
pub fn deserialize_line<'de, S: DeserializeSeed<'de, Value = ()>>(line: &'de str, seed: S) -> Result<(), Reject> {
    let mut de = serde_json::Deserializer::from_str(line);
    seed.deserialize(&mut de).and_then(|()| de.end()).map_err(|e| Reject::new(RejectReason::BadJson, e.to_string()))
}

/// True when the line is a JSON object whose first key is `data` holding
/// an array: the stream message shape.
pub fn looks_like_message(line: &str) -> bool {
    let rest = line.trim_start();
    let Some(rest) = rest.strip_prefix('{') else { return false };
    let Some(rest) = rest.trim_start().strip_prefix("\"data\"") else { return false };
    let Some(rest) = rest.trim_start().strip_prefix(':') else { return false };
    rest.trim_start().starts_with('[')
}
