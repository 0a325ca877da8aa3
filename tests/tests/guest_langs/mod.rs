//! Shared by `lang_python.rs` and `lang_js.rs` (and, for the seed, hook-error
//! and sampler assertions, `lang_c.rs`): builds a language's example hook and seed task
//! from source with its toolchain (the build script of `guest-sdk/<lang>`),
//! runs them through the real `wtrace` binary, and asserts the same span tree
//! as the Rust seed example.

#![allow(dead_code)] // each test crate uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use wtrace_tests::{Run, Spans, Wtrace, assert_child_of, file_pid, guests, span_dir};

/// A guest language with an SDK under `guest-sdk/<lang>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// componentize-py.
    Python,
    /// componentize-qjs.
    Js,
}

/// The components a test run uses, built from source.
#[derive(Debug)]
pub struct Built {
    /// The example hook (`guest-sdk/<lang>/examples/hook`).
    pub hook: PathBuf,
    /// The example task, the seed example (`guest-sdk/<lang>/examples/task`).
    pub task: PathBuf,
    /// A task whose function throws inside two nested helper spans.
    pub raise: PathBuf,
    /// The example actor (`guest-sdk/<lang>/examples/counter`), where the
    /// language has one.
    pub counter: Option<PathBuf>,
}

/// A source file of a guest: (file name, contents).
pub type Source = (&'static str, &'static str);

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

impl Lang {
    pub fn name(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }

    /// The command running the language's build script, `... DIR OUT.wasm`;
    /// panics, telling to run scripts/test.sh, when the toolchain is missing.
    fn build_command(self) -> Command {
        let root = workspace();
        let missing = |what: &str, setup: &str| -> ! {
            panic!(
                "{what}: run the tests with scripts/test.sh, which installs the {} guest \
                 toolchain (scripts/{setup})",
                self.name()
            )
        };
        match self {
            Lang::Python => {
                let tool = std::env::var_os("WTRACE_COMPONENTIZE_PY")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| root.join("target/tools/venv-py/bin/componentize-py"));
                if !tool.exists() {
                    missing(
                        &format!("componentize-py is not installed ({})", tool.display()),
                        "setup-python.sh",
                    );
                }
                let mut command = Command::new("bash");
                command
                    .arg(root.join("guest-sdk/python/build.sh"))
                    .env("WTRACE_COMPONENTIZE_PY", tool);
                command
            }
            Lang::Js => {
                let tools = std::env::var_os("WTRACE_JS_TOOLS")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| root.join("target/tools/js"));
                if !tools
                    .join("node_modules/componentize-qjs/index.js")
                    .exists()
                {
                    missing(
                        &format!("componentize-qjs is not installed in {}", tools.display()),
                        "setup-js.sh",
                    );
                }
                let node = std::env::var_os("WTRACE_NODE").unwrap_or_else(|| "node".into());
                if Command::new(&node).arg("--version").output().is_err() {
                    missing(
                        &format!("node ({}) does not run", node.to_string_lossy()),
                        "setup-js.sh",
                    );
                }
                let mut command = Command::new(node);
                command
                    .arg(root.join("guest-sdk/js/build.mjs"))
                    .env("WTRACE_JS_TOOLS", tools);
                command
            }
        }
    }

    /// Builds the guest in `dir` into `out`; panics with the build's output on failure.
    fn build(self, dir: &Path, out: &Path) -> std::process::Child {
        let _ = std::fs::remove_file(out);
        self.build_command()
            .arg(dir)
            .arg(out)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {} build: {e}", self.name()))
    }

    /// Builds the example hook, the example task and a task from `raise`
    /// (written to a directory first), all at once, into
    /// `<target>/tmp/lang-<lang>/`.
    pub fn build_guests(self, raise: &[Source]) -> Built {
        let sdk = workspace().join("guest-sdk").join(self.name());
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lang-{}", self.name()));
        let raise_dir = out.join("raise-src");
        let _ = std::fs::remove_dir_all(&raise_dir);
        std::fs::create_dir_all(&raise_dir).unwrap();
        for (name, text) in raise {
            std::fs::write(raise_dir.join(name), text).unwrap();
        }
        let suffix = match self {
            Lang::Python => "py",
            Lang::Js => "js",
        };
        let counter_dir = sdk.join("examples/counter");
        let built = Built {
            hook: out.join(format!("hook-{suffix}.wasm")),
            task: out.join(format!("hello-{suffix}.wasm")),
            raise: out.join(format!("raise-{suffix}.wasm")),
            counter: counter_dir
                .is_dir()
                .then(|| out.join(format!("counter-{suffix}.wasm"))),
        };
        let mut jobs = vec![
            (sdk.join("examples/hook"), &built.hook),
            (sdk.join("examples/task"), &built.task),
            (raise_dir, &built.raise),
        ];
        if let Some(counter) = &built.counter {
            jobs.push((counter_dir, counter));
        }
        let started = Instant::now();
        let children: Vec<_> = jobs.iter().map(|(dir, out)| self.build(dir, out)).collect();
        for ((dir, out), child) in jobs.iter().zip(children) {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "building {} failed ({}):\n{}{}",
                dir.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            let size = std::fs::metadata(out)
                .unwrap_or_else(|e| panic!("{} was not written: {e}", out.display()))
                .len();
            eprintln!(
                "built {} ({size} bytes) from {}",
                out.display(),
                dir.display()
            );
        }
        eprintln!(
            "{} guests built in {:.1?} ({} builds at once)",
            self.name(),
            started.elapsed(),
            jobs.len()
        );
        built
    }
}

