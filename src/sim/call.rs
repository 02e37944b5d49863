//! One simulated API call ([`SimCall`]) drawn by the seeded [`Generator`],
//! rendered in every input format with the record a parser must produce.

use std::borrow::Cow;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::parse::Format;
use crate::record::{Field, Record};
use crate::time;

use super::*;
/// Who produced the response: the origin API or the traffic manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The origin (`(API)`).
    Api,
    /// The traffic manager itself (`(Mashery)`), e.g. a 403 or 429.
    Mashery,
}

impl Source {
    pub(super) fn name(self) -> &'static str {
        match self {
            Source::Api => "API",
            Source::Mashery => "Mashery",
        }
    }
}

/// What happens to a call.
#[derive(Clone, Copy, Debug)]
pub(super) enum Outcome {
    Success,
    Status(u16, &'static str, Source, &'static str),
    NoKey,
    Inactive,
}

/// Outcomes by weight (per mille): mostly success, some origin 4xx/5xx,
/// some traffic-manager errors.
pub(super) static OUTCOMES: &[(u32, Outcome)] = &[
    (860, Outcome::Success),
    (15, Outcome::Status(304, "Not Modified", Source::Api, "-")),
    (20, Outcome::Status(400, "Bad Request", Source::Api, "-")),
    (10, Outcome::Status(401, "Unauthorized", Source::Api, "-")),
    (30, Outcome::Status(404, "Not Found", Source::Api, "-")),
    (12, Outcome::Inactive),
    (8, Outcome::NoKey),
    (15, Outcome::Status(429, "Too Many Requests", Source::Mashery, "ERR_429_DEVELOPER_OVER_QPS")),
    (5, Outcome::Status(429, "Too Many Requests", Source::Mashery, "ERR_429_DEVELOPER_OVER_RATE")),
    (12, Outcome::Status(500, "Internal Server Error", Source::Api, "-")),
    (4, Outcome::Status(502, "Bad Gateway", Source::Api, "-")),
    (6, Outcome::Status(503, "Service Unavailable", Source::Api, "-")),
    (3, Outcome::Status(504, "Gateway Timeout", Source::Mashery, "ERR_504_GATEWAY_TIMEOUT")),
];

/// One simulated API call. Render it with [`SimCall::render`]; what a
/// parser must make of that line is [`SimCall::expected`].
#[derive(Clone, Debug)]
pub struct SimCall {
    /// When the call reached the traffic manager (epoch ms).
    pub(super) request_ms: i64,
    /// When Local Edition wrote its line (epoch ms): the call's end plus
    /// the generator's write delay, at the latest the time it was made.
    pub(super) written_ms: i64,
    /// Unique id (UUID v4 from the seeded generator).
    pub(super) request_uuid: String,
    /// The service called.
    pub(super) service: &'static SimService,
    /// The endpoint called.
    pub(super) endpoint: &'static SimEndpoint,
    /// The method called.
    pub(super) method: &'static SimMethod,
    /// The key, `None` when the call carried none (`api_key` = `unknown`).
    pub(super) key: Option<&'static SimKey>,
    /// The request URI.
    pub(super) uri: String,
    /// Response size.
    pub(super) bytes: u32,
    /// HTTP status.
    pub(super) status: u16,
    /// Reason phrase (`OK`, `Too Many Requests`).
    pub(super) reason: &'static str,
    /// Who answered.
    pub(super) source: Source,
    /// `traffic_manager_error_code` (`-` when none).
    pub(super) error_code: &'static str,
    /// `api_method_name` (`-` for traffic-manager errors).
    pub(super) api_method: &'static str,
    /// `referrer`.
    pub(super) referrer: &'static str,
    /// `user_agent`.
    pub(super) user_agent: &'static str,
    /// `src_ip`.
    pub(super) src_ip: String,
    /// `traffic_manager`.
    pub(super) traffic_manager: &'static str,
    /// 1 = served from cache.
    pub(super) cache_hit: u8,
    /// Timings in milliseconds.
    pub(super) exec_ms: u32,
    /// Waiting for the origin.
    pub(super) remote_ms: u32,
    /// Connecting to the origin.
    pub(super) connect_ms: u32,
    /// Before the first byte.
    pub(super) pre_ms: u32,
    /// Sending the response to the client.
    pub(super) client_ms: u32,
    /// `oauth_access_token` (`-` when none).
    pub(super) oauth: String,
    /// 1 = HTTPS.
    pub(super) ssl: u8,
    /// Count against the quota.
    pub(super) quota_value: u32,
    /// QPS throttle count.
    pub(super) throttle_value: u32,
    /// The enriched formats (le6, le5-csv) leave service and endpoint names
    /// empty for this call, as real enriched logs sometimes do.
    pub(super) names_missing: bool,
}

