//! Command-line definitions (clap) only; the commands live in `cmd/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::parse::Format;
use crate::record::Shape;

/// calllog-bridge: follow API Management Local Edition access logs, serve
/// them as a local Call Log Stream, forward them upstream, and report the
/// sync delay.
#[derive(Debug, Parser)]
#[command(name = "calllog-bridge", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse log files offline and print call-log records.
    Parse(ParseArgs),
    /// Write simulated Local Edition traffic into a directory.
    Simulate(SimulateArgs),
    /// Validate a config file and print what was understood.
    CheckConfig(CheckConfigArgs),
    /// Run the bridge: follow files, serve the channel, forward upstream.
    Run(RunArgs),
    /// Subscribe to a Call Log Stream channel and print records (also
    /// `tail`, its earlier name).
    #[command(alias = "tail")]
    Subscribe(SubscribeArgs),
    /// Show the sync delay per file and per sink of a running bridge.
    Lag(LagArgs),
    /// Recover from a damaged checkpoints.json or channel.seq (the bridge
    /// exits 65 and says so): keep the damaged file aside and choose where
    /// reading resumes. The bridge must be stopped.
    ResetState(ResetStateArgs),
    /// Build the Call Log Export's CSV slice files offline for a time
    /// range, from the archive or raw Local Edition logs (back-filling a
    /// warehouse).
    Export(ExportArgs),
    /// Channel tokens: `token new` writes a strong one to a file and says
    /// how to add it (a rotation without a gap).
    Token(TokenArgs),
}

/// `token` arguments.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// The `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Write a new strong token to a file readable only by the service
    /// user (never over an existing file) and print how to add it to the
    /// channel next to the current one.
    New(TokenNewArgs),
}

/// `token new` arguments.
#[derive(Debug, clap::Args)]
pub struct TokenNewArgs {
    /// The `[[channel.stream]]` id the token is for (default: the default
    /// channel, `[channel]`).
    #[arg(long, value_name = "ID")]
    pub channel: Option<String>,
    /// The file to write (default:
    /// `/etc/calllog-bridge/<ID or channel>-<UTC date and time>.token`).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// When run as root, the file is given to this user (the service
    /// user).
    #[arg(long, value_name = "USER", default_value = "calllog-bridge")]
    pub owner: String,
}

/// `export` arguments.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Start of the range (ISO 8601, inclusive): records whose
    /// `request_time` is at or after it.
    #[arg(long)]
    pub from: String,
    /// End of the range (ISO 8601, exclusive).
    #[arg(long)]
    pub to: String,
    /// Directory the slice files are written in (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// Slice length in minutes, aligned to the hour (UTC).
    #[arg(long, default_value_t = 30)]
    pub slice_minutes: u32,
    /// Append the four organisation columns (39 instead of 35).
    #[arg(long)]
    pub include_org: bool,
    /// No header row.
    #[arg(long, conflicts_with = "bridge_columns")]
    pub no_header: bool,
    /// Append the bridge's columns (`ingestion_time`, `sync_delay_ms`,
    /// `host`) from the archive, as `[export] bridge_columns` does.
    #[arg(long)]
    pub bridge_columns: bool,
    /// Plain `.csv` files instead of `.csv.gz`.
    #[arg(long)]
    pub no_gzip: bool,
    /// gzip level, 1 to 9.
    #[arg(long, default_value_t = 6)]
    pub gzip_level: u32,
    /// Write every value as it is, also cells a spreadsheet would run as a
    /// formula (by default they get a leading `'`, as `[export]
    /// escape_formulas` does).
    #[arg(long)]
    pub no_escape_formulas: bool,
    /// Permission bits of the files written (octal, `0640`), whatever the
    /// umask; by default the umask decides.
    #[arg(long, value_name = "MODE")]
    pub file_mode: Option<String>,
    /// Group of the files written and of `--dir` (a name or a number).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Remove the files the range's slices already have first.
    #[arg(long)]
    pub replace: bool,
    /// Input format (`auto` decides per file from its first line).
    #[arg(long, short, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Lookup tables (CSV or JSON) used to fill in names (raw logs).
    #[arg(long = "lookups", value_name = "PATH")]
    pub lookups: Vec<PathBuf>,
    /// Write rejected lines here as JSON lines (as `parse --rejects`).
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,
    /// Lines (and JSON documents) longer than this are rejected.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_line_bytes: usize,
    /// Inputs (`-` = stdin): the archive (rotated `.gz` too) or Local
    /// Edition logs.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// `parse` arguments.
