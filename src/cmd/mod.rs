//! One module per subcommand. Each exposes `run(args) -> anyhow::Result<i32>`
//! returning the process exit code.

pub mod check_config;
pub mod lag;
pub mod parse;
pub mod reset_state;
pub mod run;
pub mod simulate;
pub mod tail;

/// An error with its causes on one line, each cause said once: a cause
/// whose text the message before it already holds (an error type that
/// prints its source, wrapped by `anyhow` context) is not repeated, so an
/// operator reads `cannot read x: No such file or directory (os error 2)`
/// once, not twice.
pub fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if out.contains(&c) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&c);
    }
    out
}

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
