//! Actors on a started cluster: `wtrace actor create / call / list / kill`,
//! the Rust client's handles, the order of calls from two drivers, calls
//! to different actors in parallel, a method that traps, a worker killed
//! under an actor, and the trace shape read from the span files.

use std::time::{Duration, Instant};

use wtrace::cluster::{ActorOptions, LocalCluster, LocalClusterOptions};
use wtrace::outcome::TaskErrorKind;
use wtrace::runtime::wave::Invocation;
use wtrace_tests::{Cluster, Spans, actors, guests, span_dir, wtrace_bin};

fn traced_cluster(dir: &std::path::Path, args: &[&str]) -> Cluster {
    let hook = format!("--tracing-startup-hook={}", guests::FILE_HOOK);
    let allow = format!("--allow-span-dir={}", dir.display());
    let mut full = vec![hook.as_str(), allow.as_str()];
    full.extend_from_slice(args);
    Cluster::start(&full, &[("WTRACE_SPAN_DIR", dir.to_str().unwrap())])
}

fn invocation(text: &str) -> Invocation {
    text.parse().unwrap()
}

fn named(name: &str) -> ActorOptions {
    ActorOptions {
        name: Some(name.into()),
        ..ActorOptions::default()
    }
}

/// A local cluster of `workers`, an untraced client, and the actors test
/// guest uploaded.
async fn actors_cluster(workers: usize) -> (LocalCluster, wtrace::Client, wtrace::Digest) {
    let mut options = LocalClusterOptions::new(wtrace_bin());
    options.num_workers = workers;
    let cluster = LocalCluster::start(options).await.unwrap();
    let client = cluster.client_untraced().await.unwrap();
    let component = client.upload_file(guests::ACTORS.as_ref()).await.unwrap();
    (cluster, client, component)
}

#[test]
fn the_cli_makes_calls_lists_and_kills_an_actor_and_traces_each_step() {
    let dir = span_dir();
    let mut cluster = traced_cluster(dir.path(), &["--num-workers=2"]);
    let created = cluster
        .command(&[
            "actor",
            "create",
            "--name",
            "tally",
            guests::COUNTER,
            "counter(5)",
        ])
        .run();
    let id = created.success().trim().to_owned();
    assert!(id.starts_with("counter-"), "{id}");
    for (call, want) in [("incr(2)", "7"), ("incr(3)", "10")] {
        let run = cluster.command(&["actor", "call", &id, call]).run();
        assert_eq!(run.success().trim(), want);
    }
    // By name, as by id.
    let run = cluster.command(&["actor", "call", "tally", "get()"]).run();
    assert_eq!(run.success().trim(), "10");

    let listed = cluster.command(&["actor", "list"]).run();
    let line = listed
        .success()
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} listed:\n{}", listed.stdout));
    assert!(
        line.contains("tally") && line.contains("counter.wasm") && line.contains("alive"),
        "{line}"
    );
    let json: serde_json::Value = serde_json::from_str(
        cluster
            .command(&["actor", "list", "--json"])
            .run()
            .success(),
    )
    .unwrap();
    assert_eq!(json[0]["calls"], 3);
    assert_eq!(json[0]["class"], "counter");

    let unknown = cluster.command(&["actor", "call", &id, "nope()"]).run();
    assert_eq!(unknown.status, Some(1));
    assert!(
        unknown.stderr.contains("has no method `nope`"),
        "{}",
        unknown.stderr
    );

    cluster.command(&["actor", "kill", "tally"]).run().success();
    let gone = cluster.command(&["actor", "call", &id, "get()"]).run();
    assert_eq!(gone.status, Some(1));
    assert!(gone.stderr.contains("no actor"), "{}", gone.stderr);
    cluster.stop();

    let spans = Spans::read(dir.path());
    let creation = spans.one("counter.new execute");
    assert_eq!(creation.attributes["wtrace.actor_id"], id);
    assert_eq!(creation.attributes["wtrace.actor_method"], "new");
    let submit = spans.one("counter.new submit");
    assert_eq!(
        creation.parent_span_id, submit.span_id,
        "execute under submit"
    );
    assert_eq!(creation.trace_id, submit.trace_id);
    assert_ne!(creation.pid, submit.pid, "across processes");
    let calls = spans.named("counter.incr execute");
    assert_eq!(calls.len(), 2);
    for call in calls.iter().chain(&spans.named("counter.get execute")) {
        assert_eq!(
            call.links,
            [(creation.trace_id.clone(), creation.span_id.clone())],
            "{} links to the creation",
            call.name
        );
        assert_eq!(call.attributes["wtrace.actor_class"], "counter");
        let submit = spans
            .all()
            .iter()
            .find(|s| s.span_id == call.parent_span_id)
            .expect("each call's submit span");
        assert_eq!(submit.name, call.name.replace(" execute", " submit"));
        assert_eq!(submit.attributes["wtrace.actor_id"], id);
    }
    // The guest's own span nests under its call.
    for add in spans.named("add") {
        assert!(calls.iter().any(|c| c.span_id == add.parent_span_id));
    }
    let kill = spans.one("counter.kill execute");
    assert_eq!(kill.links[0].1, creation.span_id);
}

