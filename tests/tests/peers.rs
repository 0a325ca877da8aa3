//! Anything that reaches the head before it proves it holds the token gets
//! almost nothing: a few seconds, a few KiB, a bounded number of slots, and
//! at most a refusal that says why. A rejected worker or driver says why and
//! exits non-zero.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use wtrace::cluster::transport::tcp::{MAGIC, MAX_UNAUTHENTICATED, PROTOCOL_VERSION};
use wtrace_tests::{Cluster, Wtrace, guests};

fn head(cluster: &Cluster) -> (SocketAddr, u32) {
    let session = cluster.session();
    (
        session["address"].as_str().unwrap().parse().unwrap(),
        session["pid"].as_u64().unwrap() as u32,
    )
}

/// How long until the head closes `stream` (reads return end of stream or
/// an error); none if it is still open after `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while started.elapsed() < within {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn vm_size_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn strangers_get_a_few_seconds_a_few_kib_and_a_bounded_number_of_slots() {
    let mut cluster = Cluster::start(&["--num-workers=1"], &[]);
    let (address, head_pid) = head(&cluster);
    let (rss, vm) = (rss_kib(head_pid), vm_size_kib(head_pid));

    // Announcing a huge frame is refused at once, before any of it is held.
    let mut huge: Vec<TcpStream> = (0..32)
        .map(|_| {
            let mut s = TcpStream::connect(address).unwrap();
            s.write_all(&(200u32 << 20).to_be_bytes()).unwrap();
            s.write_all(&[7u8; 1024]).unwrap();
            s
        })
        .collect();
    for stream in &mut huge {
        let closed = closed_within(stream, Duration::from_secs(2));
        assert!(closed.is_some(), "the head waited for a 200 MiB hello");
    }
    // Something that is not wtrace (an HTTP request) is closed too.
    let mut http = TcpStream::connect(address).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(closed_within(&mut http, Duration::from_secs(2)).is_some());

    // A silent connection gets a few seconds.
    let mut silent = TcpStream::connect(address).unwrap();
    let waited =
        closed_within(&mut silent, Duration::from_secs(15)).expect("a silent stranger is dropped");
    assert!(waited < Duration::from_secs(8), "after {waited:?}");

    // Past the cap of strangers at once, new ones are closed as they come.
    let mut idle: Vec<TcpStream> = (0..MAX_UNAUTHENTICATED + 40)
        .map(|_| TcpStream::connect(address).unwrap())
        .collect();
    let refused = idle
        .iter_mut()
        .rev()
        .take(60)
        .filter_map(|s| closed_within(s, Duration::from_millis(300)))
        .count();
    assert!(
        refused >= 40,
        "only {refused} of the strangers past the cap were closed"
    );
    drop(idle);

    // The head held almost nothing for any of it, and serves its users.
    assert!(
        rss_kib(head_pid) < rss + 64 * 1024,
        "head RSS grew from {rss} KiB to {} KiB",
        rss_kib(head_pid)
    );
    assert!(
        vm_size_kib(head_pid) < vm + 1024 * 1024,
        "head reserved {} KiB more",
        vm_size_kib(head_pid) - vm
    );
    let run = cluster
        .command(&["submit", guests::HELLO, "my-function()"])
        .run();
    assert_eq!(run.success(), "1\n");
    cluster.stop();
}

#[test]
fn a_peer_of_another_protocol_version_is_told_why() {
    let mut cluster = Cluster::start(&["--num-workers=1"], &[]);
    let (address, _) = head(&cluster);
    let mut stream = TcpStream::connect(address).unwrap();
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&(PROTOCOL_VERSION - 1).to_le_bytes());
    hello.extend_from_slice(b"whatever an old version sent");
    stream
        .write_all(&(hello.len() as u32).to_be_bytes())
        .unwrap();
    stream.write_all(&hello).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains(&format!(
            "protocol version {} is not this head's ({PROTOCOL_VERSION})",
            PROTOCOL_VERSION - 1
        )),
        "{text:?}"
    );
    cluster.stop();
}

#[test]
fn a_worker_or_driver_with_the_wrong_token_says_why_and_exits_non_zero() {
    let mut cluster = Cluster::start(&["--num-workers=1"], &[]);
    let (address, _) = head(&cluster);
    let address = address.to_string();

    let worker = Wtrace::new([
        "worker",
        "--address",
        &address,
        "--worker-id",
        "intruder",
        "--node-id",
        "n-x",
    ])
    .env("WTRACE_TOKEN", "not-the-token")
    .run();
    let stderr = worker.failure();
    assert!(stderr.contains("wrong cluster token"), "{stderr}");

    let status = cluster
        .command(&["status", "--address", &address, "--token", "not-the-token"])
        .run();
    assert!(
        status.failure().contains("wrong cluster token"),
        "{}",
        status.stderr
    );
    // The intruder never joined.
    let workers = cluster.status()["workers"].as_array().unwrap().len();
    assert_eq!(workers, 1);
    cluster.stop();
}
