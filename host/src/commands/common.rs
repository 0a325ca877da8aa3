//! What `run` and `submit` share: reading and checking a task component,
//! the outer trace context, submitting in a window, and printing results.

use std::future::Future as _;
use std::io::{IsTerminal as _, Write};
use std::path::Path;
use std::task::Poll;

use anyhow::{Context as _, anyhow};
use wtrace::Digest;
use wtrace::Runtime;
use wtrace::cluster::{Client, TaskRef, TaskResult};
use wtrace::exec::task::TaskLinker;
use wtrace::runtime::wave::Invocation;

/// Most tasks submitted and not yet gathered: enough to keep every worker
/// busy, few enough that a run of millions holds only these in memory.
const IN_FLIGHT: usize = 1 << 16;
/// Submissions per batch while refilling the window.
const REFILL: usize = 4096;

/// Submits `invocations` of `component` and hands each result to `gather`
/// in submission order. At most [`IN_FLIGHT`] tasks are out at once: the
/// window is topped up whenever half of it has been gathered. Before waiting
/// for a result that has not come yet, and at the end, `gather` is told to
/// let go of what it holds back.
pub async fn submit_in_order<'a>(
    client: &Client,
    component: &Digest,
    mut invocations: impl Iterator<Item = &'a Invocation>,
    gather: &mut impl Gather,
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
            gather.waiting()?;
            return Ok(());
        };
        let result = gather_one(task, gather).await?;
        gather.result(result)?;
    }
}

/// `task`'s result; if it has not come yet, `gather` is told it waits first.
pub async fn gather_one(task: TaskRef, gather: &mut impl Gather) -> anyhow::Result<TaskResult> {
    let mut result = std::pin::pin!(task.get());
    let ready = std::future::poll_fn(|cx| Poll::Ready(result.as_mut().poll(cx))).await;
    Ok(match ready {
        Poll::Ready(result) => result?,
        Poll::Pending => {
            gather.waiting()?;
            result.await?
        }
    })
}

/// What [`submit_in_order`] hands results to.
pub trait Gather {
    /// One result, in submission order.
    fn result(&mut self, result: TaskResult) -> std::io::Result<()>;
    /// No result is ready: what was held back (output in a buffer) goes out
    /// now, so a reader never waits on a result that came.
    fn waiting(&mut self) -> std::io::Result<()>;
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
/// for (each prefixed like Ray's) to `stdout`, then its result; returns
/// whether it failed. `stdout` is flushed before anything goes to standard
/// error, so the two keep their order where they meet (`2>&1`).
pub fn print_result(result: &TaskResult, stdout: &mut impl Write) -> std::io::Result<bool> {
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
        if !err.is_empty() {
            stdout.flush()?;
            let mut stderr = std::io::stderr().lock();
            for line in String::from_utf8_lossy(err).lines() {
                let _ = writeln!(stderr, "{prefix} {line}");
            }
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
            stdout.flush()?;
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: task {error}");
            if let Some(backtrace) = &error.backtrace {
                let _ = writeln!(stderr, "{backtrace}");
            }
            Ok(true)
        }
    }
}

/// Standard output for results: a line at a time on a terminal, in blocks
/// otherwise. A pipe or a file written a line per task took a system call
/// per task and, for a pipe, woke its reader each time; held in a buffer,
/// the lines go out when it fills, when no result is ready
/// ([`Gather::waiting`]), before anything is written to standard error, and
/// at the end.
pub struct ResultOutput {
    buffered: Option<std::io::BufWriter<std::io::Stdout>>,
}

impl ResultOutput {
    pub fn new() -> Self {
        let stdout = std::io::stdout();
        let buffered =
            (!stdout.is_terminal()).then(|| std::io::BufWriter::with_capacity(64 << 10, stdout));
        Self { buffered }
    }
}

impl Write for ResultOutput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match &mut self.buffered {
            Some(buffered) => buffered.write(bytes),
            None => std::io::stdout().write(bytes),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.buffered {
            Some(buffered) => buffered.write_all(bytes),
            None => std::io::stdout().write_all(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.buffered {
            Some(buffered) => buffered.flush(),
            None => std::io::stdout().flush(),
        }
    }
}

/// Prints results as they come, behind a progress bar on a terminal, and
/// counts the failures.
pub struct ResultPrinter {
    bar: Option<indicatif::ProgressBar>,
    out: ResultOutput,
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
            out: ResultOutput::new(),
            total,
            failed: 0,
        }
    }

    /// Prints one result.
    pub fn print(&mut self, result: &TaskResult) -> std::io::Result<()> {
        let out = &mut self.out;
        let mut print = || print_result(result, out);
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

    /// Prints results without a bar (`wtrace run`, which says nothing of
    /// them but its exit status).
    pub fn plain() -> Self {
        Self {
            bar: None,
            out: ResultOutput::new(),
            total: 0,
            failed: 0,
        }
    }

    /// Whether any task printed so far failed.
    pub fn any_failed(&self) -> bool {
        self.failed > 0
    }

    /// Writes out what waits in the output's buffer.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
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

impl Gather for ResultPrinter {
    fn result(&mut self, result: TaskResult) -> std::io::Result<()> {
        self.print(&result)
    }

    fn waiting(&mut self) -> std::io::Result<()> {
        self.flush()
    }
}
