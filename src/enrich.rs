//! Enrichment: lookup tables fill the names raw Local Edition lines lack,
//! then optional masking of `api_key` and `oauth_access_token`
//! ([`crate::mask`]: the one rule, also used by the channel's `mask_keep`;
//! a secret is masked in its own field and wherever it appears in `uri`,
//! `request_id` and `referrer`, percent-encoded or not).
//!
//! Invariant: [`Enricher::enrich`] is pure and does not allocate for a
//! lookup hit (filled values borrow from the [`Lookups`] snapshot); the only
//! I/O is (re)loading the lookup files in [`Enricher::new`] and
//! [`Enricher::reload_if_changed`]. A value the line already has is never
//! overwritten: only empty fields (`""` or `-`) are filled.
//!
//! # Lookup files
//!
//! The operator provides one file per table, CSV (with a header row) or JSON
//! (an array of objects). The table a file holds is decided by its id
//! column:
//!
//! | table | id column | columns it fills |
//! |---|---|---|
//! | keys | `api_key` | `package_name`, `package_uuid`, `plan_name`, `plan_uuid`, `org_name`, `org_uuid`, `sub_org_name`, `sub_org_uuid` |
//! | services | `service_id` (or `spkey`) | `service_name` |
//! | endpoints | `endpoint_uuid` (or `service_definition_endpoint_uuid`, `epkey`) | `endpoint_name` |
//! | plans | `plan_uuid` | `plan_name`, `package_name`, `package_uuid` |
//!
//! A file has exactly one id column (a file with `api_key` is a keys table
//! even though it also has `plan_uuid`) and any subset of the columns its
//! table fills; any other column is an error naming it. Empty cells fill
//! nothing. Several files of one table are merged; a later row for the same
//! id replaces the earlier row's non-empty cells. The keys table is applied
//! before the plans table, so a key that only knows its `plan_uuid` still
//! gets plan and package names from the plans table.
//!
//! A table is looked up only when the record has the id and lacks at least
//! one of the fields that table fills (so already-enriched LE 6 lines cost
//! nothing). A lookup that finds the id is a hit, one that does not is a
//! miss; both are counted per table in the enricher's
//! [`crate::telemetry::LookupStats`] (with what each load brought and the
//! last reload error), which `/status` and `/metrics` show once the bridge
//! registers it ([`Enricher::lookup_stats`]); [`Enricher::stats`] reads
//! them back by table. `api_key` = `unknown` (Local Edition's spelling for
//! "no key") is not looked up.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use crate::mask::Masking;
use crate::record::{is_absent, Field, Record};
use crate::settings::EnrichConfig;
use crate::telemetry::LookupStats;

/// A problem with a lookup file, naming the file and where in it.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// The file could not be read (or stat'ed).
    #[error("lookup file {path}: {source}")]
    Io {
        /// The lookup file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file name ends in neither `.csv` nor `.json`.
    #[error("lookup file {path}: must end in .csv or .json")]
    Extension {
        /// The lookup file.
        path: PathBuf,
    },
    /// Broken CSV (unbalanced quotes, wrong number of cells, not UTF-8).
    #[error("lookup file {path}, line {line}: {detail}")]
    Csv {
        /// The lookup file.
        path: PathBuf,
        /// 1-based line number where the bad row starts.
        line: u64,
        /// What is wrong.
        detail: String,
    },
    /// Not valid JSON, or not an array of objects.
    #[error("lookup file {path}, line {line} column {column}: {detail}")]
    Json {
        /// The lookup file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// 1-based column.
        column: u64,
        /// What is wrong.
        detail: String,
    },
    /// A JSON entry that is not an object of strings, or lacks the id.
    #[error("lookup file {path}, entry {entry}: {detail}")]
    Entry {
        /// The lookup file.
        path: PathBuf,
        /// 1-based index of the object in the array.
        entry: u64,
        /// What is wrong.
        detail: String,
    },
    /// The columns do not make a table: no id column, two id columns, or a
    /// column the table does not know.
    #[error("lookup file {path}: {detail}")]
    Columns {
        /// The lookup file.
        path: PathBuf,
        /// What is wrong (names the column).
        detail: String,
    },
}

impl EnrichError {
    /// The lookup file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            EnrichError::Io { path, .. }
            | EnrichError::Extension { path }
            | EnrichError::Csv { path, .. }
            | EnrichError::Json { path, .. }
            | EnrichError::Entry { path, .. }
            | EnrichError::Columns { path, .. } => path,
        }
    }
}

/// The four lookup tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    /// `api_key` → package, plan and organization fields.
    Keys,
    /// `service_id` → `service_name`.
    Services,
    /// `service_definition_endpoint_uuid` → `endpoint_name`.
    Endpoints,
    /// `plan_uuid` → plan name and package fields.
    Plans,
}

impl TableKind {
    /// Every table, in the order they are applied (keys before plans).
    pub const ALL: [TableKind; 4] = [TableKind::Keys, TableKind::Services, TableKind::Endpoints, TableKind::Plans];