#[derive(Debug, clap::Args)]
pub struct ParseArgs {
    /// Input format (`auto` decides per file from its first line).
    #[arg(long, short, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Lookup tables (CSV or JSON) used to fill in names.
    #[arg(long = "lookups", value_name = "PATH")]
    pub lookups: Vec<PathBuf>,
    /// Output shape.
    #[arg(long, short, value_enum, default_value_t = Shape::Ndjson)]
    pub output: Shape,
    /// Write rejected lines here as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,
    /// Stamp `ingestion_time` and `sync_delay_ms` with the time each line is read.
    #[arg(long)]
    pub stamp: bool,
    /// Mask `api_key` and `oauth_access_token`, keeping N characters at each end.
    #[arg(long, value_name = "N")]
    pub mask_keep: Option<usize>,
    /// Lines longer than this are rejected.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_line_bytes: usize,
    /// Never show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Input files (`-` = stdin; `.gz` is decompressed).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// The formats `simulate` writes: Local Edition's own log formats (the
/// export and stream formats `parse` also reads are not written as logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimFormat {
    /// LE 6 enriched access log (`access.log`).
    Le6,
    /// LE 5 enriched access CSV (`access.csv`).
    #[value(name = "le5-csv")]
    Le5Csv,
    /// LE 5 raw access log, JSON lines (`access_worker0.log`).
    #[value(name = "le-json")]
    LeJson,
}

impl From<SimFormat> for Format {
    fn from(f: SimFormat) -> Format {
        match f {
            SimFormat::Le6 => Format::Le6,
            SimFormat::Le5Csv => Format::Le5Csv,
            SimFormat::LeJson => Format::LeJson,
        }
    }
}

/// `simulate` arguments.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Format to write.
    #[arg(long, value_enum, default_value_t = SimFormat::Le6)]
    pub format: SimFormat,
    /// Directory to write into (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// Lines per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds to run (0 = until interrupted).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Rotate (rename to `.1`, `.2`, ...) when the live file reaches this size.
    #[arg(long)]
    pub rotate_bytes: Option<u64>,
    /// gzip rotated files.
    #[arg(long)]
    pub gzip_rotated: bool,
    /// `request_time` = now minus this many milliseconds (simulated sync lag).
    #[arg(long, default_value_t = 0)]
    pub lag_ms: i64,
    /// LE 6: Local Edition writes each line this many milliseconds after
    /// its call ended (`log_ingestion`); the rest of `--lag-ms` is the
    /// sync's (the transfer delay that `lag` reports).
    #[arg(long, default_value_t = 0)]
    pub write_delay_ms: i64,
    /// Random seed (same seed, same traffic).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write as fast as possible: `--rate` × `--duration` lines, no pacing.
    #[arg(long)]
    pub burst: bool,
}

/// `check-config` arguments.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// The config file.
    #[arg(long, short)]
    pub config: PathBuf,
}

/// `run` arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The config file.
    #[arg(long, short, required_unless_present = "demo")]
    pub config: Option<PathBuf>,
    /// Run the built-in demo: simulated Local Edition traffic in a temporary
    /// directory, the bridge with its channel, status page and file output
    /// on localhost.
    #[arg(long)]
    pub demo: bool,
}

