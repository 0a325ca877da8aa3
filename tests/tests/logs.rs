//! Logs joined to traces: every line a task writes to stdout or stderr, and
//! every record it emits (`wtrace:tracing/logs`, the `tracing` crate,
//! `wasi:otel/logs`), becomes an OpenTelemetry log record carrying the
//! trace and span id of the span current when it was written, its severity,
//! the task's function and id, and the process's resource; the hook's log
//! processor writes them beside the spans.

use wtrace_tests::{Spans, Wtrace, file_hooked_run, guests, span_dir};

/// Runs `invocations` of `component` on one worker under the file hook
/// (spans to `<pid>.json`, records to `<pid>.logs.json`); the run's stdout
/// and what the files hold.
fn logged_run(component: &str, invocations: &[&str]) -> (String, Spans, tempfile::TempDir) {
    let dir = span_dir();
    let mut args = vec![component];
    args.extend(invocations);
    let run = file_hooked_run(dir.path(), &args).run();
    let stdout = run.success().to_owned();
    let spans = Spans::read(dir.path());
    (stdout, spans, dir)
}

#[test]
fn output_lines_and_emitted_records_are_joined_to_the_span_current_when_written() {
    let (stdout, spans, dir) = logged_run(guests::LOGGING, &["chatter()"]);
    assert!(
        stdout.contains(") plain line") && stdout.contains(") ERROR disk full"),
        "the driver's terminal still gets the output: {stdout}"
    );
    let execute = spans.one("chatter execute");
    let step = spans.one("step");
    let task_id = &execute.attributes["wtrace.task_id"];

    // (body, severity, span, stream): INFO on stdout and WARN on stderr
    // unless the line says otherwise.
    for (body, severity, span, stream) in [
        ("plain line", "INFO", execute, Some("stdout")),
        ("careful now", "WARN", execute, Some("stderr")),
        ("ERROR disk full", "ERROR", step, Some("stdout")),
        ("slow disk", "WARN", step, None),
        ("no newline at the end", "INFO", step, Some("stdout")),
    ] {
        let record = spans.log(body);
        assert_eq!(record.severity, severity, "{body}");
        assert_eq!(
            (&record.trace_id, &record.span_id),
            (&span.trace_id, &span.span_id),
            "{body:?} belongs to {}",
            span.name
        );
        assert_eq!(record.pid, execute.pid, "{body}: the worker's resource");
        assert_eq!(record.attributes["wtrace.function"], "chatter", "{body}");
        assert_eq!(&record.attributes["wtrace.task_id"], task_id, "{body}");
        assert_eq!(
            record.attributes.get("log.iostream").map(String::as_str),
            stream,
            "{body}"
        );
    }
    assert_eq!(spans.log("slow disk").attributes["ms"], "250");

    // The tree shows each line in its span; the page carries them too.
    let tree = Wtrace::new(["spans".to_owned(), dir.path().display().to_string()]).run();
    let tree = tree.success();
    let step_at = tree.find("└─ step").expect(tree);
    assert!(
        tree[..step_at].contains("INFO  plain line")
            && tree[..step_at].contains("WARN  careful now"),
        "the execute span's lines come before its child:\n{tree}"
    );
    assert!(tree[step_at..].contains("ERROR ERROR disk full"), "{tree}");
    let page = dir.path().join("page.html");
    Wtrace::new([
        "spans".to_owned(),
        dir.path().display().to_string(),
        "--html".to_owned(),
        page.display().to_string(),
    ])
    .run()
    .success();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains(r#""body":"slow disk","sev":"WARN""#),
        "the page has the span's log lines"
    );
}

#[test]
fn tracing_events_become_records_in_their_tracing_span() {
    let (_, spans, _dir) = logged_run(guests::LOGGING, &["with-tracing()"]);
    let load = spans.one("load");
    let record = spans.log("loaded slowly");
    assert_eq!(record.severity, "WARN");
    assert_eq!(record.span_id, load.span_id);
    assert_eq!(record.attributes["rows"], "3");
    assert_eq!(record.attributes["wtrace.function"], "with-tracing");
    assert!(load.events.is_empty(), "a record, not a span event");
}