#[test]
fn a_task_makes_calls_and_kills_an_actor_traced_under_its_own_span() {
    let dir = span_dir();
    let mut cluster = traced_cluster(dir.path(), &["--num-workers=2"]);
    // A task makes, calls and kills an actor; one finds an actor a driver
    // made, by its name, and calls it.
    let id = actors::assert_tasks_make_find_and_call_actors(&cluster, "tally");
    let run = cluster
        .command(&["submit", guests::ACTORS, r#"call-by-name("nobody", 4)"#])
        .run();
    assert_eq!(run.status, Some(1));
    assert!(run.stderr.contains("no actor \"nobody\""), "{}", run.stderr);

    // An actor waiting for a call to itself gets an error, not a deadlock.
    let started = Instant::now();
    let run = cluster
        .command(&["actor", "call", "tally", &format!("wait-on({id:?})")])
        .run();
    assert_eq!(run.status, Some(1), "{}", run.stdout);
    assert!(run.stderr.contains("would wait forever"), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(20));
    let run = cluster.command(&["actor", "call", "tally", "get()"]).run();
    assert_eq!(run.success().trim(), "5", "the actor lives on");
    // An actor's method calls another actor and waits for it.
    let other = cluster
        .command(&["actor", "create", guests::ACTORS, "counter(40)"])
        .run()
        .success()
        .trim()
        .to_owned();
    let run = cluster
        .command(&["actor", "call", "tally", &format!("wait-on({other:?})")])
        .run();
    assert_eq!(run.success().trim(), r#"ok("40")"#);

    // An actor a task made outlives the task.
    let run = cluster
        .command(&["submit", guests::ACTORS, r#"make-named("kept")"#])
        .run();
    assert!(run.success().contains("counter-"));
    let run = cluster.command(&["actor", "call", "kept", "incr(1)"]).run();
    assert_eq!(run.success().trim(), "101");
    cluster.stop();

    let spans = Spans::read(dir.path());
    let task = spans.one("make-and-count execute");
    let create = spans
        .named("counter.new submit")
        .into_iter()
        .find(|s| s.parent_span_id == task.span_id)
        .expect("the actor is made under the task");
    assert_eq!(create.trace_id, task.trace_id);
    assert_eq!(create.attributes["wtrace.depth"], "1");
    assert_eq!(create.attributes["wtrace.actor_method"], "new");
    let actor_id = create.attributes["wtrace.actor_id"].clone();
    assert!(actor_id.starts_with("counter-"), "{actor_id}");
    let creation = spans
        .named("counter.new execute")
        .into_iter()
        .find(|s| s.parent_span_id == create.span_id)
        .expect("the creation runs under its submit span");
    assert_eq!(creation.attributes["wtrace.actor_id"], actor_id);
    let calls: Vec<_> = spans
        .named("counter.incr submit")
        .into_iter()
        .filter(|s| s.parent_span_id == task.span_id)
        .collect();
    assert_eq!(calls.len(), 3, "three calls from the task");
    for call in &calls {
        assert_eq!(call.attributes["wtrace.actor_id"], actor_id);
        assert_eq!(call.kind, "PRODUCER");
        let executed = spans
            .all()
            .iter()
            .find(|s| s.parent_span_id == call.span_id)
            .expect("each call executed under its submit span");
        assert_eq!(executed.name, "counter.incr execute");
        assert_eq!(
            executed.links,
            [(creation.trace_id.clone(), creation.span_id.clone())]
        );
    }
    let kill = spans.one("counter.kill submit");
    assert_eq!(kill.parent_span_id, task.span_id);
    // Found by name: the call's submit span names the actor by its id.
    assert!(
        spans
            .named("counter.incr submit")
            .iter()
            .any(|s| s.attributes["wtrace.actor_id"] == id),
        "the call by name carries the actor's id"
    );
}

#[test]
fn max_actors_refuses_an_actor_past_it_saying_which_flag() {
    let dir = span_dir();
    let mut cluster = traced_cluster(dir.path(), &["--num-workers=1", "--max-actors=1"]);
    let first = cluster
        .command(&["actor", "create", guests::COUNTER, "counter(0)"])
        .run();
    let id = first.success().trim().to_owned();
    let second = cluster
        .command(&["actor", "create", guests::COUNTER, "counter(0)"])
        .run();
    assert_eq!(second.status, Some(1));
    assert!(
        second.stderr.contains("--max-actors allows (1)"),
        "{}",
        second.stderr
    );
    assert_eq!(
        second.stderr.matches("holds 1 actors").count(),
        1,
        "said once: {}",
        second.stderr
    );
    cluster.command(&["actor", "kill", &id]).run().success();
    cluster
        .command(&["actor", "create", guests::COUNTER, "counter(0)"])
        .run()
        .success();
    cluster.stop();
}

#[test]
fn calls_from_two_drivers_run_in_the_order_each_sent_them_and_actors_run_in_parallel() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (cluster, a, component) = actors_cluster(2).await;
        let b = cluster.client_untraced().await.unwrap();
        let root = opentelemetry::Context::new();
        let counter = actors::assert_two_drivers_keep_their_order(&a, &b, &component, 200).await;

        // Two actors, each busy 300 ms, finish together: in parallel.
        let second = a
            .create_actor(
                &component,
                &invocation("counter(0)"),
                Default::default(),
                &root,
            )
            .await
            .unwrap();
        let actors = a.actors().await.unwrap();
        let workers: std::collections::HashSet<_> =
            actors.iter().map(|s| s.worker.clone().unwrap()).collect();
        let started = Instant::now();
        let spins = [
            counter.call(&invocation("spin(300)"), &root).await.unwrap(),
            second.call(&invocation("spin(300)"), &root).await.unwrap(),
        ];
        for spin in spins {
            spin.get().await.unwrap().value.unwrap();
        }
        if workers.len() == 2 {
            assert!(
                started.elapsed() < Duration::from_millis(580),
                "two actors on two workers ran one after the other: {:?}",
                started.elapsed()
            );
        }
        cluster.stop().await;
    });
}

#[test]
fn a_method_that_traps_kills_the_actor_and_later_calls_say_why() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (cluster, client, component) = actors_cluster(1).await;
        let root = opentelemetry::Context::new();
        let counter = client
            .create_actor(
                &component,
                &invocation("counter(3)"),
                named("fragile"),
                &root,
            )
            .await
            .unwrap();
        // A call queued behind the trapping one fails too, saying why.
        let stderr = actors::assert_a_trap_leaves_it_dead(&counter).await;
        assert!(String::from_utf8_lossy(&stderr).contains("boom at 3"));
        let listed = client.actors().await.unwrap();
        assert!(
            listed[0].state.starts_with("dead: call 1 failed"),
            "{listed:?}"
        );
        // The name is taken until the dead actor is killed.
        let again = client
            .create_actor(
                &component,
                &invocation("counter(0)"),
                named("fragile"),
                &root,
            )
            .await
            .unwrap_err();
        assert!(again.to_string().contains("exists already"), "{again}");
        counter.kill(&root).await.unwrap();
        assert!(client.actors().await.unwrap().is_empty());
        client
            .create_actor(
                &component,
                &invocation("counter(0)"),
                named("fragile"),
                &root,
            )
            .await
            .unwrap();
        cluster.stop().await;
    });
}

