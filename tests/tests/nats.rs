//! The cluster on NATS JetStream, with a real nats-server: nodes as separate
//! process groups joined by the address alone, one trace across them, and
//! the faults a distributed run must survive.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use wtrace::spans::SpanRecord;
use wtrace_tests::nats::{NatsServer, nats_cluster};
use wtrace_tests::{
    Cluster, Spans, Wtrace, assert_child_of, assert_fan_out_tree, guests, span_dir,
};

/// Adds a node of `workers` workers, a process group of its own.
fn join_node(cluster: &mut Cluster, nats: &NatsServer, workers: &str) {
    let url = nats.url();
    let run = cluster.detached(&["start", "--address", &url, "-n", workers]);
    assert_eq!(run.status, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("joined the cluster at nats://"),
        "{}",
        run.stdout
    );
}

fn node_ids(status: &serde_json::Value) -> HashSet<String> {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["node_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn three_nodes_run_a_nested_fan_out_traced_as_one_tree() {
    let nats = NatsServer::start("");
    let dir = span_dir();
    let mut cluster = nats_cluster(&nats, dir.path(), &["-n", "1"]);
    join_node(&mut cluster, &nats, "1");
    join_node(&mut cluster, &nats, "1");
    let status = cluster.status();
    assert_eq!(status["workers"].as_array().unwrap().len(), 3, "{status}");
    assert_eq!(node_ids(&status).len(), 3, "three distinct nodes: {status}");

    let run = cluster
        .command(&["submit", guests::FANOUT, "tree(2, 3)"])
        .run();
    let stdout = run.success();
    assert!(stdout.ends_with("ok(9)\n"), "9 leaves: {stdout}");
    cluster.stop();

    let spans = Spans::read(dir.path());
    let all: Vec<&SpanRecord> = spans.all().iter().collect();
    let traces: HashSet<&str> = all.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces.len(), 1, "one trace: {:?}", spans.names());
    let count = |name: &str| all.iter().filter(|s| s.name == name).count();
    assert_eq!(count("tree submit"), 13);
    assert_eq!(count("tree execute"), 13);
    assert_fan_out_tree(&all, run.pid);
    let nodes: HashSet<&str> = all
        .iter()
        .filter(|s| s.name == "tree execute")
        .map(|s| s.resource["wtrace.node_id"].as_str())
        .collect();
    assert!(nodes.len() >= 2, "the tree spans nodes: {nodes:?}");
}

/// The process group of the node whose worker has `pid`.
fn node_group_of(worker: u32) -> i32 {
    #[allow(unsafe_code)]
    // SAFETY: getpgid(2) has no memory-safety preconditions.
    unsafe {
        libc::getpgid(worker as i32)
    }
}

fn spin_submit(cluster: &Cluster, invocation: &str) -> std::process::Child {
    cluster
        .command(&["submit", guests::SPAN_EDGES, invocation])
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The worker holding a task, as the heartbeats tell.
fn holder(cluster: &Cluster) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster.status();
        if let Some(worker) = status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["leased"].as_u64() > Some(0))
        {
            return worker["pid"].as_u64().unwrap() as u32;
        }
        assert!(
            Instant::now() < deadline,
            "no worker took the task: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_killed_mid_task_leaves_its_task_to_another_node_and_the_result_comes_once() {
    let nats = NatsServer::start("");
    let dir = span_dir();
    let mut cluster = nats_cluster(&nats, dir.path(), &["-n", "1"]);
    join_node(&mut cluster, &nats, "1");
    let child = spin_submit(&cluster, "spin(2500)");
    let victim = holder(&cluster);
    let group = node_group_of(victim);
    assert!(group > 1);
    #[allow(unsafe_code)]
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "the result comes once: {stdout}");
    let url = nats.url();
    cluster.stop_with(&["--address", &url]);

    let spans = Spans::read(dir.path());
    let submit = spans.one("spin submit");
    let executes = spans.named("spin execute");
    let finished: Vec<_> = executes
        .iter()
        .filter(|s| s.pid != Some(i64::from(victim)))
        .collect();
    assert_eq!(
        finished.len(),
        1,
        "it ran to the end once, elsewhere: {executes:?}"
    );
    assert_child_of(finished[0], submit);
    assert_eq!(finished[0].attributes["wtrace.attempt"], "1");
    assert!(finished[0].error.is_none());
}

