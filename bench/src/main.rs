//! wtrace's benchmarks: every figure as a ratio taken in one run, against the
//! native OpenTelemetry SDK and against Ray on the same machine.
//!
//! ```text
//! scripts/bench.sh            # sets up (Ray in a venv, rotel) and runs everything
//! cargo run --release -p wtrace-bench -- --quick --no-ray
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, Tracer as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    SdkTracerProvider, SimpleSpanProcessor, SpanData, SpanExporter, SpanProcessor,
};
use wtrace::cluster::{LocalCluster, LocalClusterOptions};
use wtrace::exec::task::{self, TaskContext, TaskLinker};
use wtrace::runtime::wave::Invocation;
use wtrace::telemetry::export::{FileBatchProcessor, FileExporter};
use wtrace::{HookSpec, Limits, Runtime, Telemetry};
use wtrace_tests::guests;

/// The allocator of the `wtrace` binary: this process is the driver and
/// head of the cluster rows, as `wtrace run` is of its own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod actors;
mod transport;

/// wtrace's benchmarks: every figure with its target (scripts/bench.sh sets
/// up Ray and rotel first).
#[derive(clap::Parser)]
struct Options {
    /// Fewer tasks and rounds: a quick look, not figures to publish.
    #[arg(long)]
    quick: bool,
    /// Skip Ray (it needs the virtual environment scripts/bench.sh makes).
    #[arg(long = "no-ray", action = clap::ArgAction::SetFalse)]
    ray: bool,
    /// Run one measure only.
    #[arg(long, value_enum)]
    only: Option<Measure>,
    /// Traced tasks the memory measure runs after its warm-up, for a longer
    /// soak (default 2,000,000; 200,000 with --quick).
    #[arg(long)]
    memory_tasks: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Measure {
    /// Guest span against native span.
    Span,
    /// Tracing overhead of `wtrace run` and a cluster (and the Ray workload).
    Tasks,
    /// Tracing's cost where a task runs: one thread in process (also part
    /// of `tasks`).
    Executor,
    /// The Ray workload on wtrace and on Ray, and the ratio.
    Ray,
    /// Cold start of wtrace and of Ray.
    Cold,
    /// A worker's memory over two million tasks.
    Memory,
    /// Sustained export to a file and to OTLP.
    Export,
    /// How the rate and the tracing overhead change with workers and tasks.
    Scale,
    /// Trivial tasks over NATS against the local head, and with 1-3 nodes.
    Nats,
    /// Actor calls against tasks, over the local head and NATS, and
    /// against Ray's actor calls.
    Actors,
    /// The chaos run: normal and hostile tasks while workers are killed
    /// (only when asked for by name: it is long).
    Chaos,
}

struct Report {
    rows: Vec<(String, String, String)>,
}

impl Report {
    fn row(&mut self, what: &str, value: String, target: &str) {
        println!("{what:<58} {value:>22}   {target}");
        self.rows.push((what.to_owned(), value, target.to_owned()));
    }
}

fn main() -> anyhow::Result<()> {
    let options = <Options as clap::Parser>::parse();
    let wants = |measure: Measure| options.only.is_none_or(|only| only == measure);
    println!("wtrace benchmarks on {} ({} cores)", machine(), cores());
    println!("{:<58} {:>22}   target", "measure", "result");
    let mut report = Report { rows: Vec::new() };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The default hook writes to /tmp/spans: take out what the runs add.
    let before = span_files();
    if wants(Measure::Span) {
        spans(&options, &mut report)?;
    }
    let mut wtrace_traced = None;
    if options.only == Some(Measure::Executor) {
        executor_cost(&options, &mut report)?;
    }
    if wants(Measure::Tasks) {
        wtrace_traced = Some(rt.block_on(tasks(&options, &mut report))?);
    } else if options.ray && wants(Measure::Ray) {
        wtrace_traced = Some(rt.block_on(ray_shaped(&mut report))?);
    }
    if wants(Measure::Cold) || wants(Measure::Ray) {
        cold_start(&mut report, &options, wtrace_traced)?;
    }
    if wants(Measure::Memory) {
        rt.block_on(memory(&options, &mut report))?;
    }
    if wants(Measure::Export) {
        rt.block_on(export(&options, &mut report))?;
        rt.block_on(export_otlp(&options, &mut report))?;
    }
    if wants(Measure::Scale) {
        rt.block_on(scale(&options, &mut report))?;
    }
    if wants(Measure::Nats) {
        rt.block_on(transport::rows(&mut report, options.quick))?;
    }
    if wants(Measure::Actors) {
        rt.block_on(actors::measure(&mut report, options.quick, options.ray))?;
    }
    if options.only == Some(Measure::Chaos) {
        chaos(&options, &mut report)?;
    }
    remove_span_files_since(&before);
    if let Some(path) = std::env::var_os("WTRACE_BENCH_JSON") {
        let rows: Vec<_> = report
            .rows
            .iter()
            .map(|(w, v, t)| serde_json::json!({"measure": w, "result": v, "target": t}))
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}

fn span_files() -> std::collections::HashSet<PathBuf> {
    std::fs::read_dir("/tmp/spans")
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Removes the span files a run wrote, once it is over: unlinked before the
/// kernel writes them back, they cost no later run the disk's writeback
/// (tens of MB a traced run).
fn remove_span_files_since(before: &std::collections::HashSet<PathBuf>) {
    for file in span_files().difference(before) {
        let _ = std::fs::remove_file(file);
    }
}

fn machine() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn wtrace_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    exe.parent().expect("target/<profile>").join("wtrace")
}

/// A provider with a simple processor writing OTLP-JSON lines to `path`.
fn file_telemetry(path: &Path) -> anyhow::Result<Telemetry> {
    let exporter = FileExporter::open(path)?;
    Ok(Telemetry::new(
        SdkTracerProvider::builder()
            .with_span_processor(SimpleSpanProcessor::new(exporter))
            .build(),
    ))
}

/// The span-edges test guest, loaded in this process with no bound on the
/// spans a task may make or hold open: the span rows make hundreds of
/// thousands in one task.
fn span_edges_unbounded() -> anyhow::Result<(TaskLinker, task::TaskComponent)> {
    let runtime = Runtime::new(
        Limits {
            spans_per_task: u32::MAX,
            open_spans: u32::MAX,
            ..Limits::default()
        },
        None,
    )?;
    let linker = TaskLinker::new(&runtime)?;
    let component = linker.load("span-edges.wasm", &std::fs::read(guests::SPAN_EDGES)?)?;
    Ok((linker, component))
}

/// Guest span (two attributes + end through the bridge) against the same
/// span made with the SDK directly; same processor and file exporter. Two
/// shapes: attributes known at start (two host calls: `start-span`,
/// `finish-span`), and attributes set one by one after start (five: start,
/// two `set-attribute`, `end-span`, the handle's drop).
fn spans(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let n: u32 = if options.quick { 50_000 } else { 200_000 };
    let dir = tempfile::tempdir()?;
    let (linker, component) = span_edges_unbounded()?;
    // Per shape: native ns, guest ns, one pair per round, interleaved.
    let mut early = (Vec::new(), Vec::new());
    let mut late = (Vec::new(), Vec::new());
    let mut raw = (Vec::new(), Vec::new());
    let mut calls_only = Vec::new();
    for round in 0..5 {
        for (shape, export, times) in [
            ("early", "bench-spans", &mut early),
            ("late", "bench-spans-late", &mut late),
            ("raw", "bench-spans-raw", &mut raw),
        ] {
            let path = |side: &str| dir.path().join(format!("{shape}-{side}-{round}.json"));
            let telemetry = file_telemetry(&path("native"))?;
            let tracer = telemetry.tracer();
            let started = Instant::now();
            for _ in 0..n {
                if shape != "late" {
                    tracer
                        .span_builder("bench")
                        .with_attributes([KeyValue::new("a", 1), KeyValue::new("b", "two")])
                        .start(tracer)
                        .end();
                } else {
                    let mut span = tracer.span_builder("bench").start(tracer);
                    span.set_attribute(KeyValue::new("a", 1));
                    span.set_attribute(KeyValue::new("b", "two"));
                    span.end();
                }
            }
            times
                .0
                .push(started.elapsed().as_nanos() as f64 / f64::from(n));

            let telemetry = file_telemetry(&path("guest"))?;
            let cx = TaskContext::new("bench");
            let call = format!("{export}({n})");
            let started = Instant::now();
            let output = task::execute(&linker, Some(&telemetry), &component, export, &call, &cx);
            let elapsed = started.elapsed();
            output.result.map_err(|e| anyhow::anyhow!("{e}"))?;
            times.1.push(elapsed.as_nanos() as f64 / f64::from(n));
            if shape == "early" {
                // The same calls with tracing off: the component calls, the
                // lifting of their arguments and the span handles, and no
                // SDK span: what the bridge cannot take off a guest span.
                let started = Instant::now();
                let output = task::execute(&linker, None, &component, export, &call, &cx);
                let elapsed = started.elapsed();
                output.result.map_err(|e| anyhow::anyhow!("{e}"))?;
                calls_only.push(elapsed.as_nanos() as f64 / f64::from(n));
            }
        }
    }
    // The batch processor the default hook uses, flush included.
    let mut batched = Vec::new();
    for round in 0..3 {
        let exporter = FileExporter::open(&dir.path().join(format!("batch-{round}.json")))?;
        let telemetry = Telemetry::new(
            SdkTracerProvider::builder()
                .with_span_processor(wtrace::telemetry::export::batch_processor(
                    wtrace::telemetry::export::AnyExporter::File(Box::new(exporter)),
                ))
                .build(),
        );
        let tracer = telemetry.tracer();
        let started = Instant::now();
        for _ in 0..n {
            let mut span = tracer.span_builder("bench").start(tracer);
            span.set_attribute(KeyValue::new("a", 1));
            span.set_attribute(KeyValue::new("b", "two"));
            span.end();
        }
        telemetry.shutdown()?;
        batched.push(started.elapsed().as_nanos() as f64 / f64::from(n));
    }
    report.row(
        "native span, batch processor + file, flush included (ns)",
        format!("{:.0}", median(batched)),
        "",
    );
    let (native, guest) = (median(early.0), median(early.1));
    let (native_late, guest_late) = (median(late.0), median(late.1));
    report.row(
        "native span, simple processor + file (ns)",
        format!("{native:.0}"),
        "",
    );
    report.row(
        "guest span through the bridge, same (ns)",
        format!("{guest:.0}"),
        "",
    );
    report.row(
        "guest span / native span",
        format!("{:.2}x", guest / native),
        "<= 1.30x",
    );
    report.row(
        "same, attributes set after start (5 host calls): guest / native",
        format!("{:.2}x", guest_late / native_late),
        "",
    );
    let (native_raw, guest_raw) = (median(raw.0), median(raw.1));
    report.row(
        "same, encoding made once in the guest (no SDK work): guest / native",
        format!("{:.2}x", guest_raw / native_raw),
        "",
    );
    // Where a guest span's time goes: the native span it becomes, the two
    // component calls that carry it (measured untraced), and the rest, the
    // bridge's own work. 1.3x leaves calls and bridge 0.3x of the native.
    let calls = median(calls_only);
    report.row(
        "guest span: native span + component calls + bridge (ns)",
        format!(
            "{native:.0} + {calls:.0} + {:.0}",
            (guest - native - calls).max(0.0)
        ),
        &format!("calls + bridge <= {:.0}", 0.3 * native),
    );
    Ok(())
}

async fn cluster_rate(workers: usize, hook: Option<&str>, n: usize) -> anyhow::Result<f64> {
    let mut options = LocalClusterOptions::new(wtrace_bin());
    options.num_workers = workers;
    options.hook = hook.map(|h| h.parse::<HookSpec>()?.load()).transpose()?;
    let files = span_files();
    let cluster = LocalCluster::start(options).await?;
    let client = cluster.client(None).await?;
    let component = client.upload_file(guests::HELLO.as_ref()).await?;
    let call: Invocation = "my-function()".parse()?;
    let warm: Vec<Invocation> = vec![call.clone(); 200];
    for task in client
        .submit_many(&component, &warm, &opentelemetry::Context::new())
        .await?
    {
        task.get().await?;
    }
    let calls = vec![call; n];
    let started = Instant::now();
    let tasks = client
        .submit_many(&component, &calls, &opentelemetry::Context::new())
        .await?;
    for task in tasks {
        task.get()
            .await?
            .value
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    // The clock stops once every span of the run is in its file, as Ray's
    // does (its hook's simple processors write each span as it ends): the
    // workers wrote theirs before their results left, the driver writes its
    // submit spans here. Shutting the driver's telemetry and the cluster
    // down is not part of the rate, as `ray.shutdown()` is not of Ray's.
    if let Some(telemetry) = client.telemetry() {
        telemetry.sync_files()?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    if let Some(telemetry) = client.telemetry().cloned() {
        tokio::task::spawn_blocking(move || telemetry.shutdown()).await??;
    }
    client.shutdown_cluster().await?;
    cluster.stop().await;
    remove_span_files_since(&files);
    Ok(rate)
}

/// [`cluster_rate`] untraced and traced, in turns first as [`in_turns`]
/// orders them: (untraced, traced).
async fn cluster_pair(round: usize, workers: usize, n: usize) -> anyhow::Result<(f64, f64)> {
    in_turns(round, |traced| {
        cluster_rate(workers, traced.then_some("default"), n)
    })
    .await
}

/// A whole `wtrace run` of `n` × `invocation` of the component at `guest`,
/// as a process: its rate, and the CPU (user + system, driver and workers)
/// it spent per task in µs.
fn run_rate(
    guest: &str,
    invocation: &str,
    hook: Option<&str>,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    run_rate_with(guest, invocation, hook, n, &[])
}

/// [`run_rate`] with `env` set for the run.
fn run_rate_with(
    guest: &str,
    invocation: &str,
    hook: Option<&str>,
    n: usize,
    env: &[(&str, &str)],
) -> anyhow::Result<(f64, f64)> {
    let mut command = Command::new(wtrace_bin());
    command.envs(env.iter().copied());
    command.args([
        "run",
        "-n",
        &cores().to_string(),
        "--repeat",
        &n.to_string(),
    ]);
    if let Some(hook) = hook {
        command.arg(format!("--tracing-startup-hook={hook}"));
    }
    command.args([guest, invocation]);
    let files = span_files();
    let cpu_before = children_cpu();
    let started = Instant::now();
    let output = command.output()?;
    let elapsed = started.elapsed();
    remove_span_files_since(&files);
    if !output.status.success() {
        bail!(
            "wtrace run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let cpu = children_cpu() - cpu_before;
    Ok((
        n as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64,
    ))
}

/// `rounds` pairs of `wtrace run`s of `n` × `invocation`, untraced and
/// with the default hook, after a warm-up run that fills the compile cache:
/// each pair's rates, and the median CPU per task of each side. The two
/// runs of a pair go back to back, in turns first, so the machine's load
/// drifting, or one run paying for the last one's writes, favours neither.
async fn run_pairs(
    guest: &str,
    invocation: &str,
    n: usize,
    rounds: usize,
) -> anyhow::Result<RunPairs> {
    run_rate(guest, invocation, Some("default"), 1)?;
    let mut runs = Vec::new();
    let mut cpu = Vec::new();
    for round in 0..rounds {
        let ((plain, plain_cpu), (traced, traced_cpu)) = in_turns(round, |traced| async move {
            run_rate(guest, invocation, traced.then_some("default"), n)
        })
        .await?;
        runs.push((plain, traced));
        cpu.push((plain_cpu, traced_cpu));
    }
    let (plain_cpu, traced_cpu): (Vec<f64>, Vec<f64>) = cpu.into_iter().unzip();
    Ok(RunPairs {
        rates: runs,
        plain_cpu: median(plain_cpu),
        traced_cpu: median(traced_cpu),
    })
}

/// `measure(false)` (untraced) and `measure(true)` (traced), in that order
/// on even rounds and the other way on odd ones; their results in the
/// order (untraced, traced).
async fn in_turns<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    round: usize,
    mut measure: impl FnMut(bool) -> F,
) -> anyhow::Result<(T, T)> {
    if round.is_multiple_of(2) {
        let plain = measure(false).await?;
        Ok((plain, measure(true).await?))
    } else {
        let traced = measure(true).await?;
        Ok((measure(false).await?, traced))
    }
}

/// Untraced and traced `wtrace run`s of one workload.
struct RunPairs {
    /// (untraced, traced) tasks per second, a pair per round.
    rates: Vec<(f64, f64)>,
    /// Median CPU per task, µs.
    plain_cpu: f64,
    traced_cpu: f64,
}

/// The CPU time process `pid` has taken so far (zero when it cannot be read).
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses: utime and
    // stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let used = field(11) + field(12);
    Duration::from_secs_f64(used as f64 / ticks)
}

/// CPU time of every finished child process and of the processes they
/// waited for (a `wtrace run` waits for its workers).
fn children_cpu() -> Duration {
    children_usage().0
}

/// [`children_cpu`], and the page faults those processes took.
fn children_usage() -> (Duration, u64) {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (
        time(usage.ru_utime) + time(usage.ru_stime),
        (usage.ru_minflt + usage.ru_majflt) as u64,
    )
}

/// The medians of pairs of (untraced, traced) rates, and of the pairs'
/// ratios with their range. A pair's two runs go back to back, so its
/// ratio is taken under one load of the machine; the medians of the rates
/// may come from different pairs.
struct Pairs {
    plain: f64,
    traced: f64,
    ratio: f64,
    low: f64,
    high: f64,
    count: usize,
}

impl Pairs {
    fn of(runs: Vec<(f64, f64)>) -> Self {
        let ratios: Vec<f64> = runs.iter().map(|(plain, traced)| traced / plain).collect();
        let (low, high) = ratios.iter().fold((f64::MAX, f64::MIN), |(low, high), r| {
            (low.min(*r), high.max(*r))
        });
        let count = ratios.len();
        let (plain, traced): (Vec<f64>, Vec<f64>) = runs.into_iter().unzip();
        Self {
            plain: median(plain),
            traced: median(traced),
            ratio: median(ratios),
            low,
            high,
            count,
        }
    }
}

impl std::fmt::Display for Pairs {
    /// The ratio, and the pairs' range when there are several.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2}x", self.ratio)?;
        if self.count > 1 {
            write!(f, " ({:.2}-{:.2})", self.low, self.high)?;
        }
        Ok(())
    }
}

/// The rows of one tracing-overhead measure: the medians of (untraced,
/// traced) rates, and the median of the pairs' ratios with their range.
fn overhead_rows(report: &mut Report, what: &str, n: usize, runs: Vec<(f64, f64)>, target: &str) {
    let pairs = Pairs::of(runs);
    report.row(
        &format!("{what}, {n} tasks, no hook (tasks/s)"),
        format!("{:.0}", pairs.plain),
        "",
    );
    report.row(
        &format!("{what}, {n} tasks, default hook (tasks/s)"),
        format!("{:.0}", pairs.traced),
        "",
    );
    report.row(
        &format!("{what}: traced / untraced, median of {} pairs", pairs.count),
        pairs.to_string(),
        target,
    );
}

/// A submit span's context as a worker gets it: the parent of the execute
/// spans the in-process measures make.
fn submit_span_context() -> opentelemetry::trace::SpanContext {
    opentelemetry::trace::SpanContext::new(
        opentelemetry::trace::TraceId::from(0x302954deb0e9910d2730f5ded7a88e7a_u128),
        opentelemetry::trace::SpanId::from(0xa5ab168519f12e6e_u64),
        opentelemetry::trace::TraceFlags::SAMPLED,
        true,
        Default::default(),
    )
}

/// One thread running trivial tasks in this process, without telemetry and
/// with the default hook's (spans, log records and metrics to files): what
/// tracing adds to a task where it runs, with no driver, head or IPC.
fn executor_cost(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let runtime = Runtime::new(Limits::default(), None)?;
    let linker = TaskLinker::new(&runtime)?;
    let component = linker.load("hello.wasm", &std::fs::read(guests::HELLO)?)?;
    let info = wtrace::capabilities::provider::WorkerInfo {
        worker_id: "bench-w1".into(),
        node_id: "bench".into(),
        job_id: "bench".into(),
    };
    let telemetry = "default".parse::<HookSpec>()?.load()?.run(
        &runtime,
        info,
        &wtrace::ExportPolicy::default(),
        None,
    )?;
    let parent = submit_span_context();
    // Short batches in alternating order, and the median of each round's
    // difference: the machine's speed drifts over seconds, and a batch of
    // 200 trivial tasks takes a few ms, so both sides of a round see it alike.
    let batch = 200;
    let rounds = if options.quick { 50 } else { 150 };
    let (mut plain, mut traced, mut part) = (Vec::new(), Vec::new(), Vec::new());
    let mut tag = 0;
    for round in 0..=rounds {
        let mut pair = [0.0; 2];
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for traced in order {
            let started = Instant::now();
            for _ in 0..batch {
                tag += 1;
                let task_id = format!("bench-{tag}");
                let cx = TaskContext {
                    parent: Some(parent.clone()),
                    ..TaskContext::new(&task_id)
                };
                let output = task::execute(
                    &linker,
                    traced.then_some(&telemetry),
                    &component,
                    "my-function",
                    "my-function()",
                    &cx,
                );
                output.result.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            if traced {
                telemetry.sync_files()?;
            }
            pair[usize::from(traced)] = started.elapsed().as_nanos() as f64 / 1000.0 / batch as f64;
        }
        // Round 0 warms the caches and the allocator.
        if round > 0 {
            plain.push(pair[0]);
            traced.push(pair[1]);
            part.push(pair[1] - pair[0]);
        }
    }
    telemetry.shutdown()?;
    let (plain, traced, part) = (median(plain), median(traced), median(part));
    report.row(
        "one task in process, untraced / traced (us)",
        format!("{plain:.2} / {traced:.2}"),
        "",
    );
    report.row(
        "  tracing's part where the task runs, median of the rounds (us)",
        format!("{part:.2} ({:.0} % of untraced)", 100.0 * part / plain),
        "",
    );
    Ok(())
}

/// Collects the spans of an in-process task.
#[derive(Debug, Clone, Default)]
struct Collect(std::sync::Arc<std::sync::Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().expect("collected spans").extend(batch);
        Ok(())
    }
}

/// What exporting one span to a file costs, in ns.
struct ExportCost {
    /// The file exporter: OTLP-JSON encoding and the write.
    export: f64,
    /// Encoding only, through `opentelemetry-proto`'s messages and serde.
    proto_encoding: f64,
    /// Encoding only, with wtrace's line encoder.
    encoding: f64,
    /// Making and ending a span like it, handed to a processor that drops it.
    creation: f64,
    /// Making and ending it through the default hook's file processor, from
    /// `start` to the bytes in the file: creation, the hand-off to the
    /// processor's batch, encoding and the write.
    whole: f64,
}

/// Takes spans without doing anything with them, so that what is timed is
/// the SDK making them.
#[derive(Debug)]
struct Discard;

impl SpanProcessor for Discard {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
    fn on_end(&self, span: SpanData) {
        std::hint::black_box(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// ns to start and end `n` spans with `like`'s name, kind and attributes.
fn creation_cost(like: &SpanData, provider: SdkTracerProvider, n: usize) -> f64 {
    use opentelemetry::trace::TracerProvider as _;
    let tracer = provider.tracer("wtrace");
    let started = Instant::now();
    for _ in 0..n {
        tracer
            .span_builder(like.name.clone())
            .with_kind(like.span_kind.clone())
            .with_attributes(like.attributes.iter().cloned())
            .start(&tracer)
            .end();
    }
    let per_span = started.elapsed().as_nanos() as f64 / n as f64;
    let _ = provider.shutdown();
    per_span
}

/// What the file exporter takes per span for batches of the default hook's
/// size, each span a copy of a real execute span of the trivial task, with
/// every attribute of the contract; and the encoding alone, both ways.
async fn span_export_cost(options: &Options) -> anyhow::Result<ExportCost> {
    let collect = Collect::default();
    let telemetry = Telemetry::new(
        SdkTracerProvider::builder()
            .with_simple_exporter(collect.clone())
            .build(),
    );
    let runtime = Runtime::new(Limits::default(), None)?;
    let linker = TaskLinker::new(&runtime)?;
    let component = linker.load("hello.wasm", &std::fs::read(guests::HELLO)?)?;
    let parent = submit_span_context();
    let cx = TaskContext {
        parent: Some(parent),
        ..TaskContext::new("801a4f83-1")
    };
    let output = task::execute(
        &linker,
        Some(&telemetry),
        &component,
        "my-function",
        "my-function()",
        &cx,
    );
    output.result.map_err(|e| anyhow::anyhow!("{e}"))?;
    telemetry.shutdown()?;
    let span = collect
        .0
        .lock()
        .expect("collected spans")
        .drain(..)
        .find(|span| span.name == "my-function execute")
        .context("the task made no execute span")?;
    let dir = tempfile::tempdir()?;
    let exporter = wtrace::telemetry::export::AnyExporter::File(Box::new(FileExporter::open(
        &dir.path().join("export.json"),
    )?));
    let batch_size = exporter.batch_size();
    let batches = if options.quick { 200 } else { 1000 };
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let pending: Vec<Vec<SpanData>> = (0..batches)
            .map(|_| vec![span.clone(); batch_size])
            .collect();
        let started = Instant::now();
        for batch in pending {
            exporter.export(batch).await?;
        }
        rounds.push(started.elapsed().as_nanos() as f64 / (batches * batch_size) as f64);
    }
    let (proto_encoding, encoding) = encoding_cost(&span, batch_size, batches);
    let n = batches * batch_size / 4;
    let creation = creation_cost(
        &span,
        SdkTracerProvider::builder()
            .with_span_processor(Discard)
            .build(),
        n,
    );
    let whole = creation_cost(
        &span,
        SdkTracerProvider::builder()
            .with_span_processor(FileBatchProcessor::new(FileExporter::open(
                &dir.path().join("whole.json"),
            )?))
            .build(),
        n,
    );
    Ok(ExportCost {
        export: median(rounds),
        proto_encoding,
        encoding,
        creation,
        whole,
    })
}

/// Nanoseconds per span to encode batches of `span` as OTLP-JSON lines:
/// through `opentelemetry-proto`'s messages and serde (the reference the
/// encoder is held to), and with wtrace's encoder.
fn encoding_cost(span: &SpanData, batch_size: usize, batches: usize) -> (f64, f64) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    let resource = opentelemetry_sdk::Resource::builder().build();
    let attributes: ResourceAttributesWithSchema = (&resource).into();
    let batch = vec![span.clone(); batch_size];
    let per_span = |elapsed: Duration| elapsed.as_nanos() as f64 / (batches * batch_size) as f64;
    let (mut proto, mut ours) = (Vec::new(), Vec::new());
    let mut encoder = wtrace::telemetry::export::LineEncoder::new();
    encoder.set_resource(&resource);
    let mut line = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..batches {
            let request = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(batch.clone(), &attributes),
            };
            line.clear();
            serde_json::to_writer(&mut line, &request).expect("OTLP serializes");
            std::hint::black_box(&line);
        }
        let converting = started.elapsed();
        // Cloning the batch (and dropping the clones) is not encoding: take
        // it out.
        let started = Instant::now();
        for _ in 0..batches {
            std::hint::black_box(batch.clone());
        }
        proto.push(per_span(converting.saturating_sub(started.elapsed())));
        let started = Instant::now();
        for _ in 0..batches {
            std::hint::black_box(encoder.encode(&batch));
        }
        ours.push(per_span(started.elapsed()));
    }
    (median(proto), median(ours))
}

/// Rounds of work in the busy task: about 100 µs of CPU on this machine.
const BUSY_ROUNDS: u32 = 40_000;

/// Trivial tasks per second, without and with tracing (the default hook).
async fn tasks(options: &Options, report: &mut Report) -> anyhow::Result<f64> {
    let n = if options.quick { 5_000 } else { 20_000 };
    let rounds = if options.quick { 3 } else { 7 };
    let trivial = run_pairs(guests::HELLO, "my-function()", n, rounds).await?;
    let (plain_cpu, traced_cpu) = (trivial.plain_cpu, trivial.traced_cpu);
    overhead_rows(report, "wtrace run", n, trivial.rates, ">= 0.90x");
    // Why the ratio is what it is. On saturated cores, 0.9x the rate leaves
    // tracing a ninth of an untraced task's CPU; compare what it takes, and
    // what the file export of one of a task's two spans costs.
    report.row(
        "wtrace run: CPU per task, no hook / default hook (us)",
        format!("{plain_cpu:.1} / {traced_cpu:.1}"),
        "",
    );
    report.row(
        "tracing's CPU per task / what 0.90x leaves it (us)",
        format!("{:.1} / {:.1}", traced_cpu - plain_cpu, plain_cpu / 9.0),
        "",
    );
    // Part of that is paid once per run, not per task: each process loads
    // and runs the hook, and flushes and closes its exporters at exit.
    let mut once = (Vec::new(), Vec::new());
    for _ in 0..3 {
        once.0
            .push(run_rate(guests::HELLO, "my-function()", None, 1)?.1);
        once.1
            .push(run_rate(guests::HELLO, "my-function()", Some("default"), 1)?.1);
    }
    let fixed = (median(once.1) - median(once.0)).max(0.0);
    report.row(
        "  of it, paid once per run / per task without it (ms, us)",
        format!(
            "{:.1} / {:.1}",
            fixed / 1000.0,
            traced_cpu - plain_cpu - fixed / n as f64
        ),
        "",
    );
    executor_cost(options, report)?;
    let cost = span_export_cost(options).await?;
    report.row(
        "file export of one execute span: encode + write (us)",
        format!("{:.2}", cost.export / 1000.0),
        "",
    );
    // The export's two parts: the encoding alone (timed apart, below), and
    // the rest of it, the write into the page cache.
    report.row(
        "a task's two spans: creation, hand-off, encoding, write (us)",
        format!(
            "{:.2}, {:.2}, {:.2}, {:.2}",
            2.0 * cost.creation / 1000.0,
            2.0 * (cost.whole - cost.creation - cost.export).max(0.0) / 1000.0,
            2.0 * cost.encoding.min(cost.export) / 1000.0,
            2.0 * (cost.export - cost.encoding).max(0.0) / 1000.0
        ),
        "",
    );
    report.row(
        "encoding it: opentelemetry-proto + serde / wtrace (ns)",
        format!(
            "{:.0} / {:.0} = {:.1}x",
            cost.proto_encoding,
            cost.encoding,
            cost.proto_encoding / cost.encoding
        ),
        "",
    );
    // Which signal costs what: the file hook with spans alone, then with
    // log records, then with metrics too (all to files, spans batched).
    // Under /tmp/spans, where a hook may write without --allow-span-dir.
    std::fs::create_dir_all("/tmp/spans")?;
    let dir = tempfile::tempdir_in("/tmp/spans")?;
    let dir_text = dir.path().to_string_lossy().into_owned();
    let hook = format!("{}:setup-tracing", guests::FILE_HOOK);
    let allow = [
        ("WTRACE_SPAN_DIR", dir_text.as_str()),
        ("WTRACE_TEST_BATCH", "1"),
    ];
    // Interleaved with an untraced run each round, as the machine's load
    // drifts; medians of the differences.
    let mut split = vec![Vec::new(); 3];
    for _ in 0..3 {
        let untraced = run_rate(guests::HELLO, "my-function()", None, n)?.1;
        for (i, leave_out) in [
            &[
                ("WTRACE_TEST_NO_LOGS", "1"),
                ("WTRACE_TEST_NO_METRICS", "1"),
            ][..],
            &[("WTRACE_TEST_NO_METRICS", "1")][..],
            &[][..],
        ]
        .into_iter()
        .enumerate()
        {
            let env: Vec<_> = allow.iter().chain(leave_out).copied().collect();
            let traced = run_rate_with(guests::HELLO, "my-function()", Some(&hook), n, &env)?.1;
            split[i].push(traced - untraced);
        }
    }
    let split: Vec<f64> = split.into_iter().map(median).collect();
    report.row(
        "tracing's CPU per task: spans / + logs / + metrics (us)",
        format!("{:.1} / {:.1} / {:.1}", split[0], split[1], split[2]),
        "",
    );
    // The same spans on tasks with work of their own (`busy`: rounds of
    // arithmetic, no span), as a share of what they cost: what a user with
    // real tasks pays.
    let busy = format!("busy({BUSY_ROUNDS})");
    let n_busy = n / 2;
    let busy = run_pairs(guests::SPAN_EDGES, &busy, n_busy, rounds).await?;
    report.row(
        "busy-task run: CPU per task, no hook / default hook (us)",
        format!("{:.0} / {:.0}", busy.plain_cpu, busy.traced_cpu),
        "",
    );
    overhead_rows(report, "busy-task run", n_busy, busy.rates, ">= 0.97x");
    let mut runs = Vec::new();
    for round in 0..rounds {
        runs.push(cluster_pair(round, cores(), n).await?);
    }
    overhead_rows(report, "cluster", n, runs, ">= 0.90x");

    ray_shaped(report).await
}

/// Trivial tasks on a started cluster with 1, 2 and 4 workers, then with
/// 2 000, 20 000 and 200 000 tasks: whether the rate and tracing's share
/// hold as the work grows (on two cores, 4 workers oversubscribe them).
async fn scale(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let n = if options.quick { 5_000 } else { 20_000 };
    // Pairs in turns, as the overhead rows take them: one pair alone strays
    // as far as the machine's load does.
    let rounds = if options.quick { 1 } else { 3 };
    let pairs = |workers: usize, n: usize| async move {
        let mut runs = Vec::new();
        for round in 0..rounds {
            runs.push(cluster_pair(round, workers, n).await?);
        }
        let pairs = Pairs::of(runs);
        anyhow::Ok(format!(
            "{:.1}k / {:.1}k = {pairs}",
            pairs.plain / 1000.0,
            pairs.traced / 1000.0,
        ))
    };
    let what = |workers: usize, n: usize| {
        let pairs = if rounds > 1 {
            format!(", median of {rounds} pairs")
        } else {
            String::new()
        };
        format!("cluster, {workers} workers, {n} tasks: untraced / traced{pairs}")
    };
    for workers in [1, 2, 4] {
        report.row(&what(workers, n), pairs(workers, n).await?, "");
    }
    let counts: &[usize] = if options.quick {
        &[2_000, 20_000]
    } else {
        &[2_000, 20_000, 200_000]
    };
    for &n in counts {
        report.row(&what(cores(), n), pairs(cores(), n).await?, "");
    }
    Ok(())
}

/// The Ray workload on a started cluster, traced: 2000 tasks submitted at
/// once, then all gathered.
async fn ray_shaped(report: &mut Report) -> anyhow::Result<f64> {
    let mut rates = Vec::new();
    for _ in 0..3 {
        rates.push(cluster_rate(cores(), Some("default"), 2000).await?);
    }
    let rate = median(rates);
    report.row(
        "cluster, 2000 tasks at once, default hook (tasks/s)",
        format!("{rate:.0}"),
        "",
    );
    Ok(rate)
}

/// `wtrace run` of one traced task as a process, and Ray's equivalent.
fn cold_start(
    report: &mut Report,
    options: &Options,
    wtrace_traced: Option<f64>,
) -> anyhow::Result<()> {
    // ms of wall time for `command` to run and succeed, and the CPU (ms)
    // and page faults of all its processes.
    let timed_with_usage = |command: &mut Command| -> anyhow::Result<(f64, f64, u64)> {
        let (cpu_before, faults_before) = children_usage();
        let started = Instant::now();
        let output = command.output()?;
        if !output.status.success() {
            bail!("{}", String::from_utf8_lossy(&output.stderr));
        }
        let wall = started.elapsed().as_secs_f64() * 1000.0;
        let (cpu, faults) = children_usage();
        Ok((
            wall,
            (cpu - cpu_before).as_secs_f64() * 1000.0,
            faults - faults_before,
        ))
    };
    let timed = |command: &mut Command| timed_with_usage(command).map(|(wall, _, _)| wall);
    // One `wtrace run` of a single task, with the default hook or none.
    let once = |hook: bool| {
        let mut command = Command::new(wtrace_bin());
        command.arg("run");
        if hook {
            command.arg("--tracing-startup-hook=default");
        }
        timed_with_usage(command.args([guests::HELLO, "my-function()"]))
    };
    // The floor under it: starting the binary at all (`wtrace --version`),
    // which the driver and each worker of a run pay.
    let bare = || timed(Command::new(wtrace_bin()).arg("--version"));
    // Warm the compile cache first; then interleaved, as the load drifts.
    once(true)?;
    let (mut traced, mut untraced, mut started) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        traced.push(once(true)?);
        untraced.push(once(false)?);
        started.push(bare()?);
    }
    // Median wall ms, CPU ms and page faults of each side.
    let medians = |runs: &[(f64, f64, u64)]| {
        (
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect()),
            median(runs.iter().map(|r| r.2 as f64).collect()),
        )
    };
    let ((cold, traced_cpu, traced_faults), (untraced, untraced_cpu, untraced_faults)) =
        (medians(&traced), medians(&untraced));
    let started = median(started);
    report.row(
        "wtrace run cold start, one traced task (ms)",
        format!("{cold:.1}"),
        "<= 20 ms",
    );
    report.row(
        "  where it goes: the same run untraced / the hook's part (ms)",
        format!("{untraced:.1} / {:.1}", (cold - untraced).max(0.0)),
        "",
    );
    report.row(
        "  starting the binary at all, per process: driver, each worker (ms)",
        format!("{started:.1}"),
        "",
    );
    // What limits it: the three processes' CPU over the machine's cores is
    // a floor under the wall time, and page faults (the loader's
    // relocations, each fresh heap page) are much of that CPU.
    report.row(
        "  CPU of all its processes, untraced / traced (ms; / cores = a floor)",
        format!(
            "{untraced_cpu:.1} / {traced_cpu:.1} (floor {:.1})",
            traced_cpu / cores() as f64
        ),
        "",
    );
    report.row(
        "  page faults of all its processes, untraced / traced",
        format!("{untraced_faults:.0} / {traced_faults:.0}"),
        "",
    );
    if !options.ray {
        return Ok(());
    }
    let ray = ray_bench()?;
    report.row(
        "Ray, 2000 tasks, no tracing (tasks/s)",
        format!("{:.0}", ray.plain),
        "",
    );
    report.row(
        "Ray, 2000 tasks, default tracing hook (tasks/s)",
        format!("{:.0}", ray.traced),
        "",
    );
    if let Some(wtrace) = wtrace_traced {
        report.row(
            "wtrace / Ray, 2000 tasks, both traced",
            format!("{:.1}x", wtrace / ray.traced),
            ">= 100x",
        );
    }
    report.row(
        "Ray cold start, ray.init + one task + shutdown (ms)",
        format!("{:.0}", ray.cold_ms),
        "",
    );
    report.row(
        "Ray cold start / wtrace cold start",
        format!("{:.0}x", ray.cold_ms / cold),
        "",
    );
    Ok(())
}