    /// The stable name used in stats, metrics labels and docs.
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Keys => "keys",
            TableKind::Services => "services",
            TableKind::Endpoints => "endpoints",
            TableKind::Plans => "plans",
        }
    }

    /// The record field holding the id this table is keyed by.
    pub fn id_field(self) -> Field {
        match self {
            TableKind::Keys => Field::ApiKey,
            TableKind::Services => Field::ServiceId,
            TableKind::Endpoints => Field::ServiceDefinitionEndpointUuid,
            TableKind::Plans => Field::PlanUuid,
        }
    }

    /// Column names accepted for the id (first = documented name).
    fn id_columns(self) -> &'static [&'static str] {
        match self {
            TableKind::Keys => &["api_key"],
            TableKind::Services => &["service_id", "spkey"],
            TableKind::Endpoints => &["endpoint_uuid", "service_definition_endpoint_uuid", "epkey"],
            TableKind::Plans => &["plan_uuid"],
        }
    }

    /// The fields this table fills, in the order of a row's cells.
    pub fn targets(self) -> &'static [Field] {
        match self {
            TableKind::Keys => &[
                Field::PackageName,
                Field::PackageUuid,
                Field::PlanName,
                Field::PlanUuid,
                Field::OrgName,
                Field::OrgUuid,
                Field::SubOrgName,
                Field::SubOrgUuid,
            ],
            TableKind::Services => &[Field::ServiceName],
            TableKind::Endpoints => &[Field::EndpointName],
            TableKind::Plans => &[Field::PlanName, Field::PackageName, Field::PackageUuid],
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Which table a header names: the one whose id column it has.
    fn from_columns(cols: &[&str]) -> Result<(TableKind, usize), String> {
        // A keys table may carry plan_uuid as a value column, so `api_key`
        // decides first; otherwise exactly one id column must be present.
        if let Some(i) = cols.iter().position(|c| *c == "api_key") {
            return Ok((TableKind::Keys, i));
        }
        let mut found: Option<(TableKind, usize)> = None;
        for kind in [TableKind::Services, TableKind::Endpoints, TableKind::Plans] {
            for (i, c) in cols.iter().enumerate() {
                if kind.id_columns().contains(c) {
                    if let Some((other, j)) = found {
                        return Err(format!(
                            "two id columns `{}` ({} table) and `{}` ({} table); use one file per table",
                            cols[j],
                            other.name(),
                            c,
                            kind.name()
                        ));
                    }
                    found = Some((kind, i));
                }
            }
        }
        found.ok_or_else(|| format!("no id column in [{}]; expected one of api_key, service_id, endpoint_uuid, plan_uuid", cols.join(", ")))
    }
}

