//! `wtrace status`: nodes, workers, the hook, and tasks.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;
use wtrace::cluster::Client;

use super::cluster_args::ClusterArgs;

/// Show the cluster: its nodes and workers (with pids), the hook and its
/// digest, and tasks queued, running and done.
#[derive(Debug, Args)]
pub struct StatusCommand {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

impl StatusCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let (address, token) = self.cluster.locate()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let status = rt.block_on(async {
            let client = Client::connect_untraced(&address, token.clone()).await?;
            anyhow::Ok(client.status().await?)
        })?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&status)?);
            return Ok(ExitCode::SUCCESS);
        }
        let uptime = status.uptime.as_secs();
        println!(
            "cluster {address}  job {}  up {}m {}s",
            status.job_id,
            uptime / 60,
            uptime % 60
        );
        match &status.hook {
            Some((hook, digest)) => println!("hook    {hook} ({digest})"),
            None => println!("hook    none (nothing is traced)"),
        }
        println!(
            "tasks   {} queued, {} running, {} done; {} component(s) stored ({:.1} MiB)",
            status.queued,
            status.running,
            status.done,
            status.components,
            status.component_bytes as f64 / f64::from(1 << 20)
        );
        let mut nodes: BTreeMap<&str, Vec<_>> = BTreeMap::new();
        for worker in &status.workers {
            nodes
                .entry(worker.node_id.as_str())
                .or_default()
                .push(worker);
        }
        for (node, workers) in nodes {
            println!("node    {node}  ({} workers)", workers.len());
            for w in workers {
                println!(
                    "  {:<16} pid {:<8} {:<9} running {:<4} leased {:<4} done {}",
                    w.worker_id,
                    w.pid,
                    if w.ready { "ready" } else { "starting" },
                    w.running,
                    w.leased,
                    w.done
                );
            }
        }
        for (worker, pid, message) in &status.failed_hooks {
            println!("failed  {worker} (pid {pid}): {message}");
        }
        Ok(ExitCode::SUCCESS)
    }
}