/// `subscribe` arguments.
#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    /// Channel URL: `ws://HOST:PORT/ecls/subscribe/<channel>/<area>?key=TOKEN`
    /// or `ws://HOST:PORT/stream?key=TOKEN`.
    pub url: String,
    /// Read the token from this file instead of the URL.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Print a compact one-line table instead of JSON.
    #[arg(long)]
    pub table: bool,
    /// Start from this sequence number (replay).
    #[arg(long)]
    pub since: Option<u64>,
    /// Exit after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Do not reconnect; exit when the connection ends.
    #[arg(long)]
    pub no_reconnect: bool,
    /// For `wss://`: also trust the certificates in this PEM file (a
    /// bridge's own CA or self-signed certificate).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

/// `lag` arguments.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LagArgs {
    /// `lag report`: the sync delay from history instead of a running bridge.
    #[command(subcommand)]
    pub action: Option<LagAction>,
    /// The bridge's status URL (default from `--config`, else http://127.0.0.1:8791).
    #[arg(long)]
    pub status_url: Option<String>,
    /// Read the status address from this config file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Print the raw status JSON.
    #[arg(long)]
    pub json: bool,
    /// Refresh every N seconds.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<u64>,
    /// Exit non-zero when any delay is above this (e.g. `30s`, `5m`, `1h`).
    #[arg(long, value_name = "DURATION")]
    pub max_lag: Option<String>,
}

/// What `lag` does besides asking a running bridge.
#[derive(Debug, Subcommand)]
pub enum LagAction {
    /// The sync delay over a past time range, from what the bridge kept
    /// (its archive, replay log, export slices) or raw Local Edition logs:
    /// per window, host and file, the worst windows, and the episodes
    /// above a threshold.
    Report(LagReportArgs),
}

/// `lag report` arguments.
#[derive(Debug, clap::Args)]
pub struct LagReportArgs {
    /// Start of the range (ISO 8601, inclusive): calls whose
    /// `request_time` is at or after it.
    #[arg(long)]
    pub from: String,
    /// End of the range (ISO 8601, exclusive).
    #[arg(long)]
    pub to: String,
    /// Window length (`5m`, `1h`, ...), aligned to the hour (UTC).
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    pub every: String,
    /// A window whose delay statistic is above this is part of an episode.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub threshold: String,
    /// Which statistic of a window is compared with `--threshold`.
    #[arg(long, value_enum, default_value_t = crate::history::report::Statistic::P95)]
    pub threshold_on: crate::history::report::Statistic,
    /// How many of the worst windows to list.
    #[arg(long, default_value_t = 10)]
    pub worst: usize,
    /// Print JSON (windows, worst windows, episodes, totals).
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print the windows as CSV.
    #[arg(long)]
    pub csv: bool,
    /// Also draw the chart as an SVG file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Also draw the chart as a PNG file.
    #[arg(long, value_name = "FILE")]
    pub png: Option<PathBuf>,
    /// Input format (`auto` decides per file from its first line).
    #[arg(long, short, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Lines longer than this are rejected.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_line_bytes: usize,
    /// History to read: the archive (rotated `.gz` too), replay log
    /// segments or their directory, export slices or their directory, raw
    /// Local Edition logs; `-` = stdin.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// Where every file resumes after `reset-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResumeFrom {
    /// From its start: nothing is skipped; what was delivered is sent again.
    Beginning,
    /// From its current end (the files' current state): nothing is sent
    /// twice; what was not delivered yet is skipped.
    End,
}

/// `reset-state` arguments.
#[derive(Debug, clap::Args)]
pub struct ResetStateArgs {
    /// The config file (its `state_dir` and sources).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Where every file the sources match now resumes.
    #[arg(long, value_enum)]
    pub read_from: ResumeFrom,
    /// The channel's next sequence number when `channel.seq` is replaced
    /// (default: the current time in microseconds, above any number a
    /// bridge can have used, so clients never see a number twice).
    #[arg(long, value_name = "N")]
    pub channel_seq: Option<u64>,
    /// Replace the files even when they are not damaged.
    #[arg(long)]
    pub force: bool,
}
