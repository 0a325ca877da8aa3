//! `wtrace spans`: span files as trace trees.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
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
    /// `tree` (text), or `chrome`: the Chrome trace-event JSON that
    /// Perfetto (ui.perfetto.dev) and chrome://tracing open, a track per
    /// process and an arrow from each submit span to its execute span.
    #[arg(long, value_enum, default_value_t = Format::Tree)]
    format: Format,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Write one self-contained HTML page to FILE: each trace a waterfall,
    /// a span's details on click, the traces searchable. It fetches
    /// nothing; open it in any browser.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["format", "output"])]
    html: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Tree,
    Chrome,
}

impl SpansCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let files = SpanFiles::read_trace(&self.paths, self.trace.as_deref())?;
        for warning in &files.warnings {
            eprintln!("warning: {warning}");
        }
        let output = self.html.as_ref().or(self.output.as_ref());
        let rendered = match self.format {
            _ if files.spans.is_empty() => String::new(),
            _ if self.html.is_some() => files.html(self.trace.as_deref()),
            Format::Tree => files.render(self.trace.as_deref()),
            Format::Chrome => files.chrome_trace(self.trace.as_deref()).to_string(),
        };
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
        match output {
            Some(path) => std::fs::write(path, rendered)
                .with_context(|| format!("cannot write {}", path.display()))?,
            None => print!("{rendered}"),
        }
        Ok(ExitCode::SUCCESS)
    }
}
