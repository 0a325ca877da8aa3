//! `wtrace spans`: span files as trace trees.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use wtrace::spans::SpanFiles;

/// Print the traces in OTLP-JSON span files as trees, oldest first.
#[derive(Debug, Args)]
pub struct SpansCommand {
    /// Span files or directories of them (`-` for standard input).
    #[arg(value_name = "DIR|FILE", default_value = "/tmp/spans")]
    paths: Vec<PathBuf>,
    /// Only the trace whose id starts with ID.
    #[arg(long, value_name = "ID")]
    trace: Option<String>,
}

impl SpansCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let files = SpanFiles::read_trace(&self.paths, self.trace.as_deref())?;
        for warning in &files.warnings {
            eprintln!("warning: {warning}");
        }
        let rendered = files.render(self.trace.as_deref());
        if rendered.is_empty() {
            match &self.trace {
                Some(id) => eprintln!(
                    "no trace with an id starting {id:?} in {} file(s)",
                    files.files.len()
                ),
                None => eprintln!("no spans in {} file(s)", files.files.len()),
            }
            return Ok(ExitCode::FAILURE);
        }
        print!("{rendered}");
        Ok(ExitCode::SUCCESS)
    }
}
