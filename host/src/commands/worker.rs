//! `wtrace worker`: a worker process, started by a head or node (not by hand).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use wtrace::cluster::node::{EXIT_LOST_TELEMETRY, EXIT_STARTUP_FAILED};
use wtrace::cluster::worker::{self, Stopped, WorkerOptions};

/// Run a worker process (internal: started by `wtrace run` and `wtrace start`).
#[derive(Debug, Args)]
pub struct WorkerCommand {
    /// Where the cluster is.
    #[arg(long)]
    address: wtrace::cluster::Endpoint,
    /// This worker's id.
    #[arg(long)]
    worker_id: String,
    /// This node's id.
    #[arg(long)]
    node_id: String,
    /// Where compiled components are cached.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// The cluster's secret (a wtrace head's, or the NATS server's).
    #[arg(long, env = "WTRACE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    nats: super::cluster_args::NatsArgs,
}

impl WorkerCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let credentials = self.nats.credentials(self.token.clone())?;
        let options = WorkerOptions {
            endpoint: self.address,
            credentials,
            worker_id: self.worker_id.clone(),
            node_id: self.node_id,
            cache_dir: self.cache_dir,
        };
        match worker::run(options) {
            Ok(Stopped::Told) => Ok(ExitCode::SUCCESS),
            Ok(Stopped::LostTelemetry) => Ok(ExitCode::from(EXIT_LOST_TELEMETRY as u8)),
            // Not a startup failure: its node starts another worker in its place.
            Ok(Stopped::Lost(reason)) => {
                eprintln!(
                    "wtrace worker {} (pid {}): {reason}",
                    self.worker_id,
                    std::process::id()
                );
                Ok(ExitCode::FAILURE)
            }
            Err(error) => {
                eprintln!(
                    "wtrace worker {} (pid {}): {error}",
                    self.worker_id,
                    std::process::id()
                );
                Ok(ExitCode::from(EXIT_STARTUP_FAILED as u8))
            }
        }
    }
}
