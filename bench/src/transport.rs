//! Trivial tasks per second on a started cluster, over the local head and
//! over NATS JetStream, with the CPU each process spent per task: where the
//! time goes when NATS falls short.

use std::time::Instant;

use wtrace::cluster::{Client, Credentials, Endpoint};
use wtrace::runtime::wave::Invocation;
use wtrace_tests::nats::NatsServer;
use wtrace_tests::{Cluster, guests};

use super::Report;

/// One measured run: its rate, and CPU µs per task by process kind.
pub struct Measured {
    pub rate: f64,
    /// (what, CPU µs per task).
    pub cpu: Vec<(&'static str, f64)>,
}

/// A started cluster: a local head, or a head on a NATS server, with
/// `nodes` nodes of `workers` workers each (no hook: the transport alone).
struct Started {
    cluster: Cluster,
    endpoint: Endpoint,
    credentials: Credentials,
    nats: Option<NatsServer>,
}

impl Started {
    fn local(workers: usize) -> Self {
        let cluster = Cluster::start(&["-n", &workers.to_string()], &[]);
        let session = cluster.session();
        let endpoint = session["address"].as_str().unwrap().parse().unwrap();
        let credentials = Credentials::token(session["token"].as_str().unwrap());
        Self::ready(cluster, endpoint, credentials, None, workers)
    }

    fn nats(nodes: usize, workers: usize) -> Self {
        let nats = NatsServer::start("");
        let url = nats.url();
        let n = workers.to_string();
        let mut cluster = Cluster::start(&["--address", &url, "-n", &n], &[]);
        for _ in 1..nodes {
            let run = cluster.detached(&["start", "--address", &url, "-n", &n]);
            assert_eq!(run.status, Some(0), "{}", run.stderr);
        }
        let endpoint = url.parse().unwrap();
        Self::ready(
            cluster,
            endpoint,
            Credentials::default(),
            Some(nats),
            nodes * workers,
        )
    }

    /// Waits until `workers` workers are ready.
    fn ready(
        cluster: Cluster,
        endpoint: Endpoint,
        credentials: Credentials,
        nats: Option<NatsServer>,
        workers: usize,
    ) -> Self {
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let status = cluster.status();
            let ready = status["workers"]
                .as_array()
                .map_or(0, |w| w.iter().filter(|w| w["ready"] == true).count());
            if ready >= workers {
                break;
            }
            assert!(Instant::now() < deadline, "workers not ready: {status}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Self {
            cluster,
            endpoint,
            credentials,
            nats,
        }
    }

    /// The pids of the cluster's processes, by kind.
    fn processes(&self) -> Vec<(&'static str, u32)> {
        let status = self.cluster.status();
        let mut pids: Vec<(&'static str, u32)> = status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| ("workers", w["pid"].as_u64().unwrap() as u32))
            .collect();
        match &self.nats {
            Some(nats) => pids.extend(nats.pid().map(|pid| ("nats-server", pid))),
            None => pids.push((
                "head",
                self.cluster.session()["pid"].as_u64().unwrap() as u32,
            )),
        }
        pids
    }
}

/// CPU time (user + system) a process has spent, in µs.
fn cpu_us(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat(5): 12 and 13 here.
    #[allow(unsafe_code)]
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz * 1e6
}

/// This process's own CPU time, in µs.
fn own_cpu_us() -> f64 {
    cpu_us(std::process::id())
}

async fn measure(started: &Started, n: usize) -> anyhow::Result<Measured> {
    let client = Client::connect_untraced(&started.endpoint, started.credentials.clone()).await?;
    let component = client.upload_file(guests::HELLO.as_ref()).await?;
    let call: Invocation = "my-function()".parse()?;
    for task in client
        .submit_many(
            &component,
            &vec![call.clone(); 500],
            &opentelemetry::Context::new(),
        )
        .await?
    {
        task.get().await?;
    }
    let processes = started.processes();
    let before: Vec<f64> = processes.iter().map(|(_, pid)| cpu_us(*pid)).collect();
    let own_before = own_cpu_us();
    let clock = Instant::now();
    let tasks = client
        .submit_many(&component, &vec![call; n], &opentelemetry::Context::new())
        .await?;
    for task in tasks {
        task.get()
            .await?
            .value
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let rate = n as f64 / clock.elapsed().as_secs_f64();
    let mut cpu: Vec<(&'static str, f64)> =
        vec![("driver", (own_cpu_us() - own_before) / n as f64)];
    for ((kind, pid), before) in processes.iter().zip(before) {
        let spent = (cpu_us(*pid) - before) / n as f64;
        match cpu.iter_mut().find(|(k, _)| k == kind) {
            Some((_, total)) => *total += spent,
            None => cpu.push((kind, spent)),
        }
    }
    Ok(Measured { rate, cpu })
}

fn breakdown(measured: &Measured) -> String {
    measured
        .cpu
        .iter()
        .map(|(kind, us)| format!("{kind} {us:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rows: NATS against the local head on one node, how NATS grows with
/// nodes, and per-task CPU by process.
pub async fn rows(report: &mut Report, quick: bool) -> anyhow::Result<()> {
    let n = if quick { 10_000 } else { 40_000 };
    let rounds = if quick { 1 } else { 3 };
    let workers = super::cores();
    let mut runs = Vec::new();
    for _ in 0..rounds {
        let local = Started::local(workers);
        let on_local = measure(&local, n).await?;
        drop(local);
        let nats = Started::nats(1, workers);
        let on_nats = measure(&nats, n).await?;
        drop(nats);
        runs.push((on_local, on_nats));
    }
    // The median round by ratio.
    runs.sort_by(|a, b| (a.1.rate / a.0.rate).total_cmp(&(b.1.rate / b.0.rate)));
    let (local, nats) = &runs[runs.len() / 2];
    let what = format!("started cluster, 1 node of {workers} workers, {n} trivial tasks");
    report.row(
        &format!("{what}: local head (tasks/s)"),
        format!("{:.0}", local.rate),
        "",
    );
    report.row(
        &format!("{what}: NATS (tasks/s)"),
        format!("{:.0}", nats.rate),
        "",
    );
    report.row(
        "NATS / local head, per node",
        format!("{:.2}x", nats.rate / local.rate),
        ">= 0.50x",
    );
    report.row("  CPU per task, local head (us)", breakdown(local), "");
    report.row("  CPU per task, NATS (us)", breakdown(nats), "");
    let mut by_nodes = Vec::new();
    for nodes in 1..=3 {
        let started = Started::nats(nodes, 1);
        by_nodes.push(format!("{:.0}", measure(&started, n).await?.rate));
    }
    report.row(
        &format!("NATS, 1 / 2 / 3 nodes of 1 worker, {n} tasks (tasks/s)"),
        by_nodes.join(" / "),
        "",
    );
    Ok(())
}