/// The compiled-component cache of these tests, under the build's target
/// directory rather than the user's `~/.cache/wtrace`: the big Python and
/// JavaScript components are not byte-identical from build to build, so each
/// test run would leave tens of MB there.
pub fn test_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("wtrace-cache")
}

/// `wtrace run` of `task` with `hook`, 2 workers, spans allowed in `span_dir`
/// (passed to the hook as WTRACE_SPAN_DIR), and `extra` options before the
/// component. OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are cleared;
/// components are cached in [`test_cache_dir`] unless `extra` says otherwise.
pub fn run(
    hook: &str,
    task: &Path,
    invocations: &[&str],
    span_dir: &Path,
    extra: &[String],
    env: &[(&str, &str)],
) -> (Run, Duration) {
    let mut args = vec![
        "run".to_owned(),
        format!("--tracing-startup-hook={hook}"),
        format!("--allow-span-dir={}", span_dir.display()),
        "--num-workers=2".to_owned(),
    ];
    args.extend(extra.iter().cloned());
    args.push(task.display().to_string());
    args.extend(invocations.iter().map(|s| s.to_string()));
    let mut wtrace = Wtrace::new(args)
        .env("WTRACE_SPAN_DIR", span_dir)
        .env("WTRACE_CACHE_DIR", test_cache_dir());
    wtrace
        .command()
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES");
    for (key, value) in env {
        wtrace = wtrace.env(key, value);
    }
    let started = Instant::now();
    let run = wtrace.run();
    (run, started.elapsed())
}

/// `wtrace run HOOK TASK 'my-function()' 'my-func()'`, then asserts the seed
/// example's output and span tree; returns the spans.
pub fn run_seed(
    hook: &str,
    task: &Path,
    span_dir: &Path,
    extra: &[String],
    env: &[(&str, &str)],
    service_name: &str,
) -> Spans {
    let (run, took) = run(
        hook,
        task,
        &["my-function()", "my-func()"],
        span_dir,
        extra,
        env,
    );
    eprintln!(
        "wtrace run --tracing-startup-hook={hook} {} took {took:.1?}",
        task.display()
    );
    assert_seed(&run, task, span_dir, service_name)
}

