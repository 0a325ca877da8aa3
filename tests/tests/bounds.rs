//! What peers and guests can grow in the cluster stays bounded: the head's
//! component store keeps to its quota, a worker holds a bounded set of
//! components, and neither forgets what a queued or running task needs.

use wtrace_tests::{Cluster, guests};

/// `component` with a custom section appended: the same program, another
/// digest.
fn variant(component: &[u8], tag: usize) -> Vec<u8> {
    let name = b"wtrace-test-variant";
    let payload = tag.to_le_bytes();
    let size = 1 + name.len() + payload.len();
    let mut bytes = component.to_vec();
    bytes.push(0); // custom section
    bytes.push(size as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&payload);
    bytes
}

#[test]
fn many_components_stay_within_the_store_quota_and_every_task_runs() {
    let hello = std::fs::read(guests::HELLO).unwrap();
    assert!(hello.len() < 256 << 10, "a small component");
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(&["--num-workers=1", "--component-store=1M"], &[]);
    // More components than a worker holds (32), more bytes than the store.
    const VARIANTS: usize = 40;
    for tag in 0..VARIANTS {
        let path = dir.path().join(format!("hello-{tag}.wasm"));
        std::fs::write(&path, variant(&hello, tag)).unwrap();
        let run = cluster
            .command(&["submit", path.to_str().unwrap(), "my-function()"])
            .run();
        assert_eq!(run.success(), "1\n", "variant {tag}");
    }
    // Early ones again: evicted at the head and forgotten by the worker,
    // they are uploaded and sent again.
    for tag in [0, 1, 2] {
        let path = dir.path().join(format!("hello-{tag}.wasm"));
        let run = cluster
            .command(&["submit", path.to_str().unwrap(), "my-function()"])
            .run();
        assert_eq!(run.success(), "1\n", "variant {tag} again");
    }
    let status = cluster.status();
    let bytes = status["component_bytes"].as_u64().unwrap();
    assert!(
        bytes <= 1 << 20,
        "{bytes} bytes stored, over the 1 MiB quota"
    );
    assert!(status["components"].as_u64().unwrap() < VARIANTS as u64);
    cluster.stop();
}

#[test]
fn a_component_larger_than_the_store_is_refused_with_the_reason() {
    let mut cluster = Cluster::start(&["--num-workers=1", "--component-store=10K"], &[]);
    let run = cluster
        .command(&["submit", guests::HELLO, "my-function()"])
        .run();
    let stderr = run.failure();
    assert!(
        stderr.contains("does not fit the cluster's component store")
            && stderr.contains("--component-store"),
        "{stderr}"
    );
    cluster.stop();
}