#[test]
fn a_nats_server_killed_and_restarted_loses_no_accepted_task() {
    use std::io::BufRead as _;
    const TASKS: usize = 4000;
    let mut nats = NatsServer::start("");
    let dir = span_dir();
    let mut cluster = nats_cluster(&nats, dir.path(), &["-n", "2"]);
    let repeat = TASKS.to_string();
    let mut child = cluster
        .command(&[
            "submit",
            "--repeat",
            &repeat,
            guests::HELLO,
            "my-function()",
        ])
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Kill the server mid-run: some results are in, most are not.
    let mut seen = 0;
    for line in lines.by_ref().take(100) {
        assert_eq!(line.unwrap(), "1");
        seen += 1;
    }
    nats.kill();
    std::thread::sleep(Duration::from_secs(1));
    nats.restart();
    for line in lines {
        assert_eq!(line.unwrap(), "1");
        seen += 1;
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(seen, TASKS, "every task's result, once");
    cluster.stop();
}

#[test]
fn nats_credentials_are_passed_through_and_a_wrong_one_is_a_clear_error() {
    let nats = NatsServer::start("authorization { token: \"s3cret-nats-token\" }");
    let dir = span_dir();
    let hook = format!("--tracing-startup-hook={}", guests::FILE_HOOK);
    let allow = format!("--allow-span-dir={}", dir.path().display());
    let url = nats.url();
    let mut cluster = Cluster::start(
        &[&hook, &allow, "--address", &url, "-n", "1"],
        &[
            ("WTRACE_SPAN_DIR", dir.path().to_str().unwrap()),
            ("WTRACE_TOKEN", "s3cret-nats-token"),
        ],
    );
    let run = cluster
        .command(&["submit", guests::HELLO, "my-function()"])
        .run();
    assert_eq!(run.success(), "1\n");
    let refused = cluster
        .command(&["status", "--address", &url])
        .env("WTRACE_TOKEN", "wrong")
        .run();
    let stderr = refused.failure();
    assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
    assert!(stderr.contains("check the NATS credentials"), "{stderr}");
    cluster.stop();
}

/// A one-worker cluster on the NATS at `url`, joined with `args` (flags) and
/// `env` (credentials): it runs a task and stops.
fn runs_a_task_authenticated(url: &str, args: &[&str], env: &[(&str, &str)]) {
    let dir = span_dir();
    let hook = format!("--tracing-startup-hook={}", guests::FILE_HOOK);
    let allow = format!("--allow-span-dir={}", dir.path().display());
    let mut start = vec![hook.as_str(), allow.as_str(), "--address", url, "-n", "1"];
    start.extend_from_slice(args);
    let mut env = env.to_vec();
    env.push(("WTRACE_SPAN_DIR", dir.path().to_str().unwrap()));
    let mut cluster = Cluster::start(&start, &env);
    let mut submit = vec!["submit", guests::HELLO, "my-function()"];
    submit.extend_from_slice(args);
    assert_eq!(cluster.command(&submit).run().success(), "1\n");
    cluster.stop_with(args).success();
    // The worker's execute span came through: the worker authenticated too.
    let spans = Spans::read(dir.path());
    spans.one("my-function execute");
}

#[test]
fn nats_user_and_password_authenticate_every_process() {
    let nats = NatsServer::start("authorization { user: wtrace, password: \"pa55-w0rd\" }");
    runs_a_task_authenticated(
        &nats.url(),
        &[],
        &[
            ("WTRACE_NATS_USER", "wtrace"),
            ("WTRACE_NATS_PASSWORD", "pa55-w0rd"),
        ],
    );
    let refused = Wtrace::new(["status", "--address", &nats.url()])
        .env("WTRACE_NATS_USER", "wtrace")
        .env("WTRACE_NATS_PASSWORD", "wrong")
        .run();
    assert!(
        refused.failure().contains("check the NATS credentials"),
        "{}",
        refused.stderr
    );
}

#[test]
fn a_nats_nkey_authenticates_every_process() {
    let keys = tempfile::tempdir().unwrap();
    let (config, seed) = wtrace_tests::nats::nkey_user(keys.path());
    let nats = NatsServer::start(&config);
    let seed = seed.to_str().unwrap();
    runs_a_task_authenticated(&nats.url(), &["--nats-nkey", seed], &[]);
}

#[test]
fn a_nats_credentials_file_authenticates_every_process() {
    let keys = tempfile::tempdir().unwrap();
    let (config, creds) = wtrace_tests::nats::jwt_user(keys.path());
    let nats = NatsServer::start(&config);
    runs_a_task_authenticated(
        &nats.url(),
        &[],
        &[("WTRACE_NATS_CREDS", creds.to_str().unwrap())],
    );
}

#[test]
fn nats_over_tls_trusts_the_given_ca_and_refuses_an_unknown_one() {
    let keys = tempfile::tempdir().unwrap();
    let tls = wtrace_tests::nats::Tls::new(keys.path());
    let nats = NatsServer::start(&format!(
        "{}\nauthorization {{ token: \"tls-token\" }}",
        tls.config()
    ));
    let ca = tls.ca.to_str().unwrap();
    runs_a_task_authenticated(
        &nats.tls_url(),
        &[],
        &[("WTRACE_TLS_CA", ca), ("WTRACE_TOKEN", "tls-token")],
    );
    // Without the CA the server's certificate is not trusted.
    let refused = Wtrace::new(["status", "--address", &nats.tls_url()])
        .env("WTRACE_TOKEN", "tls-token")
        .run();
    let stderr = refused.failure();
    assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
    assert!(stderr.contains("--tls-ca"), "{stderr}");
}

#[test]
fn a_nats_head_beyond_loopback_without_authentication_is_refused() {
    let session = tempfile::tempdir().unwrap();
    let run = Wtrace::new([
        "start",
        "--head",
        "--address",
        "nats://192.0.2.1:4222",
        "-n",
        "1",
    ])
    .env("WTRACE_SESSION_DIR", session.path())
    .run();
    let stderr = run.failure();
    assert!(
        stderr.contains("no NATS authentication is given"),
        "{stderr}"
    );
    assert!(stderr.contains("--insecure"), "{stderr}");
}

#[test]
fn invocations_and_results_larger_than_a_nats_message_travel_through_the_object_store() {
    let nats = NatsServer::start("");
    let dir = span_dir();
    let mut cluster = nats_cluster(&nats, dir.path(), &["-n", "1", "--max-result-size=4M"]);
    // NATS's default payload limit is 1 MiB: both are well past it.
    let calls = dir.path().join("calls.txt");
    let text = format!("echo(\"{}\")\nhuge-result(2)\n", "x".repeat(3 << 20));
    std::fs::write(&calls, text).unwrap();
    let calls = calls.to_str().unwrap();
    let run = cluster
        .command(&["submit", "--file", calls, guests::HOSTILE])
        .run();
    let stdout = run.success();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        (3 << 20).to_string(),
        "the whole invocation arrived"
    );
    assert_eq!(
        lines[1].len(),
        (2 << 20) + 2,
        "the whole result came back, quoted"
    );
    assert!(lines[1].starts_with("\"rrr"));
    cluster.stop();
}