/// A seeded source of [`SimCall`]s.
#[derive(Debug)]
pub struct Generator {
    /// The random source; seeded, so runs repeat.
    pub(super) rng: StdRng,
    /// Quota counter per key (index into [`KEYS`]).
    quota: Vec<u32>,
    /// How long after a call ends Local Edition writes its line (LE 6
    /// `log_ingestion`), ms.
    write_delay_ms: i64,
}

/// Picks an index by weight.
pub(super) fn pick_weighted(rng: &mut StdRng, weights: impl Iterator<Item = u32> + Clone) -> usize {
    let total: u32 = weights.clone().sum();
    let mut r = rng.random_range(0..total.max(1));
    for (i, w) in weights.enumerate() {
        if r < w {
            return i;
        }
        r -= w;
    }
    0
}

impl Generator {
    /// A generator; the same seed gives the same sequence of calls.
    pub fn new(seed: u64) -> Generator {
        Generator { rng: StdRng::seed_from_u64(seed), quota: vec![0; KEYS.len()], write_delay_ms: 0 }
    }

    /// Local Edition writes each line this long after the call ended (the
    /// line's write time, LE 6 `log_ingestion`; never later than the
    /// `now_ms` of [`Generator::next_call`]). The rest of the lag is the
    /// sync's (the transfer delay).
    pub fn set_write_delay_ms(&mut self, ms: i64) {
        self.write_delay_ms = ms;
    }

