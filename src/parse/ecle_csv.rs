//! `ecle-csv`: the Call Log Export, a CSV file (gzipped on delivery; the
//! reader decompresses) with 35 columns, or 39 with the organization
//! fields, in the export's "natural" order. Whether the export writes a
//! header row is not documented: a header row is recognised (and then
//! maps columns by name), its absence is fine.

use crate::parse::csv::{self, CsvState};
use crate::parse::{LineKind, Reject};
use crate::record::{Field, Record};

/// The export's column order; the first 35 always, the last 4 optional.
pub const NATURAL: [Field; 39] = [
    Field::RequestHostName,
    Field::SrcIp,
    Field::RequestUuid,
    Field::HttpMethod,
    Field::Uri,
    Field::HttpVersion,
    Field::Bytes,
    Field::HttpStatusCode,
    Field::Referrer,
    Field::UserAgent,
    Field::RequestId,
    Field::RequestTime,
    Field::ApiKey,
    Field::ServiceId,
    Field::TrafficManager,
    Field::ApiMethodName,
    Field::CacheHit,
    Field::TrafficManagerErrorCode,
    Field::TotalRequestExecTime,
    Field::RemoteTotalTime,
    Field::ConnectTime,
    Field::PreTransferTime,
    Field::OauthAccessToken,
    Field::SslEnabled,
    Field::QuotaValue,
    Field::QpsThrottleValue,
    Field::ClientTransferTime,
    Field::ServiceName,
    Field::ResponseString,
    Field::PlanName,
    Field::PlanUuid,
    Field::EndpointName,
    Field::PackageName,
    Field::PackageUuid,
    Field::ServiceDefinitionEndpointUuid,
    Field::OrgUuid,
    Field::OrgName,
    Field::SubOrgUuid,
    Field::SubOrgName,
];

/// Parses one line: an optional header row or a data row of 35 / 39 columns.
pub fn parse<'a>(line: &'a str, st: &mut CsvState, out: &mut Vec<Record<'a>>) -> Result<LineKind, Reject> {
    parse_with(line, st, false, out)
}

/// The same, keeping the bridge's own columns a header row names
/// (`ingestion_time`, `sync_delay_ms`, `host`: `[export] bridge_columns`)
/// when `bridge` (reading the bridge's history: `lag report`, the
/// export's own recovery).
pub fn parse_with<'a>(line: &'a str, st: &mut CsvState, bridge: bool, out: &mut Vec<Record<'a>>) -> Result<LineKind, Reject> {
    let kind = csv::parse_line(line, st, &[&NATURAL[..35], &NATURAL], out)?;
    if bridge && matches!(kind, LineKind::Records(_)) && st.bridge_columns.iter().any(Option::is_some) {
        if let Some(rec) = out.last_mut() {
            let cell = |i: Option<usize>| i.and_then(|i| st.cells.get(i)).map(|c| c.value(line));
            let [seen, delay, host] = st.bridge_columns;
            rec.ingestion_time = cell(seen).and_then(|v| v.trim().parse().ok());
            rec.sync_delay_ms = cell(delay).and_then(|v| v.trim().parse().ok());
            if let Some(h) = cell(host) {
                rec.host = h;
            }
        }
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{LineParser, RejectReason};

    const ROW: &str = "api.host,185.46.213.92,0d2bdcc5-5fe8-44a0-b751-1b5a5327297a,GET,/p,HTTP/1.1,2,200,-,\"ua, with comma\",1559780515.387_key_svc,2019-06-06T00:21:55Z,key,svc,tm,m,0,-,0.145,0.09,0.0,0.0,tok,1,12190,7,0.0,API,200_OK_API,Default,planUUID,ep,pkg,pkgUUID,sdeUUID";

    #[test]
    fn with_and_without_header_35_and_39_columns() {
        let header: Vec<&str> = NATURAL[..35].iter().map(|f| f.name()).collect();
        let header = header.join(",") + "\r";
        let mut p = LineParser::new(crate::parse::Format::EcleCsv, 1 << 20);
        let mut out = Vec::new();
        assert_eq!(p.parse_line(header.as_bytes(), &mut out), Ok(LineKind::Header));
        let crlf = format!("{ROW}\r");
        assert_eq!(p.parse_line(crlf.as_bytes(), &mut out), Ok(LineKind::Records(1)));
        assert_eq!(out[0].get(Field::UserAgent), "ua, with comma");
        assert_eq!(out[0].get(Field::ServiceDefinitionEndpointUuid), "sdeUUID");
        assert_eq!(out[0].request_time_ms, Some(1_559_780_515_387));
        // After a 35-column header a 39-column row is a column-count reject.
        let with_org = format!("{ROW},o1,Org,s1,Sub");
        assert_eq!(p.parse_line(with_org.as_bytes(), &mut out).unwrap_err().reason, RejectReason::ColumnCount);

        let mut p = LineParser::new(crate::parse::Format::EcleCsv, 1 << 20);
        let mut out = Vec::new();
        assert_eq!(p.parse_line(with_org.as_bytes(), &mut out), Ok(LineKind::Records(1)));
        assert_eq!(out[0].get(Field::OrgName), "Org");
        assert_eq!(out[0].get(Field::SubOrgUuid), "s1");
        assert_eq!(p.parse_line(ROW.as_bytes(), &mut out), Ok(LineKind::Records(1)));
        let r = p.parse_line(b"a,b,c", &mut out).unwrap_err();
        assert_eq!(r.reason, RejectReason::ColumnCount);
        assert_eq!(r.detail, "expected 35 or 39 columns, found 3");
    }
}
