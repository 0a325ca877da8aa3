//! The seed example end to end, as a user runs it: real worker processes,
//! the built-in default hook, span files on disk.

use std::collections::HashSet;
use std::path::PathBuf;

use wtrace_tests::{Spans, Wtrace, assert_child_of, file_pid, guests, is_span_file, span_dir};

/// Files in /tmp/spans holding any span of `traces` (other runs share the directory).
fn files_with_traces(traces: &HashSet<String>) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/tmp/spans")
        .expect("/tmp/spans exists")
        .flatten()
    {
        let path = entry.path();
        let Ok(files) = wtrace::spans::SpanFiles::read(std::slice::from_ref(&path)) else {
            continue;
        };
        if files.spans.iter().any(|s| traces.contains(&s.trace_id)) {
            found.push(path);
        }
    }
    found.sort();
    found
}

#[test]
fn default_hook_traces_the_seed_example_across_processes() {
    let run = Wtrace::new([
        "run",
        "--tracing-startup-hook=default",
        "--num-workers",
        "2",
        guests::HELLO,
        "my-function()",
        "my_func()",
    ])
    .run();
    let stdout = run.success();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "1", "my-function() prints 1: {stdout}");
    assert!(
        lines[1].starts_with("(my-func pid=") && lines[1].ends_with(") hello from inside span foo"),
        "the task's output reaches the driver with Ray's prefix: {stdout}"
    );

    // The driver's own file holds the submit spans.
    let driver_file = PathBuf::from(format!("/tmp/spans/{}.json", run.pid));
    let driver = Spans::read_files(std::slice::from_ref(&driver_file));
    let submit = driver.one("my-function submit");
    let func_submit = driver.one("my-func submit");
    assert_eq!(submit.kind, "PRODUCER");
    assert_eq!(submit.pid, Some(i64::from(run.pid)));
    assert_eq!(submit.attributes["wtrace.function"], "my-function");
    assert_eq!(submit.attributes["wtrace.component"], "hello.wasm");
    assert!(
        submit.parent_span_id.is_empty(),
        "no TRACEPARENT: the submit span is a root"
    );

    // Every process of this run wrote its own /tmp/spans/<pid>.json.
    let traces: HashSet<String> = [submit.trace_id.clone(), func_submit.trace_id.clone()].into();
    let files = files_with_traces(&traces);
    assert!(files.contains(&driver_file));
    let all = Spans::read_files(&files);
    for (file, spans) in all.by_file() {
        for span in spans {
            assert_eq!(
                span.pid,
                Some(i64::from(file_pid(&file))),
                "{}: process.pid must match the file name",
                file.display()
            );
        }
    }

    let execute = all.one("my-function execute");
    assert_eq!(execute.kind, "CONSUMER");
    assert_child_of(execute, submit);
    assert_ne!(
        execute.pid, submit.pid,
        "the execute span comes from a worker process"
    );
    assert_eq!(
        execute.attributes["wtrace.task_id"],
        submit.attributes["wtrace.task_id"]
    );
    for key in [
        "wtrace.function",
        "wtrace.component",
        "wtrace.component.digest",
        "wtrace.wasm.instantiate_us",
        "wtrace.wasm.memory_peak_bytes",
        "wtrace.spans_dropped",
    ] {
        assert!(
            execute.attributes.contains_key(key),
            "execute span lacks {key}"
        );
    }
    // What is the same for every span of a process is on the resource
    // only, as the semantic conventions put it.
    for span in [submit, execute] {
        for key in [
            "process.pid",
            "wtrace.job_id",
            "wtrace.worker_id",
            "wtrace.node_id",
        ] {
            assert!(
                !span.attributes.contains_key(key),
                "{} carries {key} on the span, not only on the resource",
                span.name
            );
            assert!(
                span.resource.contains_key(key),
                "{}'s resource lacks {key}",
                span.name
            );
        }
    }
    assert_eq!(
        execute.resource["wtrace.job_id"],
        submit.resource["wtrace.job_id"]
    );
    assert!(execute.resource["wtrace.job_id"].starts_with("job-"));
    assert_eq!(submit.resource["wtrace.worker_id"], "driver");
    assert!(
        execute.resource["wtrace.worker_id"].starts_with(&execute.resource["wtrace.node_id"]),
        "a worker's id begins with its node's"
    );
    assert_eq!(execute.attributes["wtrace.spans_dropped"], "0");

    let func_execute = all.one("my-func execute");
    assert_child_of(func_execute, func_submit);
    let foo = all.one("foo");
    assert_eq!(foo.kind, "INTERNAL");
    assert_child_of(foo, func_execute);
    assert_eq!(foo.pid, func_execute.pid);
    assert_eq!(func_execute.attributes["wtrace.spans_started"], "1");

    // The task's line is also a log record, beside the worker's spans in
    // /tmp/spans/<pid>.logs.json, joined to the span current when it was
    // printed.
    let worker_pid = foo.pid.unwrap();
    let logs = Spans::read_files(&[PathBuf::from(format!("/tmp/spans/{worker_pid}.logs.json"))]);
    let hello = logs
        .files
        .logs
        .iter()
        .find(|l| l.span_id == foo.span_id)
        .unwrap_or_else(|| panic!("no record in foo: {:?}", logs.files.logs));
    assert_eq!(hello.body, "hello from inside span foo");
    assert_eq!(hello.trace_id, foo.trace_id);
    assert_eq!(hello.severity, "INFO");
    assert_eq!(hello.pid, Some(worker_pid), "the process's resource");
    assert_eq!(hello.attributes["wtrace.function"], "my-func");
    assert_eq!(
        hello.attributes["wtrace.task_id"],
        func_execute.attributes["wtrace.task_id"]
    );
    assert_eq!(hello.attributes["log.iostream"], "stdout");

    // `wtrace spans` shows the same tree, with the line in its span.
    let shown = Wtrace::new([
        "spans".into(),
        "--trace".into(),
        func_submit.trace_id.clone(),
    ])
    .run();
    let tree = shown.success();
    let order: Vec<usize> = ["my-func submit", "my-func execute", "foo"]
        .iter()
        .map(|name| {
            tree.find(name)
                .unwrap_or_else(|| panic!("{name} missing from:\n{tree}"))
        })
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "parents print before children:\n{tree}"
    );
    assert!(tree.contains("└─ foo"), "{tree}");
    let after_foo = &tree[tree.find("└─ foo").unwrap()..];
    assert!(
        after_foo.lines().nth(1).is_some_and(|l| l
            .trim_start()
            .starts_with("INFO  hello from inside span foo")),
        "the log line under its span:\n{tree}"
    );
}

