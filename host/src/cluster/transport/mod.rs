//! The seam between wtrace's processes and how their messages travel.
//!
//! A driver ([`crate::cluster::Client`]) and a worker each hold one link: a
//! pair of channels of [`crate::cluster::messages`], and the reason the link
//! was lost, if it was. What carries the messages is the transport's alone,
//! chosen by the [`Endpoint`]: the local head over TCP ([`tcp`]), or the head
//! in this very process, with no socket and no serialization
//! ([`tcp::Head::driver_link`]). Drivers' spans, the worker pool and task
//! execution know nothing of which.

pub mod nats;
pub mod tcp;

use std::fmt;
use std::str::FromStr;

use tokio::sync::{mpsc, oneshot};

use super::messages::{ClusterConfig, DetachedJob, FromDriver, FromWorker, ToDriver, ToWorker};
use crate::error::{Error, Result};

/// Where a cluster is: what `--address` names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The local head: `HOST:PORT` or `tcp://HOST:PORT`.
    Tcp(String),
    /// NATS servers: `nats://HOST:PORT[,HOST:PORT…]`, or `tls://…` to
    /// require TLS.
    Nats {
        /// `HOST:PORT` of each server to try.
        servers: Vec<String>,
        /// Whether TLS is required.
        tls: bool,
    },
}

impl Endpoint {
    /// The local head at `addr`.
    pub fn tcp(addr: std::net::SocketAddr) -> Self {
        Self::Tcp(addr.to_string())
    }
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Err(Error::Config(format!(
                "--address {text:?} {why}; give HOST:PORT (or tcp://HOST:PORT) for a wtrace head, \
                 nats://HOST:PORT[,HOST:PORT…] or tls://HOST:PORT for NATS"
            )))
        };
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("tcp".to_owned(), text),
        };
        let hosts: Vec<String> = rest
            .trim_end_matches('/')
            .split(',')
            .map(|host| host.trim().to_owned())
            .collect();
        if let Some(host) = hosts.iter().find(|host| !is_host_port(host)) {
            return bad(&format!("has {host:?} where HOST:PORT belongs"));
        }
        match scheme.as_str() {
            "tcp" if hosts.len() == 1 => Ok(Self::Tcp(hosts.into_iter().next().expect("one"))),
            "tcp" => bad("lists several heads; a wtrace cluster has one"),
            "nats" | "tls" => Ok(Self::Nats {
                servers: hosts,
                tls: scheme == "tls",
            }),
            _ => bad(&format!("has the unknown scheme {scheme:?}")),
        }
    }
}

/// `HOST:PORT` with a host (a name, an IPv4 address or a bracketed IPv6
/// one) and a port number.
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
        }
    };
    host_ok && port.parse::<u16>().is_ok()
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => f.write_str(addr),
            Self::Nats { servers, tls } => {
                write!(
                    f,
                    "{}://{}",
                    if *tls { "tls" } else { "nats" },
                    servers.join(",")
                )
            }
        }
    }
}

/// Why a link ended, told once its receiving channel closed; nothing told
/// means the cluster closed it in good order.
pub(crate) type Lost = oneshot::Receiver<String>;

/// A driver's side of a transport.
pub(crate) struct DriverLink {
    /// The cluster's configuration, as it was when the driver joined.
    pub config: ClusterConfig,
    pub tx: mpsc::UnboundedSender<FromDriver>,
    pub rx: mpsc::UnboundedReceiver<ToDriver>,
    pub lost: Lost,
    /// The id under which this driver's results are kept, were it to
    /// detach; `None` where the transport keeps them only for a connected
    /// driver.
    pub job: Option<String>,
    /// When the link reattached to a job: its tasks, whose results it
    /// receives.
    pub detached: Option<DetachedJob>,
}

/// A worker's side of a transport.
pub(crate) struct WorkerLink {
    /// The cluster's configuration, as it was when the worker joined.
    pub config: ClusterConfig,
    pub tx: mpsc::UnboundedSender<FromWorker>,
    pub rx: mpsc::UnboundedReceiver<ToWorker>,
    pub lost: Lost,
    /// Resolves once everything sent on `tx` (every sender dropped) is out.
    pub sent: tokio::task::JoinHandle<()>,
}