#[test]
fn a_worker_killed_under_an_actor_fails_its_calls_with_a_clear_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (cluster, client, component) = actors_cluster(1).await;
        let root = opentelemetry::Context::new();
        let counter = client
            .create_actor(
                &component,
                &invocation("counter(1)"),
                Default::default(),
                &root,
            )
            .await
            .unwrap();
        let spinning = counter
            .call(&invocation("spin(5000)"), &root)
            .await
            .unwrap();
        let queued = counter.call(&invocation("get()"), &root).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = cluster.worker_pids()[0];
        // SAFETY: kill only signals the worker this test started.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        let spinning = actors::outcome(spinning).await.unwrap_err();
        assert_eq!(spinning.kind, TaskErrorKind::WorkerDied);
        assert!(
            spinning.message.contains("died") && spinning.message.contains(&pid.to_string()),
            "{}",
            spinning.message
        );
        let queued = actors::outcome(queued).await.unwrap_err();
        assert_eq!(queued.kind, TaskErrorKind::ActorDead);
        let listed = client.actors().await.unwrap();
        assert!(listed[0].state.contains("died"), "{listed:?}");
        cluster.stop().await;
    });
}

#[test]
fn with_restarts_an_actor_is_made_again_after_a_trap_and_after_its_worker_dies() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (cluster, client, component) = actors_cluster(2).await;
        let root = opentelemetry::Context::new();
        let options = ActorOptions {
            name: None,
            max_restarts: 2,
        };
        let counter = client
            .create_actor(&component, &invocation("counter(10)"), options, &root)
            .await
            .unwrap();
        let call = |text: &'static str| {
            let counter = counter.clone();
            let root = root.clone();
            async move {
                counter
                    .call(&invocation(text), &root)
                    .await
                    .unwrap()
                    .get()
                    .await
                    .unwrap()
                    .value
            }
        };
        assert_eq!(call("incr(5)").await.unwrap(), "15");
        // The trapping call fails; the actor is made again from its
        // constructor, its state lost, as in Ray.
        assert_eq!(call("boom()").await.unwrap_err().kind, TaskErrorKind::Trap);
        assert_eq!(call("get()").await.unwrap(), "10");
        let status = client.actors().await.unwrap();
        assert_eq!(status[0].restarts, 1);
        assert_eq!(status[0].state, "alive");

        // Its worker killed under a call: the call fails, the actor lives on
        // on the other worker.
        let pid = status[0].worker.as_ref().unwrap().2;
        let spinning = counter
            .call(&invocation("spin(5000)"), &root)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // SAFETY: kill only signals a worker this test started.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        let failed = tokio::time::timeout(Duration::from_secs(10), spinning.get())
            .await
            .expect("no hang")
            .unwrap()
            .value
            .unwrap_err();
        assert_eq!(failed.kind, TaskErrorKind::WorkerDied);
        let after = tokio::time::timeout(Duration::from_secs(10), call("incr(1)"))
            .await
            .expect("no hang");
        assert_eq!(after.unwrap(), "11");
        let status = client.actors().await.unwrap();
        assert_eq!(status[0].restarts, 2);
        assert_ne!(
            status[0].worker.as_ref().unwrap().2,
            pid,
            "made on another worker"
        );

        // No restarts left: the next trap leaves it dead.
        assert_eq!(call("boom()").await.unwrap_err().kind, TaskErrorKind::Trap);
        let dead = call("get()").await.unwrap_err();
        assert_eq!(dead.kind, TaskErrorKind::ActorDead);
        cluster.stop().await;
    });
}
