//! `wtrace run`: a one-shot local cluster — start workers, run the
//! invocations, print results, flush every span, exit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use wtrace::capabilities::provider::WorkerInfo;
use wtrace::cluster::{LocalCluster, LocalClusterOptions};
use wtrace::runtime::wave::Invocation;
use wtrace::{Runtime, Telemetry};

use super::args::{HookArgs, SandboxArgs};
use super::common::{
    OUTPUT_CLOSED, ResultPrinter, check_component, output_closed, read_component, submit_in_order,
};

/// Run task invocations on a local cluster, traced, and print their results.
///
/// Example: wtrace run --tracing-startup-hook=default hello.wasm 'my-function()'
#[derive(Debug, Args)]
pub struct RunCommand {
    #[command(flatten)]
    hook: HookArgs,
    /// Worker processes to start (default: one per core, started as tasks
    /// need them: no more at first than there are invocations, the rest
    /// when nested tasks queue).
    #[arg(short = 'n', long, value_name = "N")]
    num_workers: Option<usize>,
    /// Run every invocation N times.
    #[arg(long, value_name = "N", default_value_t = 1)]
    repeat: usize,
    /// Times a task is retried when its worker dies.
    #[arg(long, value_name = "N", default_value_t = 3)]
    max_retries: u32,
    /// Bytes of components the head keeps, e.g. 1G; past it, those no queued
    /// or running task needs are evicted, least recently used first.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = super::args::parse_size)]
    component_store: u64,
    /// Exit 3 when an exporter of any process lost spans (each says what,
    /// how many and why on standard error either way), rather than 0.
    #[arg(long)]
    fail_on_lost_telemetry: bool,
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// The task component (.wasm).
    component: PathBuf,
    /// Invocations in WAVE, e.g. 'my-function()' or 'add(1, 2)'.
    #[arg(required = true, value_name = "INVOCATION")]
    invocations: Vec<String>,
}

impl RunCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let unique = self
            .invocations
            .iter()
            .map(|i| i.parse::<Invocation>())
            .collect::<Result<Vec<_>, _>>()?;
        anyhow::ensure!(self.repeat > 0, "--repeat must be at least 1");
        let (name, bytes) = read_component(&self.component)?;
        let hook = self.hook.spec()?.map(|spec| spec.load()).transpose()?;
        let limits = self.sandbox.limits();
        let policy = self.sandbox.policy()?;
        let mut options = LocalClusterOptions::new(
            std::env::current_exe().context("cannot find the wtrace executable")?,
        );
        match self.num_workers {
            Some(n) => {
                anyhow::ensure!(n > 0, "--num-workers must be at least 1");
                options.num_workers = n;
            }
            // No more workers at first than tasks: a one-task run starts one
            // process fewer. Nested tasks start the rest as they queue.
            None => options.start_workers = Some(unique.len().saturating_mul(self.repeat)),
        }
        options.hook = hook.clone();
        options.limits = limits.clone();
        options.policy = policy.clone();
        options.grants = self.sandbox.grants()?;
        options.max_retries = self.max_retries;
        options.component_store = self.component_store;
        options.cache_dir = self.sandbox.cache_dir();

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let code = rt.block_on(async move {
            // The workers start at once but are held before their hook while
            // the driver checks the component (its exports and argument
            // types) and runs its own hook; if either fails they are killed
            // having run nothing, and the error is the driver's alone.
            let runtime = Runtime::new(limits, options.cache_dir.clone())?;
            let job_id = options.job_id.clone();
            let held = LocalCluster::spawn_held(options).await?;
            let prepared = async {
                check_component(&runtime, &self.component, &name, &bytes, &unique)?;
                let Some(hook) = hook else {
                    return Ok(None);
                };
                let info = WorkerInfo {
                    worker_id: "driver".into(),
                    node_id: "driver".into(),
                    job_id,
                };
                let handle = tokio::runtime::Handle::current();
                let rt = runtime.clone();
                let policy = policy.clone();
                // Hooks use synchronous WASI, which must not run on an async
                // thread.
                let telemetry =
                    tokio::task::spawn_blocking(move || hook.run(&rt, info, &policy, Some(handle)))
                        .await??;
                anyhow::Ok(Some(telemetry))
            }
            .await;
            let telemetry = match prepared {
                Ok(telemetry) => telemetry,
                Err(error) => {
                    held.abort().await;
                    return Err(error);
                }
            };
            let (code, lost) = match held.admit().await {
                Ok(cluster) => {
                    let invocations = std::iter::repeat_n(unique.as_slice(), self.repeat).flatten();
                    drive(cluster, telemetry, &name, bytes, invocations).await?
                }
                Err(error) => {
                    if let Some(telemetry) = telemetry {
                        tokio::task::spawn_blocking(move || telemetry.shutdown_at_exit("wtrace"))
                            .await?;
                    }
                    return Err(error.into());
                }
            };
            // Tasks that failed say more than spans that were lost.
            if self.fail_on_lost_telemetry && lost && code == 0 {
                return Ok(EXIT_LOST_TELEMETRY);
            }
            anyhow::Ok(code)
        })?;
        Ok(ExitCode::from(code))
    }
}

/// `wtrace run`'s exit status when spans were lost and
/// `--fail-on-lost-telemetry` was given.
const EXIT_LOST_TELEMETRY: u8 = 3;

/// Runs the invocations on `cluster`, then stops it: the exit status, and
/// whether spans were lost (by this process's exporters or a worker's).
async fn drive<'a>(
    cluster: LocalCluster,
    telemetry: Option<Telemetry>,
    name: &str,
    bytes: Vec<u8>,
    invocations: impl Iterator<Item = &'a Invocation>,
) -> anyhow::Result<(u8, bool)> {
    let result = async {
        let client = match &telemetry {
            Some(t) => cluster.client(Some(t.clone())).await?,
            None => cluster.client_untraced().await?,
        };
        let digest = client.upload(name, bytes).await?;
        let mut printer = ResultPrinter::plain();
        let gather = submit_in_order(&client, &digest, invocations, &mut printer);
        tokio::select! {
            gathered = gather => match gathered {
                Err(error) if output_closed(&error) => Ok(OUTPUT_CLOSED),
                Err(error) => Err(error),
                Ok(()) => Ok(u8::from(printer.any_failed())),
            },
            _ = tokio::signal::ctrl_c() => {
                // The results printed so far are not held back.
                let _ = printer.flush();
                eprintln!("interrupted: stopping workers and flushing spans");
                Ok(130)
            }
        }
    }
    .await;
    // This process's spans are flushed while the workers flush theirs and
    // exit, not after.
    let flushed =
        telemetry.map(|t| tokio::task::spawn_blocking(move || t.shutdown_at_exit("wtrace")));
    let workers_lost = cluster.stop().await;
    let lost = match flushed {
        Some(flushed) => flushed.await?,
        None => false,
    };
    result.map(|code| (code, lost || workers_lost > 0))
}