    pub(super) fn uuid_v4(&mut self) -> String {
        let mut b: [u8; 16] = self.rng.random();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let mut s = String::with_capacity(36);
        for (i, x) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            s.push_str(&format!("{x:02x}"));
        }
        s
    }

    /// The next call: it reached the traffic manager at `now_ms - lag_ms`.
    pub fn next_call(&mut self, now_ms: i64, lag_ms: i64) -> SimCall {
        let rng = &mut self.rng;
        let outcome = OUTCOMES[pick_weighted(rng, OUTCOMES.iter().map(|o| o.0))].1;
        // Inactive developers are the only source of ERR_403_DEVELOPER_INACTIVE;
        // everyone else is an active key.
        let key_idx = match outcome {
            Outcome::Inactive => KEYS.iter().position(|k| k.inactive).unwrap_or(0),
            _ => pick_weighted(rng, KEYS.iter().map(|k| if k.inactive { 0 } else { k.weight })),
        };
        let key = &KEYS[key_idx];
        let service = &SERVICES[key.services[rng.random_range(0..key.services.len())]];
        let endpoint = &service.endpoints[rng.random_range(0..service.endpoints.len())];
        let method = &endpoint.methods[rng.random_range(0..endpoint.methods.len())];
        let key = if matches!(outcome, Outcome::NoKey) { None } else { Some(key) };

        let (mut status, mut reason, source, error_code) = match outcome {
            Outcome::Success => (200, "OK", Source::Api, "-"),
            Outcome::Status(s, r, src, e) => (s, r, src, e),
            Outcome::NoKey => (403, "Forbidden", Source::Mashery, "ERR_403_NOT_AUTHORIZED"),
            Outcome::Inactive => (403, "Forbidden", Source::Mashery, "ERR_403_DEVELOPER_INACTIVE"),
        };
        if status == 200 && method.http == "POST" {
            (status, reason) = (201, "Created");
        } else if status == 200 && method.http == "DELETE" {
            (status, reason) = (204, "No Content");
        } else if status == 304 && method.http != "GET" {
            (status, reason) = (200, "OK");
        }

        let n: u32 = rng.random_range(1..100_000);
        let mut uri = method.path.replace("{n}", &n.to_string());
        if let Some(k) = key {
            uri.push_str("?api_key=");
            uri.push_str(k.key);
        }
        if service.name == "PetStore" && uri.contains("/pets") && method.http == "GET" && rng.random_bool(0.3) {
            uri.push_str(if uri.contains('?') { "&" } else { "?" });
            uri.push_str("status=available&limit=20");
        }

        let cache_hit = u8::from(status == 200 && method.http == "GET" && rng.random_bool(0.03));
        let (remote_ms, connect_ms, pre_ms) = if source == Source::Mashery && status != 504 || cache_hit == 1 {
            (0, 0, 0)
        } else if status == 504 {
            (rng.random_range(29_000..30_500), rng.random_range(0..40), 0)
        } else {
            // Mostly near the endpoint's typical latency, with a long tail.
            let f: f64 = rng.random::<f64>();
            let remote = (endpoint.base_ms as f64 * (0.4 + 3.0 * f * f * f)) as u32 + rng.random_range(1..10);
            let connect = if rng.random_bool(0.15) { rng.random_range(5..60) } else { 0 };
            (remote, connect, rng.random_range(0..3))
        };
        let overhead: u32 = if source == Source::Mashery { rng.random_range(1..7) } else { rng.random_range(2..15) };
        let client_ms: u32 = if rng.random_bool(0.8) { 0 } else { rng.random_range(1..5) };
        let exec_ms = remote_ms + connect_ms + pre_ms + overhead + client_ms;

        let bytes = match status {
            200 if method.http == "GET" => rng.random_range(200..9000),
            200 | 201 => rng.random_range(120..2000),
            204 | 304 => 0,
            _ => rng.random_range(60..320),
        };
        let quota_value = match key {
            Some(_) if status < 400 || source == Source::Api => {
                self.quota[key_idx] += 1;
                self.quota[key_idx]
            }
            _ => 0,
        };
        let rng = &mut self.rng;
        let throttle_value = if quota_value > 0 { rng.random_range(1..6) } else { 0 };
        let oauth = if service.name == "PetStore" && key.is_some() && rng.random_bool(0.4) {
            (0..32).map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)])).collect()
        } else {
            "-".to_string()
        };
        let src_ip = match rng.random_range(0..3) {
            0 => format!("203.0.113.{}", rng.random_range(1..255)),
            1 => format!("198.51.100.{}", rng.random_range(1..255)),
            _ => format!("192.0.2.{}", rng.random_range(1..255)),
        };
        let user_agent = USER_AGENTS[rng.random_range(0..USER_AGENTS.len())];
        let referrer = REFERRERS[rng.random_range(0..REFERRERS.len())];
        let traffic_manager = TRAFFIC_MANAGERS[rng.random_range(0..TRAFFIC_MANAGERS.len())];
        let ssl = u8::from(rng.random_bool(0.9));
        let names_missing = rng.random_bool(0.05);
        let request_uuid = self.uuid_v4();
        let request_ms = now_ms - lag_ms;
        SimCall {
            request_ms,
            written_ms: (request_ms + exec_ms as i64 + self.write_delay_ms).min(now_ms),
            request_uuid,
            service,
            endpoint,
            method,
            key,
            uri,
            bytes,
            status,
            reason,
            source,
            error_code,
            api_method: if source == Source::Mashery { "-" } else { method.name },
            referrer,
            user_agent,
            src_ip,
            traffic_manager,
            cache_hit,
            exec_ms,
            remote_ms,
            connect_ms,
            pre_ms,
            client_ms,
            oauth,
            ssl,
            quota_value,
            throttle_value,
            names_missing,
        }
    }
}

