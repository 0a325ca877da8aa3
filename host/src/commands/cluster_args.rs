//! Finding a running cluster: `--address`/`--token`, else the session file.

use std::net::{SocketAddr, ToSocketAddrs as _};

use anyhow::{Context as _, bail};
use clap::Args;
use wtrace::cluster::session::{Session, process_alive, session_dir};

/// Which cluster to talk to.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// The head's HOST:PORT (default: the cluster `wtrace start --head` recorded on this machine).
    #[arg(long, value_name = "HOST:PORT")]
    pub address: Option<String>,
    /// The cluster's token (default: from the session file).
    #[arg(long, env = "WTRACE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Resolves `HOST:PORT`.
pub fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    address
        .to_socket_addrs()
        .with_context(|| format!("{address:?} is not a HOST:PORT address"))?
        .next()
        .with_context(|| format!("{address:?} resolves to no address"))
}

impl ClusterArgs {
    /// The head's address and token.
    pub fn locate(&self) -> anyhow::Result<(SocketAddr, String)> {
        let dir = session_dir();
        let session = Session::read(&dir)?;
        if let Some(address) = &self.address {
            let address = resolve(address)?;
            let token = match (&self.token, &session) {
                (Some(token), _) => token.clone(),
                (None, Some(session)) if session.address == address => session.token.clone(),
                _ => bail!(
                    "connecting to {address} needs the cluster's token: pass --token or set WTRACE_TOKEN \
                     (it is in {} on the head's machine)",
                    Session::path(&dir).display()
                ),
            };
            return Ok((address, token));
        }
        let Some(session) = session else {
            bail!(
                "no wtrace cluster is running: start one with `wtrace start --head`, or name one with \
                 --address (looked for {})",
                Session::path(&dir).display()
            );
        };
        if !process_alive(session.pid) {
            bail!(
                "the cluster recorded in {} is not running (its head, pid {}, is gone); start one with \
                 `wtrace start --head`",
                Session::path(&dir).display(),
                session.pid
            );
        }
        Ok((session.address, self.token.clone().unwrap_or(session.token)))
    }
}