/// Asserts the seed example's output and trace: `my-func submit` (driver,
/// PRODUCER) → `my-func execute` (worker, CONSUMER) → `foo` (INTERNAL).
pub fn assert_seed(run: &Run, task: &Path, span_dir: &Path, service_name: &str) -> Spans {
    let stdout = run.success();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "two lines of output: {stdout:?}");
    assert_eq!(lines[0], "1", "my-function() prints 1: {stdout}");
    let printed_pid: i64 = lines[1]
        .strip_prefix("(my-func pid=")
        .and_then(|rest| rest.strip_suffix(") hello from inside span foo"))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| {
            panic!("the task's line reaches the driver with Ray's prefix: {stdout}")
        });

    let spans = Spans::read(span_dir);
    let by_file = spans.by_file();
    let span_files: Vec<_> = spans
        .files
        .files
        .iter()
        .filter(|f| wtrace_tests::is_span_file(f))
        .collect();
    assert_eq!(
        span_files.len(),
        3,
        "the hook ran in the driver and both workers, each writing <pid>.json: {span_files:?}"
    );
    for (file, in_file) in &by_file {
        for span in in_file {
            assert_eq!(
                span.pid,
                Some(i64::from(file_pid(file))),
                "{}: process.pid must match the file name",
                file.display()
            );
        }
    }
    for span in spans.all() {
        assert_eq!(
            span.resource.get("service.name").map(String::as_str),
            Some(service_name),
            "{}: the hook sets service.name",
            span.name
        );
    }
    let driver_file = span_dir.join(format!("{}.json", run.pid));
    let component = task.file_name().unwrap().to_str().unwrap();

    let submit = spans.one("my-function submit");
    let execute = spans.one("my-function execute");
    assert_eq!(
        submit.file, driver_file,
        "submit spans come from the driver"
    );
    assert_eq!(submit.pid, Some(i64::from(run.pid)));
    assert_eq!(submit.kind, "PRODUCER");
    assert!(submit.parent_span_id.is_empty(), "no TRACEPARENT: a root");
    assert_eq!(execute.kind, "CONSUMER");
    assert_child_of(execute, submit);
    assert_ne!(execute.pid, submit.pid, "execute runs in a worker");
    assert_eq!(execute.attributes["wtrace.component"], component);
    assert!(
        !execute.attributes.contains_key("wtrace.spans_started"),
        "no guest span, no count"
    );

    let func_submit = spans.one("my-func submit");
    let func_execute = spans.one("my-func execute");
    let foo_span = spans.one("foo");
    assert_eq!(func_submit.file, driver_file);
    assert_eq!(func_submit.kind, "PRODUCER");
    assert!(func_submit.parent_span_id.is_empty());
    assert_eq!(func_submit.attributes["wtrace.function"], "my-func");
    assert_eq!(func_submit.attributes["wtrace.component"], component);
    assert_eq!(func_execute.kind, "CONSUMER");
    assert_child_of(func_execute, func_submit);
    assert_ne!(func_execute.pid, func_submit.pid);
    assert_eq!(
        func_execute.attributes["wtrace.task_id"],
        func_submit.attributes["wtrace.task_id"]
    );
    assert_eq!(func_execute.attributes["wtrace.component"], component);
    assert_eq!(func_execute.attributes["wtrace.spans_started"], "1");
    assert_eq!(func_execute.attributes["wtrace.spans_dropped"], "0");
    assert_eq!(foo_span.kind, "INTERNAL");
    assert_child_of(foo_span, func_execute);
    assert_eq!(foo_span.trace_id, func_submit.trace_id, "one trace");
    assert_ne!(
        submit.trace_id, func_submit.trace_id,
        "one trace per submission"
    );
    assert_eq!(foo_span.pid, func_execute.pid, "foo comes from the worker");
    assert_eq!(
        func_execute.pid,
        Some(printed_pid),
        "the printed pid is the worker's"
    );
    assert!(foo_span.error.is_none() && func_execute.error.is_none());
    assert!(
        !foo_span.attributes.contains_key("wtrace.unended"),
        "the SDK ended foo, not the host"
    );
    assert!(foo_span.start >= func_execute.start && foo_span.end <= func_execute.end);
    assert_eq!(
        spans.all().len(),
        5,
        "only these spans: {:?}",
        spans.names()
    );
    spans
}