/// The LE 5 enriched CSV header: the 35 ECLE columns in alphabetical order.
pub fn le5_csv_header() -> &'static str {
    "api_key,api_method_name,bytes,cache_hit,client_transfer_time,connect_time,endpoint_name,http_method,http_status_code,\
     http_version,oauth_access_token,package_name,package_uuid,plan_name,plan_uuid,pre_transfer_time,qps_throttle_value,\
     quota_value,referrer,remote_total_time,request_host_name,request_id,request_time,request_uuid,response_string,\
     service_definition_endpoint_uuid,service_id,service_name,src_ip,ssl_enabled,total_request_exec_time,traffic_manager,\
     traffic_manager_error_code,uri,user_agent"
}

/// Seconds with three decimals, as the enriched logs write timings.
pub(super) fn secs3(ms: u32) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Seconds as the shortest JSON number (`0.094`, `0`, `1.5`): the text a
/// parser keeps whether it copies the token or re-formats the number.
pub(super) fn secs_json(ms: u32) -> String {
    let v = ms as f64 / 1000.0;
    format!("{v}")
}

/// Epoch seconds with a three-digit fraction: `1542643301.250`.
pub(super) fn epoch3(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// Appends a CSV cell, quoted when it must be (RFC 4180).
pub(super) fn csv_cell(out: &mut String, v: &str) {
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

pub(super) const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// (y, m, d, h, mi, s, ms) in UTC.
pub(super) fn civil(ms: i64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = time::civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400) as u32;
    (y, m, d, sod / 3600, sod / 60 % 60, sod % 60, ms.rem_euclid(1000) as u32)
}

impl SimCall {
    /// The call's unique id.
    pub fn request_uuid(&self) -> &str {
        &self.request_uuid
    }

    /// When the call reached the traffic manager (epoch ms).
    pub fn request_ms(&self) -> i64 {
        self.request_ms
    }

    /// HTTP status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// `traffic_manager_error_code` (`-` when none).
    pub fn error_code(&self) -> &str {
        self.error_code
    }

    /// `request_id`: `<epoch.frac>_<api_key>_<service_id>`, the key segment
    /// empty when the call carried no key.
    pub fn request_id(&self) -> String {
        format!("{}_{}_{}", epoch3(self.request_ms), self.key.map_or("", |k| k.key), self.service.id)
    }

    /// `response_string` as Local Edition 6 and LE JSON write it: `200 OK (API)`.
    pub(super) fn response_le(&self) -> String {
        format!("{} {} ({})", self.status, self.reason, self.source.name())
    }

    /// The stream spelling: `200_OK_API`.
    pub(super) fn response_stream(&self) -> String {
        format!("{}_{}_{}", self.status, self.reason.replace(' ', "_"), self.source.name())
    }

    pub(super) fn plan(&self) -> Option<&'static SimPlan> {
        self.key.map(|k| &PLANS[k.plan])
    }

    /// The names as an enriched format carries them: `-` where absent.
    pub(super) fn enriched_names(&self) -> [(Field, &'static str); 10] {
        let dash = |o: Option<&'static str>| o.filter(|s| !s.is_empty()).unwrap_or("-");
        let plan = self.plan();
        let org = self.key.and_then(|k| k.org);
        [
            (Field::ServiceName, if self.names_missing { "-" } else { self.service.name }),
            (Field::EndpointName, if self.names_missing { "-" } else { self.endpoint.name }),
            (Field::PlanName, dash(plan.map(|p| p.name))),
            (Field::PlanUuid, dash(plan.map(|p| p.uuid))),
            (Field::PackageName, dash(plan.map(|p| p.package_name))),
            (Field::PackageUuid, dash(plan.map(|p| p.package_uuid))),
            (Field::OrgName, dash(org.map(|o| o.0))),
            (Field::OrgUuid, dash(org.map(|o| o.1))),
            (Field::SubOrgName, dash(org.map(|o| o.2))),
            (Field::SubOrgUuid, dash(org.map(|o| o.3))),
        ]
    }

    /// The line in `format`, without a line terminator. For `le5-csv` a data
    /// row (the header is [`le5_csv_header`]); for `ecle-csv` a 39-column
    /// row without header; for `ecls` a one-record stream message; `auto`
    /// renders `le6`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Le6 | Format::Auto => self.render_le6(),
            Format::Le5Csv => self.render_le5_csv(),
            Format::LeJson => self.render_le_json(),
            Format::EcleCsv => {
                let r = self.expected(Format::EcleCsv);
                let mut out = String::with_capacity(768);
                // The 39-column export order, as the ecle-csv parser reads it.
                for (i, f) in crate::parse::ecle_csv::NATURAL.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    csv_cell(&mut out, r.get(*f));
                }
                out
            }
            Format::Ecls => {
                let mut buf = Vec::with_capacity(1500);
                crate::record::write_ecls_message([&self.expected(Format::Ecls)], &mut buf);
                String::from_utf8_lossy(&buf).into_owned()
            }
        }
    }

    pub(super) fn render_le6(&self) -> String {
        let written_ms = self.written_ms;
        let (y, mo, d, h, mi, s, ms) = civil(written_ms);
        let (ry, rmo, rd, rh, rmi, rs, _) = civil(self.request_ms);
        let names = self.enriched_names();
        let name = |f: Field| names.iter().find(|(g, _)| *g == f).map_or("-", |(_, v)| *v);
        let plan_id = self.key.map_or(0, |k| 6300 + k.plan as u32);
        let ep_index = SERVICES.iter().flat_map(|s| s.endpoints.iter()).position(|e| std::ptr::eq(e, self.endpoint)).unwrap_or(0);
        let mut o = String::with_capacity(900);
        use std::fmt::Write as _;
        // Formatting into a String cannot fail.
        let _ = write!(
            o,
            "{d:02}-{mo:02}-{y:04} {h:02}:{mi:02}:{s:02}.{ms:03} INFO PROXY_ACCESS - {host} {ip} {uuid} - [{rd:02}/{mon}/{ry:04}:{rh:02}:{rmi:02}:{rs:02} +0000] \"{method} {uri} HTTP/1.1\" {bytes} {status} \"{referrer}\" \"{ua}\" {request_id} \"-\" \"{tm}\" \"{api_method}\" {cache} {err} {exec} {remote} {connect} {pre} - - {oauth} - - {ssl} {plan_id} 100 {quota} {plan_id} 100 {throttle} 0 0 {plan_id} {ep_id} 0 0 0 1 0 {client} v3 local {ingest} 2222 \"tml\" \"{service_name}\" {ep_uuid} \"{ep_name}\" \"{plan_name}\" {plan_uuid} 0 \"{package_name}\" {package_uuid} {org_uuid} \"{org_name}\" {sub_org_uuid} \"{sub_org_name}\" \"-\" 0.000 0.000 \"{resp}\" \"{status} {reason}\" {counts} \"-\"",
            mon = MONTHS[(rmo - 1) as usize],
            host = self.service.host,
            ip = self.src_ip,
            uuid = self.request_uuid,
            method = self.method.http,
            uri = self.uri,
            bytes = self.bytes,
            status = self.status,
            referrer = self.referrer,
            ua = self.user_agent,
            request_id = self.request_id(),
            tm = self.traffic_manager,
            api_method = self.api_method,
            cache = self.cache_hit,
            err = self.error_code,
            exec = secs3(self.exec_ms),
            remote = secs3(self.remote_ms),
            connect = secs3(self.connect_ms),
            pre = secs3(self.pre_ms),
            oauth = self.oauth,
            ssl = self.ssl,
            quota = self.quota_value,
            throttle = self.throttle_value,
            ep_id = 171_000 + ep_index,
            client = secs3(self.client_ms),
            ingest = written_ms,
            service_name = name(Field::ServiceName),
            ep_uuid = self.endpoint.uuid,
            ep_name = name(Field::EndpointName),
            plan_name = name(Field::PlanName),
            plan_uuid = name(Field::PlanUuid),
            package_name = name(Field::PackageName),
            package_uuid = name(Field::PackageUuid),
            org_uuid = name(Field::OrgUuid),
            org_name = name(Field::OrgName),
            sub_org_uuid = name(Field::SubOrgUuid),
            sub_org_name = name(Field::SubOrgName),
            resp = self.response_le(),
            reason = self.reason,
            counts = self.source == Source::Api,
        );
        o
    }

    pub(super) fn render_le5_csv(&self) -> String {
        let r = self.expected(Format::Le5Csv);
        let mut out = String::with_capacity(768);
        for (i, col) in le5_csv_header().split(',').enumerate() {
            if i > 0 {
                out.push(',');
            }
            match col {
                "request_time" => out.push_str(&epoch3(self.request_ms)),
                // LE 5 squashes the reason phrase: `404NotFound (API)`.
                "response_string" => out.push_str(&format!("{}{} ({})", self.status, self.reason.replace(' ', ""), self.source.name())),
                _ => {
                    if let Some(f) = Field::from_name(col) {
                        csv_cell(&mut out, r.get(f));
                    }
                }
            }
        }
        out
    }

    pub(super) fn render_le_json(&self) -> String {
        let r = self.expected(Format::LeJson);
        let mut out = Vec::with_capacity(1200);
        out.push(b'{');
        // (LE name, field, written as a JSON number)
        const COLS: &[(&str, Field, bool)] = &[
            ("api_key", Field::ApiKey, false),
            ("api_method", Field::ApiMethodName, false),
            ("bytes", Field::Bytes, true),
            ("cache_hit", Field::CacheHit, true),
            ("client_transfer_time", Field::ClientTransferTime, true),
            ("connect_time", Field::ConnectTime, true),
            ("endpoint_name", Field::EndpointName, false),
            ("method", Field::HttpMethod, false),
            ("status", Field::HttpStatusCode, true),
            ("http_version", Field::HttpVersion, false),
            ("oauth_access_token", Field::OauthAccessToken, false),
            ("package_name", Field::PackageName, false),
            ("package_uuid", Field::PackageUuid, false),
            ("plan_name", Field::PlanName, false),
            ("plan_uuid", Field::PlanUuid, false),
            ("pre_transfer_time", Field::PreTransferTime, true),
            ("throttle_value", Field::QpsThrottleValue, true),
            ("quota_value", Field::QuotaValue, true),
            ("referrer", Field::Referrer, false),
            ("remote_total_time", Field::RemoteTotalTime, true),
            ("request_host_name", Field::RequestHostName, false),
            ("request_id", Field::RequestId, false),
            ("request_time", Field::RequestTime, false),
            ("request_uuid", Field::RequestUuid, false),
            ("response_string", Field::ResponseString, false),
            ("epkey", Field::ServiceDefinitionEndpointUuid, false),
            ("spkey", Field::ServiceId, false),
            ("service_name", Field::ServiceName, false),
            ("src_ip", Field::SrcIp, false),
            ("ssl_enabled", Field::SslEnabled, true),
            ("exec_time", Field::TotalRequestExecTime, true),
            ("proxy", Field::TrafficManager, false),
            ("proxy_error_code", Field::TrafficManagerErrorCode, false),
            ("uri", Field::Uri, false),
            ("user_agent", Field::UserAgent, false),
            ("org_name", Field::OrgName, false),
            ("org_uuid", Field::OrgUuid, false),
            ("sub_org_name", Field::SubOrgName, false),
            ("sub_org_uuid", Field::SubOrgUuid, false),
        ];
        for (i, (name, f, number)) in COLS.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            let v = match f {
                Field::RequestTime => time::format_iso_millis(self.request_ms),
                Field::ResponseString => self.response_le(),
                _ => r.get(*f).to_string(),
            };
            if *number {
                out.extend_from_slice(v.as_bytes());
            } else {
                crate::record::write_json_str(&mut out, &v);
            }
        }
        out.push(b'}');
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The record a correct parser produces from [`SimCall::render`] of
    /// this call in `format`, before enrichment: schema names, the stream's
    /// `response_string` spelling (`200_OK_API`), `traffic_manager` from the
    /// proxy, `request_time` (ISO seconds) and `request_time_ms` from the
    /// call's epoch, `log_type` = `ML`, values kept as the line writes them
    /// (`-` stays `-`, timings as written: `0.090` in le6 / le5-csv /
    /// ecle-csv / ecls, `0.09` in le-json). Per format:
    /// - `le6`: api key and service id from `request_id` (key empty for a
    ///   call without key); names as written (`-` where absent);
    ///   `write_time_ms` from `log_ingestion`;
    /// - `le5-csv`: no organization columns (empty); `api_key` = `unknown`
    ///   for a call without key;
    /// - `le-json`: raw lines: every name, `plan_uuid`, `package_uuid` and
    ///   organization field empty;
    /// - `ecle-csv`, `ecls`: like `le6` with `api_key` = `unknown`;
    ///   `request_time_ms` keeps the milliseconds of the `request_id` epoch.
    pub fn expected(&self, format: Format) -> Record<'static> {
        let json = format == Format::LeJson;
        let secs = |ms: u32| if json { secs_json(ms) } else { secs3(ms) };
        let mut r = Record::new_ml();
        let mut set = |f: Field, v: String| r.fields[f.index()] = Cow::Owned(v);
        let api_key = match (self.key, format) {
            (Some(k), _) => k.key,
            (None, Format::Le6 | Format::Auto) => "",
            (None, _) => "unknown",
        };
        set(Field::ApiKey, api_key.to_string());
        set(Field::ApiMethodName, self.api_method.to_string());
        set(Field::Bytes, self.bytes.to_string());
        set(Field::CacheHit, self.cache_hit.to_string());
        set(Field::ClientTransferTime, secs(self.client_ms));
        set(Field::ConnectTime, secs(self.connect_ms));
        set(Field::HttpMethod, self.method.http.to_string());
        set(Field::HttpStatusCode, self.status.to_string());
        set(Field::HttpVersion, "HTTP/1.1".to_string());
        set(Field::OauthAccessToken, self.oauth.clone());
        set(Field::PreTransferTime, secs(self.pre_ms));
        set(Field::QpsThrottleValue, self.throttle_value.to_string());
        set(Field::QuotaValue, self.quota_value.to_string());
        set(Field::Referrer, self.referrer.to_string());
        set(Field::RemoteTotalTime, secs(self.remote_ms));
        set(Field::RequestHostName, self.service.host.to_string());
        set(Field::RequestId, self.request_id());
        set(Field::RequestUuid, self.request_uuid.clone());
        set(Field::ResponseString, self.response_stream());
        set(Field::ServiceDefinitionEndpointUuid, self.endpoint.uuid.to_string());
        set(Field::ServiceId, self.service.id.to_string());
        set(Field::SrcIp, self.src_ip.clone());
        set(Field::SslEnabled, self.ssl.to_string());
        set(Field::TotalRequestExecTime, secs(self.exec_ms));
        set(Field::TrafficManager, self.traffic_manager.to_string());
        set(Field::TrafficManagerErrorCode, self.error_code.to_string());
        set(Field::Uri, self.uri.clone());
        set(Field::UserAgent, self.user_agent.to_string());
        for (f, v) in self.enriched_names() {
            let v = match (format, f) {
                (Format::LeJson, _) => "",
                (Format::Le5Csv, Field::OrgName | Field::OrgUuid | Field::SubOrgName | Field::SubOrgUuid) => "",
                _ => v,
            };
            set(f, v.to_string());
        }
        r.set_request_time_ms(self.request_ms);
        if format == Format::Le6 {
            r.write_time_ms = Some(self.written_ms);
        }
        r
    }
}
