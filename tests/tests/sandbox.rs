//! The sandbox, attack by attack: each hostile guest is contained (its task
//! fails or is limited, with an error naming the limit), and the same worker
//! then runs a normal task.

use std::io::Read as _;
use std::net::TcpListener;
use std::time::Duration;

use wtrace_tests::{Cluster, Spans, Wtrace, guests, span_dir};

/// A one-worker cluster with tight limits, tracing to `dir`.
fn cluster(dir: &std::path::Path, extra: &[&str]) -> Cluster {
    let hook = format!("--tracing-startup-hook={}", guests::FILE_HOOK);
    let allow = format!("--allow-span-dir={}", dir.display());
    let mut args = vec![
        hook.as_str(),
        allow.as_str(),
        "--num-workers=1",
        "--timeout=2s",
        "--max-memory=64M",
        "--max-spans=10000",
        "--max-open-spans=1000",
        "--max-nested-tasks=50",
        "--max-result-size=1M",
    ];
    args.extend_from_slice(extra);
    Cluster::start(
        &args,
        &[
            ("WTRACE_SPAN_DIR", dir.to_str().unwrap()),
            ("SECRET_TOKEN", "hunter2"),
        ],
    )
}

fn worker_pid(cluster: &Cluster) -> u64 {
    let status = cluster.status();
    let workers = status["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{status}");
    workers[0]["pid"].as_u64().unwrap()
}

/// Runs `invocation` of the hostile guest, then checks the same worker is
/// alive and runs a normal task. Returns the attack's run.
fn attack(cluster: &Cluster, invocation: &str) -> wtrace_tests::Run {
    let before = worker_pid(cluster);
    let run = cluster
        .command(&["submit", guests::HOSTILE, invocation])
        .run();
    let fine = cluster
        .command(&["submit", guests::HOSTILE, "fine()"])
        .run();
    assert_eq!(
        fine.success(),
        "\"still fine\"\n",
        "after {invocation}: {}",
        fine.stderr
    );
    assert_eq!(
        worker_pid(cluster),
        before,
        "the same worker survived {invocation}"
    );
    run
}

fn failed_with(run: &wtrace_tests::Run, parts: &[&str]) {
    let stderr = run.failure();
    for part in parts {
        assert!(stderr.contains(part), "expected {part:?} in:\n{stderr}");
    }
}

#[test]
fn runaway_guests_hit_their_limits_and_the_worker_lives_on() {
    let dir = span_dir();
    let mut cluster = cluster(dir.path(), &[]);

    failed_with(
        &attack(&cluster, "spin-forever()"),
        &["timed out after 2s", "--timeout"],
    );
    failed_with(
        &attack(&cluster, "sleep-forever()"),
        &[
            "timed out after 2s while blocked in wasi:io/poll",
            "--timeout",
        ],
    );
    failed_with(
        &attack(&cluster, "memory-bomb()"),
        &["memory limit exceeded", "64 MiB", "--max-memory"],
    );
    failed_with(
        &attack(&cluster, "stack-overflow(0)"),
        &["stack-overflow: trapped"],
    );
    failed_with(&attack(&cluster, "huge-result(2)"), &["--max-result-size"]);
    cluster.stop();

    // The execute spans say why each task ended.
    let spans = Spans::read(dir.path());
    let spin = spans.one("spin-forever execute");
    assert!(spin.error.as_deref().unwrap().contains("timed out"));
    assert!(spin.events.contains(&"exception".to_owned()));
    assert_eq!(spans.one("spinning").attributes["wtrace.unended"], "true");
    assert_eq!(spans.one("asleep").attributes["wtrace.unended"], "true");
    let bomb = spans.one("memory-bomb execute");
    let peak: u64 = bomb.attributes["wtrace.wasm.memory_peak_bytes"]
        .parse()
        .unwrap();
    assert!(peak <= 64 << 20, "peak {peak} within the limit");
}

#[test]
fn fuel_stops_a_busy_guest() {
    let run = Wtrace::new([
        "run",
        "-n1",
        "--fuel=5000000",
        guests::HOSTILE,
        "spin-forever()",
    ])
    .run();
    let stderr = run.failure();
    assert!(
        stderr.contains("ran out of fuel after 5000000 units"),
        "{stderr}"
    );
    assert!(stderr.contains("--fuel"), "{stderr}");
}

