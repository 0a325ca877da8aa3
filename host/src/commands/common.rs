//! What `run` and `submit` share: reading and checking a task component,
//! the outer trace context, submitting in a window, and printing results.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, anyhow};
use wtrace::Digest;
use wtrace::Runtime;
use wtrace::cluster::{Client, TaskResult};
use wtrace::exec::task::TaskLinker;
use wtrace::runtime::wave::Invocation;

/// Most tasks submitted and not yet gathered: enough to keep every worker
/// busy, few enough that a run of millions holds only these in memory.
const IN_FLIGHT: usize = 1 << 16;
/// Submissions per batch while refilling the window.
const REFILL: usize = 4096;

/// Submits `invocations` of `component` and hands each result to `gathered`
/// in submission order. At most [`IN_FLIGHT`] tasks are out at once: the
/// window is topped up whenever half of it has been gathered.
pub async fn submit_in_order<'a>(
    client: &Client,
    component: &Digest,
    mut invocations: impl Iterator<Item = &'a Invocation>,
    mut gathered: impl FnMut(TaskResult) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let parent = outer_context();
    let mut in_flight = std::collections::VecDeque::new();
    loop {
        if in_flight.len() <= IN_FLIGHT / 2 {
            while in_flight.len() < IN_FLIGHT {
                let batch: Vec<Invocation> = invocations
                    .by_ref()
                    .take(REFILL.min(IN_FLIGHT - in_flight.len()))
                    .cloned()
                    .collect();
                if batch.is_empty() {
                    break;
                }
                in_flight.extend(client.submit_many(component, &batch, &parent).await?);
            }
        }
        let Some(task) = in_flight.pop_front() else {
            return Ok(());
        };
        gathered(task.get().await?)?;
    }
}

/// The exit code when standard output closes early (`wtrace run … | head`):
/// what a shell reports for a process stopped by SIGPIPE.
pub const OUTPUT_CLOSED: u8 = 141;

/// Whether `error` is standard output having closed: the reader is gone, so
/// the run stops quietly.
pub fn output_closed(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// A task component's file name and bytes.
pub fn read_component(path: &Path) -> anyhow::Result<(String, Vec<u8>)> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the task component {}", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok((name, bytes))
}

/// Compiles the component (warming the cache workers read) and checks that
/// every invocation names an export and fits its parameters, so mistakes are
/// reported before anything runs.
pub fn check_component(
    runtime: &Runtime,
    path: &Path,
    name: &str,
    bytes: &[u8],
    invocations: &[Invocation],
) -> anyhow::Result<()> {
    let linker = TaskLinker::new(runtime)?;
    let component = linker.load(name, bytes)?;
    for invocation in invocations {
        component.check(runtime, invocation).map_err(|e| {
            anyhow!(
                "{}: cannot run {}: {}",
                path.display(),
                invocation,
                e.message
            )
        })?;
    }
    Ok(())
}

/// `TRACEPARENT` (and `TRACESTATE`) from the environment: the OpenTelemetry
/// environment-carrier convention, so a CI pipeline's trace can contain ours.
pub fn outer_context() -> opentelemetry::Context {
    let Ok(traceparent) = std::env::var("TRACEPARENT") else {
        return opentelemetry::Context::new();
    };
    let tracestate = std::env::var("TRACESTATE").ok();
    match wtrace::telemetry::context::parse_traceparent(&traceparent, tracestate.as_deref()) {
        Some(parent) => wtrace::telemetry::context::context_with_parent(Some(parent)),
        None => {
            eprintln!(
                "warning: ignoring TRACEPARENT={traceparent:?}: not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"
            );
            opentelemetry::Context::new()
        }
    }
}

/// Prints a task's output lines and those of the nested tasks it waited
/// for (each prefixed like Ray's), then its result; returns whether it failed.
pub fn print_result(result: &TaskResult) -> std::io::Result<bool> {
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let chunks = result
        .nested
        .iter()
        .map(|c| (&c.function, c.pid, &c.stdout, &c.stderr))
        .chain([(&result.function, result.pid, &result.stdout, &result.stderr)]);
    for (function, pid, out, err) in chunks {
        let prefix = format!("({function} pid={pid})");
        for line in String::from_utf8_lossy(out).lines() {
            writeln!(stdout, "{prefix} {line}")?;
        }
        for line in String::from_utf8_lossy(err).lines() {
            let _ = writeln!(stderr, "{prefix} {line}");
        }
    }
    match &result.value {
        Ok(value) => {
            if !value.is_empty() {
                writeln!(stdout, "{value}")?;
            }
            Ok(false)
        }
        Err(error) => {
            let _ = writeln!(stderr, "error: task {error}");
            if let Some(backtrace) = &error.backtrace {
                let _ = writeln!(stderr, "{backtrace}");
            }
            Ok(true)
        }
    }
}

/// Prints results as they come, behind a progress bar on a terminal, and
/// counts the failures.
pub struct ResultPrinter {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    failed: usize,
}

impl ResultPrinter {
    /// For `total` results, the bar showing `what` they are (`tasks`).
    pub fn new(total: usize, what: &str) -> Self {
        use std::io::IsTerminal as _;
        let bar = (total > 1 && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            let template = format!("{{bar:40}} {{pos}}/{{len}} {what}  {{per_sec}}  eta {{eta}}");
            bar.set_style(
                indicatif::ProgressStyle::with_template(&template).expect("valid template"),
            );
            bar
        });
        Self {
            bar,
            total,
            failed: 0,
        }
    }

    /// Prints one result.
    pub fn print(&mut self, result: &TaskResult) -> std::io::Result<()> {
        let print = || print_result(result);
        self.failed += usize::from(match &self.bar {
            Some(bar) => {
                let failed = bar.suspend(print)?;
                bar.inc(1);
                failed
            }
            None => print()?,
        });
        Ok(())
    }

    /// Clears the bar; failure if any task failed, saying how many.
    pub fn finish(self) -> std::process::ExitCode {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        if self.failed > 0 {
            eprintln!("{} of {} tasks failed", self.failed, self.total);
            return std::process::ExitCode::FAILURE;
        }
        std::process::ExitCode::SUCCESS
    }
}
