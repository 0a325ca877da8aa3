//! The session file: how `wtrace submit`, `status` and `stop` find the
//! running cluster on this machine, like Ray's `/tmp/ray/session_latest`.
//!
//! It lives in `$WTRACE_SESSION_DIR`, else `/tmp/wtrace-<uid>`, a directory
//! only its owner may read: it holds the cluster's token.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::private;

/// A running head, as recorded by `wtrace start --head`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Where the cluster is: the head's HOST:PORT, or NATS servers.
    pub address: String,
    /// The cluster's secret.
    pub token: String,
    /// The head process.
    pub pid: u32,
    /// The job id of the session.
    pub job_id: String,
    /// The tracing startup hook as named, if any.
    pub hook: Option<String>,
    /// The head's log file.
    pub log: PathBuf,
}

impl Session {
    /// Where the cluster is.
    pub fn endpoint(&self) -> Result<super::Endpoint> {
        self.address.parse()
    }
}

/// A node of workers added with `wtrace start --address`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's id.
    pub node_id: String,
    /// The node process (it owns the node's workers).
    pub pid: u32,
    /// The cluster it serves.
    pub address: String,
    /// Its log file.
    pub log: PathBuf,
}

/// The session directory: `$WTRACE_SESSION_DIR`, else `/tmp/wtrace-<uid>`.
pub fn session_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WTRACE_SESSION_DIR") {
        return PathBuf::from(dir);
    }
    std::env::temp_dir().join(format!("wtrace-{}", private::uid()))
}

/// Creates the session directory (mode 0700) if needed, and refuses one
/// that is not the user's own or that others can write: it holds the
/// cluster's token.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    private::ensure_private_dir(dir, 0o700, "the session directory").map_err(Error::Config)?;
    private::ensure_private_dir(&dir.join("nodes"), 0o700, "the session directory")
        .map_err(Error::Config)
}

/// Writes `value` as JSON to `path`, readable only by the user: through a
/// temporary file created anew (never an existing file or link), renamed
/// into place.
fn write_private(path: &Path, value: &impl Serialize) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(value).expect("session records serialize");
    let _ = std::fs::remove_file(&tmp);
    private::create_new(&tmp, 0o600)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &text))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Cluster(format!(
                "{} is damaged ({e}); delete it, or stop the cluster with `wtrace stop`",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
}

impl Session {
    /// The session file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("session.json")
    }

    /// Records this session in `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        ensure_dir(dir)?;
        write_private(&Self::path(dir), self)
    }

    /// The session recorded in `dir`, if any. A session directory others
    /// could have written to is refused rather than believed.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        if dir.exists() {
            private::check_private_dir(dir, "the session directory").map_err(Error::Config)?;
        }
        read_json(&Self::path(dir))
    }

    /// Forgets the session.
    pub fn remove(dir: &Path) {
        let _ = std::fs::remove_file(Self::path(dir));
    }
}

impl NodeRecord {
    fn path(dir: &Path, node_id: &str) -> PathBuf {
        dir.join("nodes").join(format!("{node_id}.json"))
    }

    /// Records this node in `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        ensure_dir(dir)?;
        write_private(&Self::path(dir, &self.node_id), self)
    }

    /// The node `node_id`, if recorded.
    pub fn read(dir: &Path, node_id: &str) -> Result<Option<Self>> {
        read_json(&Self::path(dir, node_id))
    }

    /// Every node recorded in `dir`.
    pub fn all(dir: &Path) -> Vec<Self> {
        let Ok(entries) = std::fs::read_dir(dir.join("nodes")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| read_json(&e.path()).ok().flatten())
            .collect()
    }

    /// Forgets the node.
    pub fn remove(dir: &Path, node_id: &str) {
        let _ = std::fs::remove_file(Self::path(dir, node_id));
    }
}

/// Whether process `pid` is alive (and not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
