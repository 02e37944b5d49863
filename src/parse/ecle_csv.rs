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
    csv::parse_line(line, st, &[&NATURAL[..35], &NATURAL], out)
}
