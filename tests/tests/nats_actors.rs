//! Actors on a cluster on NATS JetStream, with a real nats-server: made,
//! called in order from two drivers, listed and killed across nodes; made
//! and called from a task; a trapping method; a node SIGKILLed under an
//! actor, with and without restarts; the per-worker limit; the trace shape.

use std::time::{Duration, Instant};

use wtrace::cluster::{ActorOptions, Endpoint};
use wtrace::outcome::TaskErrorKind;
use wtrace::runtime::wave::Invocation;
use wtrace_tests::nats::{NatsServer, nats_cluster};
use wtrace_tests::{Cluster, Spans, actors, guests, span_dir};

/// Adds a node of one worker, a process group of its own.
fn join_node(cluster: &mut Cluster, nats: &NatsServer) {
    let url = nats.url();
    let run = cluster.detached(&["start", "--address", &url, "-n", "1"]);
    assert_eq!(run.status, Some(0), "{}\n{}", run.stdout, run.stderr);
}

fn invocation(text: &str) -> Invocation {
    text.parse().unwrap()
}

async fn client(nats: &NatsServer) -> wtrace::Client {
    let endpoint: Endpoint = nats.url().parse().unwrap();
    wtrace::Client::connect_untraced(&endpoint, wtrace::cluster::Credentials::default())
        .await
        .unwrap()
}

fn kill_group_of(pid: u32) {
    #[allow(unsafe_code)]
    // SAFETY: getpgid(2) and kill(2) have no memory-safety preconditions;
    // the group is a node this test started.
    unsafe {
        let group = libc::getpgid(pid as i32);
        assert!(group > 1);
        libc::kill(-group, libc::SIGKILL);
    }
}

#[test]
fn actors_on_nats_are_made_called_listed_and_killed_and_traced_like_on_a_head() {
    let nats = NatsServer::start("");
    let dir = span_dir();
    let mut cluster = nats_cluster(&nats, dir.path(), &["-n", "1"]);
    join_node(&mut cluster, &nats);
    let id = cluster
        .command(&[
            "actor",
            "create",
            "--name",
            "tally",
            guests::COUNTER,
            "counter(5)",
        ])
        .run()
        .success()
        .trim()
        .to_owned();
    assert!(id.starts_with("counter-"), "{id}");
    for (call, want) in [("incr(2)", "7"), ("incr(3)", "10")] {
        let run = cluster.command(&["actor", "call", &id, call]).run();
        assert_eq!(run.success().trim(), want);
    }
    let run = cluster.command(&["actor", "call", "tally", "get()"]).run();
    assert_eq!(run.success().trim(), "10", "by name, as by id");
    let taken = cluster
        .command(&[
            "actor",
            "create",
            "--name",
            "tally",
            guests::COUNTER,
            "counter(0)",
        ])
        .run();
    assert_eq!(taken.status, Some(1));
    assert!(taken.stderr.contains("exists already"), "{}", taken.stderr);

    // From a task: made, called and killed; and one a driver made, by name.
    actors::assert_tasks_make_find_and_call_actors(&cluster, "kept");

    // Listed with its worker and its calls (written within a few seconds).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed: serde_json::Value = serde_json::from_str(
            cluster
                .command(&["actor", "list", "--json"])
                .run()
                .success(),
        )
        .unwrap();
        let tally = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{id} listed: {listed}"));
        assert_eq!(tally["name"], "tally");
        assert_eq!(tally["state"], "alive");
        assert_eq!(tally["component"], "counter.wasm");
        assert!(tally["worker"][2].as_u64().is_some(), "{tally}");
        if tally["calls"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "calls counted: {tally}");
        std::thread::sleep(Duration::from_millis(300));
    }

    cluster.command(&["actor", "kill", "tally"]).run().success();
    let gone = cluster.command(&["actor", "call", &id, "get()"]).run();
    assert_eq!(gone.status, Some(1));
    assert!(gone.stderr.contains("no actor"), "{}", gone.stderr);
    let url = nats.url();
    cluster.stop_with(&["--address", &url]);

    let spans = Spans::read(dir.path());
    let creation = spans
        .named("counter.new execute")
        .into_iter()
        .find(|s| s.attributes["wtrace.actor_id"] == id)
        .expect("the creation's execute span");
    let submit = spans
        .all()
        .iter()
        .find(|s| s.span_id == creation.parent_span_id)
        .expect("under its submit span");
    assert_eq!(submit.name, "counter.new submit");
    assert_ne!(submit.pid, creation.pid, "across processes");
    let calls: Vec<_> = spans
        .named("counter.incr execute")
        .into_iter()
        .filter(|s| s.attributes["wtrace.actor_id"] == id)
        .collect();
    assert_eq!(calls.len(), 2);
    for call in calls {
        assert_eq!(
            call.links,
            [(creation.trace_id.clone(), creation.span_id.clone())]
        );
        assert_eq!(call.pid, creation.pid, "on the actor's worker");
    }
    let task = spans.one("make-and-count execute");
    let made = spans
        .named("counter.new submit")
        .into_iter()
        .find(|s| s.parent_span_id == task.span_id)
        .expect("a task's actor is made under it");
    assert_eq!(made.attributes["wtrace.depth"], "1");
}

