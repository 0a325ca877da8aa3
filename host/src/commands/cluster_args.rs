//! Finding a running cluster: `--address`/`--token`, else the session file.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use wtrace::cluster::session::{Session, process_alive, session_dir};
use wtrace::cluster::{Credentials, Endpoint};

/// Which cluster to talk to.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// The cluster: a wtrace head's HOST:PORT, or NATS servers as
    /// nats://HOST:PORT[,HOST:PORT…] (tls://… to require TLS) (default: the
    /// cluster `wtrace start --head` recorded on this machine).
    #[arg(long, value_name = "ADDRESS")]
    pub address: Option<Endpoint>,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// How to authenticate to NATS and which TLS to use (the token is
/// `--token`, `--token-file` or `WTRACE_TOKEN`, as for a wtrace head).
#[derive(Debug, Clone, Default, Args)]
pub struct NatsArgs {
    /// NATS user name; its password in WTRACE_NATS_PASSWORD.
    #[arg(long, env = "WTRACE_NATS_USER", value_name = "USER")]
    pub nats_user: Option<String>,
    /// NATS password (prefer WTRACE_NATS_PASSWORD: flags are visible in `ps`).
    #[arg(
        long,
        env = "WTRACE_NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<String>,
    /// A NATS credentials file (JWT and nkey seed, `.creds`).
    #[arg(long, env = "WTRACE_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// A file holding a NATS nkey seed (SU…), readable only by you.
    #[arg(long, value_name = "FILE")]
    pub nats_nkey: Option<PathBuf>,
    /// An nkey seed, as workers get it from their node.
    #[arg(
        long,
        env = "WTRACE_NATS_NKEY_SEED",
        hide = true,
        hide_env_values = true
    )]
    pub nats_nkey_seed: Option<String>,
    /// A CA certificate (PEM) to trust for TLS to NATS.
    #[arg(long, env = "WTRACE_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for TLS to NATS, with --tls-key.
    #[arg(
        long,
        env = "WTRACE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "WTRACE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl NatsArgs {
    /// The credentials for NATS, with `token` if one was given.
    pub fn credentials(&self, token: Option<String>) -> anyhow::Result<Credentials> {
        let nkey_seed = match &self.nats_nkey {
            Some(path) => Some(read_secret_file(path, "nkey seed file")?),
            None => self.nats_nkey_seed.clone(),
        };
        let user = match (&self.nats_user, &self.nats_password) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (Some(user), None) => bail!(
                "--nats-user {user} needs a password: set WTRACE_NATS_PASSWORD (or --nats-password)"
            ),
            _ => None,
        };
        Ok(Credentials {
            token,
            user,
            creds_file: self.nats_creds.clone(),
            nkey_seed,
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        })
    }
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
            Some(path) => read_secret_file(path, "token file").map(Some),
            None => Ok(self.token.clone()),
        }
    }
}

/// The secret in `path` (a token, an nkey seed; `what` says which): its
/// first line, from a file others cannot read.
pub fn read_secret_file(path: &Path, what: &str) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "the {what} {} can be read by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.is_empty() {
        bail!("the {what} {} is empty", path.display());
    }
    Ok(token)
}

/// Whether `endpoint` names the head at `head`.
pub fn names_head(endpoint: &Endpoint, head: SocketAddr) -> bool {
    match endpoint {
        Endpoint::Tcp(address) => address
            .to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.any(|addr| addr == head)),
        Endpoint::Nats { .. } => false,
    }
}

/// Whether two addresses name the same cluster (`localhost:7733` and
/// `127.0.0.1:7733` do).
pub fn same_cluster(a: &Endpoint, b: &Endpoint) -> bool {
    match (a, b) {
        (Endpoint::Tcp(_), Endpoint::Tcp(b)) => b
            .to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.any(|addr| names_head(a, addr))),
        (Endpoint::Nats { servers: a, .. }, Endpoint::Nats { servers: b, .. }) => {
            a.iter().any(|server| b.contains(server))
        }
        _ => false,
    }
}

/// How to join `endpoint`: NATS as `nats` says; a wtrace head with the token
/// given, else this machine's session's when it is that cluster's.
pub fn credentials_for(
    endpoint: &Endpoint,
    given: Option<String>,
    nats: &NatsArgs,
) -> anyhow::Result<Credentials> {
    match endpoint {
        Endpoint::Nats { .. } => nats.credentials(given),
        Endpoint::Tcp(_) => token_for(endpoint, given).map(Credentials::token),
    }
}

/// The token for `endpoint`: as given, else this machine's session's when
/// it is that cluster's.
pub fn token_for(endpoint: &Endpoint, given: Option<String>) -> anyhow::Result<String> {
    if let Some(token) = given {
        return Ok(token);
    }
    let dir = session_dir();
    match Session::read(&dir)? {
        Some(session)
            if session
                .endpoint()
                .is_ok_and(|recorded| same_cluster(endpoint, &recorded)) =>
        {
            Ok(session.token)
        }
        _ => bail!(
            "connecting to {endpoint} needs the cluster's token: pass --token-file or set \
             WTRACE_TOKEN (it is in {} on the head's machine)",
            Session::path(&dir).display()
        ),
    }
}

impl ClusterArgs {
    /// Where the cluster is, and how to join it.
    pub fn locate(&self) -> anyhow::Result<(Endpoint, Credentials)> {
        let given = self.token.given()?;
        if let Some(endpoint) = &self.address {
            let credentials = credentials_for(endpoint, given, &self.nats)?;
            return Ok((endpoint.clone(), credentials));
        }
        let dir = session_dir();
        let session = Session::read(&dir)?;
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
        let endpoint: Endpoint = session.address.parse()?;
        let credentials = match &endpoint {
            Endpoint::Tcp(_) => Credentials::token(given.unwrap_or(session.token)),
            Endpoint::Nats { .. } => self.nats.credentials(given)?,
        };
        Ok((endpoint, credentials))
    }
}
