//! `wtrace run`: a one-shot local cluster — start workers, run the
//! invocations, print results, flush every span, exit.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use clap::Args;
use wtrace::cluster::{LocalCluster, LocalClusterOptions, TaskResult};
use wtrace::provider::WorkerInfo;
use wtrace::task::TaskLinker;
use wtrace::wave::Invocation;
use wtrace::{Runtime, Telemetry};

use super::args::{HookArgs, SandboxArgs};

/// Run task invocations on a local cluster, traced, and print their results.
///
/// Example: wtrace run --tracing-startup-hook=default hello.wasm 'my-function()'
#[derive(Debug, Args)]
pub struct RunCommand {
    #[command(flatten)]
    hook: HookArgs,
    /// Worker processes to start (default: one per core).
    #[arg(short = 'n', long, value_name = "N")]
    num_workers: Option<usize>,
    /// Times a task is retried when its worker dies.
    #[arg(long, value_name = "N", default_value_t = 3)]
    max_retries: u32,
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
        let invocations = self
            .invocations
            .iter()
            .map(|i| i.parse::<Invocation>())
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = std::fs::read(&self.component).with_context(|| {
            format!(
                "cannot read the task component {}",
                self.component.display()
            )
        })?;
        let name = self
            .component
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.component.display().to_string());
        let hook = self.hook.spec()?.map(|spec| spec.load()).transpose()?;
        let limits = self.sandbox.limits();
        let policy = self.sandbox.policy()?;
        let mut options = LocalClusterOptions::new(
            std::env::current_exe().context("cannot find the wtrace executable")?,
        );
        if let Some(n) = self.num_workers {
            anyhow::ensure!(n > 0, "--num-workers must be at least 1");
            options.num_workers = n;
        }
        options.hook = hook.clone();
        options.limits = limits.clone();
        options.policy = policy.clone();
        options.max_retries = self.max_retries;
        options.cache_dir = self.sandbox.cache_dir();

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            // Everything that can be checked here is, before any worker starts:
            // the component, its exports and argument types, and the hook.
            let runtime = Runtime::new(limits, options.cache_dir.clone())?;
            let component = {
                let linker = TaskLinker::new(&runtime)?;
                let component = linker.load(&name, &bytes)?;
                for invocation in &invocations {
                    component
                        .check(&runtime, invocation)
                        .map_err(|e| anyhow!("{}: {e}", self.component.display()))?;
                }
                component
            };
            drop(component);
            // Hooks use synchronous WASI, which must not run on an async thread.
            let telemetry = match hook {
                Some(hook) => {
                    let info = WorkerInfo {
                        worker_id: "driver".into(),
                        node_id: "driver".into(),
                        job_id: options.job_id.clone(),
                    };
                    let handle = tokio::runtime::Handle::current();
                    let rt = runtime.clone();
                    let policy = policy.clone();
                    Some(
                        tokio::task::spawn_blocking(move || {
                            hook.run(&rt, info, &policy, Some(handle))
                        })
                        .await??,
                    )
                }
                None => None,
            };
            let outcome = drive(options, telemetry.clone(), &name, bytes, &invocations).await;
            if let Some(telemetry) = telemetry {
                tokio::task::spawn_blocking(move || telemetry.shutdown()).await??;
            }
            outcome
        })
    }
}

async fn drive(
    options: LocalClusterOptions,
    telemetry: Option<Telemetry>,
    name: &str,
    bytes: Vec<u8>,
    invocations: &[Invocation],
) -> anyhow::Result<ExitCode> {
    let cluster = LocalCluster::start(options).await?;
    let result = async {
        let client = match telemetry {
            Some(t) => cluster.client(Some(t)).await?,
            None => {
                wtrace::cluster::Client::connect_untraced(
                    cluster.head().addr(),
                    cluster.head().token(),
                )
                .await?
            }
        };
        let digest = client.upload(name, bytes).await?;
        let parent = outer_context();
        let tasks = client.submit_many(&digest, invocations, &parent).await?;
        let mut failed = false;
        let gather = async {
            for task in tasks {
                let result = task.get().await?;
                failed |= print_result(&result);
            }
            anyhow::Ok(())
        };
        tokio::select! {
            gathered = gather => {
                gathered?;
                Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
            }
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted: stopping workers and flushing spans");
                Ok(ExitCode::from(130))
            }
        }
    }
    .await;
    cluster.stop().await;
    result
}

/// `TRACEPARENT` (and `TRACESTATE`) from the environment: the OpenTelemetry
/// environment-carrier convention, so a CI pipeline's trace can contain ours.
fn outer_context() -> opentelemetry::Context {
    let Ok(traceparent) = std::env::var("TRACEPARENT") else {
        return opentelemetry::Context::new();
    };
    let tracestate = std::env::var("TRACESTATE").ok();
    match wtrace::bridge::parse_traceparent(&traceparent, tracestate.as_deref()) {
        Some(parent) => wtrace::bridge::context_with_parent(Some(parent)),
        None => {
            eprintln!(
                "warning: ignoring TRACEPARENT={traceparent:?}: not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"
            );
            opentelemetry::Context::new()
        }
    }
}

/// Prints a task's output lines (prefixed like Ray's) and its result; returns
/// whether it failed.
fn print_result(result: &TaskResult) -> bool {
    let prefix = format!("({} pid={})", result.function, result.pid);
    let mut stdout = std::io::stdout().lock();
    for line in String::from_utf8_lossy(&result.stdout).lines() {
        let _ = writeln!(stdout, "{prefix} {line}");
    }
    let mut stderr = std::io::stderr().lock();
    for line in String::from_utf8_lossy(&result.stderr).lines() {
        let _ = writeln!(stderr, "{prefix} {line}");
    }
    match &result.value {
        Ok(value) => {
            if !value.is_empty() {
                let _ = writeln!(stdout, "{value}");
            }
            false
        }
        Err(error) => {
            let _ = writeln!(stderr, "error: task {error}");
            if let Some(backtrace) = &error.backtrace {
                let _ = writeln!(stderr, "{backtrace}");
            }
            true
        }
    }
}
