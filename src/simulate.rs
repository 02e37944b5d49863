//! Simulated Local Edition traffic: a seeded [`Generator`] of API calls,
//! each rendered in any input format together with the record a correct
//! parser must produce from it, and a [`run`] loop that writes them into a
//! directory at a given rate, rotating files the way Local Edition does.
//!
//! Operators use it (through `calllog-bridge simulate`) to try the bridge
//! without a Local Edition; tests and benchmarks use [`Generator`],
//! [`SimCall::render`] and [`SimCall::expected`] directly.
//!
//! The simulated estate (services, endpoints, keys, plans, packages,
//! organizations) matches the lookup tables shipped in `examples/lookups/`,
//! so enriching `le-json` output with them fills every name. A few ids come
//! from the reference samples, so the same tables also enrich those.
//!
//! Invariant: the same seed gives the same calls (ids, statuses, timings);
//! only `request_time` follows the clock the caller passes in.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::parse::Format;
use crate::record::{Field, Record};
use crate::time;

/// An API (service) of the simulated estate.
#[derive(Debug)]
pub struct SimService {
    /// The service key (SPKEY), `service_id` in the schema.
    pub id: &'static str,
    /// `service_name`.
    pub name: &'static str,
    /// `request_host_name` of its calls.
    pub host: &'static str,
    /// Its endpoints.
    pub endpoints: &'static [SimEndpoint],
    /// Relative share of the traffic.
    pub weight: u32,
}

/// An endpoint of a service.
#[derive(Debug)]
pub struct SimEndpoint {
    /// `service_definition_endpoint_uuid` (LE `epkey`).
    pub uuid: &'static str,
    /// `endpoint_name`.
    pub name: &'static str,
    /// The methods called on it.
    pub methods: &'static [SimMethod],
    /// Typical origin latency in milliseconds.
    pub base_ms: u32,
}

/// One method of an endpoint.
#[derive(Debug)]
pub struct SimMethod {
    /// HTTP method.
    pub http: &'static str,
    /// URI path; `{n}` is replaced by a number.
    pub path: &'static str,
    /// `api_method_name` (`-` where Local Edition has none).
    pub name: &'static str,
}

/// A plan, with the package it belongs to.
#[derive(Debug)]
pub struct SimPlan {
    /// `plan_uuid`.
    pub uuid: &'static str,
    /// `plan_name`.
    pub name: &'static str,
    /// `package_uuid`.
    pub package_uuid: &'static str,
    /// `package_name`.
    pub package_name: &'static str,
}

/// An application key.
#[derive(Debug)]
pub struct SimKey {
    /// `api_key`.
    pub key: &'static str,
    /// Index into [`PLANS`].
    pub plan: usize,
    /// Indexes into [`SERVICES`] the key calls.
    pub services: &'static [usize],
    /// (org_name, org_uuid, sub_org_name, sub_org_uuid), if any.
    pub org: Option<(&'static str, &'static str, &'static str, &'static str)>,
    /// The developer is inactive: every call gets `ERR_403_DEVELOPER_INACTIVE`.
    pub inactive: bool,
    /// Relative share of the traffic.
    pub weight: u32,
}

macro_rules! m {
    ($http:literal, $path:literal, $name:literal) => {
        SimMethod { http: $http, path: $path, name: $name }
    };
}

