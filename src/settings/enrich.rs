//! `[enrich]`: lookup tables and masking.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// The `[enrich]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// Lookup files (CSV or JSON; see README "Lookup tables"). Reloaded
    /// when they change.
    #[serde(default)]
    pub lookups: Vec<PathBuf>,
    /// When set, `api_key` keeps this many characters at each end and the
    /// rest becomes `*` (as the hosted export masks).
    #[serde(default)]
    pub mask_api_key_keep: Option<usize>,
    /// The same for `oauth_access_token`.
    #[serde(default)]
    pub mask_oauth_token_keep: Option<usize>,
}

impl EnrichConfig {
    /// Makes the lookup paths relative to the config file's directory.
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        for p in &mut self.lookups {
            super::resolve(base, p);
        }
    }

    /// Checks values; the error names the key under `key` (`enrich`).
    pub(crate) fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for p in &self.lookups {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !matches!(ext, "csv" | "json") {
                return Err(ConfigError::invalid(format!("{key}.lookups"), format!("{} must end in .csv or .json", p.display())));
            }
        }
        Ok(())
    }
}
