//! `[upstream]`: the section as written and the upstream sink's typed
//! settings: the endpoint and the delivery keys as every HTTP sink on the
//! engine has them ([`Endpoint`], [`Settings`], defaults from the one
//! table), and the body format with its own keys.

use std::path::Path;

use serde::Deserialize;

use crate::delivery::http::{http_section, Endpoint};
use crate::delivery::Settings;
use crate::settings::ConfigError;

/// Body format of upstream requests, as the `format` key names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamFormat {
    /// One JSON record per line.
    #[default]
    Ndjson,
    /// `{"data":[...]}` bodies, every value a string.
    Ecls,
    /// The `_bulk` API; `_id` = `request_uuid`.
    Elasticsearch,
    /// Splunk HTTP Event Collector event objects.
    SplunkHec,
}

impl UpstreamFormat {
    /// The name in the config file, spool paths and the dead-letter file.
    pub fn name(self) -> &'static str {
        match self {
            UpstreamFormat::Ndjson => "ndjson",
            UpstreamFormat::Ecls => "ecls",
            UpstreamFormat::Elasticsearch => "elasticsearch",
            UpstreamFormat::SplunkHec => "splunk_hec",
        }
    }
}

/// The body format with the keys that belong to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// One JSON record per line.
    Ndjson,
    /// `{"data":[...]}` bodies.
    Ecls,
    /// `_bulk` actions.
    Elasticsearch {
        /// `_index` of each action (`elasticsearch_index`); `None` leaves
        /// it to the URL (`POST /<index>/_bulk`).
        index: Option<String>,
    },
    /// HEC event objects.
    SplunkHec {
        /// `sourcetype` of each event (`splunk_sourcetype`); `None`
        /// leaves it out.
        sourcetype: Option<String>,
    },
}

impl Format {
    /// Which format, without its keys.
    pub fn kind(&self) -> UpstreamFormat {
        match self {
            Format::Ndjson => UpstreamFormat::Ndjson,
            Format::Ecls => UpstreamFormat::Ecls,
            Format::Elasticsearch { .. } => UpstreamFormat::Elasticsearch,
            Format::SplunkHec { .. } => UpstreamFormat::SplunkHec,
        }
    }

    /// True when both are the same format, whatever their keys (a reload
    /// may change an index or a sourcetype, not the format).
    pub fn same_kind(a: &Format, b: &Format) -> bool {
        a.kind() == b.kind()
    }
}

http_section! {
    /// The `[upstream]` section as written (and the endpoint and delivery
    /// keys every HTTP sink has).
    pub struct UpstreamSection {
        /// Body format.
        #[serde(default)]
        pub format: UpstreamFormat,
        /// Splunk HEC `sourcetype`.
        #[serde(default)]
        pub splunk_sourcetype: Option<String>,
        /// Elasticsearch index for `_bulk` actions.
        #[serde(default)]
        pub elasticsearch_index: Option<String>,
    }
}

/// The upstream sink's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "UpstreamSection")]
pub struct UpstreamConfig {
    /// Where and how requests are sent (URL, credentials, TLS,
    /// compression, timeout).
    pub endpoint: Endpoint,
    /// Body format, with its keys.
    pub format: Format,
    /// Batching, retries, spool, dead letters, shutdown.
    pub delivery: Settings,
}

/// `toml::from_str::<UpstreamConfig>` (tests, benchmarks): the section's
/// settings with paths as written.
impl TryFrom<UpstreamSection> for UpstreamConfig {
    type Error = ConfigError;

    fn try_from(s: UpstreamSection) -> Result<Self, Self::Error> {
        UpstreamConfig::from_section(s, Path::new(""))
    }
}

impl UpstreamConfig {
    /// The settings of an `[upstream]` section: relative paths resolved
    /// against `base`, credential and TLS files read and checked; errors
    /// name the key (`upstream.url`).
    pub fn from_section(s: UpstreamSection, base: &Path) -> Result<UpstreamConfig, ConfigError> {
        let endpoint = Endpoint::from_keys(s.endpoint_keys(), super::SECTION, base)?;
        let delivery = Settings::from_knobs(s.knobs(), super::SECTION, base)?;
        let format = match s.format {
            UpstreamFormat::Ndjson => Format::Ndjson,
            UpstreamFormat::Ecls => Format::Ecls,
            UpstreamFormat::Elasticsearch => Format::Elasticsearch { index: s.elasticsearch_index },
            UpstreamFormat::SplunkHec => Format::SplunkHec { sourcetype: s.splunk_sourcetype },
        };
        Ok(UpstreamConfig { endpoint, format, delivery })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::http::Auth;

    #[test]
    fn inline_secrets_are_used_but_never_printed() {
        let bearer: UpstreamConfig = toml::from_str("url = \"https://c.example/\"\nbearer_token = \"t0ps3cret\"\n").unwrap();
        assert!(!format!("{bearer:?}").contains("t0ps3cret"), "{bearer:?}");
        assert!(matches!(&bearer.endpoint.auth, Auth::Bearer(t) if t.expose() == "t0ps3cret"));
        let basic: UpstreamConfig =
            toml::from_str("url = \"https://c.example/\"\nbasic_user = \"bridge\"\nbasic_password = \"pa55word\"\n").unwrap();
        assert!(!format!("{basic:?}").contains("pa55word"), "{basic:?}");
        assert!(matches!(&basic.endpoint.auth, Auth::Basic { user, password } if user == "bridge" && password.expose() == "pa55word"));
    }

    #[test]
    fn credentials_are_one_of_three_ways() {
        let check = |keys: &str, want: Result<&str, &str>| {
            let s: UpstreamSection = toml::from_str(&format!("url = \"https://c.example/\"\n{keys}")).unwrap();
            match (UpstreamConfig::from_section(s, Path::new("")), want) {
                (Ok(c), Ok(kind)) => {
                    let got = match c.endpoint.auth {
                        Auth::None => "none",
                        Auth::Bearer(_) => "bearer",
                        Auth::Basic { .. } => "basic",
                    };
                    assert_eq!(got, kind, "{keys}");
                }
                (Err(e), Err(key)) => assert_eq!(e.key(), Some(key), "{keys}: {e}"),
                (got, want) => panic!("{keys}: got {got:?}, want {want:?}"),
            }
        };
        check("", Ok("none"));
        check("bearer_token = \"t\"", Ok("bearer"));
        check("basic_user = \"u\"\nbasic_password = \"p\"", Ok("basic"));
        check("bearer_token = \"t\"\nbasic_user = \"u\"", Err("upstream.bearer_token"));
        check("bearer_token = \"t\"\nbasic_user = \"u\"\nbasic_password = \"p\"", Err("upstream.bearer_token"));
        check("bearer_token = \"t\"\nbasic_password = \"p\"", Err("upstream.basic_password"));
        check("basic_user = \"u\"", Err("upstream.basic_password"));
        check("basic_password = \"p\"", Err("upstream.basic_password"));
    }
}
