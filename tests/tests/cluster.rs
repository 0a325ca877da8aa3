//! A long-running cluster driven by the binary: `wtrace start`, `submit`,
//! `status`, `stop`; nested tasks traced across workers; worker faults.

use std::collections::{HashMap, HashSet};
use std::ops::Not as _;
use std::time::{Duration, Instant};

use wtrace::spans::SpanRecord;
use wtrace_tests::{
    Cluster, Spans, Wtrace, alive, assert_child_of, assert_fan_out_tree, guests, span_dir,
};

/// A cluster whose every process (head's workers, nodes, drivers) writes
/// spans with the file hook to `dir`.
fn traced_cluster(dir: &std::path::Path, args: &[&str]) -> Cluster {
    let hook = format!("--tracing-startup-hook={}", guests::FILE_HOOK);
    let allow = format!("--allow-span-dir={}", dir.display());
    let mut full = vec![hook.as_str(), allow.as_str()];
    full.extend_from_slice(args);
    Cluster::start(&full, &[("WTRACE_SPAN_DIR", dir.to_str().unwrap())])
}

fn pids_of(status: &serde_json::Value) -> Vec<u64> {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap())
        .collect()
}

/// The span contract's attributes, on driver and nested submit spans alike
/// and on their execute spans, with the values a user would look for.
#[test]
fn every_contract_attribute_is_on_driver_and_nested_task_spans() {
    let dir = span_dir();
    let mut cluster = traced_cluster(dir.path(), &["--num-workers=2"]);
    let job_id = cluster.session()["job_id"].as_str().unwrap().to_owned();
    let run = cluster
        .command(&["submit", guests::FANOUT, "tree(1, 2)"])
        .run();
    assert!(run.success().ends_with("ok(2)\n"));
    cluster.stop();

    let spans = Spans::read(dir.path());
    let all: Vec<&SpanRecord> = spans.all().iter().collect();
    let by_id: HashMap<&str, &SpanRecord> = all.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let task_spans: Vec<&SpanRecord> = all
        .iter()
        .copied()
        .filter(|s| s.name == "tree submit" || s.name == "tree execute")
        .collect();
    assert_eq!(
        task_spans.len(),
        6,
        "a root and two nested tasks: {:?}",
        spans.names()
    );
    let mut nested_submits = 0;
    for span in &task_spans {
        let a = &span.attributes;
        let what = format!("{} (pid {:?}): {a:?}", span.name, span.pid);
        assert_eq!(
            a.get("wtrace.function").map(String::as_str),
            Some("tree"),
            "{what}"
        );
        assert_eq!(
            a.get("wtrace.component").map(String::as_str),
            Some("fanout.wasm"),
            "{what}"
        );
        assert!(
            a["wtrace.component.digest"].starts_with("sha256:"),
            "{what}"
        );
        assert_eq!(a["wtrace.component.digest"].len(), 7 + 64, "{what}");
        assert!(!a["wtrace.task_id"].is_empty(), "{what}");
        let r = &span.resource;
        assert_eq!(r.get("wtrace.job_id"), Some(&job_id), "{what}");
        assert!(span.pid.is_some(), "{what}: no process.pid on the resource");
        for key in [
            "wtrace.job_id",
            "wtrace.worker_id",
            "wtrace.node_id",
            "process.pid",
        ] {
            assert!(
                !a.contains_key(key),
                "{what}: {key} belongs on the resource"
            );
        }
        let parent = by_id.get(span.parent_span_id.as_str()).copied();
        let nested = match span.name.as_str() {
            "tree submit" => parent.is_some(),
            _ => parent.unwrap().parent_span_id.is_empty().not(),
        };
        if span.name == "tree submit" {
            let from_driver = !nested;
            assert_eq!(
                r["wtrace.worker_id"] == "driver",
                from_driver,
                "only the driver's submit spans say driver: {what}"
            );
            assert_eq!(r["wtrace.node_id"] == "driver", from_driver, "{what}");
            nested_submits += usize::from(nested);
        } else {
            let submit = parent.unwrap();
            for key in [
                "wtrace.task_id",
                "wtrace.component",
                "wtrace.component.digest",
            ] {
                assert_eq!(a[key], submit.attributes[key], "{key} of {what}");
            }
            assert!(
                r["wtrace.worker_id"].starts_with(&r["wtrace.node_id"]),
                "{what}"
            );
        }
        assert_eq!(
            a.get("wtrace.depth").map(String::as_str),
            nested.then_some("1"),
            "wtrace.depth on nested task spans only: {what}"
        );
    }
    assert_eq!(nested_submits, 2);
}

