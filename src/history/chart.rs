//! The report as a chart.
use super::report::Report;

/// The chart as SVG text.
pub fn svg(_r: &Report) -> String {
    String::new()
}

/// The SVG rendered as PNG.
pub fn png(_svg: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::bail!("not yet")
}