#[test]
fn a_detached_driver_leaves_a_job_whose_results_a_later_driver_fetches_in_order() {
    let nats = NatsServer::start("");
    let dir = span_dir();
    let mut cluster = nats_cluster(&nats, dir.path(), &["-n", "2"]);
    let detached = cluster
        .command(&[
            "submit",
            "--detach",
            guests::SPAN_EDGES,
            "spin(1500)",
            "add(1, 2)",
            "fails(\"boom\")",
            "add(40, 2)",
        ])
        .run();
    let job = detached.success().trim().to_owned();
    assert!(job.starts_with("j-"), "a job id alone on stdout: {job:?}");
    assert!(
        detached.stderr.contains(&format!("wtrace results {job}")),
        "says how to fetch: {}",
        detached.stderr
    );

    // The driver is gone; a new one waits for the spinning task and prints
    // every result in submission order, failures on stderr.
    for _ in 0..2 {
        let fetched = cluster.command(&["results", &job]).run();
        let stderr = fetched.failure();
        assert!(stderr.contains("boom"), "{stderr}");
        assert!(stderr.contains("1 of 4 tasks failed"), "{stderr}");
        let lines: Vec<&str> = fetched.stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{}", fetched.stdout);
        assert!(
            lines[0].parse::<u64>().is_ok(),
            "spin's turns first: {lines:?}"
        );
        assert_eq!(&lines[1..], ["3", "42"]);
    }

    let unknown = cluster.command(&["results", "j-0000000000000000"]).run();
    let stderr = unknown.failure();
    assert!(stderr.contains("no job j-0000000000000000"), "{stderr}");
    assert!(stderr.contains("submit --detach"), "{stderr}");
    cluster.stop();

    // Each task's execute span is the child of the detached driver's
    // submit span.
    let spans = Spans::read(dir.path());
    for function in ["spin", "add", "fails"] {
        for execute in spans.named(&format!("{function} execute")) {
            let submit = spans
                .all()
                .iter()
                .find(|s| s.span_id == execute.parent_span_id)
                .unwrap_or_else(|| panic!("{function}: no submit span for {execute:?}"));
            assert_eq!(submit.name, format!("{function} submit"));
            assert_eq!(submit.pid, Some(i64::from(detached.pid)));
            assert_child_of(execute, submit);
        }
    }
    assert_eq!(spans.named("add execute").len(), 2);
}

