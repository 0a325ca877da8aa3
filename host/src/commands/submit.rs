//! `wtrace submit`: run tasks on the running cluster.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use wtrace::cluster::Client;
use wtrace::runtime::wave::Invocation;
use wtrace::{Limits, Runtime};

use super::args::HookArgs;
use super::cluster_args::ClusterArgs;
use super::common::{
    OUTPUT_CLOSED, ResultPrinter, check_component, outer_context, output_closed, read_component,
    submit_in_order,
};

/// Submit task invocations to the running cluster and print their results.
///
/// The component is uploaded once (by digest). This process runs the
/// cluster's tracing startup hook, so its submit spans are exported too.
#[derive(Debug, Args)]
pub struct SubmitCommand {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Must name the cluster's own hook if given: a different one is an error.
    #[command(flatten)]
    hook: HookArgs,
    /// Submit every invocation N times.
    #[arg(long, value_name = "N", default_value_t = 1)]
    repeat: usize,
    /// Print a job id once the cluster has every task, and exit; `wtrace
    /// results JOB` prints the results later (a cluster on NATS keeps them
    /// 24 hours).
    #[arg(long)]
    detach: bool,
    /// Also read invocations from FILE, one per line (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Where compiled components are cached (default: ~/.cache/wtrace).
    #[arg(long, value_name = "DIR", env = "WTRACE_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// The task component (.wasm).
    component: PathBuf,
    /// Invocations in WAVE, e.g. 'my-function()' or 'add(1, 2)'.
    #[arg(value_name = "INVOCATION")]
    invocations: Vec<String>,
}

impl SubmitCommand {
    /// The invocations given, each once (`--repeat` applies when submitting).
    fn invocations(&self) -> anyhow::Result<Vec<Invocation>> {
        let mut texts = self.invocations.clone();
        if let Some(file) = &self.file {
            let reader: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(file)
                        .with_context(|| format!("cannot read {}", file.display()))?,
                ))
            };
            for line in reader.lines() {
                let line = line?;
                if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
                    texts.push(line);
                }
            }
        }
        if texts.is_empty() {
            bail!("nothing to submit: give invocations like 'my-function()', or --file");
        }
        Ok(texts
            .iter()
            .map(|t| t.parse::<Invocation>())
            .collect::<Result<Vec<_>, _>>()?)
    }

    pub fn run(self) -> anyhow::Result<ExitCode> {
        let invocations = self.invocations()?;
        let (address, token) = self.cluster.locate()?;
        if self.detach && matches!(address, wtrace::cluster::Endpoint::Tcp(_)) {
            bail!(
                "--detach: the cluster at {address} is a local head, which keeps a driver's \
                 results only while it is connected; a cluster on NATS (--address nats://…) keeps \
                 them for `wtrace results`"
            );
        }
        let (name, bytes) = read_component(&self.component)?;
        let cache_dir = self
            .cache_dir
            .clone()
            .or_else(wtrace::runtime::default_cache_dir);
        let runtime = Runtime::new(Limits::default(), cache_dir)?;
        let unique: Vec<Invocation> = {
            let mut seen = std::collections::HashSet::new();
            invocations
                .iter()
                .filter(|i| seen.insert(i.text.clone()))
                .cloned()
                .collect()
        };
        check_component(&runtime, &self.component, &name, &bytes, &unique)?;
        let hook = self.hook.spec()?.map(|spec| spec.load()).transpose()?;

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = match &hook {
                Some(hook) => Client::connect_with_hook(&address, token.clone(), hook).await?,
                None => Client::connect(&address, token.clone(), None).await?,
            };
            let outcome = if self.detach {
                detach(&client, &name, bytes, &invocations, self.repeat, &address).await
            } else {
                submit(&client, &name, bytes, &invocations, self.repeat).await
            };
            if let Some(telemetry) = client.telemetry().cloned() {
                tokio::task::spawn_blocking(move || telemetry.shutdown()).await??;
            }
            outcome
        })
    }
}

/// Submits every task, hands them to the cluster, and prints the job id.
async fn detach(
    client: &Client,
    name: &str,
    bytes: Vec<u8>,
    invocations: &[Invocation],
    repeat: usize,
    address: &wtrace::cluster::Endpoint,
) -> anyhow::Result<ExitCode> {
    let digest = client.upload(name, bytes).await?;
    let parent = outer_context();
    let mut tasks = Vec::with_capacity(invocations.len() * repeat);
    for _ in 0..repeat {
        tasks.extend(client.submit_many(&digest, invocations, &parent).await?);
    }
    let count = tasks.len();
    let job = client.detach(tasks).await?;
    println!("{job}");
    eprintln!(
        "{count} tasks submitted as job {job}; print their results with `wtrace results {job} \
         --address {address}`"
    );
    Ok(ExitCode::SUCCESS)
}

async fn submit(
    client: &Client,
    name: &str,
    bytes: Vec<u8>,
    invocations: &[Invocation],
    repeat: usize,
) -> anyhow::Result<ExitCode> {
    let digest = client.upload(name, bytes).await?;
    let mut printer = ResultPrinter::new(invocations.len() * repeat, "tasks");
    let all = std::iter::repeat_n(invocations, repeat).flatten();
    let gather = submit_in_order(client, &digest, all, &mut printer);
    tokio::select! {
        gathered = gather => match gathered {
            Err(error) if output_closed(&error) => return Ok(ExitCode::from(OUTPUT_CLOSED)),
            other => other?,
        },
        _ = tokio::signal::ctrl_c() => {
            let _ = printer.flush();
            eprintln!("interrupted: the cluster keeps running; flushing this driver's spans");
            return Ok(ExitCode::from(130));
        }
    }
    Ok(printer.finish())
}
