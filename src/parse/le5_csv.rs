//! `le5-csv`: the LE 5.x enriched access log written by the Log Service, a
//! CSV file with a header row naming the 35 ECLE columns (alphabetical in
//! the files seen so far, but columns are mapped by the header's names in
//! whatever order they come). `request_time` is epoch seconds with a
//! fraction; `response_string` is spelled `200OK (API)`.
//!
//! A file whose first row is not a header is read in the alphabetical
//! order below.

use crate::parse::csv::{self, CsvState};
use crate::parse::{LineKind, Reject};
use crate::record::{Field, Record};

/// The 35 columns in alphabetical order, as LE 5 writes its header.
pub const ALPHABETICAL: [Field; 35] = [
    Field::ApiKey,
    Field::ApiMethodName,
    Field::Bytes,
    Field::CacheHit,
    Field::ClientTransferTime,
    Field::ConnectTime,
    Field::EndpointName,
    Field::HttpMethod,
    Field::HttpStatusCode,
    Field::HttpVersion,
    Field::OauthAccessToken,
    Field::PackageName,
    Field::PackageUuid,
    Field::PlanName,
    Field::PlanUuid,
    Field::PreTransferTime,
    Field::QpsThrottleValue,
    Field::QuotaValue,
    Field::Referrer,
    Field::RemoteTotalTime,
    Field::RequestHostName,
    Field::RequestId,
    Field::RequestTime,
    Field::RequestUuid,
    Field::ResponseString,
    Field::ServiceDefinitionEndpointUuid,
    Field::ServiceId,
    Field::ServiceName,
    Field::SrcIp,
    Field::SslEnabled,
    Field::TotalRequestExecTime,
    Field::TrafficManager,
    Field::TrafficManagerErrorCode,
    Field::Uri,
    Field::UserAgent,
];

/// Parses one line: the header row (remembered in `st`) or a data row.
pub fn parse<'a>(line: &'a str, st: &mut CsvState, out: &mut Vec<Record<'a>>) -> Result<LineKind, Reject> {
    csv::parse_line(line, st, &[&ALPHABETICAL], out)
}
