//! Limits and grants: what a task or hook may use.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Per-task resource limits. Every worker of a cluster uses the same limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest linear memory a task may grow to, in bytes (`--max-memory`).
    pub memory_bytes: u64,
    /// Wall-clock time a task may run (`--timeout`).
    pub timeout: Duration,
    /// Wall-clock time the tracing startup hook may run.
    pub hook_timeout: Duration,
    /// Fuel (roughly, wasm instructions) a task may consume; none when off (`--fuel`).
    pub fuel: Option<u64>,
    /// Spans a task may start; later ones are dropped and counted (`--max-spans`).
    pub spans_per_task: u32,
    /// Spans a task may have open at once; later ones are dropped and counted (`--max-open-spans`).
    pub open_spans: u32,
    /// Attributes per span; later ones are dropped by the SDK (`--max-span-attributes`).
    pub attributes_per_span: u32,
    /// Events per span; later ones are dropped by the SDK (`--max-span-events`).
    pub events_per_span: u32,
    /// Longest attribute string value, in bytes; longer ones are truncated (`--max-attribute-length`).
    pub attribute_value_length: u32,
    /// Largest task output (stdout and stderr each) kept, in bytes.
    pub output_bytes: u32,
    /// Tasks one task may submit (`--max-nested-tasks`).
    pub nested_tasks: u32,
    /// How deep tasks may submit tasks that submit tasks (`--max-nesting-depth`).
    pub nesting_depth: u32,
    /// Largest result a task may return, in bytes of WAVE (`--max-result-size`).
    pub result_bytes: u32,
    /// Where each task's guest CPU profile is written (`--profile`), if
    /// anywhere: `<task id>.json`, Firefox Profiler format.
    pub profile_dir: Option<std::path::PathBuf>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 512 << 20,
            timeout: Duration::from_secs(300),
            hook_timeout: Duration::from_secs(30),
            fuel: None,
            spans_per_task: 10_000,
            open_spans: 1_000,
            attributes_per_span: 128,
            events_per_span: 128,
            attribute_value_length: 8 << 10,
            output_bytes: 1 << 20,
            nested_tasks: 1_000,
            nesting_depth: 16,
            result_bytes: 1 << 20,
            profile_dir: None,
        }
    }
}

/// Where a tracing startup hook may send spans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportPolicy {
    /// Directories under which file exporters may write (`--allow-span-dir`).
    pub span_dirs: Vec<PathBuf>,
    /// Hosts OTLP exporters may reach (`--allow-otlp-host`); loopback is always allowed.
    pub otlp_hosts: Vec<String>,
}

impl Default for ExportPolicy {
    fn default() -> Self {
        Self {
            span_dirs: vec![PathBuf::from("/tmp/spans")],
            otlp_hosts: Vec::new(),
        }
    }
}

/// What tasks may reach beyond the default sandbox. Hooks get none of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Host directories preopened for tasks (`--allow-dir HOST[:GUEST][:ro]`).
    pub dirs: Vec<DirGrant>,
    /// Environment variables passed to tasks, by name (`--allow-env NAME`).
    pub env: Vec<String>,
    /// Addresses tasks may open sockets to: `HOST:PORT`, `HOST:*` or `*`
    /// (`--allow-net`). Name lookups are allowed when any is granted.
    pub net: Vec<String>,
    /// Hosts tasks may send HTTP requests to (`wasi:http`): `HOST`,
    /// `HOST:PORT` or `*` (`--allow-http`).
    #[serde(default)]
    pub http: Vec<String>,
}

/// Whether an HTTP request to `host` (and `port`) is granted by the
/// `--allow-http` patterns.
pub fn http_allowed(patterns: &[String], host: &str, port: u16) -> bool {
    patterns.iter().any(|pattern| {
        if pattern == "*" {
            return true;
        }
        match pattern.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => {
                h.eq_ignore_ascii_case(host) && p.parse() == Ok(port)
            }
            _ => pattern.eq_ignore_ascii_case(host),
        }
    })
}

/// A directory granted to tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirGrant {
    /// The directory on the worker's machine.
    pub host: PathBuf,
    /// Where the guest sees it.
    pub guest: String,
    /// Read-only.
    pub read_only: bool,
}

impl std::str::FromStr for DirGrant {
    type Err = String;

    /// `HOST[:GUEST][:ro]`; GUEST defaults to HOST.
    fn from_str(spec: &str) -> Result<Self, String> {
        let mut parts: Vec<&str> = spec.split(':').collect();
        let read_only = parts.last() == Some(&"ro");
        if read_only || parts.last() == Some(&"rw") {
            parts.pop();
        }
        let (host, guest) = match parts.as_slice() {
            [host] => (*host, *host),
            [host, guest] => (*host, *guest),
            _ => return Err(format!("{spec:?} is not HOST[:GUEST][:ro]")),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(format!("{spec:?} is not HOST[:GUEST][:ro]"));
        }
        Ok(Self {
            host: PathBuf::from(host),
            guest: guest.to_owned(),
            read_only,
        })
    }
}

/// Whether `addr` is granted by the `--allow-net` patterns.
pub fn net_allowed(patterns: &[String], addr: &std::net::SocketAddr) -> bool {
    patterns.iter().any(|pattern| {
        if pattern == "*" {
            return true;
        }
        let Some((host, port)) = pattern.rsplit_once(':') else {
            return false;
        };
        let host = host.trim_matches(['[', ']']);
        let host_ok = match host {
            "*" => true,
            "localhost" => addr.ip().is_loopback(),
            _ => host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip == addr.ip()),
        };
        host_ok && (port == "*" || port.parse::<u16>().is_ok_and(|p| p == addr.port()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_grants_parse() {
        let grant: DirGrant = "/data".parse().unwrap();
        assert_eq!((grant.guest.as_str(), grant.read_only), ("/data", false));
        let grant: DirGrant = "/srv/in:/in:ro".parse().unwrap();
        assert_eq!(grant.host, PathBuf::from("/srv/in"));
        assert_eq!((grant.guest.as_str(), grant.read_only), ("/in", true));
        assert!("a:b:c:d".parse::<DirGrant>().is_err());
        assert!(":x".parse::<DirGrant>().is_err());
    }

    #[test]
    fn http_grants_match() {
        assert!(http_allowed(&["127.0.0.1:8080".into()], "127.0.0.1", 8080));
        assert!(!http_allowed(&["127.0.0.1:8080".into()], "127.0.0.1", 8081));
        assert!(http_allowed(&["example.com".into()], "EXAMPLE.com", 443));
        assert!(http_allowed(&["*".into()], "anything", 1));
        assert!(!http_allowed(&[], "example.com", 80));
    }

    #[test]
    fn net_grants_match() {
        let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(net_allowed(&["127.0.0.1:8080".into()], &addr));
        assert!(net_allowed(&["localhost:*".into()], &addr));
        assert!(net_allowed(&["*".into()], &addr));
        assert!(!net_allowed(&["127.0.0.1:8081".into()], &addr));
        assert!(!net_allowed(&["10.0.0.1:*".into()], &addr));
        assert!(!net_allowed(&[], &addr));
    }
}