/// The simulated services. Keep in sync with `examples/lookups/services.csv`
/// and `endpoints.csv` (a unit test checks).
pub static SERVICES: &[SimService] = &[
    SimService {
        id: "r2xk9fy4wq8bnc7tz6dd5ev3",
        name: "Orders",
        host: "api.example.com",
        weight: 40,
        endpoints: &[
            SimEndpoint {
                uuid: "q8w4e2r6t9y3u7i1o5p0a2s4",
                name: "Orders V2",
                base_ms: 90,
                methods: &[
                    m!("GET", "/v2/orders/{n}", "getOrder"),
                    m!("GET", "/v2/orders", "listOrders"),
                    m!("POST", "/v2/orders", "createOrder"),
                    m!("DELETE", "/v2/orders/{n}", "cancelOrder"),
                ],
            },
            SimEndpoint {
                uuid: "c4v7b1n5m9k3j6h2g8f4d1s7",
                name: "Returns V2",
                base_ms: 140,
                methods: &[m!("POST", "/v2/returns", "createReturn"), m!("GET", "/v2/returns/{n}", "getReturn")],
            },
        ],
    },
    SimService {
        id: "m5n8p2q7s4t9v3w6x1y8z2a5",
        name: "PetStore",
        host: "petstore.example.com",
        weight: 30,
        endpoints: &[
            SimEndpoint {
                uuid: "6jwf2u7t74j7mmgc5dmbkjh6",
                name: "Inventory V1",
                base_ms: 60,
                methods: &[m!("GET", "/v1/store/availability/{n}", "v1 availability")],
            },
            SimEndpoint {
                uuid: "p9o8i7u6y5t4r3e2w1q0a9s8",
                name: "Pets V1",
                base_ms: 45,
                methods: &[m!("GET", "/v1/pets/{n}", "getPet"), m!("PUT", "/v1/pets/{n}", "updatePet"), m!("GET", "/v1/pets", "findPets")],
            },
        ],
    },
    SimService {
        id: "h3j6k9l2m5n8p1q4r7s0t3u6",
        name: "Weather",
        host: "weather.example.net",
        weight: 25,
        endpoints: &[
            SimEndpoint {
                uuid: "w1e2a3t4h5e6r7f8o9r0e1c2",
                name: "Forecast",
                base_ms: 180,
                methods: &[m!("GET", "/forecast/{n}", "getForecast")],
            },
            SimEndpoint { uuid: "a1l2e3r4t5s6a7l8e9r0t1s2", name: "Alerts", base_ms: 30, methods: &[m!("GET", "/alerts", "getAlerts")] },
        ],
    },
    SimService {
        id: "b2qxuqhyh652hma8jw99gx5y",
        name: "Test_API3",
        host: "tml.api.example.com",
        weight: 5,
        endpoints: &[SimEndpoint { uuid: "3dcnbsdefv9ac2zd9qd2taq4", name: "Test_EP3", base_ms: 30, methods: &[m!("GET", "/test3", "-")] }],
    },
];

/// The simulated plans. Keep in sync with `examples/lookups/plans.json`.
pub static PLANS: &[SimPlan] = &[
    SimPlan {
        uuid: "3f1a7c52-0b8e-4e55-b1b4-7b6f6f7a2c90",
        name: "Gold",
        package_uuid: "0c0e8f4a-57a5-4f43-9f0b-5c1c1e0a9d11",
        package_name: "Retail Package",
    },
    SimPlan {
        uuid: "5b9e0d3c-6a21-4f8e-9c47-2d1e8f6a0b35",
        name: "Silver",
        package_uuid: "0c0e8f4a-57a5-4f43-9f0b-5c1c1e0a9d11",
        package_name: "Retail Package",
    },
    SimPlan {
        uuid: "7daeec13-16f2-4518-ba9d-2317257012a7",
        name: "REST Access",
        package_uuid: "8c5f4216-7b4b-43b2-9e08-8613a804b69a",
        package_name: "PetStore Package",
    },
    SimPlan {
        uuid: "e2c4a6f8-1b3d-4e5f-8a7c-9d0b2e4f6a81",
        name: "Free",
        package_uuid: "a9d7c5e3-2f4b-4c6d-8e0a-1b3c5d7e9f02",
        package_name: "Weather Package",
    },
    SimPlan {
        uuid: "fc865c5f-2d78-4bc4-a0eb-ed8240e26557",
        name: "SamplePackplanA",
        package_uuid: "eebf7d77-53ed-43b2-bdbc-4d32270a6f57",
        package_name: "SamplePack",
    },
    SimPlan {
        uuid: "d670a9f7-b523-4deb-b205-66b087020f42",
        name: "Test_Plan3",
        package_uuid: "447ae50c-349e-4386-abb9-0db67a64479e",
        package_name: "Test_Pack3",
    },
];

