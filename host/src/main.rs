//! The `wtrace` command line: a thin layer over the `wtrace` library.

mod commands;

use std::process::ExitCode;

use clap::Parser as _;

/// mimalloc rather than the system allocator: a task's fresh store, its
/// spans and its messages are many short-lived allocations made and freed on
/// different threads, where glibc's malloc spent about a sixth of a trivial
/// task's CPU. Built without transparent huge pages, which made each
/// worker's resident memory twice what it needs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