#[test]
fn each_of_three_workers_and_the_driver_writes_a_file_of_valid_lines() {
    let dir = span_dir();
    // Six tasks of 40 ms first, so a worker that asks for work late (under
    // load) still gets some: a worker takes two tasks at a time at most.
    let mut invocations: Vec<String> = vec!["spin(40)".to_owned(); 6];
    invocations.extend((0..12).map(|i| format!("add({i}, 1)")));
    let mut args = vec![
        "run".to_owned(),
        format!("--tracing-startup-hook={}", guests::FILE_HOOK),
        format!("--allow-span-dir={}", dir.path().display()),
        "--num-workers=3".to_owned(),
        guests::SPAN_EDGES.to_owned(),
    ];
    args.extend(invocations);
    let run = Wtrace::new(args).env("WTRACE_SPAN_DIR", dir.path()).run();
    let results: Vec<&str> = run.success().lines().collect();
    assert_eq!(results.len(), 18, "{results:?}");
    assert!(
        results[..6]
            .iter()
            .all(|turns| turns.parse::<u32>().is_ok()),
        "{results:?}"
    );
    let expected: Vec<String> = (1..=12).map(|i| i.to_string()).collect();
    assert_eq!(results[6..], expected, "results print in invocation order");

    let files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| is_span_file(p))
        .collect();
    assert_eq!(
        files.len(),
        4,
        "one span file per process (driver + 3 workers): {files:?}"
    );
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(!text.is_empty(), "{} is empty", file.display());
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
            assert!(
                value["resourceSpans"].is_array(),
                "each line is an ExportTraceServiceRequest: {line}"
            );
        }
    }
    let spans = Spans::read(dir.path());
    assert_eq!(spans.named("add submit").len(), 12);
    assert_eq!(spans.named("add execute").len(), 12);
    let mut executed = spans.named("add execute");
    executed.extend(spans.named("spin execute"));
    let workers: HashSet<_> = executed.iter().map(|s| s.pid).collect();
    assert_eq!(workers.len(), 3, "every worker ran tasks");
}