impl fmt::Display for TableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One table: id → one cell per [`TableKind::targets`] (empty = fills
/// nothing).
#[derive(Debug, Default, Clone)]
struct Table {
    /// Whether any lookup file provided this table (misses are counted only
    /// for tables that exist).
    present: bool,
    /// The rows by id.
    rows: HashMap<Box<str>, Box<[Box<str>]>, IdHash>,
}

/// FNV-1a: ids are short, and hashing them runs for every raw line. An
/// unkeyed hash is safe here: the tables hold only operator-provided ids, so
/// ids chosen by callers cannot lengthen a bucket chain.
#[derive(Clone, Copy, Debug, Default)]
struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = Fnv;
    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

/// The FNV-1a state.
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A loaded set of lookup tables. Immutable; [`Enricher::tables`] hands out
/// a shared snapshot that records borrow their filled values from.
#[derive(Debug, Default, Clone)]
pub struct Lookups {
    /// Indexed by [`TableKind::index`].
    tables: [Table; 4],
}

impl Lookups {
    /// No tables at all (enrichment fills nothing).
    pub fn empty() -> Self {
        Lookups::default()
    }

    /// Loads and merges the given files, in order.
    pub fn load(files: &[PathBuf]) -> Result<Lookups, EnrichError> {
        let mut l = Lookups::default();
        for p in files {
            l.load_file(p)?;
        }
        Ok(l)
    }

    /// Number of ids in a table.
    pub fn len(&self, kind: TableKind) -> usize {
        self.tables[kind.index()].rows.len()
    }

    /// True when no file provided any table.
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(|t| !t.present)
    }

    /// Whether a file provided this table.
    pub fn has(&self, kind: TableKind) -> bool {
        self.tables[kind.index()].present
    }

    /// The value a table holds for an id and a field (`None` when the id
    /// is unknown or the cell is empty).
    pub fn get(&self, kind: TableKind, id: &str, field: Field) -> Option<&str> {
        let row = self.tables[kind.index()].rows.get(id)?;
        let i = kind.targets().iter().position(|f| *f == field)?;
        Some(&row[i]).filter(|v| !v.is_empty()).map(|v| &**v)
    }

    fn load_file(&mut self, path: &Path) -> Result<(), EnrichError> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        if ext != "csv" && ext != "json" {
            return Err(EnrichError::Extension { path: path.to_path_buf() });
        }
        let bytes = std::fs::read(path).map_err(|source| EnrichError::Io { path: path.to_path_buf(), source })?;
        if ext == "csv" {
            self.load_csv(path, &bytes)
        } else {
            self.load_json(path, &bytes)
        }
    }

    fn load_csv(&mut self, path: &Path, bytes: &[u8]) -> Result<(), EnrichError> {
        let err = |line: u64, detail: String| EnrichError::Csv { path: path.to_path_buf(), line, detail };
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            err(line, "not valid UTF-8".to_string())
        })?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let rows = csv_rows(text).map_err(|(line, detail)| err(line, detail))?;
        let mut rows = rows.into_iter();
        let Some((header_line, header)) = rows.next() else {
            return Err(EnrichError::Columns { path: path.to_path_buf(), detail: "empty file: no header row".to_string() });
        };
        let header: Vec<&str> = header.iter().map(|s| s.trim()).collect();
        let layout = Layout::new(&header).map_err(|detail| EnrichError::Columns {
            path: path.to_path_buf(),
            detail: format!("header (line {header_line}): {detail}"),
        })?;
        let table = &mut self.tables[layout.kind.index()];
        table.present = true;
        for (line, cells) in rows {
            if cells.len() != header.len() {
                return Err(err(line, format!("{} cells, the header has {}", cells.len(), header.len())));
            }
            let id = cells[layout.id].trim();
            if is_absent(id) {
                return Err(err(line, format!("empty `{}`", header[layout.id])));
            }
            let values = layout.cols.iter().map(|&(ci, ti)| (ti, cells[ci].trim()));
            table.insert(layout.kind, id, values);
        }
        Ok(())
    }

    fn load_json(&mut self, path: &Path, bytes: &[u8]) -> Result<(), EnrichError> {
        let entries: Vec<serde_json::Value> = serde_json::from_slice(bytes).map_err(|e| EnrichError::Json {
            path: path.to_path_buf(),
            line: e.line() as u64,
            column: e.column() as u64,
            detail: e.to_string(),
        })?;
        let entry_err = |i: usize, detail: String| EnrichError::Entry { path: path.to_path_buf(), entry: i as u64 + 1, detail };
        let mut layout: Option<Layout> = None;
        for (i, entry) in entries.iter().enumerate() {
            let obj = entry.as_object().ok_or_else(|| entry_err(i, "not a JSON object".to_string()))?;
            let keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
            let entry_layout = Layout::new(&keys).map_err(|d| entry_err(i, d))?;
            match &layout {
                None => {
                    self.tables[entry_layout.kind.index()].present = true;
                    layout = Some(entry_layout.clone());
                }
                Some(first) if first.kind != entry_layout.kind => {
                    return Err(entry_err(i, format!("a {} entry in a {} table; use one file per table", entry_layout.kind, first.kind)));
                }
                Some(_) => {}
            }
            let mut cells: Vec<String> = Vec::with_capacity(keys.len());
            for (k, v) in obj {
                cells.push(match v {
                    serde_json::Value::String(s) => s.trim().to_string(),
                    serde_json::Value::Null => String::new(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => return Err(entry_err(i, format!("`{k}` must be a string"))),
                });
            }
            let id = cells[entry_layout.id].as_str();
            if is_absent(id) {
                return Err(entry_err(i, format!("empty `{}`", keys[entry_layout.id])));
            }
            let values = entry_layout.cols.iter().map(|&(ci, ti)| (ti, cells[ci].as_str()));
            self.tables[entry_layout.kind.index()].insert(entry_layout.kind, id, values);
        }
        Ok(())
    }
}

impl Table {
    /// Adds or updates a row; non-empty cells replace earlier ones.
    fn insert<'v>(&mut self, kind: TableKind, id: &str, values: impl Iterator<Item = (usize, &'v str)>) {
        let n = kind.targets().len();
        let row = self.rows.entry(id.into()).or_insert_with(|| vec![Box::<str>::from(""); n].into_boxed_slice());
        for (ti, v) in values {
            if !is_absent(v) {
                row[ti] = v.into();
            }
        }
    }
}

/// How a file's columns map onto a table.
#[derive(Clone, Debug)]
struct Layout {
    /// The table.
    kind: TableKind,
    /// Column index of the id.
    id: usize,
    /// (column index, index into `kind.targets()`) for each value column.
    cols: Vec<(usize, usize)>,
}

impl Layout {
    fn new(cols: &[&str]) -> Result<Layout, String> {
        let (kind, id) = TableKind::from_columns(cols)?;
        let mut out = Vec::new();
        for (ci, c) in cols.iter().enumerate() {
            if ci == id {
                continue;
            }
            match kind.targets().iter().position(|f| f.name() == *c) {
                Some(ti) => {
                    if out.iter().any(|&(_, t)| t == ti) {
                        return Err(format!("column `{c}` appears twice"));
                    }
                    out.push((ci, ti));
                }
                None => {
                    let known: Vec<&str> = kind.targets().iter().map(|f| f.name()).collect();
                    return Err(format!("unknown column `{c}` for a {kind} table (it has {}: {})", cols[id], known.join(", ")));
                }
            }
        }
        Ok(Layout { kind, id, cols: out })
    }
}

/// A CSV row: the 1-based line it starts on, and its cells.
type CsvRow = (u64, Vec<String>);