/// The simulated application keys. Keep in sync with
/// `examples/lookups/keys.csv`.
pub static KEYS: &[SimKey] = &[
    SimKey {
        key: "k7q2mzp4rb9d3hxw8cyn5ta6",
        plan: 0,
        services: &[0, 1],
        org: Some(("Acme Retail", "org-7f3a9c21", "Web Shop", "sub-2b8d4e60")),
        inactive: false,
        weight: 30,
    },
    SimKey { key: "t6y9u2i5o8p1a4s7d0f3g6h9", plan: 1, services: &[0], org: None, inactive: false, weight: 15 },
    SimKey {
        key: "d8f3g6h9j2k5l8m1n4p7q0r3",
        plan: 2,
        services: &[1],
        org: Some(("Northwind Pets", "org-4c1e8b95", "", "")),
        inactive: false,
        weight: 20,
    },
    SimKey {
        key: "z5x8c1v4b7n0m3q6w9e2r5t8",
        plan: 3,
        services: &[2],
        org: Some(("Contoso", "org-9a2f6d13", "Field Ops", "sub-6e0c3a77")),
        inactive: false,
        weight: 20,
    },
    SimKey { key: "sample", plan: 4, services: &[0, 2], org: None, inactive: false, weight: 5 },
    SimKey { key: "test3", plan: 5, services: &[3], org: None, inactive: false, weight: 5 },
    SimKey { key: "e4r7t0y3u6i9o2p5a8s1d4f7", plan: 1, services: &[0, 1], org: None, inactive: true, weight: 2 },
];

/// Traffic manager hosts (`traffic_manager`, LE `proxy`).
static TRAFFIC_MANAGERS: &[&str] = &["tm-deploy-0-5d5d885577-xsg5m", "tm-deploy-1-5d5d885577-k2l9p", "tm-deploy-2-5d5d885577-q7w3e"];

static USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "curl/7.29.0",
    "python-requests/2.31.0",
    "okhttp/4.12.0",
    "PostmanRuntime/7.36.0",
];

static REFERRERS: &[&str] = &["-", "-", "-", "https://shop.example.com/cart", "https://app.example.org/dashboard"];

/// Who produced the response: the origin API or the traffic manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The origin (`(API)`).
    Api,
    /// The traffic manager itself (`(Mashery)`), e.g. a 403 or 429.
    Mashery,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Api => "API",
            Source::Mashery => "Mashery",
        }
    }
}

/// What happens to a call.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    Success,
    Status(u16, &'static str, Source, &'static str),
    NoKey,
    Inactive,
}

/// Outcomes by weight (per mille): mostly success, some origin 4xx/5xx,
/// some traffic-manager errors.
static OUTCOMES: &[(u32, Outcome)] = &[
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
    request_ms: i64,
    /// When Local Edition wrote its line (epoch ms): the call's end plus
    /// the generator's write delay, at the latest the time it was made.
    written_ms: i64,
    /// Unique id (UUID v4 from the seeded generator).
    request_uuid: String,
    /// The service called.
    service: &'static SimService,
    /// The endpoint called.
    endpoint: &'static SimEndpoint,
    /// The method called.
    method: &'static SimMethod,
    /// The key, `None` when the call carried none (`api_key` = `unknown`).
    key: Option<&'static SimKey>,
    /// The request URI.
    uri: String,
    /// Response size.
    bytes: u32,
    /// HTTP status.
    status: u16,
    /// Reason phrase (`OK`, `Too Many Requests`).
    reason: &'static str,
    /// Who answered.
    source: Source,
    /// `traffic_manager_error_code` (`-` when none).
    error_code: &'static str,
    /// `api_method_name` (`-` for traffic-manager errors).
    api_method: &'static str,
    /// `referrer`.
    referrer: &'static str,
    /// `user_agent`.
    user_agent: &'static str,
    /// `src_ip`.
    src_ip: String,
    /// `traffic_manager`.
    traffic_manager: &'static str,
    /// 1 = served from cache.
    cache_hit: u8,
    /// Timings in milliseconds.
    exec_ms: u32,
    /// Waiting for the origin.
    remote_ms: u32,
    /// Connecting to the origin.
    connect_ms: u32,
    /// Before the first byte.
    pre_ms: u32,
    /// Sending the response to the client.
    client_ms: u32,
    /// `oauth_access_token` (`-` when none).
    oauth: String,
    /// 1 = HTTPS.
    ssl: u8,
    /// Count against the quota.
    quota_value: u32,
    /// QPS throttle count.
    throttle_value: u32,
    /// The enriched formats (le6, le5-csv) leave service and endpoint names
    /// empty for this call, as real enriched logs sometimes do.
    names_missing: bool,
}

