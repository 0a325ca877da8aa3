//! The chaos run: a stream of normal and hostile tasks (the sandbox suite's
//! attacks, at random) through a started cluster while random workers are
//! SIGKILLed, then a check of everything a user relies on. Shared by the
//! test (a couple of thousand tasks) and the benchmark (`--only chaos`).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wtrace::exec::task::TaskErrorKind;
use wtrace::runtime::wave::Invocation;

use crate::{Cluster, Spans, guests, span_dir};

/// How big a chaos run is.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Tasks in all.
    pub tasks: usize,
    /// Worker processes.
    pub workers: usize,
    /// How often a random worker is killed.
    pub kill_every: Duration,
    /// Per mille of tasks that are slow attacks (each runs to `--timeout`).
    pub slow_per_mille: u32,
    /// Seed of the mix.
    pub seed: u64,
}

/// What a chaos run saw.
#[derive(Debug, Default)]
pub struct ChaosReport {
    /// Tasks submitted.
    pub tasks: usize,
    /// Normal tasks among them.
    pub normal: usize,
    /// Hostile tasks among them.
    pub hostile: usize,
    /// Workers SIGKILLed.
    pub killed: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Largest worker RSS in the first and the last quarter of the run, KiB.
    pub rss_first_kib: u64,
    /// See `rss_first_kib`.
    pub rss_last_kib: u64,
    /// Everything that did not hold, one line each.
    pub violations: Vec<String>,
}

/// What a task must come to.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Value(String),
    Fails(TaskErrorKind),
}