/// Splits CSV text (RFC 4180: quoted cells, `""` escapes, quoted line
/// breaks, CRLF) into rows with the 1-based line each starts on. Blank lines
/// are skipped. Errors carry (line, detail).
fn csv_rows(text: &str) -> Result<Vec<CsvRow>, (u64, String)> {
    let mut rows = Vec::new();
    let mut line = 1u64;
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let start_line = line;
        let mut row = Vec::new();
        let mut cell = String::new();
        let mut in_quotes = false;
        let mut quoted_cell = false;
        loop {
            let Some(c) = chars.next() else {
                if in_quotes {
                    return Err((start_line, "unterminated quoted cell".to_string()));
                }
                break;
            };
            if in_quotes {
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        cell.push('"');
                    }
                    '"' => in_quotes = false,
                    '\n' => {
                        line += 1;
                        cell.push('\n');
                    }
                    _ => cell.push(c),
                }
                continue;
            }
            match c {
                '"' if cell.trim().is_empty() && !quoted_cell => {
                    cell.clear();
                    in_quotes = true;
                    quoted_cell = true;
                }
                '"' => return Err((line, "quote inside an unquoted cell".to_string())),
                ',' => {
                    row.push(std::mem::take(&mut cell));
                    quoted_cell = false;
                }
                '\r' if chars.peek() == Some(&'\n') => {}
                '\n' => {
                    line += 1;
                    break;
                }
                _ if quoted_cell && !c.is_whitespace() => {
                    return Err((line, "text after a closing quote".to_string()));
                }
                _ => cell.push(c),
            }
        }
        row.push(cell);
        if row.len() == 1 && row[0].trim().is_empty() {
            continue;
        }
        rows.push((start_line, row));
    }
    Ok(rows)
}

/// What identifies one version of a lookup file on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    /// Modification time.
    mtime: Option<SystemTime>,
    /// Size in bytes.
    len: u64,
    /// Inode (a rename-replace gives a new one), 0 where unknown.
    ino: u64,
}

fn stamp(path: &Path) -> Result<Stamp, EnrichError> {
    let m = std::fs::metadata(path).map_err(|source| EnrichError::Io { path: path.to_path_buf(), source })?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Ok(Stamp { mtime: m.modified().ok(), len: m.len(), ino })
}

/// Statistics of one table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TableStats {
    /// Which table.
    pub table: TableKind,
    /// Whether a lookup file provides it.
    pub loaded: bool,
    /// Number of ids it holds now.
    pub entries: usize,
    /// Lookups that found the id (since start).
    pub hits: u64,
    /// Lookups of an id the table lacks (since start).
    pub misses: u64,
}

/// Enrichment statistics: per table hits and misses, reloads.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EnrichStats {
    /// One entry per table, in [`TableKind::ALL`] order.
    pub tables: Vec<TableStats>,
    /// Successful reloads after the initial load.
    pub reloads: u64,
    /// The last reload error (file and place), cleared by a successful reload.
    pub last_reload_error: Option<String>,
}

impl EnrichStats {
    /// The stats of one table.
    pub fn table(&self, kind: TableKind) -> &TableStats {
        &self.tables[kind.index()]
    }
}

/// Fills records from lookup tables and masks secrets. Shared by all the
/// bridge's parser threads (`&self` everywhere); the tables are swapped
/// atomically on reload.
#[derive(Debug)]
pub struct Enricher {
    /// The lookup files, in load order.
    files: Vec<PathBuf>,
    /// What masking applies (`[enrich] mask_api_key_keep`,
    /// `mask_oauth_token_keep`).
    masking: Masking,
    /// The current tables; readers clone the `Arc`.
    current: RwLock<Arc<Lookups>>,
    /// The file versions the last load attempt saw (index = `files`).
    stamps: Mutex<Vec<Stamp>>,
    /// Hits and misses (tables indexed by [`TableKind::index`]), what each
    /// load brought, reloads and the last reload error.
    stats: LookupStats,
}

impl Enricher {
    /// Loads the lookup files (CSV or JSON, see the module docs) and sets
    /// up masking (`Some(n)` keeps n characters at each end).
    pub fn new(lookups: &[PathBuf], mask_api_key_keep: Option<usize>, mask_oauth_keep: Option<usize>) -> Result<Enricher, EnrichError> {
        let stamps = lookups.iter().map(|p| stamp(p)).collect::<Result<Vec<_>, _>>()?;
        let tables = Lookups::load(lookups)?;
        let stats = LookupStats::new(lookups, &TableKind::ALL.map(TableKind::name));
        loaded(&stats, &tables);
        Ok(Enricher {
            files: lookups.to_vec(),
            masking: Masking { api_key_keep: mask_api_key_keep, oauth_token_keep: mask_oauth_keep },
            current: RwLock::new(Arc::new(tables)),
            stamps: Mutex::new(stamps),
            stats,
        })
    }

    /// From the `[enrich]` config section.
    pub fn from_config(cfg: &EnrichConfig) -> Result<Enricher, EnrichError> {
        Enricher::new(&cfg.lookups, cfg.mask_api_key_keep, cfg.mask_oauth_token_keep)
    }

