//! A run's life: Ctrl-C flushes every process's spans; compiled components
//! are cached by digest; a long run prints every result, in order; a run
//! whose output closes stops; a piped run shows each result before it
//! waits for the next.

use std::os::unix::process::CommandExt as _;
use std::time::{Duration, Instant};

use wtrace_tests::{Spans, Wtrace, alive, guests, span_dir};

/// Starts `wtrace` in a process group of its own, as a shell starts a
/// foreground job, its output and errors piped to the test.
fn spawn_as_in_a_terminal(wtrace: &mut Wtrace) -> std::process::Child {
    wtrace
        .command()
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Ctrl-C in a terminal: SIGINT to the whole foreground process group
/// led by `pid`.
fn ctrl_c(pid: u32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGINT);
    }
}

#[test]
fn ctrl_c_stops_the_run_and_flushes_every_span() {
    let dir = span_dir();
    let mut wtrace = Wtrace::new([
        "run".to_owned(),
        format!("--tracing-startup-hook={}", guests::FILE_HOOK),
        format!("--allow-span-dir={}", dir.path().display()),
        "--num-workers=1".to_owned(),
        guests::SPAN_EDGES.to_owned(),
        "spin(60000)".to_owned(),
    ])
    .env("WTRACE_SPAN_DIR", dir.path())
    // Batch processors hold spans in memory: only a flush gets them out.
    .env("WTRACE_TEST_BATCH", "1");
    let marker = wtrace.marker().to_owned();
    let child = spawn_as_in_a_terminal(&mut wtrace);
    let pid = child.id();

    // Wait until the worker is running the task (its span file exists).
    let deadline = Instant::now() + Duration::from_secs(30);
    let span_files = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| wtrace_tests::is_span_file(&e.path()))
            })
            .count()
    };
    while span_files() < 2 {
        assert!(Instant::now() < deadline, "the worker never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    ctrl_c(pid);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(130),
        "exit 130 after Ctrl-C:\n{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the 60 s task was interrupted"
    );
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        wtrace_tests::processes_with_marker(&marker).is_empty(),
        "no process left"
    );
    assert!(!alive(pid));

    let spans = Spans::read(dir.path());
    let submit = spans.one("spin submit");
    let execute = spans.one("spin execute");
    let spinning = spans.one("spinning");
    wtrace_tests::assert_child_of(execute, submit);
    wtrace_tests::assert_child_of(spinning, execute);
    let error = execute.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("interrupted"),
        "the execute span says why it ended: {error:?}"
    );
    assert_eq!(spinning.attributes["wtrace.unended"], "true");
}

#[test]
fn compiled_components_are_cached_by_digest() {
    let cache = tempfile::tempdir().unwrap();
    Wtrace::new([
        "run".to_owned(),
        format!("--cache-dir={}", cache.path().display()),
        "--num-workers=1".to_owned(),
        guests::HELLO.to_owned(),
        "my-function()".to_owned(),
    ])
    .run()
    .success();
    let digest = wtrace::Digest::of(&std::fs::read(guests::HELLO).unwrap());
    let cached: Vec<_> = wtrace_tests::files_under(cache.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert_eq!(
        cached[0].file_stem().unwrap().to_str().unwrap(),
        digest.hex()
    );

    // A second run loads it instead of compiling: the file is not rewritten.
    let before = std::fs::metadata(&cached[0]).unwrap().modified().unwrap();
    Wtrace::new([
        "run".to_owned(),
        format!("--cache-dir={}", cache.path().display()),
        "--num-workers=1".to_owned(),
        guests::HELLO.to_owned(),
        "my-function()".to_owned(),
    ])
    .run()
    .success();
    assert_eq!(
        std::fs::metadata(&cached[0]).unwrap().modified().unwrap(),
        before
    );
}

#[test]
fn a_long_run_prints_every_result_in_submission_order() {
    // More tasks than `wtrace run` keeps in flight, so its window refills.
    let repeat = 50_000;
    let run = Wtrace::new([
        "run".to_owned(),
        "--num-workers=2".to_owned(),
        "--repeat".to_owned(),
        repeat.to_string(),
        guests::SPAN_EDGES.to_owned(),
        "add(1, 2)".to_owned(),
        "add(40, 2)".to_owned(),
    ])
    .run();
    let lines: Vec<&str> = run.success().lines().collect();
    assert_eq!(lines.len(), 2 * repeat, "one result per task");
    for (i, pair) in lines.chunks(2).enumerate() {
        assert_eq!(pair, ["3", "42"], "results {} and {}", 2 * i, 2 * i + 1);
    }
}

#[test]
fn a_run_whose_output_closes_stops_and_flushes() {
    use std::io::BufRead as _;
    let dir = span_dir();
    let mut wtrace = Wtrace::new([
        "run".to_owned(),
        format!("--tracing-startup-hook={}", guests::FILE_HOOK),
        format!("--allow-span-dir={}", dir.path().display()),
        "--num-workers=2".to_owned(),
        "--repeat=1000000".to_owned(),
        guests::SPAN_EDGES.to_owned(),
        "add(1, 2)".to_owned(),
    ])
    .env("WTRACE_SPAN_DIR", dir.path());
    let marker = wtrace.marker().to_owned();
    let mut child = wtrace
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read one result, then go away like `| head -1`.
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "3\n");
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(141),
        "stops as a process stopped by SIGPIPE would; stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "quietly: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(wtrace_tests::processes_with_marker(&marker).is_empty());
    // Every process flushed whole lines: the driver and both workers.
    let spans = Spans::read(dir.path());
    let span_files = spans
        .files
        .files
        .iter()
        .filter(|f| wtrace_tests::is_span_file(f))
        .count();
    assert_eq!(span_files, 3);
    assert!(!spans.named("add execute").is_empty());
}