struct Ray {
    plain: f64,
    traced: f64,
    cold_ms: f64,
}

fn ray_bench() -> anyhow::Result<Ray> {
    let value = run_ray_bench(&[])?;
    let field = |name: &str| {
        value[name]
            .as_f64()
            .with_context(|| format!("Ray printed no {name:?} in {value}"))
    };
    Ok(Ray {
        plain: field("plain")?,
        traced: field("traced")?,
        cold_ms: field("cold_ms")?,
    })
}

/// Runs `ray_bench.py` with `args`: the JSON line it prints last.
fn run_ray_bench(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let python = std::env::var("WTRACE_RAY_PYTHON")
        .unwrap_or_else(|_| "target/tools/ray-venv/bin/python".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ray_bench.py");
    let output = Command::new(&python)
        .arg(&script)
        .args(args)
        .output()
        .with_context(|| {
            format!("cannot run {python} (run scripts/bench.sh, which installs Ray)")
        })?;
    if !output.status.success() {
        bail!(
            "the Ray benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let last = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    serde_json::from_str(&last).with_context(|| format!("Ray printed {last:?}"))
}

/// Ray's traced calls per second on one actor (`ray_bench.py actors`).
fn ray_actor_rate() -> anyhow::Result<f64> {
    let value = run_ray_bench(&["actors"])?;
    value["actor_traced"]
        .as_f64()
        .with_context(|| format!("Ray printed no \"actor_traced\" in {value}"))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// A worker's resident memory idle, and after many tasks.
async fn memory(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let total = options
        .memory_tasks
        .unwrap_or(if options.quick { 200_000 } else { 2_000_000 })
        .max(40_000);
    let mut cluster_options = LocalClusterOptions::new(wtrace_bin());
    cluster_options.num_workers = 1;
    cluster_options.hook = Some("default".parse::<HookSpec>()?.load()?);
    let cluster = LocalCluster::start(cluster_options).await?;
    let pid = cluster.worker_pids()[0];
    let client = cluster.client(None).await?;
    let component = client.upload_file(guests::HELLO.as_ref()).await?;
    let batch: Vec<Invocation> = vec!["my-func()".parse()?; 10_000];
    let run = |count: usize| {
        let client = &client;
        let component = &component;
        let batch = &batch;
        async move {
            for _ in 0..count / batch.len() {
                for task in client
                    .submit_many(component, batch, &opentelemetry::Context::new())
                    .await?
                {
                    task.get()
                        .await?
                        .value
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
            anyhow::Ok(())
        }
    };
    run(50_000).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle = rss_kib(pid)?;
    let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
    report.row(
        "worker RSS idle, after 50000 warm-up tasks (MiB)",
        mib(idle),
        "",
    );
    // Four readings: the allocator's pools fill over the first ones, and
    // growth is judged over the second half.
    let step = total / 4;
    let mut readings = Vec::new();
    for i in 1..=4 {
        run(step).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let rss = rss_kib(pid)?;
        report.row(
            &format!("worker RSS after {} more traced tasks (MiB)", i * step),
            mib(rss),
            "",
        );
        readings.push(rss);
    }
    report.row(
        &format!("worker RSS growth over the last {} tasks", total / 2),
        format!(
            "{:+.1}%",
            (readings[3] as f64 / readings[1] as f64 - 1.0) * 100.0
        ),
        "no growth beyond noise",
    );
    if let Some(telemetry) = client.telemetry().cloned() {
        tokio::task::spawn_blocking(move || telemetry.shutdown()).await??;
    }
    client.shutdown_cluster().await?;
    cluster.stop().await;
    Ok(())
}

/// Spans per second one worker sustains to the file exporter, all exported.
async fn export(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let tasks = if options.quick { 5 } else { 20 };
    let per_task = 20_000u32;
    let dir = tempfile::tempdir()?;
    // The file hook writes where WTRACE_SPAN_DIR says, batching with WTRACE_TEST_BATCH.
    // SAFETY: set before any thread of ours reads the environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("WTRACE_SPAN_DIR", dir.path());
        std::env::set_var("WTRACE_TEST_BATCH", "1");
    }
    let cpu_before = children_cpu();
    let elapsed = span_flood(guests::FILE_HOOK, Some(dir.path()), tasks, per_task).await?;
    let worker_cpu = children_cpu().saturating_sub(cpu_before);
    let files = wtrace::spans::SpanFiles::read(&[dir.path().to_owned()])?;
    let exported = files.spans.iter().filter(|s| s.name == "bench").count();
    let expected = tasks * per_task as usize;
    report.row(
        "file export: spans/s one worker sustains, flushed",
        format!("{:.0}", expected as f64 / elapsed.as_secs_f64()),
        ">= 1000000",
    );
    // Where the time goes: the guest making the span, the bridge, the
    // encoding on the executor thread and the write, all in the worker.
    report.row(
        "file export: the worker's CPU per span, all of it (us)",
        format!("{:.2}", worker_cpu.as_secs_f64() * 1e6 / expected as f64),
        "",
    );
    report.row(
        "file export: spans exported / spans made",
        format!("{exported}/{expected}"),
        "zero dropped",
    );
    // 1 M spans/s leaves a span 1 µs of the worker's one executor thread.
    let parts = guest_span_parts(options)?;
    report.row(
        "  where a guest span goes: calls / bridge + SDK span / encoding / write (us)",
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2}; in all {:.2}",
            parts.calls, parts.bridge_and_sdk, parts.encoding, parts.write, parts.whole
        ),
        "<= 1.00 for 1 M/s",
    );
    Ok(())
}

/// Where a guest span of the file-export row spends its time, in µs, each
/// part timed in this process on one thread as the worker's executor runs
/// it: the same guest loop (`bench-spans`) untraced (the component calls and
/// the guest SDK's work), then traced with processors that do more each
/// time: one that drops the span (the bridge, the SDK span and its hand-off
/// to the processor), one that only encodes it, and the default hook's file
/// processor (the encoding and the write).
///
/// Each part is the median of the rounds' differences, not the difference
/// of medians, and reads 0 where the machine's drift made it negative; so
/// the parts need not add up to `whole`, the traced loop's own median.
struct GuestSpanParts {
    calls: f64,
    bridge_and_sdk: f64,
    encoding: f64,
    write: f64,
    whole: f64,
}

/// A processor that encodes each span as the file processor does and
/// throws the lines away: the encoding without the write.
#[derive(Debug, Default)]
struct EncodeOnly(std::sync::Mutex<wtrace::telemetry::export::LineEncoder>);

impl SpanProcessor for EncodeOnly {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
    fn on_end(&self, span: SpanData) {
        let mut encoder = self.0.lock().expect("encoder");
        encoder.add(&span);
        // The file processor's high-water mark: a line at a time.
        if encoder.encoded_len() > 256 << 10 {
            std::hint::black_box(encoder.finish());
        }
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// [`GuestSpanParts`], from five interleaved rounds.
fn guest_span_parts(options: &Options) -> anyhow::Result<GuestSpanParts> {
    let n: u32 = if options.quick { 50_000 } else { 200_000 };
    let dir = tempfile::tempdir()?;
    let (linker, component) = span_edges_unbounded()?;
    let cx = TaskContext::new("bench");
    let call = format!("bench-spans({n})");
    // ns per span of the loop with `telemetry` (none: untraced).
    let run = |telemetry: Option<&Telemetry>| -> anyhow::Result<f64> {
        let started = Instant::now();
        let output = task::execute(&linker, telemetry, &component, "bench-spans", &call, &cx);
        output.result.map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(telemetry) = telemetry {
            telemetry.shutdown()?;
        }
        Ok(started.elapsed().as_nanos() as f64 / f64::from(n) / 1000.0)
    };
    let file = dir.path().join("parts.json");
    let providers: [&dyn Fn() -> anyhow::Result<SdkTracerProvider>; 3] = [
        &|| {
            Ok(SdkTracerProvider::builder()
                .with_span_processor(Discard)
                .build())
        },
        &|| {
            Ok(SdkTracerProvider::builder()
                .with_span_processor(EncodeOnly::default())
                .build())
        },
        &|| {
            let exporter = FileExporter::open(&file)?;
            Ok(SdkTracerProvider::builder()
                .with_span_processor(FileBatchProcessor::new(exporter))
                .build())
        },
    ];
    // Per round: the untraced loop, then each part as the difference of one
    // side and the side before it.
    let mut parts: [Vec<f64>; 5] = Default::default();
    for _ in 0..5 {
        let mut before = run(None)?;
        parts[0].push(before);
        for (side, provider) in providers.iter().enumerate() {
            let time = run(Some(&Telemetry::new(provider()?)))?;
            parts[side + 1].push(time - before);
            before = time;
        }
        parts[4].push(before);
    }
    let [calls, bridge_and_sdk, encoding, write, whole] = parts.map(|part| median(part).max(0.0));
    Ok(GuestSpanParts {
        calls,
        bridge_and_sdk,
        encoding,
        write,
        whole,
    })
}

/// Runs `tasks` tasks of `per_task` spans each on one worker whose hook is
/// `hook`, and returns the time until every span was flushed.
async fn span_flood(
    hook: &str,
    span_dir: Option<&Path>,
    tasks: usize,
    per_task: u32,
) -> anyhow::Result<Duration> {
    let mut cluster_options = LocalClusterOptions::new(wtrace_bin());
    cluster_options.num_workers = 1;
    cluster_options.limits.spans_per_task = per_task + 1;
    cluster_options.limits.open_spans = u32::MAX;
    cluster_options
        .policy
        .span_dirs
        .extend(span_dir.map(Path::to_owned));
    cluster_options.hook = Some(
        format!("{hook}:setup-tracing")
            .parse::<HookSpec>()?
            .load()?,
    );
    let cluster = LocalCluster::start(cluster_options).await?;
    let client = cluster
        .client(Some(Telemetry::new(SdkTracerProvider::builder().build())))
        .await?;
    let component = client.upload_file(guests::SPAN_EDGES.as_ref()).await?;
    let calls: Vec<Invocation> = vec![format!("bench-spans({per_task})").parse()?; tasks];
    let started = Instant::now();
    for task in client
        .submit_many(&component, &calls, &opentelemetry::Context::new())
        .await?
    {
        task.get()
            .await?
            .value
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    client.shutdown_cluster().await?;
    cluster.stop().await;
    Ok(started.elapsed())
}

/// Spans per second one worker sustains over OTLP/gRPC to a local rotel
/// collector, and how many rotel received.
async fn export_otlp(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let Some(rotel) = rotel_agent() else {
        report.row(
            "OTLP export",
            "skipped: rotel missing".into(),
            "run scripts/bench.sh",
        );
        return Ok(());
    };
    let tasks = if options.quick { 5 } else { 20 };
    let per_task = 20_000u32;
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        })
        .collect::<Result<_, _>>()?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("rotel.log");
    let mut collector = Command::new(rotel)
        .args([
            "start",
            "--exporter",
            "blackhole",
            "--debug-log",
            "traces",
            "--debug-log-verbosity",
            "basic",
        ])
        .arg("--otlp-grpc-endpoint")
        .arg(format!("127.0.0.1:{}", ports[0]))
        .arg("--otlp-http-endpoint")
        .arg(format!("127.0.0.1:{}", ports[1]))
        .arg("--pid-file")
        .arg(dir.path().join("rotel.pid"))
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", ports[0])).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "rotel did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: set before the cluster's processes start; no thread of ours reads it concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", ports[0]),
        );
        std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
    }
    let (cpu_before, rotel_before) = (children_cpu(), process_cpu(collector.id()));
    let elapsed = span_flood(guests::OTLP_HOOK, None, tasks, per_task).await?;
    // Where the time goes: the worker's CPU (a reaped child) and rotel's,
    // which share the two cores.
    let worker_cpu = children_cpu().saturating_sub(cpu_before);
    let rotel_cpu = process_cpu(collector.id()).saturating_sub(rotel_before);
    // Each "Received traces" line of rotel's log counts a batch's spans.
    let expected = tasks * per_task as usize;
    let received = |log: &Path| -> usize {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.split(" spans=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .sum()
    };
    // rotel writes its log through a buffer: stop it (SIGTERM) so it flushes.
    std::thread::sleep(Duration::from_millis(500));
    #[allow(unsafe_code)]
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(collector.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while collector.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = collector.kill();
    let _ = collector.wait();
    let got = received(&log);
    report.row(
        "OTLP/gRPC export to rotel: spans/s one worker sustains, flushed",
        format!("{:.0}", expected as f64 / elapsed.as_secs_f64()),
        ">= 250000",
    );
    let per_span = |cpu: Duration| cpu.as_secs_f64() * 1e6 / expected as f64;
    report.row(
        "OTLP/gRPC export: CPU per span, worker / rotel (us)",
        format!("{:.2} / {:.2}", per_span(worker_cpu), per_span(rotel_cpu)),
        "",
    );
    // rotel also receives the tasks' execute spans (one per task).
    report.row(
        "OTLP/gRPC export: guest spans rotel received / made",
        format!("{}/{expected}", got.saturating_sub(tasks)),
        "zero dropped",
    );
    Ok(())
}

fn rotel_agent() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WTRACE_ROTEL") {
        return Some(PathBuf::from(path));
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/venv/lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|python| {
        let agent = python.path().join("site-packages/rotel/rotel-agent");
        agent.exists().then_some(agent)
    })
}

/// The chaos run at scale: 100 000 tasks (10 000 with --quick), 15% of them
/// attacks, a random worker SIGKILLed every second.
fn chaos(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let chaos = wtrace_tests::chaos::run(&wtrace_tests::chaos::ChaosOptions {
        tasks: if options.quick { 10_000 } else { 100_000 },
        workers: cores(),
        kill_every: std::time::Duration::from_secs(1),
        slow_per_mille: 1,
        seed: 0xc4a0_5eed,
    });
    report.row(
        "chaos: tasks (normal / attacks)",
        format!("{} ({} / {})", chaos.tasks, chaos.normal, chaos.hostile),
        "",
    );
    report.row("chaos: workers SIGKILLed", chaos.killed.to_string(), "");
    report.row(
        "chaos: tasks/s, kills included",
        format!("{:.0}", chaos.tasks as f64 / chaos.elapsed.as_secs_f64()),
        "",
    );
    report.row(
        "chaos: worker RSS, first / last quarter (MiB)",
        format!(
            "{:.1} / {:.1}",
            chaos.rss_first_kib as f64 / 1024.0,
            chaos.rss_last_kib as f64 / 1024.0
        ),
        "flat",
    );
    report.row(
        "chaos: results, attacks' errors, spans on disk, idle after",
        if chaos.violations.is_empty() {
            "all hold".to_owned()
        } else {
            format!("{} violations", chaos.violations.len())
        },
        "all hold",
    );
    for violation in chaos.violations.iter().take(20) {
        println!("  {violation}");
    }
    anyhow::ensure!(
        chaos.violations.is_empty(),
        "the chaos run found violations"
    );
    Ok(())
}