#[test]
fn calls_from_two_drivers_on_nats_run_in_the_order_each_sent_them() {
    let nats = NatsServer::start("");
    let dir = span_dir();
    let mut cluster = nats_cluster(&nats, dir.path(), &["-n", "2"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = client(&nats).await;
        let b = client(&nats).await;
        let component = a.upload_file(guests::ACTORS.as_ref()).await.unwrap();
        let root = opentelemetry::Context::new();
        let counter = actors::assert_two_drivers_keep_their_order(&a, &b, &component, 60).await;
        // A trapping method leaves the actor dead: later calls say why.
        actors::assert_a_trap_leaves_it_dead(&counter).await;
        let listed = a.actors().await.unwrap();
        assert!(
            listed[0].state.starts_with("dead: call 121 failed"),
            "{listed:?}"
        );
        counter.kill(&root).await.unwrap();
        assert!(a.actors().await.unwrap().is_empty());
    });
    let url = nats.url();
    cluster.stop_with(&["--address", &url]);
}

#[test]
fn a_node_killed_under_an_actor_on_nats_fails_its_calls_or_makes_it_again_elsewhere() {
    let nats = NatsServer::start("");
    let dir = span_dir();
    // One worker first, so both actors are made on it; then another node.
    let mut cluster = nats_cluster(&nats, dir.path(), &["-n", "1"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let driver = client(&nats).await;
        let component = driver.upload_file(guests::ACTORS.as_ref()).await.unwrap();
        let root = opentelemetry::Context::new();
        let restarting = ActorOptions {
            name: Some("phoenix".into()),
            max_restarts: 1,
        };
        let phoenix = driver
            .create_actor(&component, &invocation("counter(10)"), restarting, &root)
            .await
            .unwrap();
        let mortal = driver
            .create_actor(
                &component,
                &invocation("counter(1)"),
                Default::default(),
                &root,
            )
            .await
            .unwrap();
        let value = |actor: &wtrace::cluster::ActorHandle, text: &'static str| {
            let actor = actor.clone();
            let root = root.clone();
            async move {
                let task = actor.call(&invocation(text), &root).await.unwrap();
                tokio::time::timeout(Duration::from_secs(60), task.get())
                    .await
                    .expect("no hang")
                    .unwrap()
                    .value
            }
        };
        assert_eq!(value(&phoenix, "incr(5)").await.unwrap(), "15");
        let listed = driver.actors().await.unwrap();
        let holder = listed[0].worker.clone().unwrap();
        assert!(
            listed.iter().all(|a| a.worker.as_ref() == Some(&holder)),
            "{listed:?}"
        );
        join_node(&mut cluster, &nats);
        let spinning = phoenix
            .call(&invocation("spin(20000)"), &root)
            .await
            .unwrap();
        let waiting = phoenix.call(&invocation("get()"), &root).await.unwrap();
        let mortal_spinning = mortal
            .call(&invocation("spin(20000)"), &root)
            .await
            .unwrap();
        let mortal_waiting = mortal.call(&invocation("get()"), &root).await.unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        kill_group_of(holder.2);
        let failed = actors::outcome(spinning).await.unwrap_err();
        assert_eq!(failed.kind, TaskErrorKind::WorkerDied, "{}", failed.message);
        assert!(
            failed.message.contains(&holder.2.to_string()),
            "names the dead worker: {}",
            failed.message
        );
        // Made again elsewhere by its constructor: its state is lost.
        let after = actors::outcome(waiting).await.unwrap();
        assert_eq!(after, "10");
        let listed = driver.actors().await.unwrap();
        let again = listed.iter().find(|a| a.id == phoenix.id()).unwrap();
        assert_eq!(again.restarts, 1);
        assert_eq!(again.state, "alive");
        assert_ne!(
            again.worker.as_ref().unwrap().2,
            holder.2,
            "on another node"
        );

        // Without restarts: its running call fails, the waiting one too.
        let failed = actors::outcome(mortal_spinning).await.unwrap_err();
        assert_eq!(failed.kind, TaskErrorKind::WorkerDied);
        let failed = actors::outcome(mortal_waiting).await.unwrap_err();
        assert_eq!(failed.kind, TaskErrorKind::ActorDead);
        assert!(failed.message.contains("died"), "{}", failed.message);
        let later = value(&mortal, "get()").await.unwrap_err();
        assert_eq!(later.kind, TaskErrorKind::ActorDead);
    });
    let url = nats.url();
    cluster.stop_with(&["--address", &url]);
}

#[test]
fn past_max_actors_per_worker_on_nats_a_creation_fails_naming_the_flag() {
    let nats = NatsServer::start("");
    let dir = span_dir();
    let mut cluster = nats_cluster(
        &nats,
        dir.path(),
        &["-n", "2", "--max-actors-per-worker=1", "--max-actors=5"],
    );
    let create = |cluster: &Cluster| {
        cluster
            .command(&["actor", "create", guests::COUNTER, "counter(0)"])
            .run()
    };
    let first = create(&cluster).success().trim().to_owned();
    let second = create(&cluster).success().trim().to_owned();
    let third = create(&cluster);
    assert_eq!(third.status, Some(1));
    assert!(
        third.stderr.contains("--max-actors-per-worker"),
        "{}",
        third.stderr
    );
    let listed = cluster.command(&["actor", "list", "--json"]).run();
    let listed: serde_json::Value = serde_json::from_str(listed.success()).unwrap();
    let workers: std::collections::HashSet<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["worker"][2].as_u64().unwrap())
        .collect();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(workers.len(), 2, "one on each worker: {listed}");
    cluster.command(&["actor", "kill", &first]).run().success();
    create(&cluster).success();
    let _ = second;
    let url = nats.url();
    cluster.stop_with(&["--address", &url]);
}
