//! Helpers for wtrace's integration tests: the test guests, the `wtrace`
//! binary, span directories and process checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wtrace::spans::{LogLine, SpanFiles, SpanRecord};

pub mod actors;
pub mod chaos;
pub mod nats;

/// Paths of the guest components, built from source by `build.rs`.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// The `wtrace` binary of this build (`cargo test` builds it with the tests).
pub fn wtrace_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps, the benchmark from target/<profile>.
    let dir = exe.parent().expect("an executable's directory");
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>")
    } else {
        dir
    };
    let bin = profile_dir.join("wtrace");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `scripts/test.sh` (or `cargo test --release`), which builds it",
        bin.display()
    );
    bin
}

/// A `wtrace` command whose processes carry a unique marker in their
/// environment, so tests can tell whether any of them outlived it.
#[derive(Debug)]
pub struct Wtrace {
    marker: String,
    command: Command,
}

impl Wtrace {
    /// `wtrace <args>`.
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let marker = format!("{}-{}", std::process::id(), unique());
        let mut command = Command::new(wtrace_bin());
        command
            .args(args)
            .env("WTRACE_TEST_MARKER", &marker)
            .env_remove("TRACEPARENT")
            .env_remove("OTEL_TRACES_SAMPLER")
            .env_remove("OTEL_TRACES_SAMPLER_ARG");
        Self { marker, command }
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// Runs to completion; panics if any process it started is still alive
    /// after it exits.
    pub fn run(mut self) -> Run {
        let child = self
            .command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start wtrace");
        let pid = child.id();
        let output = child.wait_with_output().expect("run wtrace");
        let run = Run {
            pid,
            status: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            output,
        };
        let left = processes_with_marker(&self.marker);
        assert!(
            left.is_empty(),
            "processes left running after wtrace exited: {left:?}\nstderr:\n{}",
            run.stderr
        );
        run
    }

    /// Runs to completion without checking for processes left behind (for
    /// `wtrace start`, whose daemon keeps running).
    pub fn run_detached(mut self) -> Run {
        let output = self.command.output().expect("run wtrace");
        Run {
            pid: 0,
            status: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            output,
        }
    }

    /// The command, to spawn by hand.
    pub fn command(&mut self) -> &mut Command {
        &mut self.command
    }

    /// The marker its processes carry.
    pub fn marker(&self) -> &str {
        &self.marker
    }
}

/// A finished `wtrace` run.
#[derive(Debug)]
pub struct Run {
    /// The driver's pid.
    pub pid: u32,
    /// Exit code (none when killed by a signal).
    pub status: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The raw output.
    pub output: Output,
}

