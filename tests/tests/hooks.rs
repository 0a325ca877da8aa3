//! Tracing startup hooks: the console exporter, samplers, and every way a
//! hook can fail — each a clear error, a non-zero exit and no process left.

use wtrace_tests::{Spans, Wtrace, guests, span_dir};

fn run_with_hook(hook: &str, invocations: &[&str]) -> wtrace_tests::Run {
    let mut args = vec![
        "run".to_owned(),
        format!("--tracing-startup-hook={hook}"),
        "--num-workers=2".to_owned(),
        guests::HELLO.to_owned(),
    ];
    args.extend(invocations.iter().map(|s| s.to_string()));
    Wtrace::new(args).run()
}

/// `wtrace run` of `hello.wasm` on 2 workers under the file hook, writing
/// to `dir`.
fn with_file_hook(dir: &std::path::Path, invocations: &[&str]) -> Wtrace {
    let mut args = vec![
        "run".to_owned(),
        format!("--tracing-startup-hook={}", guests::FILE_HOOK),
        format!("--allow-span-dir={}", dir.display()),
        "--num-workers=2".to_owned(),
        guests::HELLO.to_owned(),
    ];
    args.extend(invocations.iter().map(|s| s.to_string()));
    Wtrace::new(args).env("WTRACE_SPAN_DIR", dir)
}

/// `[span pid=..] name kind=.. trace=.. span=.. parent=..` lines of the console exporter.
fn console_spans(stderr: &str) -> Vec<(String, String, String, String)> {
    stderr
        .lines()
        .filter(|l| l.starts_with("[span pid="))
        .map(|line| {
            let name = line
                .split("] ")
                .nth(1)
                .unwrap()
                .split(" kind=")
                .next()
                .unwrap()
                .to_owned();
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .unwrap_or_default()
                    .to_owned()
            };
            (name, field("trace="), field("span="), field("parent="))
        })
        .collect()
}

#[test]
fn console_hook_prints_every_process_spans() {
    let run = run_with_hook(guests::CONSOLE_HOOK, &["my-func()"]);
    run.success();
    let spans = console_spans(&run.stderr);
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.0 == name)
            .unwrap_or_else(|| panic!("{name} not printed:\n{}", run.stderr))
    };
    let submit = find("my-func submit");
    let execute = find("my-func execute");
    let foo = find("foo");
    assert_eq!(execute.3, submit.2, "execute's parent is the submit span");
    assert_eq!(foo.3, execute.2, "foo's parent is the execute span");
    assert!(submit.1 == execute.1 && execute.1 == foo.1, "one trace");
}

#[test]
fn always_off_sampler_writes_no_span() {
    let dir = span_dir();
    let run = with_file_hook(dir.path(), &["my-function()", "my-func()"])
        .env("OTEL_TRACES_SAMPLER", "always_off")
        .run();
    assert_eq!(run.success().lines().next(), Some("1"), "tasks still run");
    let spans = Spans::read(dir.path());
    assert!(
        spans.all().is_empty(),
        "no span may be written: {:?}",
        spans.names()
    );
    assert_eq!(
        spans
            .files
            .files
            .iter()
            .filter(|f| wtrace_tests::is_span_file(f))
            .count(),
        3,
        "the hook still ran in all 3 processes"
    );
}

#[test]
fn every_sampler_of_the_environment_samples_as_named() {
    wtrace_tests::assert_env_samplers(guests::FILE_HOOK, &[]);
}

fn assert_hook_fails(hook: &str, expected: &[&str]) {
    let run = run_with_hook(hook, &["my-function()"]);
    let stderr = run.failure();
    assert!(
        stderr.contains("error: tracing startup hook")
            || stderr.contains("could not start: tracing startup hook"),
        "the error names the hook:\n{stderr}"
    );
    for part in expected {
        assert!(stderr.contains(part), "expected {part:?} in:\n{stderr}");
    }
    assert!(run.stdout.is_empty(), "no task ran: {}", run.stdout);
}

