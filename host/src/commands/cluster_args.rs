//! Finding a running cluster: `--address`/`--token`, else the session file.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use wtrace::cluster::session::{Session, process_alive, session_dir};

/// Which cluster to talk to.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// The head's HOST:PORT (default: the cluster `wtrace start --head` recorded on this machine).
    #[arg(long, value_name = "HOST:PORT")]
    pub address: Option<String>,
    #[command(flatten)]
    pub token: TokenArgs,
}

/// The cluster's token, when given rather than read from the session file.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The cluster's token (default: from this machine's session file).
    /// Visible in `ps`: prefer --token-file or WTRACE_TOKEN.
    #[arg(long, env = "WTRACE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the cluster's token, readable only by you.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The token given by flag, file or environment, if any.
    pub fn given(&self) -> anyhow::Result<Option<String>> {
        match &self.token_file {
            Some(path) => read_token_file(path).map(Some),
            None => Ok(self.token.clone()),
        }
    }
}

/// The token in `path`: its first line, from a file others cannot read.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "the token file {} can be read by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token)
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
        let given = self.token.given()?;
        let dir = session_dir();
        let session = Session::read(&dir)?;
        if let Some(address) = &self.address {
            let address = resolve(address)?;
            let token = match (&given, &session) {
                (Some(token), _) => token.clone(),
                (None, Some(session)) if session.address == address => session.token.clone(),
                _ => bail!(
                    "connecting to {address} needs the cluster's token: pass --token-file or set WTRACE_TOKEN \
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
        Ok((session.address, given.unwrap_or(session.token)))
    }
}