/// The `<cache>/<engine>/<digest>.cwasm` of `component`; asserts it exists.
pub fn cached(cache: &Path, component: &Path) -> PathBuf {
    let digest = wtrace::Digest::of(&std::fs::read(component).unwrap()).hex();
    let found: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap_or_else(|e| panic!("cache {} not created: {e}", cache.display()))
        .flatten()
        .map(|engine| engine.path().join(format!("{digest}.cwasm")))
        .filter(|path| path.exists())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one compiled {} ({digest}.cwasm) in {}",
        component.display(),
        cache.display()
    );
    found.into_iter().next().unwrap()
}

/// (inode, modification time) of a file: unchanged when it was not rewritten.
pub fn identity(path: &Path) -> (u64, std::time::SystemTime) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    (meta.ino(), meta.modified().unwrap())
}

/// The hook, as a `--tracing-startup-hook` value.
pub fn hook_spec(hook: &Path) -> String {
    format!("{}:setup_tracing", hook.display())
}

/// The test of the language's span helper: `fail-in-span` opens `outer` (with
/// attributes rows=42, ratio=0.5, ok=true, tags=[a, b]) and `inner` in it,
/// throws inside `inner`, and returns the error it caught as `err`.
pub fn assert_helper_ends_spans_on_errors(built: &Built, error_type: &str) {
    let dir = wtrace_tests::span_dir();
    let (run, _) = run(
        wtrace_tests::guests::FILE_HOOK,
        &built.raise,
        &["fail-in-span()"],
        dir.path(),
        &[],
        &[],
    );
    let stderr = run.failure();
    assert!(
        stderr.contains("caught: bad input"),
        "the task's err reaches the driver:\n{stderr}"
    );
    let spans = Spans::read(dir.path());
    let execute = spans.one("fail-in-span execute");
    let outer = spans.one("outer");
    let inner = spans.one("inner");
    assert_child_of(outer, execute);
    assert_child_of(inner, outer);
    let message = format!("{error_type}: bad input");
    for span in [outer, inner] {
        assert_eq!(
            span.error.as_deref(),
            Some(message.as_str()),
            "{}: the helper marks the span failed",
            span.name
        );
        assert!(
            span.events.iter().any(|e| e == "exception"),
            "{}: an exception event: {:?}",
            span.name,
            span.events
        );
        assert!(
            !span.attributes.contains_key("wtrace.unended"),
            "{}: the helper ended it, not the host: {:?}",
            span.name,
            span.attributes
        );
        assert!(span.end >= span.start);
    }
    assert!(inner.end <= outer.end, "inner ends before outer");
    let attribute = |key: &str| outer.attributes.get(key).map(String::as_str);
    assert_eq!(attribute("rows"), Some("42"));
    assert_eq!(attribute("ratio"), Some("0.5"));
    assert_eq!(attribute("ok"), Some("true"));
    assert_eq!(attribute("tags"), Some("[a, b]"));
    assert_eq!(execute.attributes["wtrace.spans_started"], "2");
    assert!(
        execute
            .error
            .as_deref()
            .is_some_and(|e| e.contains("caught: bad input")),
        "the task's err marks its execute span: {:?}",
        execute.error
    );
}

/// The language's hook reads every `OTEL_TRACES_SAMPLER` as the Rust SDK does.
pub fn assert_hook_samplers(built: &Built) {
    let cache = test_cache_dir();
    wtrace_tests::assert_env_samplers(
        &hook_spec(&built.hook),
        &[("WTRACE_CACHE_DIR", cache.to_str().unwrap())],
    );
}

