//! `wtrace results`: the results of a job `wtrace submit --detach` left.

use std::process::ExitCode;

use clap::Args;
use wtrace::cluster::Client;

use super::cluster_args::ClusterArgs;
use super::common::{OUTPUT_CLOSED, ResultPrinter, gather_one, output_closed};

/// Print the results of a detached job in the order its tasks were
/// submitted, waiting for those still running.
///
/// The results stay on the cluster (24 hours), so they can be printed again.
#[derive(Debug, Args)]
pub struct ResultsCommand {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The job id `wtrace submit --detach` printed.
    job: String,
}

impl ResultsCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let (address, credentials) = self.cluster.locate()?;
        if matches!(address, wtrace::cluster::Endpoint::Tcp(_)) {
            anyhow::bail!(
                "the cluster at {address} is a local head, which keeps no results for later; \
                 detached jobs live on a cluster on NATS (--address nats://…)"
            );
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let (_client, tasks) = Client::reattach(&address, credentials, &self.job).await?;
            let mut printer = ResultPrinter::new(tasks.len(), "results");
            let print_all = async {
                for task in tasks {
                    let result = gather_one(task, &mut printer).await?;
                    printer.print(&result)?;
                }
                printer.flush()?;
                anyhow::Ok(())
            };
            tokio::select! {
                printed = print_all => match printed {
                    Err(error) if output_closed(&error) => return Ok(ExitCode::from(OUTPUT_CLOSED)),
                    other => other?,
                },
                _ = tokio::signal::ctrl_c() => {
                    let _ = printer.flush();
                    eprintln!("interrupted: the job's results stay on the cluster; run this again");
                    return Ok(ExitCode::from(130));
                }
            }
            Ok(printer.finish())
        })
    }
}