/// A tiny deterministic generator (xorshift), so a failing mix can be rerun.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The attacks of the sandbox suite that end quickly, with what each comes to.
fn quick_attacks() -> Vec<(&'static str, Expect)> {
    use Expect::*;
    vec![
        ("memory-bomb()", Fails(TaskErrorKind::MemoryLimit)),
        ("stack-overflow(0)", Fails(TaskErrorKind::Trap)),
        ("huge-result(2)", Fails(TaskErrorKind::ResultTooLarge)),
        ("stale-handle()", Fails(TaskErrorKind::Trap)),
        (
            r#"read-file("/etc/passwd")"#,
            Fails(TaskErrorKind::Returned),
        ),
        (
            r#"write-file("/tmp/wtrace-chaos-escape")"#,
            Fails(TaskErrorKind::Returned),
        ),
        (r#"connect("127.0.0.1:9")"#, Fails(TaskErrorKind::Returned)),
        (
            r#"http-get("127.0.0.1:9", "/")"#,
            Fails(TaskErrorKind::Returned),
        ),
        ("read-env()", Value("[]".into())),
        ("huge-attribute(4)", Value(String::new())),
        ("deep-spans(5000)", Value("5000".into())),
        ("out-of-order()", Value(String::new())),
    ]
}

/// The attacks that run until a limit stops them.
fn slow_attacks() -> Vec<(&'static str, Expect)> {
    vec![
        ("spin-forever()", Expect::Fails(TaskErrorKind::Timeout)),
        ("sleep-forever()", Expect::Fails(TaskErrorKind::Timeout)),
    ]
}

fn mix(options: &ChaosOptions) -> Vec<(String, Expect, bool)> {
    let quick = quick_attacks();
    let slow = slow_attacks();
    let mut rng = Mix(options.seed | 1);
    (0..options.tasks)
        .map(|i| {
            let roll = rng.next() % 1000;
            if roll < u64::from(options.slow_per_mille) {
                let (call, expect) = &slow[(rng.next() % slow.len() as u64) as usize];
                (call.to_string(), expect.clone(), true)
            } else if roll < 150 {
                let (call, expect) = &quick[(rng.next() % quick.len() as u64) as usize];
                (call.to_string(), expect.clone(), true)
            } else if roll.is_multiple_of(2) {
                (
                    "fine()".into(),
                    Expect::Value("\"still fine\"".into()),
                    false,
                )
            } else {
                let text = "x".repeat(i % 97);
                (
                    format!("echo({text:?})"),
                    Expect::Value((i % 97).to_string()),
                    false,
                )
            }
        })
        .collect()
}

fn rss_kib(pid: u64) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[allow(unsafe_code)]
fn sigkill(pid: u64) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// Runs the chaos run and reports what held and what did not.
pub fn run(options: &ChaosOptions) -> ChaosReport {
    let dir = span_dir();
    let mut cluster = start(dir.path(), options);
    let (mut report, expected) = run_in(&cluster, dir.path(), options);
    cluster.stop();
    check_spans(dir.path(), &expected, &mut report);
    report
}

fn start(dir: &Path, options: &ChaosOptions) -> Cluster {
    let hook = format!("--tracing-startup-hook={}", guests::FILE_HOOK);
    let allow = format!("--allow-span-dir={}", dir.display());
    let workers = format!("--num-workers={}", options.workers);
    Cluster::start(
        &[
            hook.as_str(),
            allow.as_str(),
            workers.as_str(),
            "--timeout=500ms",
            "--max-memory=64M",
            "--max-result-size=1M",
            // Random kills may hit one task several times, a slow attack
            // (500 ms to its timeout, and longer on a loaded machine) most
            // of all: a kill every 400 ms of one of two workers hits its
            // attempt more often than not. At 20 retries a loaded run lost
            // one such task to 21 kills in a row (a chance of a few in a
            // hundred there); at 100 that takes more than the run's kills.
            "--max-retries=100",
        ],
        &[
            ("WTRACE_SPAN_DIR", dir.to_str().unwrap()),
            ("WTRACE_TEST_BATCH", "1"),
        ],
    )
}

/// Task ids and what each must come to, filled in as they are submitted.
type Submitted = Mutex<HashMap<String, Expect>>;

fn run_in(
    cluster: &Cluster,
    dir: &Path,
    options: &ChaosOptions,
) -> (ChaosReport, HashMap<String, Expect>) {
    let session = cluster.session();
    let address = session["address"].as_str().unwrap().parse().unwrap();
    let token = session["token"].as_str().unwrap().to_owned();
    let calls = mix(options);
    let mut report = ChaosReport {
        tasks: calls.len(),
        hostile: calls.iter().filter(|c| c.2).count(),
        ..ChaosReport::default()
    };
    report.normal = report.tasks - report.hostile;
    let done = AtomicBool::new(false);
    let samples: Mutex<Vec<(Instant, u64)>> = Mutex::default();
    let killed = Mutex::new(0usize);
    let started = Instant::now();
    let submitted: Submitted = Mutex::default();

    std::thread::scope(|scope| {
        // The killer: a random worker every `kill_every`, and RSS samples.
        scope.spawn(|| {
            let mut rng = Mix(options.seed.rotate_left(17) | 1);
            let mut last_kill = Instant::now();
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let status = cluster.status();
                let pids: Vec<u64> = status["workers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|w| w["ready"] == true)
                    .map(|w| w["pid"].as_u64().unwrap())
                    .collect();
                if let Some(rss) = pids.iter().filter_map(|p| rss_kib(*p)).max() {
                    samples.lock().unwrap().push((Instant::now(), rss));
                }
                if last_kill.elapsed() >= options.kill_every && !pids.is_empty() {
                    sigkill(pids[(rng.next() % pids.len() as u64) as usize]);
                    *killed.lock().unwrap() += 1;
                    last_kill = Instant::now();
                }
            }
        });
        let violations = drive(address, &token, &calls, &submitted, dir);
        done.store(true, Ordering::Relaxed);
        report.violations.extend(violations);
    });
    report.elapsed = started.elapsed();
    report.killed = *killed.lock().unwrap();

    // No worker stuck: the cluster is idle, and answers at once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster.status();
        if status["queued"] == 0 && status["running"] == 0 {
            break;
        }
        if Instant::now() > deadline {
            report
                .violations
                .push(format!("the cluster is not idle after the run: {status}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let probe = Instant::now();
    let run = cluster
        .command(&["submit", guests::HOSTILE, "fine()"])
        .run();
    if run.status != Some(0) || probe.elapsed() > Duration::from_secs(10) {
        report.violations.push(format!(
            "a task after the run took {:?}: {}",
            probe.elapsed(),
            run.stderr
        ));
    }

    let samples = samples.into_inner().unwrap();
    let quarter = samples.len() / 4;
    if quarter > 0 {
        report.rss_first_kib = samples[..quarter].iter().map(|s| s.1).max().unwrap_or(0);
        report.rss_last_kib = samples[samples.len() - quarter..]
            .iter()
            .map(|s| s.1)
            .max()
            .unwrap_or(0);
        if report.rss_last_kib > report.rss_first_kib * 3 / 2 + 32 * 1024 {
            report.violations.push(format!(
                "worker memory grew: {} KiB at most early on, {} KiB at the end",
                report.rss_first_kib, report.rss_last_kib
            ));
        }
    }
    (report, submitted.into_inner().unwrap())
}

/// Submits every call in windows and checks every result as it comes.
fn drive(
    address: std::net::SocketAddr,
    token: &str,
    calls: &[(String, Expect, bool)],
    submitted: &Submitted,
    dir: &Path,
) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut violations = Vec::new();
        // Submit spans to a span file of their own, as the hook would.
        let exporter =
            wtrace::telemetry::export::FileExporter::open(&dir.join("driver.json")).unwrap();
        let processor = wtrace::telemetry::export::batch_processor(
            wtrace::telemetry::export::AnyExporter::File(Box::new(exporter)),
        );
        let telemetry = wtrace::Telemetry::new(
            opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_span_processor(processor)
                .build(),
        );
        let client = match wtrace::Client::connect(
            &wtrace::cluster::Endpoint::tcp(address),
            token,
            Some(telemetry),
        )
        .await
        {
            Ok(client) => client,
            Err(e) => return vec![format!("cannot connect: {e}")],
        };
        let bytes = std::fs::read(guests::HOSTILE).unwrap();
        let component = client.upload("hostile.wasm", bytes).await.unwrap();
        for window in calls.chunks(2048) {
            let invocations: Vec<Invocation> =
                window.iter().map(|c| c.0.parse().unwrap()).collect();
            let tasks = match client
                .submit_many(&component, &invocations, &opentelemetry::Context::new())
                .await
            {
                Ok(tasks) => tasks,
                Err(e) => {
                    violations.push(format!("submitting failed: {e}"));
                    break;
                }
            };
            for (task, (call, expect, _)) in tasks.into_iter().zip(window) {
                let task_id = task.task_id().to_owned();
                submitted
                    .lock()
                    .unwrap()
                    .insert(task_id.clone(), expect.clone());
                let result = match task.get().await {
                    Ok(result) => result,
                    Err(e) => {
                        violations.push(format!("{call} ({task_id}): no result: {e}"));
                        continue;
                    }
                };
                let got = match &result.value {
                    Ok(value) => Expect::Value(value.clone()),
                    Err(error) => Expect::Fails(error.kind),
                };
                if &got != expect {
                    violations.push(format!(
                        "{call} ({task_id}): expected {expect:?}, got {:?}",
                        result.value
                    ));
                }
            }
        }
        client.flush();
        if let Some(telemetry) = client.telemetry() {
            let _ = telemetry.shutdown();
        }
        violations
    })
}

/// For every delivered result, its execute span is on disk: a successful
/// one for a normal task, a failed one for a failing attack.
fn check_spans(dir: &Path, expected: &HashMap<String, Expect>, report: &mut ChaosReport) {
    let spans = Spans::read(dir);
    let mut ok: HashSet<&str> = HashSet::new();
    let mut failed: HashSet<&str> = HashSet::new();
    for span in spans.all() {
        if !span.name.ends_with(" execute") {
            continue;
        }
        let Some(task) = span.attributes.get("wtrace.task_id") else {
            continue;
        };
        if span.error.is_none() {
            ok.insert(task);
        } else {
            failed.insert(task);
        }
    }
    let mut missing = 0;
    for (task, expect) in expected {
        let found = match expect {
            Expect::Value(_) => ok.contains(task.as_str()),
            Expect::Fails(_) => failed.contains(task.as_str()),
        };
        if !found {
            missing += 1;
            if missing <= 10 {
                report.violations.push(format!(
                    "task {task} ({expect:?}): no such execute span on disk"
                ));
            }
        }
    }
    if missing > 10 {
        report
            .violations
            .push(format!("... {missing} tasks' execute spans missing in all"));
    }
    if expected.len() != report.tasks {
        report.violations.push(format!(
            "{} of {} tasks were submitted",
            expected.len(),
            report.tasks
        ));
    }
}