#[test]
fn nested_fan_out_forms_one_trace_across_workers() {
    let dir = span_dir();
    let mut cluster = traced_cluster(dir.path(), &["--num-workers=2"]);
    let status = cluster.status();
    assert_eq!(pids_of(&status).len(), 2);
    assert_eq!(status["workers"][0]["ready"], true);
    assert!(
        status["hook"][0]
            .as_str()
            .unwrap()
            .contains("file_hook.wasm")
    );

    let run = cluster
        .command(&["submit", guests::FANOUT, "tree(2, 2)"])
        .run();
    let stdout = run.success();
    assert!(stdout.ends_with("ok(4)\n"), "4 leaves: {stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("tree at depth 0"))
            .count(),
        4,
        "nested tasks' output reaches the driver: {stdout}"
    );
    cluster.stop();

    let spans = Spans::read(dir.path());
    let all: Vec<&SpanRecord> = spans.all().iter().collect();
    let traces: HashSet<&str> = all.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces.len(), 1, "one trace: {:?}", spans.names());
    let by_id: HashMap<&str, &SpanRecord> = all.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let parent = |s: &SpanRecord| by_id.get(s.parent_span_id.as_str()).copied();

    let count = |name: &str| all.iter().filter(|s| s.name == name).count();
    assert_eq!(count("tree submit"), 7);
    assert_eq!(count("tree execute"), 7);
    assert_eq!(count("fan-out"), 3);
    assert_eq!(count("leaf"), 4);
    assert_fan_out_tree(&all, run.pid);
    // Depth: leaves are three tasks below the driver.
    let leaf = all.iter().find(|s| s.name == "leaf").unwrap();
    let mut chain = vec![leaf.name.as_str()];
    let mut at = *leaf;
    while let Some(p) = parent(at) {
        chain.push(p.name.as_str());
        at = p;
    }
    assert_eq!(
        chain,
        [
            "leaf",
            "tree execute",
            "tree submit",
            "fan-out",
            "tree execute",
            "tree submit",
            "fan-out",
            "tree execute",
            "tree submit"
        ]
    );
    let worker_pids: HashSet<Option<i64>> = all
        .iter()
        .filter(|s| s.name == "tree execute")
        .map(|s| s.pid)
        .collect();
    assert!(
        worker_pids.len() >= 2,
        "the tree spans both workers: {worker_pids:?}"
    );
}

#[test]
fn one_worker_runs_tasks_that_wait_on_tasks() {
    let mut cluster = Cluster::start(&["--num-workers=1"], &[]);
    let run = cluster
        .command(&["submit", guests::FANOUT, "tree(3, 3)"])
        .run();
    assert!(run.success().ends_with("ok(27)\n"), "{}", run.stdout);
    cluster.stop();
}