/// Hook failures surface as the hook's own errors, before any task runs.
pub fn assert_hook_errors(hook: &Path, task: &Path) {
    let spans = wtrace_tests::span_dir();
    let spec = hook_spec(hook);
    let fails = |env: &[(&str, &str)], allowed: &Path, expected: &str| {
        let args = vec![
            "run".to_owned(),
            format!("--tracing-startup-hook={spec}"),
            format!("--allow-span-dir={}", allowed.display()),
            "--num-workers=1".to_owned(),
            task.display().to_string(),
            "my-function()".to_owned(),
        ];
        let mut wtrace = Wtrace::new(args).env("WTRACE_CACHE_DIR", test_cache_dir());
        wtrace.command().env_remove("WTRACE_SPAN_DIR");
        for (key, value) in env {
            wtrace = wtrace.env(key, value);
        }
        let run = wtrace.run();
        let stderr = run.failure();
        assert!(
            stderr.contains("tracing startup hook") && stderr.contains(expected),
            "expected the hook's error {expected:?} in:\n{stderr}"
        );
        assert!(run.stdout.is_empty(), "no task ran: {}", run.stdout);
    };
    fails(&[], spans.path(), "WTRACE_SPAN_DIR is not set");
    let span_dir = spans.path().to_str().unwrap();
    fails(
        &[
            ("WTRACE_SPAN_DIR", span_dir),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
        ],
        spans.path(),
        "OTEL_TRACES_SAMPLER=\"sometimes\" is not supported",
    );
    // The host refuses the exporter; the hook passes its reason on.
    let elsewhere = wtrace_tests::span_dir();
    fails(
        &[("WTRACE_SPAN_DIR", span_dir)],
        elsewhere.path(),
        "--allow-span-dir",
    );
}

/// The language's hook and task trace the seed example, and a second run
/// loads both big components from the compiled cache instead of compiling.
pub fn assert_seed_with_compiled_cache(built: &Built, example_service: &str) {
    let cache = tempfile::Builder::new()
        .prefix("wtrace-cache-")
        .tempdir()
        .unwrap();
    let extra = [format!("--cache-dir={}", cache.path().display())];

    let first = span_dir();
    run_seed(
        &hook_spec(&built.hook),
        &built.task,
        first.path(),
        &extra,
        &[],
        example_service,
    );
    // Both big components were compiled once and stored by digest.
    let hook_cwasm = cached(cache.path(), &built.hook);
    let task_cwasm = cached(cache.path(), &built.task);
    let before = (identity(&hook_cwasm), identity(&task_cwasm));

    // The second run loads them from the cache (not rewritten) and traces the same.
    let second = span_dir();
    run_seed(
        &hook_spec(&built.hook),
        &built.task,
        second.path(),
        &extra,
        &[],
        example_service,
    );
    assert_eq!(
        (identity(&hook_cwasm), identity(&task_cwasm)),
        before,
        "the second run must load the compiled components, not compile and store them again"
    );
}

/// The language's task under the Rust file hook.
pub fn assert_task_under_rust_hook(built: &Built) {
    let dir = span_dir();
    run_seed(
        guests::FILE_HOOK,
        &built.task,
        dir.path(),
        &[],
        &[],
        "wtrace-tests",
    );
}

/// The Rust hello task under the language's hook, which honours the
/// OpenTelemetry resource variables.
pub fn assert_rust_task_under_hook(built: &Built) {
    let dir = span_dir();
    let spans = run_seed(
        &hook_spec(&built.hook),
        std::path::Path::new(guests::HELLO),
        dir.path(),
        &[],
        &[
            ("OTEL_SERVICE_NAME", "checkout"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=ci,team=obs",
            ),
        ],
        "checkout",
    );
    for span in spans.all() {
        assert_eq!(span.resource["deployment.environment"], "ci");
        assert_eq!(span.resource["team"], "obs");
    }
}