#[test]
fn a_fork_bomb_is_stopped_by_its_tree_budget_across_nodes() {
    let nats = NatsServer::start("");
    let dir = span_dir();
    let mut cluster = nats_cluster(&nats, dir.path(), &["-n", "1", "--max-nested-tasks=50"]);
    join_node(&mut cluster, &nats, "1");
    let bomb = cluster
        .command(&["submit", guests::FANOUT, "fork-bomb()"])
        .run();
    assert!(
        bomb.failure().contains("--max-nested-tasks"),
        "{}",
        bomb.stderr
    );
    // What the bomb queued drains: the tree's budget is one count, shared
    // by the workers of both nodes.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = cluster.status();
        if status["queued"] == 0 && status["running"] == 0 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the bomb never drained: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let done = status["done"].as_u64().unwrap();
    assert!(done <= 50 + 1, "at most the budget of tasks ran: {done}");
    let fine = cluster
        .command(&["submit", guests::HELLO, "my-function()"])
        .run();
    assert_eq!(fine.success(), "1\n");
    cluster.stop();
}

#[test]
fn tasks_packed_in_one_message_spread_over_the_workers_that_have_room() {
    let nats = NatsServer::start("");
    let dir = span_dir();
    let mut cluster = nats_cluster(&nats, dir.path(), &["-n", "1"]);
    join_node(&mut cluster, &nats, "1");
    join_node(&mut cluster, &nats, "1");
    // 40 tasks go in 4 messages of 10; a worker with room for one puts the
    // other nine back, so no worker keeps a pack to itself.
    let calls: Vec<String> = (0..40).map(|_| "spin(100)".to_owned()).collect();
    let mut args = vec!["submit", guests::SPAN_EDGES];
    args.extend(calls.iter().map(String::as_str));
    let run = cluster.command(&args).run();
    assert_eq!(run.success().lines().count(), 40);
    cluster.stop();
    let spans = Spans::read(dir.path());
    let executes = spans.named("spin execute");
    assert_eq!(executes.len(), 40, "each task ran once");
    let mut by_worker: std::collections::HashMap<&str, usize> = Default::default();
    for execute in &executes {
        *by_worker
            .entry(execute.resource["wtrace.worker_id"].as_str())
            .or_default() += 1;
    }
    assert_eq!(by_worker.len(), 3, "{by_worker:?}");
    assert!(
        by_worker.values().all(|n| (8..=18).contains(n)),
        "spread evenly: {by_worker:?}"
    );
}

#[test]
fn a_worker_that_cannot_stop_is_killed_by_wtrace_stop_not_left_behind() {
    let nats = NatsServer::start("");
    let dir = span_dir();
    let mut cluster = nats_cluster(&nats, dir.path(), &["-n", "2"]);
    let status = cluster.status();
    let stuck = status["workers"][0]["pid"].as_u64().unwrap() as i32;
    // A stopped process cannot act on the cluster's shutdown.
    #[allow(unsafe_code)]
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(stuck, libc::SIGSTOP);
    }
    let run = cluster.stop();
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("pid {stuck} did not exit; killing it")),
        "{}",
        run.stderr
    );
}