/// How a process proves it may join a cluster: the cluster's token for a
/// wtrace head; for NATS, whatever its server asks (a token, a user and
/// password, a credentials file, an nkey) and the TLS to use.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The wtrace cluster's token, or the NATS server's.
    pub token: Option<String>,
    /// NATS user and password.
    pub user: Option<(String, String)>,
    /// A NATS credentials file (JWT and nkey seed).
    pub creds_file: Option<std::path::PathBuf>,
    /// A NATS nkey seed (`SU…`).
    pub nkey_seed: Option<String>,
    /// The CA certificate (PEM) to trust for TLS.
    pub tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) for TLS, with its key.
    pub tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    pub tls_key: Option<std::path::PathBuf>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets themselves.
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("user", &self.user.as_ref().map(|(user, _)| user))
            .field("creds_file", &self.creds_file)
            .field("nkey_seed", &self.nkey_seed.as_ref().map(|_| "…"))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .finish_non_exhaustive()
    }
}

impl From<&str> for Credentials {
    fn from(token: &str) -> Self {
        Self::token(token)
    }
}

impl From<String> for Credentials {
    fn from(token: String) -> Self {
        Self::token(token)
    }
}

impl From<&String> for Credentials {
    fn from(token: &String) -> Self {
        Self::token(token.as_str())
    }
}

impl Credentials {
    /// Just a token.
    pub fn token(token: impl Into<String>) -> Self {
        Self {
            token: Some(token.into()),
            ..Self::default()
        }
    }

    /// Whether anything authenticates this process.
    pub fn authenticates(&self) -> bool {
        self.token.is_some()
            || self.user.is_some()
            || self.creds_file.is_some()
            || self.nkey_seed.is_some()
            || self.tls_cert.is_some()
    }
}

/// Connects a driver to the cluster at `endpoint`: a new one, or one
/// reattached to the detached `job`.
pub(crate) async fn connect_driver(
    endpoint: &Endpoint,
    credentials: &Credentials,
    job: Option<&str>,
) -> Result<DriverLink> {
    match endpoint {
        Endpoint::Tcp(_) if job.is_some() => Err(Error::Config(tcp::DETACH_REFUSED.into())),
        Endpoint::Tcp(addr) => tcp::connect_driver(addr, credentials).await,
        Endpoint::Nats { servers, tls } => {
            nats::connect_driver(servers, *tls, credentials, job).await
        }
    }
}

/// Connects a worker to the cluster at `endpoint`. `written` is called with
/// every message once the transport has sent it on.
pub(crate) async fn connect_worker(
    endpoint: &Endpoint,
    credentials: &Credentials,
    info: crate::capabilities::provider::WorkerInfo,
    written: impl Fn(&FromWorker) + Send + Sync + 'static,
) -> Result<WorkerLink> {
    match endpoint {
        Endpoint::Tcp(addr) => tcp::connect_worker(addr, credentials, info, written).await,
        Endpoint::Nats { servers, tls } => {
            let pid = std::process::id();
            nats::connect_worker(servers, *tls, credentials, info, pid, written).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_their_transport() {
        let parse = |text: &str| text.parse::<Endpoint>();
        assert_eq!(
            parse("127.0.0.1:7733").unwrap(),
            Endpoint::Tcp("127.0.0.1:7733".into())
        );
        assert_eq!(
            parse("tcp://head.local:7733").unwrap(),
            Endpoint::Tcp("head.local:7733".into())
        );
        assert_eq!(
            parse("[::1]:7733").unwrap(),
            Endpoint::Tcp("[::1]:7733".into())
        );
        assert_eq!(
            parse("nats://a:4222,b:4222").unwrap(),
            Endpoint::Nats {
                servers: vec!["a:4222".into(), "b:4222".into()],
                tls: false
            }
        );
        assert_eq!(
            parse("TLS://a:4222/").unwrap(),
            Endpoint::Nats {
                servers: vec!["a:4222".into()],
                tls: true
            }
        );
        assert_eq!(
            parse("nats://a:4222,b:4222").unwrap().to_string(),
            "nats://a:4222,b:4222"
        );
        for (bad, says) in [
            ("7733", "where HOST:PORT belongs"),
            ("host:port", "where HOST:PORT belongs"),
            ("http://a:80", "unknown scheme \"http\""),
            ("tcp://a:1,b:2", "several heads"),
            ("nats://", "where HOST:PORT belongs"),
            ("a b:1", "where HOST:PORT belongs"),
        ] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
            assert!(error.contains("nats://HOST:PORT"), "{bad}: {error}");
        }
    }
}
