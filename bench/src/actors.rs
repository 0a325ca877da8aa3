//! Actor calls per second against task submissions on the same trivial
//! work, on a traced cluster (the default hook), over the local head and
//! over NATS; and against Ray's actor calls, both traced.

use std::time::Instant;

use wtrace::cluster::{
    ActorHandle, Client, Credentials, Endpoint, LocalCluster, LocalClusterOptions,
};
use wtrace::runtime::wave::Invocation;
use wtrace_tests::nats::NatsServer;
use wtrace_tests::{Cluster, guests};

use super::{Report, cores, median, wtrace_bin};

/// Calls sent at once in a round, as Ray's side does.
const CALLS: usize = 2000;

/// The rates of one transport: tasks/s, calls/s on one actor, calls/s
/// spread over one actor per worker.
struct Rates {
    tasks: f64,
    one_actor: f64,
    actors: f64,
}

/// Rounds of `CALLS` trivial tasks (`plain()`), `CALLS` calls of
/// `incr(1)` on one actor, and `CALLS` calls spread over `workers` actors,
/// the median of each; every span flushed before a round's clock stops is
/// not waited for (the cluster keeps running), as Ray's side.
async fn rates(client: &Client, workers: usize, rounds: usize) -> anyhow::Result<Rates> {
    let component = client.upload_file(guests::ACTORS.as_ref()).await?;
    let root = opentelemetry::Context::new();
    let plain: Invocation = "plain()".parse()?;
    let incr: Invocation = "incr(1)".parse()?;
    let counter: Invocation = "counter(0)".parse()?;
    let mut actors: Vec<ActorHandle> = Vec::new();
    for _ in 0..workers.max(1) {
        actors.push(
            client
                .create_actor(&component, &counter, Default::default(), &root)
                .await?,
        );
    }
    let tasks_round = || async {
        let started = Instant::now();
        let calls = vec![plain.clone(); CALLS];
        for task in client.submit_many(&component, &calls, &root).await? {
            task.get()
                .await?
                .value
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        anyhow::Ok(CALLS as f64 / started.elapsed().as_secs_f64())
    };
    let calls_round = |on: &[ActorHandle]| {
        let on = on.to_vec();
        let incr = incr.clone();
        let root = root.clone();
        async move {
            let started = Instant::now();
            let mut sent = Vec::with_capacity(CALLS);
            for i in 0..CALLS {
                sent.push(on[i % on.len()].call(&incr, &root).await?);
            }
            for call in sent {
                call.get()
                    .await?
                    .value
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            anyhow::Ok(CALLS as f64 / started.elapsed().as_secs_f64())
        }
    };
    // Warm every path once.
    tasks_round().await?;
    calls_round(&actors).await?;
    let (mut tasks, mut one, mut many) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        tasks.push(tasks_round().await?);
        one.push(calls_round(&actors[..1]).await?);
        many.push(calls_round(&actors).await?);
    }
    for actor in &actors {
        actor.kill(&root).await?;
    }
    Ok(Rates {
        tasks: median(tasks),
        one_actor: median(one),
        actors: median(many),
    })
}

fn rows(report: &mut Report, over: &str, workers: usize, rates: &Rates) {
    report.row(
        &format!("{over}: tasks, {CALLS} at once (tasks/s)"),
        format!("{:.0}", rates.tasks),
        "",
    );
    report.row(
        &format!("{over}: calls on 1 actor (calls/s, x tasks)"),
        format!(
            "{:.0} ({:.2}x)",
            rates.one_actor,
            rates.one_actor / rates.tasks
        ),
        "",
    );
    report.row(
        &format!("{over}: calls over {workers} actors (calls/s, x tasks)"),
        format!("{:.0} ({:.2}x)", rates.actors, rates.actors / rates.tasks),
        "",
    );
}

/// Every actor row; with `ray`, Ray's traced actor calls and the ratio.
pub async fn measure(report: &mut Report, quick: bool, ray: bool) -> anyhow::Result<()> {
    let rounds = if quick { 1 } else { 3 };
    let workers = cores();

    let mut options = LocalClusterOptions::new(wtrace_bin());
    options.num_workers = workers;
    options.hook = Some("default".parse::<wtrace::HookSpec>()?.load()?);
    let cluster = LocalCluster::start(options).await?;
    let client = cluster.client(None).await?;
    let local = rates(&client, workers, rounds).await?;
    if let Some(telemetry) = client.telemetry().cloned() {
        tokio::task::spawn_blocking(move || telemetry.shutdown()).await??;
    }
    client.shutdown_cluster().await?;
    cluster.stop().await;
    rows(report, "actors, head, traced", workers, &local);

    let nats = NatsServer::start("");
    let url = nats.url();
    let n = workers.to_string();
    let mut started = Cluster::start(
        &[
            "--address",
            &url,
            "-n",
            &n,
            "--tracing-startup-hook=default",
        ],
        &[],
    );
    let endpoint: Endpoint = url.parse()?;
    let client = Client::connect(&endpoint, Credentials::default(), None).await?;
    let over_nats = rates(&client, workers, rounds).await;
    if let Some(telemetry) = client.telemetry().cloned() {
        tokio::task::spawn_blocking(move || telemetry.shutdown()).await??;
    }
    started.stop_with(&["--address", &url]);
    rows(report, "actors, NATS, traced", workers, &over_nats?);

    if ray {
        let ray = super::ray_actor_rate()?;
        report.row(
            &format!("Ray: calls on 1 actor, {CALLS} at once, traced (calls/s)"),
            format!("{ray:.0}"),
            "",
        );
        report.row(
            "wtrace (head) / Ray, calls on 1 actor, both traced",
            format!("{:.1}x", local.one_actor / ray),
            "",
        );
    }
    Ok(())
}
