//! `wtrace actor`: make, call, list and end actors on the running cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use wtrace::cluster::Client;
use wtrace::cluster::client::TaskResult;
use wtrace::runtime::wave::Invocation;

use super::cluster_args::ClusterArgs;
use super::common::{outer_context, print_result, read_component};

/// Actors: instances of a resource type a component exports, kept alive on
/// one worker between calls, whose methods run one at a time in call order.
#[derive(Debug, Args)]
pub struct ActorCommand {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Make an actor by its class's constructor, e.g. 'counter(5)'; prints
    /// its id.
    Create {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// A name usable in place of the id (unique in the cluster).
        #[arg(long)]
        name: Option<String>,
        /// Make it again by its constructor (its state lost) up to N times
        /// after a call traps, times out or runs out of fuel, or its worker
        /// dies.
        #[arg(long, value_name = "N", default_value_t = 0)]
        max_restarts: u32,
        /// The component exporting the class (.wasm).
        component: PathBuf,
        /// The class and its constructor's arguments in WAVE.
        #[arg(value_name = "CONSTRUCTOR")]
        invocation: String,
    },
    /// Call a method, e.g. 'incr(2)'; prints its result in WAVE.
    Call {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The actor's id or name.
        actor: String,
        /// The method and its arguments in WAVE.
        #[arg(value_name = "METHOD")]
        invocation: String,
    },
    /// List the cluster's actors.
    List {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// End an actor, after the calls made before; its destructor runs.
    Kill {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The actor's id or name.
        actor: String,
    },
}

impl ActorCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let cluster = match &self.action {
            Action::Create { cluster, .. }
            | Action::Call { cluster, .. }
            | Action::List { cluster, .. }
            | Action::Kill { cluster, .. } => cluster,
        };
        let (address, token) = cluster.locate()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let traced = !matches!(self.action, Action::List { .. });
            let client = if traced {
                Client::connect(&address, token, None).await?
            } else {
                Client::connect_untraced(&address, token).await?
            };
            let outcome = self.action.run(&client).await;
            if let Some(telemetry) = client.telemetry().cloned() {
                tokio::task::spawn_blocking(move || telemetry.shutdown()).await??;
            }
            outcome
        })
    }
}

impl Action {
    async fn run(self, client: &Client) -> anyhow::Result<ExitCode> {
        let parent = outer_context();
        match self {
            Action::Create {
                name,
                max_restarts,
                component,
                invocation,
                ..
            } => {
                let invocation: Invocation = invocation.parse()?;
                let (file, bytes) = read_component(&component)?;
                let digest = client.upload(&file, bytes).await?;
                let actor = client
                    .create_actor(
                        &digest,
                        &invocation,
                        wtrace::cluster::ActorOptions { name, max_restarts },
                        &parent,
                    )
                    .await?;
                println!("{}", actor.id());
                Ok(ExitCode::SUCCESS)
            }
            Action::Call {
                actor, invocation, ..
            } => {
                let invocation: Invocation = invocation.parse()?;
                let actor = client.actor(&actor).await?;
                let result: TaskResult = actor.call(&invocation, &parent).await?.get().await?;
                Ok(if print_result(&result, &mut std::io::stdout().lock())? {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                })
            }
            Action::List { json, .. } => {
                let actors = client.actors().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&actors)?);
                    return Ok(ExitCode::SUCCESS);
                }
                println!(
                    "{:<24} {:<12} {:<10} {:<16} {:<22} {:>6}  STATE",
                    "ID", "NAME", "CLASS", "COMPONENT", "WORKER (NODE, PID)", "CALLS"
                );
                for actor in actors {
                    let worker = actor.worker.map_or_else(
                        || "-".to_owned(),
                        |(worker, node, pid)| format!("{worker} ({node}, {pid})"),
                    );
                    println!(
                        "{:<24} {:<12} {:<10} {:<16} {:<22} {:>6}  {}",
                        actor.id,
                        actor.name.as_deref().unwrap_or("-"),
                        actor.class,
                        actor.component,
                        worker,
                        actor.calls,
                        if actor.restarts > 0 {
                            format!("{} (restarted {}x)", actor.state, actor.restarts)
                        } else {
                            actor.state
                        }
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Action::Kill { actor, .. } => {
                client.actor(&actor).await?.kill(&parent).await?;
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