/// A seeded source of [`SimCall`]s.
#[derive(Debug)]
pub struct Generator {
    /// The random source; seeded, so runs repeat.
    rng: StdRng,
    /// Quota counter per key (index into [`KEYS`]).
    quota: Vec<u32>,
    /// How long after a call ends Local Edition writes its line (LE 6
    /// `log_ingestion`), ms.
    write_delay_ms: i64,
}

/// Picks an index by weight.
fn pick_weighted(rng: &mut StdRng, weights: impl Iterator<Item = u32> + Clone) -> usize {
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

    fn uuid_v4(&mut self) -> String {
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
fn secs3(ms: u32) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Seconds as the shortest JSON number (`0.094`, `0`, `1.5`): the text a
/// parser keeps whether it copies the token or re-formats the number.
fn secs_json(ms: u32) -> String {
    let v = ms as f64 / 1000.0;
    format!("{v}")
}

/// Epoch seconds with a three-digit fraction: `1542643301.250`.
fn epoch3(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// Appends a CSV cell, quoted when it must be (RFC 4180).
fn csv_cell(out: &mut String, v: &str) {
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// (y, m, d, h, mi, s, ms) in UTC.
fn civil(ms: i64) -> (i64, u32, u32, u32, u32, u32, u32) {
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
    fn response_le(&self) -> String {
        format!("{} {} ({})", self.status, self.reason, self.source.name())
    }

    /// The stream spelling: `200_OK_API`.
    fn response_stream(&self) -> String {
        format!("{}_{}_{}", self.status, self.reason.replace(' ', "_"), self.source.name())
    }

    fn plan(&self) -> Option<&'static SimPlan> {
        self.key.map(|k| &PLANS[k.plan])
    }

    /// The names as an enriched format carries them: `-` where absent.
    fn enriched_names(&self) -> [(Field, &'static str); 10] {
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

    fn render_le6(&self) -> String {
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

    fn render_le5_csv(&self) -> String {
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

    fn render_le_json(&self) -> String {
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

/// How [`run`] writes.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// `le6`, `le5-csv` or `le-json`.
    pub format: Format,
    /// Directory to write into (created if missing).
    pub dir: PathBuf,
    /// Lines per second.
    pub rate: f64,
    /// Seconds to run; 0 = until `stop` is set.
    pub duration_secs: f64,
    /// Rotate when the live file would grow past this many bytes.
    pub rotate_bytes: Option<u64>,
    /// gzip rotated files (`access.log.1.gz`).
    pub gzip_rotated: bool,
    /// `request_time` = now minus this.
    pub lag_ms: i64,
    /// Local Edition writes a line this long after its call ended (the
    /// LE 6 write time); the rest of `lag_ms` is the sync's.
    pub write_delay_ms: i64,
    /// Random seed.
    pub seed: u64,
    /// Write `rate × duration` lines as fast as possible.
    pub burst: bool,
    /// Rotated files kept (`.1` ... `.keep`); older ones are deleted.
    pub keep_rotated: usize,
}

impl SimOptions {
    /// Options with the defaults of the command line.
    pub fn new(format: Format, dir: impl Into<PathBuf>) -> SimOptions {
        SimOptions {
            format,
            dir: dir.into(),
            rate: 100.0,
            duration_secs: 10.0,
            rotate_bytes: None,
            gzip_rotated: false,
            lag_ms: 0,
            write_delay_ms: 0,
            seed: 1,
            burst: false,
            keep_rotated: 10,
        }
    }
}

/// What [`run`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimSummary {
    /// Call lines written in total (CSV header rows not counted).
    pub lines: u64,
    /// Rotations performed.
    pub rotations: u64,
    /// Lines in each file still on disk at the end, live file first, then
    /// `.1`, `.2`, ... (with `.gz` when compressed).
    pub files: Vec<(PathBuf, u64)>,
    /// Lines in rotated files deleted because more than `keep_rotated`
    /// existed.
    pub lines_in_deleted_files: u64,
}

/// The live file name for a format (`access.log`, `access.csv`,
/// `access_worker0.log`), as Local Edition names them.
pub fn live_file_name(format: Format) -> Result<&'static str, SimError> {
    match format {
        Format::Le6 => Ok("access.log"),
        Format::Le5Csv => Ok("access.csv"),
        Format::LeJson => Ok("access_worker0.log"),
        other => Err(SimError::Format(other)),
    }
}

/// Why [`run`] could not write.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Only Local Edition's own formats are simulated as files.
    #[error("simulate writes le6, le5-csv or le-json, not {0}")]
    Format(Format),
    /// `--rate` must be positive and finite.
    #[error("rate must be a positive number of lines per second, got {0}")]
    Rate(f64),
    /// `--burst` needs a bound.
    #[error("--burst needs a --duration above 0")]
    BurstForever,
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SimError + '_ {
    move |source| SimError::Io { path: path.to_path_buf(), source }
}

/// The live file, its rotation, and the line counts per file.
struct Output {
    /// The live file's path.
    live: PathBuf,
    /// Header written at the start of each file (CSV).
    header: Option<&'static str>,
    /// Open handle on the live file.
    file: File,
    /// Bytes in the live file.
    size: u64,
    /// Lines in the live file.
    lines: u64,
    /// Lines per rotated file, `.1` first.
    rotated: VecDeque<u64>,
    /// Rotate past this size.
    rotate_bytes: Option<u64>,
    /// Compress rotated files.
    gzip: bool,
    /// Rotated files kept.
    keep: usize,
    /// Rotations so far.
    rotations: u64,
    /// Lines in rotated files that were deleted.
    deleted_lines: u64,
    /// Whole lines waiting to be written in one `write`.
    pending: Vec<u8>,
}

impl Output {
    fn open(live: PathBuf, header: Option<&'static str>, opts: &SimOptions) -> Result<Output, SimError> {
        let (file, size) = Self::create(&live, header)?;
        Ok(Output {
            live,
            header,
            file,
            size,
            lines: 0,
            rotated: VecDeque::new(),
            rotate_bytes: opts.rotate_bytes,
            gzip: opts.gzip_rotated,
            keep: opts.keep_rotated.max(1),
            rotations: 0,
            deleted_lines: 0,
            pending: Vec::with_capacity(1 << 16),
        })
    }

    /// Opens the live file for appending (it may exist from an earlier
    /// run); a new or empty CSV file gets the header.
    fn create(live: &Path, header: Option<&str>) -> Result<(File, u64), SimError> {
        let mut file = OpenOptions::new().create(true).append(true).open(live).map_err(io_err(live))?;
        let mut size = file.metadata().map_err(io_err(live))?.len();
        if let (Some(h), 0) = (header, size) {
            file.write_all(format!("{h}\n").as_bytes()).map_err(io_err(live))?;
            size = h.len() as u64 + 1;
        }
        Ok((file, size))
    }

    fn rotated_name(&self, n: usize) -> PathBuf {
        let mut s = self.live.clone().into_os_string();
        s.push(format!(".{n}"));
        if self.gzip {
            s.push(".gz");
        }
        PathBuf::from(s)
    }

    /// Adds one line (no terminator), rotating first if it would not fit.
    fn push_line(&mut self, line: &str) -> Result<(), SimError> {
        let len = line.len() as u64 + 1;
        if let Some(max) = self.rotate_bytes {
            let header_len = self.header.map_or(0, |h| h.len() as u64 + 1);
            if self.size + len > max && self.size > header_len {
                self.rotate()?;
            }
        }
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.push(b'\n');
        self.size += len;
        self.lines += 1;
        if self.pending.len() >= 1 << 16 {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the pending whole lines in one call.
    fn flush(&mut self) -> Result<(), SimError> {
        if !self.pending.is_empty() {
            self.file.write_all(&self.pending).map_err(io_err(&self.live))?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Size-based rotation as Local Edition does it: shift `.N` → `.N+1`
    /// (dropping the oldest), rename the live file to `.1`, start a new live
    /// file; with gzip, compress `.1` to a temporary name, rename it to
    /// `.1.gz` and remove the uncompressed file.
    fn rotate(&mut self) -> Result<(), SimError> {
        self.flush()?;
        let oldest = self.rotated_name(self.keep);
        if self.rotated.len() >= self.keep {
            fs::remove_file(&oldest).or_else(ignore_not_found).map_err(io_err(&oldest))?;
            self.deleted_lines += self.rotated.pop_back().unwrap_or(0);
        }
        for n in (1..self.keep).rev() {
            let from = self.rotated_name(n);
            if from.exists() {
                let to = self.rotated_name(n + 1);
                fs::rename(&from, &to).map_err(io_err(&from))?;
            }
        }
        let mut plain = self.live.clone().into_os_string();
        plain.push(".1");
        let plain = PathBuf::from(plain);
        fs::rename(&self.live, &plain).map_err(io_err(&self.live))?;
        let (file, size) = Self::create(&self.live, self.header)?;
        self.file = file;
        self.size = size;
        self.rotated.push_front(self.lines);
        self.lines = 0;
        self.rotations += 1;
        if self.gzip {
            let gz = self.rotated_name(1);
            let mut tmp = gz.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            gzip_file(&plain, &tmp)?;
            fs::rename(&tmp, &gz).map_err(io_err(&tmp))?;
            fs::remove_file(&plain).map_err(io_err(&plain))?;
        }
        Ok(())
    }

    fn summary(&self, lines: u64) -> SimSummary {
        let mut files = vec![(self.live.clone(), self.lines)];
        files.extend(self.rotated.iter().enumerate().map(|(i, n)| (self.rotated_name(i + 1), *n)));
        SimSummary { lines, rotations: self.rotations, files, lines_in_deleted_files: self.deleted_lines }
    }
}

fn ignore_not_found(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

fn gzip_file(from: &Path, to: &Path) -> Result<(), SimError> {
    let mut input = File::open(from).map_err(io_err(from))?;
    let out = File::create(to).map_err(io_err(to))?;
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    io::copy(&mut input, &mut enc).map_err(io_err(to))?;
    let out = enc.finish().map_err(io_err(to))?;
    out.sync_all().map_err(io_err(to))?;
    Ok(())
}

/// Pacing granularity: lines are written in small bursts this often, each
/// burst flushed so a tailer sees whole lines.
const TICK: Duration = Duration::from_millis(10);

/// Writes simulated traffic into `opts.dir` until `opts.duration_secs` has
/// passed (or, with `burst`, `rate × duration` lines are written) or `stop`
/// is set. Blocking: run it on its own thread.
pub fn run(opts: &SimOptions, stop: &AtomicBool) -> Result<SimSummary, SimError> {
    let name = live_file_name(opts.format)?;
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        return Err(SimError::Rate(opts.rate));
    }
    if opts.burst && opts.duration_secs <= 0.0 {
        return Err(SimError::BurstForever);
    }
    fs::create_dir_all(&opts.dir).map_err(io_err(&opts.dir))?;
    let header = (opts.format == Format::Le5Csv).then(le5_csv_header);
    let mut out = Output::open(opts.dir.join(name), header, opts)?;
    let mut gen = Generator::new(opts.seed);
    gen.set_write_delay_ms(opts.write_delay_ms);
    let bounded = opts.duration_secs > 0.0;
    let total = if bounded { (opts.rate * opts.duration_secs).round() as u64 } else { u64::MAX };
    let mut written = 0u64;
    let start = Instant::now();
    let mut next_tick = start;
    while written < total && !stop.load(Ordering::Relaxed) {
        let due = if opts.burst {
            total
        } else {
            let elapsed = start.elapsed().as_secs_f64();
            if bounded && elapsed >= opts.duration_secs {
                total
            } else {
                ((opts.rate * elapsed) as u64 + 1).min(total)
            }
        };
        while written < due {
            let line = gen.next_call(time::now_ms(), opts.lag_ms).render(opts.format);
            out.push_line(&line)?;
            written += 1;
            if opts.burst && written.is_multiple_of(4096) && stop.load(Ordering::Relaxed) {
                break;
            }
        }
        out.flush()?;
        if !opts.burst && written < total {
            next_tick += TICK;
            let now = Instant::now();
            if next_tick > now {
                std::thread::sleep(next_tick - now);
            } else {
                next_tick = now;
            }
        }
    }
    out.flush()?;
    Ok(out.summary(written))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::{Enricher, TableKind};

    #[test]
    fn same_seed_same_calls() {
        let mut a = Generator::new(7);
        let mut b = Generator::new(7);
        let mut c = Generator::new(8);
        let xs: Vec<_> = (0..50).map(|_| a.next_call(1_700_000_000_000, 0).render(Format::Le6)).collect();
        let ys: Vec<_> = (0..50).map(|_| b.next_call(1_700_000_000_000, 0).render(Format::Le6)).collect();
        let zs: Vec<_> = (0..50).map(|_| c.next_call(1_700_000_000_000, 0).render(Format::Le6)).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn uuids_are_v4_and_unique() {
        let mut g = Generator::new(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5000 {
            let c = g.next_call(0, 0);
            let u = c.request_uuid();
            assert_eq!(u.len(), 36);
            assert_eq!(&u[14..15], "4");
            assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
            assert!(seen.insert(u.to_string()));
        }
    }

    #[test]
    fn status_mix_is_realistic() {
        let mut g = Generator::new(3);
        let calls: Vec<_> = (0..10_000).map(|_| g.next_call(0, 0)).collect();
        let share = |p: &dyn Fn(&SimCall) -> bool| calls.iter().filter(|c| p(c)).count() as f64 / calls.len() as f64;
        assert!(share(&|c| c.status < 300) > 0.8);
        assert!(share(&|c| c.error_code == "ERR_403_DEVELOPER_INACTIVE") > 0.005);
        assert!(share(&|c| c.error_code.starts_with("ERR_429_")) > 0.01);
        assert!(share(&|c| c.status >= 500 && c.source == Source::Api) > 0.01);
        assert!(share(&|c| c.key.is_none()) > 0.003);
        // Traffic-manager errors say so, origin errors do not.
        for c in &calls {
            assert_eq!(c.error_code != "-", c.source == Source::Mashery, "{c:?}");
        }
    }

    #[test]
    fn le6_line_has_71_fields_like_the_sample() {
        let mut g = Generator::new(11);
        let c = g.next_call(1_707_986_837_343, 0);
        let line = c.render(Format::Le6);
        // Tokenise as the format does: quoted and bracketed fields are one.
        let mut fields = Vec::new();
        let mut rest = line.as_str();
        while !rest.is_empty() {
            let (tok, tail) = match rest.as_bytes()[0] {
                b'"' => {
                    let end = rest[1..].find('"').unwrap() + 2;
                    (&rest[..end], &rest[end..])
                }
                b'[' => {
                    let end = rest.find(']').unwrap() + 1;
                    (&rest[..end], &rest[end..])
                }
                _ => {
                    let end = rest.find(' ').unwrap_or(rest.len());
                    (&rest[..end], &rest[end..])
                }
            };
            fields.push(tok);
            rest = tail.trim_start_matches(' ');
        }
        assert_eq!(fields.len(), 71, "{line}");
        let sample = "15-02-2024 08:47:17.389 INFO PROXY_ACCESS - tml.api.mashspud.com 10.128.0.81 dd1a5b27-e3ea-4139-95a4-a72c1609673e";
        assert_eq!(fields[..4].join(" ").len(), sample.split(' ').take(4).collect::<Vec<_>>().join(" ").len());
        assert_eq!(fields[2], "INFO");
        assert_eq!(fields[3], "PROXY_ACCESS");
        assert_eq!(fields[7], c.request_uuid());
        assert_eq!(fields[9], "[15/Feb/2024:08:47:17 +0000]");
        assert_eq!(fields[15], c.request_id());
        assert!(fields[15].starts_with("1707986837.343_"));
        assert_eq!(fields[47], "v3");
        assert_eq!(fields[48], "local");
        assert_eq!(fields[53], format!("{}", c.endpoint.uuid));
        assert_eq!(fields[67], format!("\"{}\"", c.response_le()));
    }

    #[test]
    fn expected_records_follow_normalisation() {
        let mut g = Generator::new(5);
        for _ in 0..500 {
            let c = g.next_call(1_542_643_301_250, 0);
            for f in [Format::Le6, Format::Le5Csv, Format::LeJson, Format::EcleCsv, Format::Ecls] {
                let r = c.expected(f);
                assert_eq!(r.get(Field::LogType), "ML");
                let rs = r.get(Field::ResponseString);
                assert!(rs.starts_with(&c.status.to_string()) && (rs.ends_with("_API") || rs.ends_with("_Mashery")), "{rs}");
                assert!(!rs.contains(' '));
                assert!(r.get(Field::RequestId).ends_with(c.service.id));
                assert!(!r.get(Field::TrafficManager).is_empty());
                assert_eq!(r.get(Field::ServiceId), c.service.id);
                assert!(r.request_time_ms.is_some());
            }
            assert_eq!(c.expected(Format::Le6).get(Field::RequestTime), "2018-11-19T16:01:41Z");
            assert_eq!(c.expected(Format::LeJson).get(Field::ServiceName), "");
        }
    }

    #[test]
    fn le5_csv_rows_match_the_header() {
        let mut g = Generator::new(9);
        let cols = le5_csv_header().split(',').count();
        assert_eq!(cols, 35);
        for _ in 0..200 {
            let row = g.next_call(0, 0).render(Format::Le5Csv);
            // Quoted cells hold commas: count outside quotes.
            let mut n = 1;
            let mut q = false;
            for ch in row.chars() {
                match ch {
                    '"' => q = !q,
                    ',' if !q => n += 1,
                    _ => {}
                }
            }
            assert_eq!(n, cols, "{row}");
        }
    }

    #[test]
    fn le_json_lines_are_json_with_le_names() {
        let mut g = Generator::new(2);
        for _ in 0..200 {
            let c = g.next_call(1_542_643_301_250, 0);
            let v: serde_json::Value = serde_json::from_str(&c.render(Format::LeJson)).unwrap();
            assert_eq!(v["request_uuid"], c.request_uuid());
            assert_eq!(v["spkey"], c.service.id);
            assert_eq!(v["service_name"], "");
            assert_eq!(v["request_time"], "2018-11-19T16:01:41.250Z");
            assert!(v["status"].is_u64() && v["exec_time"].is_number());
            assert_eq!(v["exec_time"].to_string(), c.expected(Format::LeJson).get(Field::TotalRequestExecTime));
        }
    }

    /// The shipped lookup tables know every id the simulator emits, with the
    /// same names the enriched formats carry.
    #[test]
    fn example_lookups_match_the_estate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lookups");
        let files: Vec<PathBuf> = ["keys.csv", "services.csv", "endpoints.csv", "plans.json"].iter().map(|f| dir.join(f)).collect();
        let e = Enricher::new(&files, None, None).unwrap();
        let mut g = Generator::new(4);
        let tables = e.tables();
        for _ in 0..2000 {
            let c = g.next_call(0, 0);
            let mut r = c.expected(Format::LeJson);
            e.enrich(&tables, &mut r);
            let want = c.expected(Format::EcleCsv);
            for f in [Field::ServiceName, Field::EndpointName, Field::PlanName, Field::PlanUuid, Field::PackageName, Field::PackageUuid] {
                let w = want.get(f);
                let is_name = matches!(f, Field::ServiceName | Field::EndpointName);
                // Calls without a key have no plan; names the enriched
                // formats left out (`-`) are filled by the lookups.
                if (c.key.is_some() || is_name) && !(c.names_missing && is_name) {
                    assert_eq!(r.get(f), w, "{} of {c:?}", f.name());
                }
            }
        }
        let s = e.stats();
        for k in TableKind::ALL {
            assert_eq!(s.table(k).misses, 0, "{k}");
        }
    }

    /// Every rendered line parses (with the crate's parsers) to exactly the
    /// record `expected` promises, in every format.
    #[test]
    fn rendered_lines_parse_to_the_expected_record() {
        use crate::parse::{LineKind, LineParser};
        for f in [Format::Le6, Format::Le5Csv, Format::LeJson, Format::EcleCsv, Format::Ecls] {
            let mut g = Generator::new(21);
            let mut p = LineParser::new(f, 1 << 20);
            if f == Format::Le5Csv {
                assert_eq!(p.parse_line(le5_csv_header().as_bytes(), &mut Vec::new()).unwrap(), LineKind::Header);
            }
            for _ in 0..2000 {
                let c = g.next_call(1_700_000_000_123, 250);
                let line = c.render(f);
                let mut out = Vec::new();
                let kind = p.parse_line(line.as_bytes(), &mut out).unwrap_or_else(|e| panic!("{f}: {e}: {line}"));
                assert_eq!(kind, LineKind::Records(1), "{f}: {line}");
                assert_eq!(out[0], c.expected(f), "{f}: {line}");
            }
        }
    }
}