impl Run {
    /// Asserts success and returns stdout.
    pub fn success(&self) -> &str {
        assert_eq!(
            self.status,
            Some(0),
            "wtrace failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Asserts a failure exit and returns stderr.
    pub fn failure(&self) -> &str {
        assert!(
            self.status.is_some_and(|c| c != 0),
            "wtrace should have failed (exit {:?})\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stderr
    }
}

/// Pids of live processes whose environment holds `WTRACE_TEST_MARKER=marker`.
pub fn processes_with_marker(marker: &str) -> Vec<u32> {
    let needle = format!("WTRACE_TEST_MARKER={marker}");
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if is_zombie(pid) {
            continue;
        }
        if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ"))
            && environ
                .split(|b| *b == 0)
                .any(|var| var == needle.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Whether `pid` is a live (non-zombie) process.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{nanos:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Every file under `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `wtrace run -n1` under the file hook, which writes spans, log records
/// and metrics into `dir`; `args` follow (the component, invocations).
pub fn file_hooked_run<S: AsRef<str>>(dir: &Path, args: &[S]) -> Wtrace {
    let mut all = vec![
        "run".to_owned(),
        format!("--tracing-startup-hook={}", guests::FILE_HOOK),
        format!("--allow-span-dir={}", dir.display()),
        "-n1".to_owned(),
    ];
    all.extend(args.iter().map(|a| a.as_ref().to_owned()));
    Wtrace::new(all).env("WTRACE_SPAN_DIR", dir)
}

/// A fresh directory for span files, allowed to hooks with `--allow-span-dir`.
pub fn span_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("wtrace-spans-")
        .tempdir()
        .expect("create a span directory")
}

/// The spans in a directory, and the files they came from, by pid.
#[derive(Debug)]
pub struct Spans {
    /// Every span.
    pub files: SpanFiles,
}

impl Spans {
    /// Reads every `*.json` file in `dir`.
    pub fn read(dir: &Path) -> Self {
        let files = SpanFiles::read(&[dir.to_owned()]).expect("read span files");
        assert!(
            files.warnings.is_empty(),
            "span files have bad lines: {:?}",
            files.warnings
        );
        Self { files }
    }

    /// Reads the given files.
    pub fn read_files(paths: &[PathBuf]) -> Self {
        let files = SpanFiles::read(paths).expect("read span files");
        assert!(
            files.warnings.is_empty(),
            "span files have bad lines: {:?}",
            files.warnings
        );
        Self { files }
    }

    /// Every span.
    pub fn all(&self) -> &[SpanRecord] {
        &self.files.spans
    }

    /// The one span named `name`.
    pub fn one(&self, name: &str) -> &SpanRecord {
        let found: Vec<&SpanRecord> = self.files.spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one span named {name:?}; spans: {:?}",
            self.names()
        );
        found[0]
    }

    /// The one log record whose body is `body`.
    pub fn log(&self, body: &str) -> &LogLine {
        let found: Vec<&LogLine> = self.files.logs.iter().filter(|l| l.body == body).collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one log record {body:?}; records: {:?}",
            self.files.logs.iter().map(|l| &l.body).collect::<Vec<_>>()
        );
        found[0]
    }

    /// Spans named `name`.
    pub fn named(&self, name: &str) -> Vec<&SpanRecord> {
        self.files.spans.iter().filter(|s| s.name == name).collect()
    }

    /// Every span's name.
    pub fn names(&self) -> Vec<&str> {
        self.files.spans.iter().map(|s| s.name.as_str()).collect()
    }

    /// Spans by file.
    pub fn by_file(&self) -> BTreeMap<PathBuf, Vec<&SpanRecord>> {
        let mut map: BTreeMap<PathBuf, Vec<&SpanRecord>> = BTreeMap::new();
        for span in &self.files.spans {
            map.entry(span.file.clone()).or_default().push(span);
        }
        map
    }
}

/// Checks the shape of a `fanout` guest's `tree(…)` run: the root submit
/// span is the driver's (`driver_pid`), every nested submit a child of the
/// `fan-out` span of the worker that submitted it, every execute span a
/// `CONSUMER` child of its submit span with the same task id, and every
/// guest span a child of its execute span in the same process.
pub fn assert_fan_out_tree(all: &[&SpanRecord], driver_pid: u32) {
    let by_id: std::collections::HashMap<&str, &SpanRecord> =
        all.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let parent = |s: &SpanRecord| by_id.get(s.parent_span_id.as_str()).copied();
    for span in all {
        match span.name.as_str() {
            "tree submit" => match parent(span) {
                None => {
                    assert!(
                        span.parent_span_id.is_empty(),
                        "the root submit has no parent"
                    );
                    assert_eq!(
                        span.pid,
                        Some(i64::from(driver_pid)),
                        "the root is the driver's"
                    );
                }
                Some(p) => {
                    assert_eq!(
                        p.name, "fan-out",
                        "a nested submit is a child of the guest's current span"
                    );
                    assert_eq!(p.pid, span.pid, "submitted from the worker running fan-out");
                }
            },
            "tree execute" => {
                let submit = parent(span).expect("execute has its submit span as parent");
                assert_child_of(span, submit);
                assert_eq!(submit.name, "tree submit");
                assert_eq!(span.kind, "CONSUMER");
                assert_eq!(
                    span.attributes["wtrace.task_id"],
                    submit.attributes["wtrace.task_id"]
                );
            }
            "fan-out" | "leaf" => {
                let execute = parent(span).expect("guest spans have the execute span as parent");
                assert_eq!(execute.name, "tree execute");
                assert_eq!(execute.pid, span.pid);
            }
            other => panic!("unexpected span {other}"),
        }
    }
}

/// Asserts `child` is a direct child of `parent` in the same trace.
pub fn assert_child_of(child: &SpanRecord, parent: &SpanRecord) {
    assert_eq!(
        child.trace_id, parent.trace_id,
        "{} and {} are in different traces",
        child.name, parent.name
    );
    assert_eq!(
        child.parent_span_id, parent.span_id,
        "{}'s parent should be {} ({}), is {}",
        child.name, parent.name, parent.span_id, child.parent_span_id
    );
}

/// The pid a span or log file is named after (`<pid>.json`,
/// `<pid>.logs.json`).
pub fn file_pid(path: &Path) -> u32 {
    path.file_name()
        .and_then(|s| s.to_str())
        .and_then(|s| s.split('.').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{} is not named <pid>.json", path.display()))
}

/// Whether `path` is a span file (`<pid>.json`), not a log or metrics file
/// beside it.
pub fn is_span_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    name.ends_with(".json") && !name.ends_with(".logs.json") && !name.ends_with(".metrics.json")
}

/// A cluster started with `wtrace start --head` in its own session directory,
/// stopped (and checked to leave no process) when dropped.
#[derive(Debug)]
pub struct Cluster {
    /// The session directory (`WTRACE_SESSION_DIR`).
    pub session: tempfile::TempDir,
    /// Environment given to every command.
    pub env: Vec<(String, String)>,
    markers: Vec<String>,
    stopped: bool,
}

impl Cluster {
    /// `wtrace start --head <args>` with `env`; panics unless it starts.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cluster = Self {
            session: tempfile::Builder::new()
                .prefix("wtrace-session-")
                .tempdir()
                .unwrap(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            markers: Vec::new(),
            stopped: false,
        };
        let mut full = vec!["start", "--head"];
        full.extend_from_slice(args);
        let run = cluster.detached(&full);
        assert_eq!(
            run.status,
            Some(0),
            "wtrace start failed:\n{}\n{}",
            run.stdout,
            run.stderr
        );
        cluster
    }

    /// A `wtrace` command in this cluster's session and environment.
    pub fn command(&self, args: &[&str]) -> Wtrace {
        let mut command = Wtrace::new(args).env("WTRACE_SESSION_DIR", self.session.path());
        for (key, value) in &self.env {
            command = command.env(key, value);
        }
        command
    }

    /// Runs a command that leaves a daemon behind (`start`).
    pub fn detached(&mut self, args: &[&str]) -> Run {
        let command = self.command(args);
        self.markers.push(command.marker().to_owned());
        command.run_detached()
    }

    /// The session file's contents.
    pub fn session(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.session.path().join("session.json"))
            .expect("session file");
        serde_json::from_str(&text).unwrap()
    }

    /// `wtrace status --json`.
    pub fn status(&self) -> serde_json::Value {
        let run = self.command(&["status", "--json"]).run();
        serde_json::from_str(run.success()).expect("status JSON")
    }

    /// `wtrace stop`; asserts every process of the cluster is gone after.
    pub fn stop(&mut self) -> Run {
        self.stop_with(&[])
    }

    /// `wtrace stop <args>`, as [`Cluster::stop`].
    pub fn stop_with(&mut self, args: &[&str]) -> Run {
        let mut full = vec!["stop"];
        full.extend_from_slice(args);
        let run = self.command(&full).run();
        self.stopped = true;
        for marker in &self.markers {
            let left = processes_with_marker(marker);
            assert!(
                left.is_empty(),
                "processes left after wtrace stop: {left:?}"
            );
        }
        run
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.command(&["stop"]).command().output();
        }
        for marker in &self.markers {
            for pid in processes_with_marker(marker) {
                #[allow(unsafe_code)]
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }
}

/// Runs 40 `my-func()` tasks of the hello guest on 2 workers under `hook`
/// once for each `OTEL_TRACES_SAMPLER` the hook SDKs accept, and asserts
/// which traces each setting wrote: all of them, none, or the same part of
/// them in every process (the ratio samplers decide by trace id, so workers
/// and the driver agree). `env` is added to every run.
pub fn assert_env_samplers(hook: &str, env: &[(&str, &str)]) {
    enum Expect {
        All,
        None,
        Part,
    }
    let cases = [
        ("always_on", None, Expect::All),
        ("always_off", None, Expect::None),
        ("traceidratio", Some("0.5"), Expect::Part),
        ("traceidratio", Some("0"), Expect::None),
        ("parentbased_always_on", None, Expect::All),
        ("parentbased_always_off", None, Expect::None),
        ("parentbased_traceidratio", Some("0.5"), Expect::Part),
    ];
    const TASKS: usize = 40;
    for (sampler, arg, expect) in cases {
        let dir = span_dir();
        let mut args = vec![
            "run".to_owned(),
            format!("--tracing-startup-hook={hook}"),
            format!("--allow-span-dir={}", dir.path().display()),
            "--num-workers=2".to_owned(),
            guests::HELLO.to_owned(),
        ];
        args.extend((0..TASKS).map(|_| "my-func()".to_owned()));
        let mut wtrace = Wtrace::new(args)
            .env("WTRACE_SPAN_DIR", dir.path())
            .env("OTEL_TRACES_SAMPLER", sampler);
        wtrace.command().env_remove("OTEL_TRACES_SAMPLER_ARG");
        if let Some(arg) = arg {
            wtrace = wtrace.env("OTEL_TRACES_SAMPLER_ARG", arg);
        }
        for (key, value) in env {
            wtrace = wtrace.env(key, value);
        }
        let run = wtrace.run();
        let case = format!("OTEL_TRACES_SAMPLER={sampler} OTEL_TRACES_SAMPLER_ARG={arg:?}");
        assert_eq!(
            run.success().lines().count(),
            TASKS,
            "{case}: every task runs whatever is sampled"
        );
        let spans = Spans::read(dir.path());
        let traces = |name: &str| -> std::collections::BTreeSet<String> {
            spans
                .named(name)
                .iter()
                .map(|s| s.trace_id.clone())
                .collect()
        };
        let sampled = traces("my-func submit");
        match expect {
            Expect::All => assert_eq!(sampled.len(), TASKS, "{case}: every trace"),
            Expect::None => assert!(
                spans.all().is_empty(),
                "{case}: no span, got {}",
                spans.all().len()
            ),
            Expect::Part => assert!(
                (4..=TASKS - 4).contains(&sampled.len()),
                "{case}: about half of {TASKS} traces, got {}",
                sampled.len()
            ),
        }
        assert_eq!(traces("my-func execute"), sampled, "{case}: workers agree");
        assert_eq!(traces("foo"), sampled, "{case}: guest spans agree");
    }
}