    /// The lookup files this enricher loads.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// A snapshot of the current tables (cheap: an `Arc` clone). Records
    /// enriched from it borrow from it, so keep it alive while they live.
    pub fn tables(&self) -> Arc<Lookups> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// True when `enrich` can change nothing (no tables, no masking):
    /// callers may skip it.
    pub fn is_noop(&self) -> bool {
        self.masking.is_off() && self.files.is_empty()
    }

    /// Fills the record's empty fields from `tables` (borrowing, no
    /// allocation per hit) and then masks `api_key` / `oauth_access_token`
    /// when configured ([`Masking::apply`]). Never overwrites a value the
    /// record has.
    pub fn enrich<'a>(&self, tables: &'a Lookups, rec: &mut Record<'a>) {
        for kind in TableKind::ALL {
            let table = &tables.tables[kind.index()];
            if !table.present {
                continue;
            }
            let targets = kind.targets();
            if !targets.iter().any(|f| rec.is_missing(*f)) {
                continue;
            }
            let id = rec.get(kind.id_field());
            if is_absent(id) || (kind == TableKind::Keys && id == "unknown") {
                continue;
            }
            match table.rows.get(id) {
                Some(row) => {
                    self.stats.hit(kind.index());
                    for (f, v) in targets.iter().zip(row.iter()) {
                        if !v.is_empty() && rec.is_missing(*f) {
                            rec.fields[f.index()] = Cow::Borrowed(&**v);
                        }
                    }
                }
                None => {
                    self.stats.miss(kind.index());
                }
            }
        }
        self.masking.apply(rec);
    }

    /// Re-stats the lookup files; if any changed (mtime, size or inode),
    /// reloads all of them and swaps the tables in. Returns whether it
    /// reloaded. On error the old tables stay in use, the error (naming the
    /// file) is returned and kept in [`EnrichStats::last_reload_error`];
    /// the same broken version is not retried until it changes again.
    pub fn reload_if_changed(&self) -> Result<bool, EnrichError> {
        let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        let mut now = Vec::with_capacity(self.files.len());
        for p in &self.files {
            match stamp(p) {
                Ok(s) => now.push(s),
                Err(e) => return Err(self.note_error(e)),
            }
        }
        if now == *stamps {
            return Ok(false);
        }
        *stamps = now;
        match Lookups::load(&self.files) {
            Ok(tables) => {
                loaded(&self.stats, &tables);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tables);
                self.stats.reloaded();
                Ok(true)
            }
            Err(e) => Err(self.note_error(e)),
        }
    }

    fn note_error(&self, e: EnrichError) -> EnrichError {
        self.stats.reload_failed(e.to_string());
        e
    }

    /// The figures this enricher counts into, for the bridge to register
    /// with [`crate::telemetry::Telemetry::set_lookups`].
    pub fn lookup_stats(&self) -> LookupStats {
        self.stats.clone()
    }

    /// Hits and misses per table, reload count and the last reload error.
    pub fn stats(&self) -> EnrichStats {
        let s = self.stats.snapshot();
        EnrichStats {
            tables: TableKind::ALL
                .iter()
                .zip(&s.tables)
                .map(|(&k, t)| TableStats { table: k, loaded: t.loaded, entries: t.entries as usize, hits: t.hits, misses: t.misses })
                .collect(),
            reloads: s.reloads,
            last_reload_error: s.last_reload_error,
        }
    }
}

