//! One module per subcommand. Each exposes `run(args) -> anyhow::Result<i32>`
//! returning the process exit code.

pub mod check_config;
pub mod export;
pub mod input;
pub mod lag;
pub mod lag_report;
pub mod parse;
pub mod reset_state;
pub mod run;
pub mod simulate;
pub mod subscribe;

pub use crate::service::describe;

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("lookup file x.csv: {source}")]
    struct PrintsItsSource {
        source: std::io::Error,
    }

    #[test]
    fn describe_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let e = anyhow::Error::new(PrintsItsSource { source: io }).context("cannot load [enrich] lookups");
        assert_eq!(format!("{e:#}").matches("No such file").count(), 2, "the problem: {e:#}");
        assert_eq!(super::describe(&e), "cannot load [enrich] lookups: lookup file x.csv: No such file or directory (os error 2)");
    }
}