#[test]
fn a_piped_run_shows_each_result_before_waiting_for_the_next() {
    use std::io::BufRead as _;
    // Results to a pipe are written in blocks; one that came must still
    // reach the reader while the run waits for a slow task after it, and
    // Ctrl-C must not take the results already printed with it.
    let mut wtrace = Wtrace::new([
        "run".to_owned(),
        "--num-workers=2".to_owned(),
        guests::SPAN_EDGES.to_owned(),
        "add(1, 2)".to_owned(),
        "add(40, 2)".to_owned(),
        "spin(60000)".to_owned(),
    ]);
    let marker = wtrace.marker().to_owned();
    let mut child = spawn_as_in_a_terminal(&mut wtrace);
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = lines_tx.send(line.unwrap());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut early = Vec::new();
    while early.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => early.push(line),
            Err(_) => panic!("results held back while the run waits: got {early:?}"),
        }
    }
    assert_eq!(early, ["3", "42"]);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the slow task is still running"
    );
    ctrl_c(child.id());
    let output = child.wait_with_output().unwrap();
    reader.join().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(lines_rx.try_recv().is_err(), "nothing printed twice");
    assert!(wtrace_tests::processes_with_marker(&marker).is_empty());
}

/// `wtrace run` of one call of the fan-out guest, spans to files in `dir`,
/// with the default number of workers.
fn run_fanout_traced(dir: &std::path::Path, call: &str) -> wtrace_tests::Run {
    Wtrace::new([
        "run".to_owned(),
        format!("--tracing-startup-hook={}", guests::FILE_HOOK),
        format!("--allow-span-dir={}", dir.display()),
        guests::FANOUT.to_owned(),
        call.to_owned(),
    ])
    .env("WTRACE_SPAN_DIR", dir)
    .run()
}

#[test]
fn a_one_task_run_starts_one_worker_and_nested_tasks_start_the_rest() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The default is a worker per core: with one, there is nothing to add.
    if cores < 2 {
        return;
    }
    let run = |call: &str| {
        let dir = span_dir();
        run_fanout_traced(dir.path(), call).success();
        let files = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| wtrace_tests::is_span_file(&e.as_ref().unwrap().path()))
            .count();
        (Spans::read(dir.path()), files)
    };

    // One task: the driver and a single worker, one process fewer to start.
    let (spans, files) = run("tree(0, 1)");
    assert_eq!(spans.named("tree execute").len(), 1);
    assert_eq!(files, 2, "a span file for the driver and one worker");

    // Its nested tasks queue behind it: more workers start and take them.
    let (spans, files) = run("spread(4, 300)");
    let workers: std::collections::HashSet<Option<i64>> = spans
        .named("busy-for execute")
        .iter()
        .map(|s| s.pid)
        .collect();
    assert_eq!(spans.named("busy-for execute").len(), 4);
    assert!(workers.len() >= 2, "the nested tasks ran on {workers:?}");
    // A worker started late may find the run over before its hook: at
    // least the two that ran tasks wrote span files.
    assert!(
        files >= 3,
        "the driver and the workers that ran tasks: {files}"
    );
}

#[test]
fn a_worker_started_for_nested_tasks_after_they_are_done_leaves_quietly() {
    // Three quick tasks: a second worker starts for the two nested ones,
    // and the run is usually over before it has run its hook.
    for _ in 0..5 {
        let dir = span_dir();
        let run = run_fanout_traced(dir.path(), "tree(1, 2)");
        assert!(run.success().ends_with("ok(2)\n"), "{}", run.stdout);
        assert!(run.stderr.is_empty(), "nothing said: {}", run.stderr);
    }
}