#[test]
fn wasi_otel_records_keep_their_ids_or_join_the_current_span() {
    let (_, spans, _dir) = logged_run(guests::WASI_OTEL, &["logged()"]);
    let execute = spans.one("logged execute");
    let own = spans.one("wasi-otel-logging");
    let broke = spans.log("it broke");
    assert_eq!(broke.severity, "ERROR", "severity number 17");
    assert_eq!(broke.span_id, own.span_id, "the guest's own span ids");
    assert_eq!(broke.trace_id, execute.trace_id);
    assert_eq!(broke.attributes["code"], "7", "JSON values arrive typed");
    assert_eq!(broke.attributes["event.name"], "failure");
    let no_ids = spans.log("no ids");
    assert_eq!(no_ids.severity, "DEBUG", "severity text");
    assert_eq!(no_ids.span_id, execute.span_id, "the current span");
    assert_eq!(no_ids.attributes["wtrace.function"], "logged");
}

/// What the hook printed before its logger existed is a record too, in no
/// span, naming the hook's export; still shown on the terminal.
#[test]
fn a_hooks_output_becomes_records_of_each_process() {
    let dir = span_dir();
    let run = file_hooked_run(dir.path(), &[guests::HELLO, "my-function()"])
        .env("WTRACE_TEST_HOOK_SAYS", "hook ready")
        .run();
    run.success();
    assert!(run.stderr.contains(") hook ready"), "{}", run.stderr);
    let spans = Spans::read(dir.path());
    let said: Vec<_> = spans
        .files
        .logs
        .iter()
        .filter(|l| l.body == "hook ready")
        .collect();
    assert_eq!(
        said.len(),
        2,
        "the driver's and the worker's: {:?}",
        spans.files.logs
    );
    for record in said {
        assert_eq!(record.attributes["wtrace.hook"], "setup-tracing");
        assert_eq!(record.severity, "INFO");
        assert!(record.span_id.is_empty(), "a hook's output is in no span");
        assert!(!record.attributes.contains_key("wtrace.task_id"));
    }
}

/// The console hook prints spans and records on stderr: each line of the
/// task as a `[log …]` line with its span's ids.
#[test]
fn the_console_hook_prints_each_record_with_its_span() {
    let run = Wtrace::new([
        "run".to_owned(),
        format!("--tracing-startup-hook={}", guests::CONSOLE_HOOK),
        "-n1".to_owned(),
        guests::HELLO.to_owned(),
        "my-func()".to_owned(),
    ])
    .run();
    run.success();
    let foo_span = run
        .stderr
        .lines()
        .find(|l| l.starts_with("[span") && l.contains("] foo "))
        .unwrap_or_else(|| panic!("{}", run.stderr));
    let foo_id = foo_span
        .split_whitespace()
        .find_map(|w| w.strip_prefix("span="))
        .unwrap();
    assert!(
        run.stderr.lines().any(|l| l.starts_with("[log pid=")
            && l.contains(&format!("span={foo_id}"))
            && l.contains(" INFO ")
            && l.contains("hello from inside span foo")),
        "{}",
        run.stderr
    );
}

/// `wtrace check` knows a task may import both logs interfaces.
#[test]
fn check_says_the_logs_interfaces_are_provided() {
    for guest in [guests::LOGGING, guests::WASI_OTEL] {
        let run = Wtrace::new(["check", guest]).run();
        let report = run.success();
        assert!(!report.contains("MISSING"), "{report}");
        assert!(
            report.contains("wtrace:tracing/logs@0.1.0") || report.contains("wasi:otel/logs"),
            "{report}"
        );
    }
}

/// A task that emits records faster than the exporter drains them loses
/// none: the hook's batch log processor makes the task wait for room
/// rather than drop records (as spans' does), and nothing says "lost".
#[test]
fn a_flood_of_records_loses_none() {
    const RECORDS: usize = 60_000;
    let dir = span_dir();
    let run = file_hooked_run(dir.path(), &[guests::LOGGING, &format!("flood({RECORDS})")]).run();
    assert_eq!(run.success().trim(), RECORDS.to_string());
    assert!(
        !run.stderr.contains("lost"),
        "records were lost: {}",
        run.stderr
    );
    let spans = Spans::read(dir.path());
    let flooding = spans
        .files
        .logs
        .iter()
        .filter(|record| record.body == "flooding")
        .count();
    assert_eq!(flooding, RECORDS, "every record reached the file");
}