#[test]
fn wasi_is_denied_by_default() {
    let dir = span_dir();
    let cluster = cluster(dir.path(), &[]);

    let passwd = attack(&cluster, r#"read-file("/etc/passwd")"#);
    assert!(!passwd.stdout.contains("root:"), "{}", passwd.stdout);
    failed_with(&passwd, &["read-file: returned an error"]);

    let escape = std::env::temp_dir().join(format!("wtrace-escape-{}", std::process::id()));
    let write = attack(
        &cluster,
        &format!("write-file({:?})", escape.display().to_string()),
    );
    failed_with(&write, &["write-file: returned an error"]);
    assert!(!escape.exists(), "the guest wrote outside the sandbox");

    // The worker's environment holds SECRET_TOKEN; the guest sees nothing.
    let env = attack(&cluster, "read-env()");
    assert_eq!(env.success(), "[]\n");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let connect = attack(&cluster, &format!("connect({address:?})"));
    failed_with(&connect, &["connect: returned an error"]);
    assert!(
        listener.accept().is_err(),
        "no connection reached the listener"
    );
}

#[test]
fn grants_open_exactly_what_they_name() {
    let dir = span_dir();
    let data = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let cluster = cluster(
        dir.path(),
        &[
            &format!("--allow-dir={}:/data", data.path().display()),
            "--allow-env=SECRET_TOKEN",
            &format!("--allow-net={address}"),
        ],
    );
    attack(&cluster, r#"write-file("/data/out.txt")"#).success();
    assert_eq!(
        std::fs::read_to_string(data.path().join("out.txt")).unwrap(),
        "written by a guest"
    );
    let read = attack(&cluster, r#"read-file("/data/out.txt")"#);
    assert_eq!(read.success(), "ok(\"written by a guest\")\n");
    failed_with(
        &attack(&cluster, r#"read-file("/etc/passwd")"#),
        &["returned an error"],
    );

    assert_eq!(
        attack(&cluster, "read-env()").success(),
        "[(\"SECRET_TOKEN\", \"hunter2\")]\n"
    );

    let accepted = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf);
    });
    let connect = attack(&cluster, &format!("connect({address:?})"));
    assert!(
        connect.success().starts_with("ok(\"connected to"),
        "{}",
        connect.stdout
    );
    accepted.join().unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = attack(
        &cluster,
        &format!("connect({:?})", other.local_addr().unwrap().to_string()),
    );
    failed_with(&refused, &["returned an error"]);

    // Read-only directories refuse writes.
    let ro = tempfile::tempdir().unwrap();
    let ro_cluster = cluster_with_dir(dir.path(), &format!("{}:/ro:ro", ro.path().display()));
    failed_with(
        &attack(&ro_cluster, r#"write-file("/ro/x")"#),
        &["returned an error"],
    );
    assert!(!ro.path().join("x").exists());
}

#[test]
fn socket_io_that_never_completes_is_bound_by_the_timeout() {
    let dir = span_dir();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    // Accepts connections and holds them without reading or writing. It lets
    // go after 30 s, so a guest the timeout failed to stop ends the test with
    // a failure rather than a hang.
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < until {
            match listener.accept() {
                Ok((stream, _)) => held.push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let cluster = cluster(dir.path(), &[&format!("--allow-net={address}")]);
    failed_with(
        &attack(&cluster, &format!("read-silent({address:?})")),
        &[
            "timed out after 2s while blocked reading a wasi:io stream",
            "--timeout",
        ],
    );
    failed_with(
        &attack(&cluster, &format!("write-unread({address:?})")),
        &[
            "timed out after 2s while blocked writing a wasi:io stream",
            "--timeout",
        ],
    );
}

#[test]
fn a_fifo_no_one_writes_to_is_bound_by_the_timeout() {
    let dir = span_dir();
    let data = tempfile::tempdir().unwrap();
    let fifo = data.path().join("fifo");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
    // After 30 s a writer comes and goes, so a guest the timeout failed to
    // stop ends the test with a failure rather than a hang.
    let writer = fifo.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        let _ = std::fs::OpenOptions::new().write(true).open(writer);
    });
    let cluster = cluster(
        dir.path(),
        &[&format!("--allow-dir={}:/data", data.path().display())],
    );
    failed_with(
        &attack(&cluster, r#"read-file("/data/fifo")"#),
        &[
            "timed out after 2s while blocked in wasi:filesystem",
            "--timeout",
        ],
    );
}

fn cluster_with_dir(dir: &std::path::Path, grant: &str) -> Cluster {
    cluster(dir, &[&format!("--allow-dir={grant}")])
}

#[test]
fn span_floods_are_dropped_and_counted() {
    let dir = span_dir();
    let mut cluster = cluster(dir.path(), &[]);
    assert_eq!(attack(&cluster, "million-spans()").success(), "1000000\n");
    assert_eq!(attack(&cluster, "deep-spans(100000)").success(), "100000\n");
    attack(&cluster, "huge-attribute(10)").success();
    attack(&cluster, "out-of-order()").success();
    failed_with(
        &attack(&cluster, "stale-handle()"),
        &["stale-handle: trapped", "unknown handle"],
    );
    // The two encoded calls read the guest's bytes in place: what no
    // encoder writes traps the task with the call's own error.
    for (at_end, says) in [
        (false, "start-span-encoded: a malformed span description"),
        (true, "finish-span-encoded: malformed attributes"),
    ] {
        let run = attack(&cluster, &format!("malformed-encoded-span({at_end})"));
        failed_with(&run, &["malformed-encoded-span: trapped", says]);
    }
    let run = attack(&cluster, "stale-span-numbers()");
    let numbers = run.success();
    let said: Vec<&str> = numbers
        .trim()
        .trim_matches(['[', ']'])
        .split("\", \"")
        .collect();
    assert_eq!(said.len(), 9, "{numbers}");
    assert!(said[0].ends_with("Ok(())"), "{numbers}");
    for misuse in &said[1..4] {
        assert!(
            misuse.contains("Err(") && misuse.contains("it has ended, or was never started"),
            "finishing a finished or unknown number is an error: {numbers}"
        );
    }
    assert_eq!(said[4], "recording=false", "{numbers}");
    assert_eq!(said[5], "recording=true", "{numbers}");
    assert!(said[6].starts_with("Ok(())"), "{numbers}");
    assert!(
        said[7].contains("no span is numbered 0"),
        "zero numbers no span, even when a slot is free: {numbers}"
    );
    assert_eq!(
        said[8].trim_matches('"'),
        "Ok(()) Ok(())",
        "two spans started after a handle on 0 are two spans: {numbers}"
    );
    cluster.stop();

    let spans = Spans::read(dir.path());
    let million = spans.one("million-spans execute");
    assert_eq!(million.attributes["wtrace.spans_started"], "1000000");
    assert_eq!(million.attributes["wtrace.spans_dropped"], "990000");
    assert_eq!(spans.named("one-of-a-million").len(), 10_000);

    let deep = spans.one("deep-spans execute");
    assert_eq!(deep.attributes["wtrace.spans_dropped"], "99000");
    let deep_spans = spans.named("deep");
    assert_eq!(deep_spans.len(), 1000, "the open-span limit");
    assert!(
        deep_spans
            .iter()
            .all(|s| s.attributes["wtrace.unended"] == "true")
    );

    // Both numbered spans ended as the guest asked; the stranger's
    // attribute landed nowhere.
    let numbered = spans.named("numbered");
    assert_eq!(numbered.len(), 4);
    assert!(
        numbered
            .iter()
            .all(|s| !s.attributes.contains_key("wtrace.unended")
                && !s.attributes.contains_key("ignored"))
    );

    let huge = spans.one("huge");
    assert_eq!(
        huge.attributes["blob"].len(),
        8192,
        "attribute values are truncated"
    );

    let execute = spans.one("out-of-order execute");
    for name in ["a", "b", "c", "after"] {
        let span = spans.one(name);
        assert!(
            !span.attributes.contains_key("wtrace.unended"),
            "{name} was ended"
        );
    }
    assert_eq!(spans.one("after").parent_span_id, execute.span_id);
    assert_eq!(spans.one("b").parent_span_id, spans.one("a").span_id);
    assert_eq!(spans.one("b").attributes["wtrace.outlived_parent"], "true");
}

#[test]
fn a_fork_bomb_of_nested_tasks_is_stopped() {
    let dir = span_dir();
    let mut cluster = cluster(dir.path(), &[]);
    let before = worker_pid(&cluster);
    let bomb = cluster
        .command(&["submit", guests::FANOUT, "fork-bomb()"])
        .run();
    assert!(
        bomb.failure().contains("--max-nested-tasks"),
        "{}",
        bomb.stderr
    );

    // Whatever the bomb queued drains, bounded by the tree's budget.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = cluster.status();
        if status["queued"] == 0 && status["running"] == 0 {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bomb never drained: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let done = status["done"].as_u64().unwrap();
    assert!(
        done <= 2 * 50 + 2,
        "at most the budget of tasks ran: {done}"
    );
    assert_eq!(worker_pid(&cluster), before);
    let fine = cluster
        .command(&["submit", guests::HOSTILE, "fine()"])
        .run();
    assert_eq!(fine.success(), "\"still fine\"\n");
    cluster.stop();
}

#[test]
fn bad_components_and_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"MZ\x90\0 definitely not wasm").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let truncated = dir.path().join("truncated.wasm");
    let bytes = std::fs::read(guests::HOSTILE).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    for (file, expected) in [
        (&garbage, "not a WebAssembly file"),
        (&core, "core WebAssembly module, not a component"),
        (&truncated, "not a valid WebAssembly component"),
    ] {
        let run = Wtrace::new([
            "run".as_ref(),
            "-n1".as_ref(),
            file.as_os_str(),
            "f()".as_ref(),
        ])
        .run();
        assert!(
            run.failure().contains(expected),
            "{}: {}",
            file.display(),
            run.stderr
        );
    }

    let run = Wtrace::new(["run", "-n1", guests::UNKNOWN_IMPORT, "compute()"]).run();
    assert!(
        run.failure().contains("tests:unknown-import/gpu"),
        "{}",
        run.stderr
    );

    // A valid component whose initial memory is over --max-memory.
    let run = Wtrace::new([
        "run",
        "-n1",
        "--max-memory=1M",
        guests::HELLO,
        "my-function()",
    ])
    .run();
    let stderr = run.failure();
    assert!(
        stderr.contains("initial memory is larger than --max-memory")
            && stderr.contains("raise --max-memory")
            && !stderr.contains("not a valid"),
        "{stderr}"
    );

    // Huge and deeply nested arguments, from a file (argv could not hold them).
    let calls = dir.path().join("calls.txt");
    std::fs::write(&calls, format!("echo(\"{}\")\n", "x".repeat(17 << 20))).unwrap();
    let session = tempfile::tempdir().unwrap();
    let submit_file = |calls: &std::path::Path| {
        Wtrace::new([
            "submit".as_ref(),
            "--address=127.0.0.1:9".as_ref(),
            "--token=x".as_ref(),
            "--file".as_ref(),
            calls.as_os_str(),
            guests::HOSTILE.as_ref(),
        ])
        .env("WTRACE_SESSION_DIR", session.path())
        .run()
    };
    let run = submit_file(&calls);
    assert!(run.failure().contains("at most 16 MiB"), "{}", run.stderr);
    let deep = format!("echo({}\"x\"{})", "[".repeat(50_000), "]".repeat(50_000));
    std::fs::write(&calls, deep).unwrap();
    let run = submit_file(&calls);
    assert!(
        run.failure().contains("nest deeper than 128 levels"),
        "{}",
        run.stderr
    );

    let run = Wtrace::new(["run", "-n1", guests::HOSTILE, "echo(42)"]).run();
    assert!(
        run.failure()
            .contains("`echo` is `func(value: string) -> u32`"),
        "{}",
        run.stderr
    );
}

#[test]
fn hooks_are_sandboxed_too() {
    let hook = |export: &str| {
        format!(
            "--tracing-startup-hook={}:{export}",
            guests::MISBEHAVING_HOOKS
        )
    };
    let spin = Wtrace::new([
        "run",
        "-n1",
        "--hook-timeout=1s",
        &hook("setup-spin"),
        guests::HELLO,
        "my-function()",
    ])
    .run();
    assert!(
        spin.failure()
            .contains("setup-spin did not return within 1s"),
        "{}",
        spin.stderr
    );

    // A hook sees only OTEL_* and WTRACE_* variables.
    let env = Wtrace::new([
        "run",
        "-n1",
        &hook("setup-env-report"),
        guests::HELLO,
        "my-function()",
    ])
    .env("OTEL_SERVICE_NAME", "svc")
    .env("WTRACE_SOMETHING", "x")
    .env("SECRET_TOKEN", "hunter2")
    .run();
    let stderr = env.failure();
    let listed = stderr
        .split("environment: ")
        .nth(1)
        .unwrap_or_else(|| panic!("{stderr}"))
        .lines()
        .next()
        .unwrap();
    let names: Vec<&str> = listed.split(',').collect();
    assert!(names.contains(&"OTEL_SERVICE_NAME"), "{names:?}");
    assert!(names.contains(&"WTRACE_SOMETHING"), "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("OTEL_") || n.starts_with("WTRACE_")),
        "{names:?}"
    );
    assert!(
        !names.contains(&"WTRACE_TOKEN"),
        "the cluster token is never shown to hooks"
    );
}

#[test]
fn wtrace_check_reports_what_a_component_needs() {
    let ok = Wtrace::new(["check", guests::HELLO]).run();
    let out = ok.success();
    assert!(
        out.contains("wtrace:tracing/tracer@0.1.0") && out.contains("provided"),
        "{out}"
    );
    assert!(out.contains("my-function: func() -> s32"), "{out}");

    let hook = Wtrace::new(["check", "--world=hook", guests::CONSOLE_HOOK]).run();
    assert!(
        hook.success()
            .contains("setup-tracing: func() -> result<_, string>")
    );

    let not_a_hook = Wtrace::new(["check", "--world=hook", guests::HELLO]).run();
    assert!(
        not_a_hook.stdout.contains("has no export `setup-tracing`"),
        "{}",
        not_a_hook.stdout
    );
    assert_eq!(not_a_hook.status, Some(1));

    let json = Wtrace::new(["check", "--json", guests::UNKNOWN_IMPORT]).run();
    assert_eq!(json.status, Some(1));
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["imports"][0]["name"], "tests:unknown-import/gpu");
    assert_eq!(report["imports"][0]["status"], "missing");

    // Sockets are linked but denied until granted.
    let hostile = Wtrace::new(["check", "--json", guests::HOSTILE]).run();
    let report: serde_json::Value = serde_json::from_str(hostile.success()).unwrap();
    let sockets = report["imports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"].as_str().unwrap().starts_with("wasi:sockets/tcp@"))
        .expect("the hostile guest imports sockets");
    assert_eq!(
        sockets["status"]["denied"]["grant"],
        "--allow-net HOST:PORT"
    );
    let granted = Wtrace::new(["check", "--json", "--allow-net=*", guests::HOSTILE]).run();
    assert!(granted.success().contains("\"provided\""));
}

#[test]
fn wtrace_check_lists_actor_classes_with_their_constructors_and_methods() {
    let counter = Wtrace::new(["check", guests::COUNTER]).run();
    let out = counter.success();
    assert!(
        out.contains("actor classes:\n  counter (in counter-api)\n"),
        "{out}"
    );
    assert!(out.contains("    constructor(start: s64)\n"), "{out}");
    assert!(out.contains("    incr: func(by: s64) -> s64\n"), "{out}");
    assert!(out.contains("    get: func() -> s64\n"), "{out}");
    assert!(
        out.contains("ok: it would run as an actor component"),
        "{out}"
    );

    let json = Wtrace::new(["check", "--json", guests::ACTORS]).run();
    let report: serde_json::Value = serde_json::from_str(json.success()).unwrap();
    let classes: Vec<&str> = report["actor_classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(classes, ["counter", "log"]);
    assert_eq!(report["actor_classes"][1]["constructor"], "constructor()");
    // A component with both runs as a task too.
    assert!(
        Wtrace::new(["check", guests::ACTORS])
            .run()
            .success()
            .contains("ok: it would run as a task")
    );
}
