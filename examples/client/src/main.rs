//! Submitting tasks to a running wtrace cluster from Rust, with results
//! streamed back as they finish.
//!
//! ```text
//! wtrace start --head --tracing-startup-hook=default
//! cargo run -p client-example -- path/to/component.wasm 'add(1, 2)' 'add(3, 4)'
//! wtrace stop
//! ```
//!
//! The client finds the cluster through the session file `wtrace start`
//! wrote, runs the cluster's tracing startup hook (so its submit spans are
//! exported like the workers' spans), uploads the component once, and
//! submits every invocation in one message.

use futures::StreamExt as _;
use wtrace::Client;
use wtrace::cluster::session::{Session, session_dir};
use wtrace::runtime::wave::Invocation;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let component = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: client-example COMPONENT INVOCATION..."))?;
    let invocations: Vec<Invocation> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;

    let session = Session::read(&session_dir())?.ok_or_else(|| {
        anyhow::anyhow!("no cluster is running: start one with `wtrace start --head`")
    })?;
    // `None`: run the cluster's own tracing startup hook in this process.
    let client = Client::connect(&session.endpoint()?, &session.token, None).await?;
    let digest = client.upload_file(component.as_ref()).await?;

    let tasks = client
        .submit_many(&digest, &invocations, &opentelemetry::Context::new())
        .await?;
    let mut results = Client::results(tasks);
    while let Some(result) = results.next().await {
        let result = result?;
        match result.value {
            Ok(value) => println!("{} (pid {}) -> {value}", result.function, result.pid),
            Err(error) => eprintln!("{} failed: {error}", result.function),
        }
    }

    // Export this driver's spans before exiting.
    if let Some(telemetry) = client.telemetry() {
        telemetry.shutdown()?;
    }
    Ok(())
}
