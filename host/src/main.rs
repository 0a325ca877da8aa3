//! The `wtrace` command line: a thin layer over the `wtrace` library.

mod commands;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    wtrace::telemetry::diagnostics::report_to_stderr();
    let cli = commands::Cli::parse();
    match cli.run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