#[test]
fn a_missing_hook_file_is_a_clear_error() {
    assert_hook_fails(
        "/nonexistent/hook.wasm:setup_tracing",
        &[
            "/nonexistent/hook.wasm:setup-tracing",
            "cannot read /nonexistent/hook.wasm",
        ],
    );
}

#[test]
fn a_file_that_is_not_a_component_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm at all").unwrap();
    assert_hook_fails(
        &format!("{}:setup_tracing", garbage.display()),
        &["not a WebAssembly file"],
    );

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    assert_hook_fails(
        &format!("{}:setup_tracing", core.display()),
        &["core WebAssembly module, not a component"],
    );

    let truncated = dir.path().join("truncated.wasm");
    let bytes = std::fs::read(guests::CONSOLE_HOOK).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_hook_fails(
        &format!("{}:setup_tracing", truncated.display()),
        &["not a valid WebAssembly component"],
    );
}

#[test]
fn a_missing_export_lists_the_exports() {
    assert_hook_fails(
        &format!("{}:setup_tracing", guests::MISBEHAVING_HOOKS),
        &[
            "has no export `setup-tracing`",
            "`setup-error`",
            "`setup-trap`",
        ],
    );
}

#[test]
fn a_wrongly_typed_export_shows_both_types() {
    assert_hook_fails(
        &format!("{}:setup_wrong_type", guests::MISBEHAVING_HOOKS),
        &[
            "`func(level: u32) -> u32`",
            "setup-wrong-type: func() -> result<_, string>",
        ],
    );
}

#[test]
fn a_trapping_hook_is_a_clear_error() {
    assert_hook_fails(
        &format!("{}:setup-trap", guests::MISBEHAVING_HOOKS),
        &["setup-trap trapped", "the hook crashed on purpose"],
    );
}

#[test]
fn a_hook_returning_an_error_shows_it() {
    assert_hook_fails(
        &format!("{}:setup-error", guests::MISBEHAVING_HOOKS),
        &["setup-error returned an error: no span exporter is configured for this environment"],
    );
}

#[test]
fn exports_outside_the_sandbox_are_refused_with_the_flag_to_allow_them() {
    assert_hook_fails(
        &format!("{}:setup-refused-file", guests::MISBEHAVING_HOOKS),
        &[
            "span file /etc/wtrace-spans.json refused",
            "--allow-span-dir",
        ],
    );
    assert_hook_fails(
        &format!("{}:setup-refused-endpoint", guests::MISBEHAVING_HOOKS),
        &[
            "collector.example.com",
            "--allow-otlp-host collector.example.com",
        ],
    );
}

#[test]
fn a_hook_failing_in_a_worker_stops_the_run() {
    assert_hook_fails(
        &format!("{}:setup-fails-in-workers", guests::MISBEHAVING_HOOKS),
        &["could not start", "refusing to run in worker"],
    );
}

#[test]
fn when_the_driver_fails_the_held_workers_run_nothing_and_say_nothing() {
    // `wtrace run` starts its workers while it checks the component and runs
    // its own hook, holding them before theirs: a failure is the driver's
    // alone, printed once, with no worker output and no span file.
    let run = run_with_hook(
        &format!("{}:setup-trap", guests::MISBEHAVING_HOOKS),
        &["my-function()"],
    );
    let stderr = run.failure();
    assert_eq!(
        stderr.matches("panicked at").count(),
        1,
        "one process ran the hook:\n{stderr}"
    );
    assert!(!stderr.contains("wtrace worker"), "{stderr}");

    let dir = span_dir();
    let run = with_file_hook(dir.path(), &["no-such-export()"]).run();
    let stderr = run.failure();
    assert!(
        stderr.contains("no exported function `no-such-export`"),
        "{stderr}"
    );
    assert!(!stderr.contains("wtrace worker"), "{stderr}");
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(files.is_empty(), "no process ran the hook: {files:?}");
}
