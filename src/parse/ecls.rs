//! `ecls`: captured Call Log Stream messages, `{"data":[record, ...]}`,
//! one message per line (a pretty-printed message spread over several
//! lines is framed into one by the reader, see [`crate::parse::framing`]).
//! Records are taken as the stream sent them: `log_type` is kept (`SaaS`
//! stays `SaaS`; only a missing one becomes `ML`), ids are not re-derived;
//! `request_time` and `response_string` are normalised like every format.

use crate::parse::json::{self, MessageSeed};
use crate::parse::normalize::{self, Finish};
use crate::parse::{LineKind, Reject};
use crate::record::Record;

/// How stream records are finished: nothing re-derived, `log_type` kept.
const FINISH_ECLS: Finish = Finish { ids_from_request_id: false, force_ml: false };

/// Parses one message into its records. One bad record rejects the whole
/// message (the caller discards whatever this pushed).
pub fn parse<'a>(line: &'a str, out: &mut Vec<Record<'a>>) -> Result<LineKind, Reject> {
    parse_with(line, false, out)
}

/// The same, keeping the fields a bridge wrote (`sync_delay_ms`, `host`)
/// when `bridge` (reading the bridge's own history: an `ecls` archive).
pub fn parse_with<'a>(line: &'a str, bridge: bool, out: &mut Vec<Record<'a>>) -> Result<LineKind, Reject> {
    let before = out.len();
    json::deserialize_line(line, MessageSeed { out: &mut *out, bridge })?;
    for (i, rec) in out[before..].iter_mut().enumerate() {
        normalize::finish(rec, FINISH_ECLS).map_err(|r| Reject::new(r.reason, format!("record {}: {}", i + 1, r.detail)))?;
    }
    Ok(LineKind::Records(out.len() - before))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::RejectReason;
    use crate::record::Field;

    #[test]
    fn messages() {
        let mut out = Vec::new();
        let two = r#"{"data":[{"request_uuid":"a","request_time":"2019-04-19T21:56:43Z","log_type":"SaaS","ingestion_time":"1555711021034"},{"request_uuid":"b","request_time":"2019-04-19T21:56:44Z"}]}"#;
        assert_eq!(parse(two, &mut out), Ok(LineKind::Records(2)));
        assert_eq!(out[0].get(Field::LogType), "SaaS");
        assert_eq!(out[0].ingestion_time, Some(1_555_711_021_034));
        assert_eq!(out[1].get(Field::LogType), "ML");
        assert_eq!(out[1].get(Field::RequestTime), "2019-04-19T21:56:44Z");

        let mut out = Vec::new();
        assert_eq!(parse(r#"{"data":[]}"#, &mut out), Ok(LineKind::Records(0)));
        assert_eq!(parse(r#"{"other":1}"#, &mut out).unwrap_err().reason, RejectReason::BadJson);
        assert_eq!(parse(r#"{"data":{}}"#, &mut out).unwrap_err().reason, RejectReason::BadJson);
        let bad_second = r#"{"data":[{"request_uuid":"a","request_time":"2019-04-19T21:56:43Z"},{"request_uuid":"b","request_time":"x"}]}"#;
        let r = parse(bad_second, &mut out).unwrap_err();
        assert_eq!(r.reason, RejectReason::BadTime);
        assert!(r.detail.starts_with("record 2:"), "{r}");
    }
}
