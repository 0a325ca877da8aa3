//! Checks shared by the actor tests of every transport.

use futures::future::join_all;
use wtrace::cluster::ActorHandle;
use wtrace::outcome::{TaskError, TaskErrorKind};
use wtrace::runtime::wave::Invocation;

fn invocation(text: &str) -> Invocation {
    text.parse().unwrap()
}

/// Makes a counter at 0 of `component` through driver `a`, finds it
/// through driver `b`, sends `per_driver` increments through each, interleaved
/// and none waited for, and checks that every call ran once, each driver's
/// in the order it sent them. Returns `a`'s handle.
pub async fn assert_two_drivers_keep_their_order(
    a: &wtrace::Client,
    b: &wtrace::Client,
    component: &wtrace::Digest,
    per_driver: usize,
) -> ActorHandle {
    let root = opentelemetry::Context::new();
    let counter = a
        .create_actor(
            component,
            &invocation("counter(0)"),
            Default::default(),
            &root,
        )
        .await
        .unwrap();
    let same = b.actor(counter.id()).await.unwrap();
    let (a, b) = (&counter, &same);
    let mut sent = Vec::new();
    for _ in 0..per_driver {
        sent.push((0, a.call(&invocation("incr(1)"), &root).await.unwrap()));
        sent.push((1, b.call(&invocation("incr(1)"), &root).await.unwrap()));
    }
    let results =
        join_all(sent.into_iter().map(|(driver, task)| async move {
            (driver, task.get().await.unwrap().value.unwrap())
        }))
        .await;
    let mut seen: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
    for (driver, value) in results {
        seen[driver].push(value.parse().unwrap());
    }
    let mut all: Vec<i64> = seen.concat();
    all.sort_unstable();
    let calls = 2 * per_driver as i64;
    assert_eq!(all, (1..=calls).collect::<Vec<_>>(), "every call ran once");
    for values in &seen {
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "one driver's calls ran in the order it sent them: {values:?}"
        );
    }
    counter
}

/// Calls `boom()`, which traps, with a `get()` queued behind it: the trap
/// fails as a trap and leaves the actor dead, so the queued call and a later
/// one fail with [`TaskErrorKind::ActorDead`] saying it trapped. Returns the
/// trapping call's stderr.
pub async fn assert_a_trap_leaves_it_dead(actor: &ActorHandle) -> Vec<u8> {
    let root = opentelemetry::Context::new();
    let boom = actor.call(&invocation("boom()"), &root).await.unwrap();
    let after = actor.call(&invocation("get()"), &root).await.unwrap();
    let boom = boom.get().await.unwrap();
    assert_eq!(boom.value.unwrap_err().kind, TaskErrorKind::Trap);
    let dead = |error: TaskError| {
        assert_eq!(error.kind, TaskErrorKind::ActorDead, "{}", error.message);
        assert!(error.message.contains("trapped"), "{}", error.message);
    };
    dead(after.get().await.unwrap().value.unwrap_err());
    let later = actor.call(&invocation("get()"), &root).await.unwrap();
    dead(later.get().await.unwrap().value.unwrap_err());
    boom.stderr
}

/// What a call came to, within a minute: never a hang.
pub async fn outcome(task: wtrace::cluster::TaskRef) -> Result<String, TaskError> {
    tokio::time::timeout(std::time::Duration::from_secs(60), task.get())
        .await
        .expect("no hang")
        .unwrap()
        .value
}

/// Through `cluster`'s CLI: a task makes a counter, calls it and kills it
/// (`make-and-count`), and a task finds an actor a driver made, named
/// `name`, and calls it (`call-by-name`). Returns that actor's id.
pub fn assert_tasks_make_find_and_call_actors(cluster: &crate::Cluster, name: &str) -> String {
    let actors = crate::guests::ACTORS;
    let run = cluster
        .command(&["submit", actors, "make-and-count(5, 3)"])
        .run();
    assert_eq!(run.success().trim(), "ok(8)");
    let id = cluster
        .command(&["actor", "create", "--name", name, actors, "counter(1)"])
        .run()
        .success()
        .trim()
        .to_owned();
    let by_name = format!("call-by-name({name:?}, 4)");
    let run = cluster.command(&["submit", actors, &by_name]).run();
    assert_eq!(run.success().trim(), r#"ok("5")"#);
    id
}
