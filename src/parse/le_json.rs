//! `le-json`: the LE 5.x raw access log, one JSON object per line with LE
//! field names (`method`, `status`, `spkey`, `epkey`, `exec_time`, `proxy`,
//! `proxy_worker`, `api_method`, `throttle_value`, `proxy_error_code`) or
//! schema names; values are strings or numbers. Names may be empty: that
//! is what enrichment fills.

use crate::parse::json::{self, RecordSeed};
use crate::parse::normalize::{self, FINISH_LE};
use crate::parse::{LineKind, Reject};
use crate::record::Record;

/// Parses one line into one record.
pub fn parse<'a>(line: &'a str, out: &mut Vec<Record<'a>>) -> Result<LineKind, Reject> {
    parse_with(line, false, out)
}

/// The same, keeping the fields a bridge wrote (`ingestion_time` in
/// either spelling, `sync_delay_ms`, `host`) when `bridge` (reading the
/// bridge's own history: its archive, its replay log).
pub fn parse_with<'a>(line: &'a str, bridge: bool, out: &mut Vec<Record<'a>>) -> Result<LineKind, Reject> {
    let before = out.len();
    json::deserialize_line(line, RecordSeed { out: &mut *out, bridge })?;
    for rec in &mut out[before..] {
        normalize::finish(rec, FINISH_LE)?;
    }
    Ok(LineKind::Records(out.len() - before))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::RejectReason;
    use crate::record::Field;

    fn check(input: &str, expected: Result<&[(Field, &str)], RejectReason>) {
        let mut out = Vec::new();
        match (parse(input, &mut out), expected) {
            (Ok(LineKind::Records(1)), Ok(fields)) => {
                for (f, v) in fields {
                    assert_eq!(out[0].get(*f), *v, "{f:?} of {input:?}");
                }
            }
            (Err(r), Err(e)) => assert_eq!(r.reason, e, "{input:?}: {r}"),
            (g, e) => panic!("{input:?}: got {g:?}, expected {e:?}"),
        }
    }

    #[test]
    fn names_values_and_errors() {
        let base = r#"{"request_uuid":"u1","request_time":"2018-11-19T16:01:41.250Z","method":"GET","status":200,"exec_time":0.000,"proxy":"tm1","spkey":"svc","epkey":"ep","ssl_enabled":true,"api_method":null,"response_string":"201 Created (API)","request_id":"1542643301.250_key_svc"}"#;
        check(
            base,
            Ok(&[
                (Field::HttpMethod, "GET"),
                (Field::HttpStatusCode, "200"),
                (Field::TotalRequestExecTime, "0.000"),
                (Field::TrafficManager, "tm1"),
                (Field::ServiceId, "svc"),
                (Field::ServiceDefinitionEndpointUuid, "ep"),
                (Field::SslEnabled, "1"),
                (Field::ApiMethodName, ""),
                (Field::ApiKey, "key"),
                (Field::ResponseString, "201_Created_API"),
                (Field::RequestTime, "2018-11-19T16:01:41Z"),
                (Field::LogType, "ML"),
            ]),
        );
        check(
            r#"{"request_uuid":"u\"1","request_time":1542643301.25,"user_agent":"a\u0041"}"#,
            Ok(&[(Field::RequestUuid, "u\"1"), (Field::UserAgent, "aA")]),
        );
        check(
            r#"{"request_uuid":"u1","proxy_worker":"w","traffic_manager":"-","request_time":"2018-11-19T16:01:41Z"}"#,
            Ok(&[(Field::TrafficManager, "w")]),
        );
        check(r#"{"request_uuid":"u1","request_time":"2018-11-19T16:01:41Z","extra":{"nested":[1,2]}}"#, Ok(&[(Field::RequestUuid, "u1")]));
        check(r#"{"request_uuid":"u1","request_time":"2018-11-19T16:01:41Z"} x"#, Err(RejectReason::BadJson));
        check(r#"{"request_uuid":"u1","status":{"a":1},"request_time":"2018-11-19T16:01:41Z"}"#, Err(RejectReason::BadJson));
        check(r#"{"request_uuid":"u1","request_time":"2018-11-19T16:01:41Z""#, Err(RejectReason::BadJson));
        check(r#"["request_uuid"]"#, Err(RejectReason::BadJson));
        check(r#"{"request_uuid":"u1","request_time":"nope"}"#, Err(RejectReason::BadTime));
        check(r#"{"request_uuid":"","request_time":"2018-11-19T16:01:41Z"}"#, Err(RejectReason::BadField));
    }
}
