//! The cluster on NATS JetStream, with a real nats-server: nodes as separate
//! process groups joined by the address alone, one trace across them, and
//! the faults a distributed run must survive.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use wtrace::spans::SpanRecord;
use wtrace_tests::nats::NatsServer;
use wtrace_tests::{
    Cluster, Spans, Wtrace, assert_child_of, assert_fan_out_tree, guests, span_dir,
};

/// A cluster made on `nats` by `wtrace start --head --address nats://…`, its
/// every process writing spans with the file hook to `dir`.
fn nats_cluster(nats: &NatsServer, dir: &std::path::Path, args: &[&str]) -> Cluster {
    let hook = format!("--tracing-startup-hook={}", guests::FILE_HOOK);
    let allow = format!("--allow-span-dir={}", dir.display());
    let url = nats.url();
    let mut full = vec![hook.as_str(), allow.as_str(), "--address", url.as_str()];
    full.extend_from_slice(args);
    Cluster::start(&full, &[("WTRACE_SPAN_DIR", dir.to_str().unwrap())])
}

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