#[test]
fn traceparent_makes_the_submission_part_of_an_outer_trace() {
    let dir = span_dir();
    let mut cluster = traced_cluster(dir.path(), &["--num-workers=1"]);
    let outer = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    cluster
        .command(&["submit", guests::HELLO, "my-func()"])
        .env("TRACEPARENT", outer)
        .run()
        .success();
    cluster.stop();
    let spans = Spans::read(dir.path());
    let submit = spans.one("my-func submit");
    assert_eq!(submit.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(submit.parent_span_id, "b7ad6b7169203331");
    assert_child_of(spans.one("my-func execute"), submit);
    assert_child_of(spans.one("foo"), spans.one("my-func execute"));

    // `wtrace run` honours it the same way.
    let dir = span_dir();
    Wtrace::new([
        "run".to_owned(),
        format!("--tracing-startup-hook={}", guests::FILE_HOOK),
        format!("--allow-span-dir={}", dir.path().display()),
        "-n1".to_owned(),
        guests::HELLO.to_owned(),
        "my-function()".to_owned(),
    ])
    .env("WTRACE_SPAN_DIR", dir.path())
    .env("TRACEPARENT", outer)
    .run()
    .success();
    let submit = Spans::read(dir.path()).one("my-function submit").clone();
    assert_eq!(submit.parent_span_id, "b7ad6b7169203331");
}

#[test]
fn a_second_node_joins_with_its_own_node_id_and_stop_leaves_no_process() {
    let dir = span_dir();
    // The hook exists only while the head starts: the head hands its bytes
    // to every worker, so the new node needs no copy on disk.
    let hooks = tempfile::tempdir().unwrap();
    let hook = hooks.path().join("hook.wasm");
    std::fs::copy(guests::FILE_HOOK, &hook).unwrap();
    let mut cluster = Cluster::start(
        &[
            &format!("--tracing-startup-hook={}:setup_tracing", hook.display()),
            &format!("--allow-span-dir={}", dir.path().display()),
            "--num-workers=1",
        ],
        &[("WTRACE_SPAN_DIR", dir.path().to_str().unwrap())],
    );
    std::fs::remove_file(&hook).unwrap();
    let address = cluster.session()["address"].as_str().unwrap().to_owned();
    let token = cluster.session()["token"].as_str().unwrap().to_owned();
    let joined = cluster.detached(&[
        "start",
        "--address",
        &address,
        "--token",
        &token,
        "--num-workers=2",
    ]);
    assert_eq!(joined.status, Some(0), "{}", joined.stderr);
    assert!(
        joined.stdout.contains("joined the cluster"),
        "{}",
        joined.stdout
    );

    let status = cluster.status();
    let nodes: HashSet<&str> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2, "two nodes: {status}");
    let pids = pids_of(&status);
    assert_eq!(pids.len(), 3);

    let invocations: Vec<String> = (0..12).map(|_| "spin(150)".to_owned()).collect();
    // The driver runs the cluster's hook from the bytes the head sent it.
    let mut args = vec!["submit", guests::SPAN_EDGES];
    args.extend(invocations.iter().map(String::as_str));
    cluster.command(&args).run().success();
    cluster.stop();
    for pid in pids {
        assert!(!alive(pid as u32), "worker {pid} still running after stop");
    }
    let head = cluster.session.path().join("session.json");
    assert!(!head.exists(), "stop removes the session file");

    let spans = Spans::read(dir.path());
    let executes = spans.named("spin execute");
    assert_eq!(executes.len(), 12);
    let span_nodes: HashSet<&str> = executes
        .iter()
        .map(|s| s.resource["wtrace.node_id"].as_str())
        .collect();
    assert_eq!(
        span_nodes, nodes,
        "both nodes ran tasks, each under its own node id"
    );
}

/// The pid of the worker running a task, from `wtrace status`.
fn busy_worker(cluster: &Cluster, except: &[u64]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster.status();
        if let Some(worker) = status["workers"].as_array().unwrap().iter().find(|w| {
            w["running"].as_u64() == Some(1) && !except.contains(&w["pid"].as_u64().unwrap())
        }) {
            return worker["pid"].as_u64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no worker picked up the task: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `wtrace submit` of the span-edges guest, running in the background.
fn spawn_submit(cluster: &Cluster, invocation: &str) -> std::process::Child {
    cluster
        .command(&["submit", guests::SPAN_EDGES, invocation])
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn sigkill(pid: u64) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

#[test]
fn a_killed_worker_s_task_runs_again_once_and_the_worker_is_replaced() {
    let dir = span_dir();
    let mut cluster = traced_cluster(dir.path(), &["--num-workers=2"]);
    let child = spawn_submit(&cluster, "spin(1500)");
    let victim = busy_worker(&cluster, &[]);
    sigkill(victim);
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "the result is delivered once: {stdout}"
    );

    // The dead worker was replaced.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster.status();
        let pids = pids_of(&status);
        let ready = status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["ready"] == true);
        if pids.len() == 2 && !pids.contains(&victim) && ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker was not replaced: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.stop();

    let spans = Spans::read(dir.path());
    let submit = spans.one("spin submit");
    let execute = spans.one("spin execute");
    assert_child_of(execute, submit);
    assert_eq!(
        execute.attributes["wtrace.attempt"], "1",
        "the trace shows the retried execution"
    );
    assert_ne!(execute.pid, Some(victim as i64));
    assert!(execute.error.is_none());
}

#[test]
fn a_task_that_keeps_killing_its_workers_fails_after_its_retries() {
    let mut cluster = Cluster::start(&["--num-workers=1", "--max-retries=1"], &[]);
    let child = spawn_submit(&cluster, "spin(60000)");
    let first = busy_worker(&cluster, &[]);
    sigkill(first);
    let second = busy_worker(&cluster, &[first]);
    sigkill(second);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("its worker died on every attempt (2 attempts"),
        "{stderr}"
    );

    // The cluster keeps serving.
    let run = cluster
        .command(&["submit", guests::HELLO, "my-function()"])
        .run();
    assert_eq!(run.success(), "1\n");
    cluster.stop();
}