/// Tells `stats` what a load put in each table.
fn loaded(stats: &LookupStats, tables: &Lookups) {
    for k in TableKind::ALL {
        stats.set_table(k.index(), tables.has(k), tables.len(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Lookup files used by most tests: one of each table, CSV and JSON.
    fn fixture(dir: &Path) -> Vec<PathBuf> {
        vec![
            write(dir, "services.csv", "service_id,service_name\nsvc1,Orders\nsvc2,\"Pets, Inc\"\n"),
            write(dir, "endpoints.json", r#"[{"endpoint_uuid":"ep1","endpoint_name":"Orders V2"}]"#),
            write(
                dir,
                "keys.csv",
                "api_key,package_name,package_uuid,plan_uuid,org_name\r\nkey1,Retail,pk-1,plan-1,Acme\r\nkey2,,,plan-2,\r\n",
            ),
            write(
                dir,
                "plans.json",
                r#"[{"plan_uuid":"plan-1","plan_name":"Gold"},{"plan_uuid":"plan-2","plan_name":"Free","package_name":"Open","package_uuid":"pk-2"}]"#,
            ),
        ]
    }

    fn rec(pairs: &[(Field, &'static str)]) -> Record<'static> {
        let mut r = Record::new_ml();
        for (f, v) in pairs {
            r.set(*f, *v);
        }
        r
    }

    /// Enriches `input` and compares the listed fields with `expected`.
    fn check(e: &Enricher, input: &[(Field, &'static str)], expected: &[(Field, &str)]) {
        let tables = e.tables();
        let mut r = rec(input);
        e.enrich(&tables, &mut r);
        for (f, v) in expected {
            assert_eq!(r.get(*f), *v, "{} for input {input:?}", f.name());
        }
    }

    #[test]
    fn fills_empty_fields_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let e = Enricher::new(&fixture(dir.path()), None, None).unwrap();
        use Field::*;
        // Empty fields filled; `-` counts as empty.
        check(&e, &[(ServiceId, "svc1"), (ServiceName, "-")], &[(ServiceName, "Orders")]);
        check(&e, &[(ServiceId, "svc2")], &[(ServiceName, "Pets, Inc")]);
        // A value the line has stays.
        check(&e, &[(ServiceId, "svc1"), (ServiceName, "Mine")], &[(ServiceName, "Mine")]);
        check(&e, &[(ServiceDefinitionEndpointUuid, "ep1")], &[(EndpointName, "Orders V2")]);
        // Keys then plans: key1 knows plan-1, plans gives its name.
        check(
            &e,
            &[(ApiKey, "key1")],
            &[
                (PackageName, "Retail"),
                (PackageUuid, "pk-1"),
                (PlanUuid, "plan-1"),
                (PlanName, "Gold"),
                (OrgName, "Acme"),
                (SubOrgName, ""),
            ],
        );
        // key2 has empty cells: the plans table fills the package.
        check(&e, &[(ApiKey, "key2")], &[(PlanUuid, "plan-2"), (PlanName, "Free"), (PackageName, "Open"), (PackageUuid, "pk-2")]);
        // The line's own plan_uuid wins over the key's.
        check(&e, &[(ApiKey, "key1"), (PlanUuid, "plan-2")], &[(PlanUuid, "plan-2"), (PlanName, "Free"), (PackageName, "Retail")]);
        // No id: nothing.
        check(&e, &[(ServiceName, "")], &[(ServiceName, "")]);
    }

    #[test]
    fn counts_hits_and_misses() {
        let dir = tempfile::tempdir().unwrap();
        let e = Enricher::new(&fixture(dir.path()), None, None).unwrap();
        use Field::*;
        check(&e, &[(ServiceId, "svc1")], &[]);
        check(&e, &[(ServiceId, "nope")], &[(ServiceName, "")]);
        check(&e, &[(ServiceId, "svc1"), (ServiceName, "Has")], &[]); // not looked up
        check(&e, &[(ApiKey, "unknown")], &[(PackageName, "")]); // not an id
        check(&e, &[(ApiKey, "stranger")], &[]);
        check(&e, &[(ApiKey, "key1")], &[]); // keys hit + plans hit
        let s = e.stats();
        assert_eq!((s.table(TableKind::Services).hits, s.table(TableKind::Services).misses), (1, 1));
        assert_eq!((s.table(TableKind::Keys).hits, s.table(TableKind::Keys).misses), (1, 1));
        assert_eq!((s.table(TableKind::Plans).hits, s.table(TableKind::Plans).misses), (1, 0));
        assert_eq!(s.table(TableKind::Services).entries, 2);
        assert_eq!(s.reloads, 0);
    }

    #[test]
    fn absent_table_counts_no_misses() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "s.csv", "service_id,service_name\nsvc1,Orders\n");
        let e = Enricher::new(&[f], None, None).unwrap();
        check(&e, &[(Field::ApiKey, "k"), (Field::ServiceDefinitionEndpointUuid, "x")], &[]);
        let s = e.stats();
        assert!(s.tables.iter().all(|t| t.misses == 0 && t.hits == 0));
        assert!(!s.table(TableKind::Keys).loaded);
    }

    #[test]
    fn masks_key_everywhere_and_token() {
        let e = Enricher::new(&[], Some(2), Some(3)).unwrap();
        let tables = e.tables();
        let mut r = rec(&[
            (Field::ApiKey, "abcdefgh"),
            (Field::RequestId, "1542643301.250_abcdefgh_svc"),
            (Field::Uri, "/v2?api_key=abcdefgh"),
            (Field::OauthAccessToken, "tok-12345678"),
            (Field::Referrer, "https://a.example/?k=abcdefgh"),
        ]);
        e.enrich(&tables, &mut r);
        assert_eq!(r.get(Field::ApiKey), "ab****gh");
        assert_eq!(r.get(Field::RequestId), "1542643301.250_ab****gh_svc");
        assert_eq!(r.get(Field::Uri), "/v2?api_key=ab****gh");
        assert_eq!(r.get(Field::Referrer), "https://a.example/?k=ab****gh");
        assert_eq!(r.get(Field::OauthAccessToken), "tok******678");
        // A token too short to keep 3 at each end is masked whole.
        let mut r = rec(&[(Field::OauthAccessToken, "tok-1234567")]);
        e.enrich(&tables, &mut r);
        assert_eq!(r.get(Field::OauthAccessToken), "***********");
        let mut r = rec(&[(Field::OauthAccessToken, "-"), (Field::ApiKey, "unknown")]);
        e.enrich(&tables, &mut r);
        assert_eq!((r.get(Field::OauthAccessToken), r.get(Field::ApiKey)), ("-", "unknown"));
    }

    #[test]
    fn lookup_happens_before_masking() {
        let dir = tempfile::tempdir().unwrap();
        let e = Enricher::new(&fixture(dir.path()), Some(1), None).unwrap();
        check(&e, &[(Field::ApiKey, "key1")], &[(Field::ApiKey, "k**1"), (Field::PackageName, "Retail")]);
    }

    #[test]
    fn reloads_when_a_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "services.csv", "service_id,service_name\nsvc1,Orders\n");
        let e = Enricher::new(std::slice::from_ref(&f), None, None).unwrap();
        check(&e, &[(Field::ServiceId, "svc1")], &[(Field::ServiceName, "Orders")]);
        assert!(!e.reload_if_changed().unwrap());
        // A snapshot taken before the reload keeps the old values.
        let old = e.tables();
        write(dir.path(), "services.csv", "service_id,service_name\nsvc1,Orders Renamed\nsvc9,New\n");
        assert!(e.reload_if_changed().unwrap());
        check(&e, &[(Field::ServiceId, "svc1")], &[(Field::ServiceName, "Orders Renamed")]);
        check(&e, &[(Field::ServiceId, "svc9")], &[(Field::ServiceName, "New")]);
        assert_eq!(old.get(TableKind::Services, "svc1", Field::ServiceName), Some("Orders"));
        assert_eq!(e.stats().reloads, 1);
        assert!(!e.reload_if_changed().unwrap());
    }

    #[test]
    fn bad_reload_keeps_old_tables() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "services.csv", "service_id,service_name\nsvc1,Orders\n");
        let e = Enricher::new(std::slice::from_ref(&f), None, None).unwrap();
        write(dir.path(), "services.csv", "service_id,service_name\nsvc1,\"Broken\nsvc2,x\n");
        let err = e.reload_if_changed().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("services.csv") && msg.contains("line 2") && msg.contains("unterminated"), "{msg}");
        check(&e, &[(Field::ServiceId, "svc1")], &[(Field::ServiceName, "Orders")]);
        let s = e.stats();
        assert_eq!(s.reloads, 0);
        assert_eq!(s.last_reload_error.as_deref(), Some(msg.as_str()));
        // The same broken version is not re-reported; a fix reloads and clears the error.
        assert!(!e.reload_if_changed().unwrap());
        write(dir.path(), "services.csv", "service_id,service_name\nsvc1,Fixed\n");
        assert!(e.reload_if_changed().unwrap());
        check(&e, &[(Field::ServiceId, "svc1")], &[(Field::ServiceName, "Fixed")]);
        assert_eq!(e.stats().last_reload_error, None);
        // A deleted file is an error naming it; the tables stay.
        std::fs::remove_file(&f).unwrap();
        assert!(e.reload_if_changed().unwrap_err().to_string().contains("services.csv"));
        check(&e, &[(Field::ServiceId, "svc1")], &[(Field::ServiceName, "Fixed")]);
    }

    #[test]
    fn bad_files_name_file_and_place() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text, needle) in [
            ("a.csv", "service_id,service_name\nsvc1\n", "a.csv, line 2: 1 cells, the header has 2"),
            ("b.csv", "service_id,servce_name\n", "unknown column `servce_name` for a services table"),
            ("c.csv", "name,value\n", "no id column"),
            ("d.csv", "service_id,plan_uuid\n", "two id columns"),
            ("e.csv", "service_id,service_name\n,x\n", "e.csv, line 2: empty `service_id`"),
            ("f.csv", "", "empty file"),
            ("g.json", "[{\"service_id\":\"s\",\n\"service_name\": }]", "g.json, line 2 column"),
            ("h.json", r#"[{"service_id":"s","service_name":"n"},{"endpoint_uuid":"e"}]"#, "h.json, entry 2: a endpoints entry"),
            ("i.json", r#"[{"service_id":"s","service_name":["n"]}]"#, "entry 1: `service_name` must be a string"),
            ("j.json", r#"{"service_id":"s"}"#, "j.json, line 1"),
            ("k.txt", "service_id,service_name\n", "must end in .csv or .json"),
            ("l.csv", "service_id,service_name\ns,a\"b\n", "l.csv, line 2: quote inside an unquoted cell"),
        ] {
            let p = write(dir.path(), name, text);
            let msg = Enricher::new(&[p], None, None).unwrap_err().to_string();
            assert!(msg.contains(needle), "{name}: {msg}");
        }
        let missing = dir.path().join("missing.csv");
        let msg = Enricher::new(&[missing], None, None).unwrap_err().to_string();
        assert!(msg.contains("missing.csv"), "{msg}");
    }

    #[test]
    fn csv_quoting_and_merging() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.csv", "\u{feff}endpoint_uuid,endpoint_name\n\n\"ep1\",\"Say \"\"hi\"\"\nthere\"\nep2,Two\n");
        let b = write(dir.path(), "b.json", r#"[{"epkey":"ep2","endpoint_name":"Two v2"},{"epkey":"ep3","endpoint_name":null}]"#);
        let l = Lookups::load(&[a, b]).unwrap();
        assert_eq!(l.get(TableKind::Endpoints, "ep1", Field::EndpointName), Some("Say \"hi\"\nthere"));
        assert_eq!(l.get(TableKind::Endpoints, "ep2", Field::EndpointName), Some("Two v2"));
        assert_eq!(l.get(TableKind::Endpoints, "ep3", Field::EndpointName), None);
        assert_eq!(l.len(TableKind::Endpoints), 3);
    }

    /// The lookup figures as `/status` and `/metrics` show them, once the
    /// bridge registered the enricher's block with telemetry.
    #[test]
    fn enrich_figures_survive_a_replaced_enricher() {
        use crate::telemetry::{StatusSettings, Telemetry};
        const T0: i64 = 1_767_225_600_000;
        let settings = StatusSettings::default();
        let dir = tempfile::tempdir().unwrap();
        let services = dir.path().join("services.csv");
        std::fs::write(&services, "service_id,service_name\nsvc1,Orders\n").unwrap();
        let lookup = |e: &Enricher, id: &'static str| {
            let tables = e.tables();
            let mut r = Record::new_ml();
            r.set(Field::ServiceId, id);
            e.enrich(&tables, &mut r);
        };
        let tel = Telemetry::new();
        // Masking only: no lookup files, no `enrich` object.
        tel.set_lookups(Enricher::new(&[], Some(2), None).unwrap().lookup_stats());
        assert_eq!(tel.status(T0, &settings).enrich, None);

        let e1 = Enricher::new(std::slice::from_ref(&services), None, None).unwrap();
        tel.set_lookups(e1.lookup_stats());
        lookup(&e1, "svc1");
        lookup(&e1, "svc1");
        lookup(&e1, "nope");
        let en = tel.status(T0, &settings).enrich.unwrap();
        assert_eq!((en.hits, en.misses, en.reloads, en.last_reload_error.as_deref()), (2, 1, 0, None));
        let svc = en.tables.iter().find(|t| t.table == "services").unwrap();
        assert_eq!((svc.loaded, svc.entries, svc.hits, svc.misses), (true, 1, 2, 1));
        assert!(!en.tables.iter().find(|t| t.table == "keys").unwrap().loaded);
        assert_eq!(en.files, vec![services.display().to_string()]);

        // A reload brings a new enricher: counters carry on.
        let e2 = Enricher::new(std::slice::from_ref(&services), None, None).unwrap();
        tel.set_lookups(e2.lookup_stats());
        tel.set_lookups(e2.lookup_stats()); // the same one again changes nothing
        lookup(&e2, "other");
        let en = tel.status(T0, &settings).enrich.unwrap();
        assert_eq!((en.hits, en.misses), (2, 2));

        // A broken file: the error is shown, the old tables stay.
        std::fs::write(&services, "service_id,colour\nsvc1,red\n").unwrap();
        assert!(e2.reload_if_changed().is_err());
        let en = tel.status(T0, &settings).enrich.unwrap();
        assert!(en.last_reload_error.as_deref().unwrap_or("").contains("services.csv"), "{en:?}");
        assert_eq!(en.tables.iter().find(|t| t.table == "services").unwrap().entries, 1);
    }

    #[test]
    fn enrich_series_in_metrics() {
        use crate::telemetry::{metrics, StatusSettings, Telemetry};
        use prometheus_parse::Value::*;
        const T0: i64 = 1_767_225_600_000;
        let tel = Telemetry::new();
        let dir = tempfile::tempdir().unwrap();
        let services = dir.path().join("services.csv");
        std::fs::write(&services, "service_id,service_name\nsvc1,Orders\n").unwrap();
        let e = Enricher::new(std::slice::from_ref(&services), None, None).unwrap();
        let mut r = Record::new_ml();
        r.set(Field::ServiceId, "nope");
        e.enrich(&e.tables(), &mut r);
        tel.set_lookups(e.lookup_stats());

        let scrape = || {
            let text = metrics::render(&tel, &StatusSettings::default(), T0 + 1000);
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid exposition")
        };
        let value = |m: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]| {
            m.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(|s| s.value.clone())
        };
        let m = scrape();
        let v = |name: &str, labels: &[(&str, &str)]| match value(&m, name, labels) {
            Some(Counter(v)) | Some(Gauge(v)) => v,
            other => panic!("{name} {labels:?}: {other:?}"),
        };
        assert_eq!(v("calllog_bridge_enrich_lookups_total", &[("table", "services"), ("result", "miss")]), 1.0);
        assert_eq!(v("calllog_bridge_enrich_lookups_total", &[("table", "services"), ("result", "hit")]), 0.0);
        assert!(value(&m, "calllog_bridge_enrich_lookups_total", &[("table", "keys")]).is_none(), "tables not loaded have no series");
        assert_eq!(v("calllog_bridge_enrich_table_entries", &[("table", "services")]), 1.0);
        assert_eq!(v("calllog_bridge_enrich_reloads_total", &[]), 0.0);
        assert_eq!(v("calllog_bridge_enrich_reload_failing", &[]), 0.0);
        std::fs::write(&services, "service_id,colour\nsvc1,red\n").unwrap();
        assert!(e.reload_if_changed().is_err());
        assert!(matches!(value(&scrape(), "calllog_bridge_enrich_reload_failing", &[]), Some(Gauge(v)) if v == 1.0));
    }
}
