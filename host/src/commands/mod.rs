//! One module per subcommand.

mod actor;
mod args;
mod check;
mod cluster_args;
mod common;
mod results;
mod run;
mod spans;
mod start;
mod status;
mod stop;
mod submit;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run WebAssembly components as traced tasks on a pool of worker processes.
#[derive(Debug, Parser)]
#[command(name = "wtrace", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(run::RunCommand),
    Start(Box<start::StartCommand>),
    Submit(submit::SubmitCommand),
    Results(results::ResultsCommand),
    Status(status::StatusCommand),
    Stop(stop::StopCommand),
    Spans(spans::SpansCommand),
    Check(check::CheckCommand),
    Actor(actor::ActorCommand),
    #[command(hide = true)]
    Worker(worker::WorkerCommand),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Run(command) => command.run(),
            Command::Start(command) => command.run(),
            Command::Submit(command) => command.run(),
            Command::Results(command) => command.run(),
            Command::Status(command) => command.run(),
            Command::Stop(command) => command.run(),
            Command::Spans(command) => command.run(),
            Command::Check(command) => command.run(),
            Command::Actor(command) => command.run(),
            Command::Worker(command) => command.run(),
        }
    }
}