#[test]
fn a_delivered_result_s_spans_are_on_disk_even_if_its_worker_dies_right_after() {
    use std::io::BufRead as _;
    let dir = span_dir();
    let hook = format!("--tracing-startup-hook={}", guests::FILE_HOOK);
    let allow = format!("--allow-span-dir={}", dir.path().display());
    let mut cluster = Cluster::start(
        &[hook.as_str(), allow.as_str(), "--num-workers=1"],
        &[
            ("WTRACE_SPAN_DIR", dir.path().to_str().unwrap()),
            // The batch processor: spans wait in memory before a write.
            ("WTRACE_TEST_BATCH", "1"),
        ],
    );
    const TASKS: usize = 400;
    // Tasks of 3 ms: a stream of results while the worker keeps running.
    let mut child = cluster
        .command(&["submit", "--repeat=400", guests::SPAN_EDGES, "spin(3)"])
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ready_worker = |except: &[u64]| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = cluster.status();
            let worker = &status["workers"][0];
            if worker["ready"] == true && !except.contains(&worker["pid"].as_u64().unwrap()) {
                return worker["pid"].as_u64().unwrap();
            }
            assert!(Instant::now() < deadline, "no new worker: {status}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let mut worker = ready_worker(&[]);
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut results = 0;
    let mut killed = Vec::new();
    for line in stdout.lines() {
        line.unwrap();
        results += 1;
        // A result is here: the worker that ran it dies this moment.
        if [60, 160, 260].contains(&results) {
            sigkill(worker);
            killed.push(worker);
            worker = ready_worker(&killed);
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(results, TASKS, "every result delivered");
    assert_eq!(killed.len(), 3);
    cluster.stop();

    let spans = Spans::read(dir.path());
    let delivered: HashSet<&String> = spans
        .named("spin execute")
        .into_iter()
        .filter(|s| s.error.is_none())
        .map(|s| &s.attributes["wtrace.task_id"])
        .collect();
    assert_eq!(
        delivered.len(),
        TASKS,
        "every delivered result's execute span is on disk, though its worker was killed"
    );
}

#[test]
fn tasks_leased_beside_a_task_whose_worker_died_do_not_lose_an_attempt() {
    // No retries: a task whose worker dies while it runs fails at once. The
    // quick task leased to the same worker behind it never started, so it
    // must run elsewhere, not fail with it.
    let mut cluster = Cluster::start(&["--num-workers=1", "--max-retries=0"], &[]);
    let child = cluster
        .command(&["submit", guests::SPAN_EDGES, "spin(60000)", "spin(1)"])
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let victim = loop {
        let status = cluster.status();
        let worker = &status["workers"][0];
        if worker["leased"].as_u64() == Some(2) && worker["running"].as_u64() == Some(1) {
            break worker["pid"].as_u64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "both tasks leased, one started: {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    sigkill(victim);
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("spin: its worker died on every attempt (1 attempts"),
        "{stderr}"
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "spin(1) delivered: {stdout}\n{stderr}"
    );
    assert_eq!(
        stderr.matches("error: task").count(),
        1,
        "only the running task failed: {stderr}"
    );
    cluster.stop();
}

#[test]
fn bad_submissions_are_clear_errors_and_the_cluster_keeps_serving() {
    let mut cluster = Cluster::start(&["--num-workers=1"], &[]);

    let unknown = cluster.command(&["submit", guests::HELLO, "nope()"]).run();
    assert!(
        unknown
            .failure()
            .contains("has no exported function `nope`"),
        "{}",
        unknown.stderr
    );

    let wrong = cluster
        .command(&["submit", guests::SPAN_EDGES, "add(\"x\", 1)"])
        .run();
    assert!(
        wrong.failure().contains("func(a: u32, b: u32) -> u32"),
        "{}",
        wrong.stderr
    );

    let imports = cluster
        .command(&["submit", guests::UNKNOWN_IMPORT, "compute()"])
        .run();
    let stderr = imports.failure();
    assert!(
        stderr.contains("tests:unknown-import/gpu"),
        "names the missing import: {stderr}"
    );

    let other_hook = cluster
        .command(&[
            "submit",
            &format!("--tracing-startup-hook={}", guests::CONSOLE_HOOK),
            guests::HELLO,
            "my-function()",
        ])
        .run();
    assert!(
        other_hook.failure().contains("is not the cluster's"),
        "{}",
        other_hook.stderr
    );

    // A driver killed mid-run leaves the head healthy.
    let mut driver = cluster.command(&[
        "submit",
        guests::SPAN_EDGES,
        "spin(400)",
        "spin(400)",
        "spin(400)",
    ]);
    let mut child = driver
        .command()
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    busy_worker(&cluster, &[]);
    child.kill().unwrap();
    child.wait().unwrap();

    let run = cluster
        .command(&["submit", "--repeat=3", guests::HELLO, "my-function()"])
        .run();
    assert_eq!(run.success(), "1\n1\n1\n");
    cluster.stop();

    // Once stopped, there is no cluster to submit to.
    let gone = cluster
        .command(&["submit", guests::HELLO, "my-function()"])
        .run();
    assert!(
        gone.failure().contains("no wtrace cluster is running"),
        "{}",
        gone.stderr
    );
}

#[test]
fn submitting_without_a_cluster_or_to_a_dead_one_says_so() {
    let session = tempfile::tempdir().unwrap();
    let none = Wtrace::new(["submit", guests::HELLO, "my-function()"])
        .env("WTRACE_SESSION_DIR", session.path())
        .run();
    let stderr = none.failure();
    assert!(stderr.contains("no wtrace cluster is running"), "{stderr}");
    assert!(stderr.contains("wtrace start --head"), "{stderr}");

    // A session file whose head is gone.
    std::fs::write(
        session.path().join("session.json"),
        r#"{"address":"127.0.0.1:9","token":"x","pid":999999999,"job_id":"j","hook":null,"log":"/dev/null"}"#,
    )
    .unwrap();
    let stale = Wtrace::new(["submit", guests::HELLO, "my-function()"])
        .env("WTRACE_SESSION_DIR", session.path())
        .run();
    assert!(
        stale
            .failure()
            .contains("is not running (its head, pid 999999999, is gone)"),
        "{}",
        stale.stderr
    );

    // An address with nothing listening.
    let nothing = Wtrace::new([
        "submit",
        "--address=127.0.0.1:9",
        "--token=x",
        guests::HELLO,
        "my-function()",
    ])
    .env("WTRACE_SESSION_DIR", session.path())
    .run();
    assert!(
        nothing
            .failure()
            .contains("cannot reach a wtrace cluster at 127.0.0.1:9"),
        "{}",
        nothing.stderr
    );
}

#[test]
fn a_long_submission_prints_every_result_in_order() {
    let mut cluster = Cluster::start(&["--num-workers=2"], &[]);
    // More tasks than `wtrace submit` keeps in flight, so its window refills.
    let repeat = 40_000;
    let run = cluster
        .command(&[
            "submit",
            "--repeat",
            &repeat.to_string(),
            guests::SPAN_EDGES,
            "add(1, 2)",
            "add(40, 2)",
        ])
        .run();
    let lines: Vec<&str> = run.success().lines().collect();
    assert_eq!(lines.len(), 2 * repeat, "one result per task");
    for (i, pair) in lines.chunks(2).enumerate() {
        assert_eq!(pair, ["3", "42"], "results {} and {}", 2 * i, 2 * i + 1);
    }
    cluster.stop();
}

#[test]
fn detaching_from_a_local_head_is_refused_with_what_to_use_instead() {
    let dir = span_dir();
    let mut cluster = traced_cluster(dir.path(), &["-n", "1"]);
    let detach = cluster
        .command(&["submit", "--detach", guests::HELLO, "my-function()"])
        .run();
    let stderr = detach.failure();
    assert!(stderr.contains("local head"), "{stderr}");
    assert!(stderr.contains("nats://"), "{stderr}");
    let results = cluster.command(&["results", "j-0123456789abcdef"]).run();
    let stderr = results.failure();
    assert!(stderr.contains("nats://"), "{stderr}");
    // Nothing was submitted.
    assert_eq!(cluster.status()["done"], 0);
    cluster.stop();
}
