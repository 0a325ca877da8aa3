//! Local files on a shared machine: directories others could write to or
//! that belong to someone else are refused, links are not followed, the
//! token can come from a private file, and a cached compiled component that
//! does not match its digest is compiled again rather than run.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use wtrace_tests::{Cluster, Wtrace, guests, span_dir};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_session_directory_others_can_write_or_own_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o777);
    let run = Wtrace::new(["start", "--head", "-n1"])
        .env("WTRACE_SESSION_DIR", dir.path())
        .run_detached();
    let stderr = run.failure();
    assert!(
        stderr.contains("the session directory") && stderr.contains("others can write to it"),
        "{stderr}"
    );

    chmod(dir.path(), 0o700);
    // SAFETY (test): chown(2) on a path of ours.
    #[allow(unsafe_code)]
    let owned = unsafe {
        let path = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        libc::chown(path.as_ptr(), 65534, 65534)
    };
    if owned == 0 {
        let run = Wtrace::new(["status"])
            .env("WTRACE_SESSION_DIR", dir.path())
            .run();
        let stderr = run.failure();
        assert!(stderr.contains("belongs to user 65534"), "{stderr}");
    }
}

#[test]
fn span_directories_others_can_write_and_span_files_that_are_links_are_refused() {
    let dir = span_dir();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    // A traced one-task run whose hook writes its spans to `dir`.
    let run_into = |dir: &Path| {
        Wtrace::new([
            "run",
            "-n1",
            &format!("--tracing-startup-hook={}", guests::FILE_HOOK),
            &format!("--allow-span-dir={}", dir.display()),
            guests::HELLO,
            "my-function()",
        ])
        .env("WTRACE_SPAN_DIR", dir)
        .run()
    };
    let run = run_into(&shared);
    let stderr = run.failure();
    assert!(stderr.contains("others can write to it"), "{stderr}");

    // The hook writes `<dir>/<pid>.json`; the driver's pid is not known in
    // advance, so every pid's file is a link elsewhere.
    let links = dir.path().join("links");
    std::fs::create_dir(&links).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    let last_pid: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for pid in last_pid + 1..last_pid + 2000 {
        std::os::unix::fs::symlink(&victim, links.join(format!("{pid}.json"))).unwrap();
    }
    let run = run_into(&links);
    let stderr = run.failure();
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
}

#[test]
fn the_token_can_come_from_a_private_file_and_not_from_one_others_read() {
    let mut cluster = Cluster::start(&["--num-workers=1"], &[]);
    let session = cluster.session();
    let address = session["address"].as_str().unwrap().to_owned();
    let file = cluster.session.path().join("token");
    std::fs::write(&file, format!("{}\n", session["token"].as_str().unwrap())).unwrap();
    chmod(&file, 0o600);
    let run = Wtrace::new([
        "submit",
        "--address",
        &address,
        "--token-file",
        file.to_str().unwrap(),
        guests::HELLO,
        "my-function()",
    ])
    .env("WTRACE_SESSION_DIR", "/nonexistent-session")
    .run();
    assert_eq!(run.success(), "1\n");

    chmod(&file, 0o644);
    let run = Wtrace::new([
        "status",
        "--address",
        &address,
        "--token-file",
        file.to_str().unwrap(),
    ])
    .env("WTRACE_SESSION_DIR", "/nonexistent-session")
    .run();
    assert!(
        run.failure().contains("can be read by others"),
        "{}",
        run.stderr
    );
    cluster.stop();
}

#[test]
fn a_cache_others_can_write_is_refused_and_a_corrupt_entry_is_compiled_again() {
    let cache = tempfile::tempdir().unwrap();
    let cache_arg = format!("--cache-dir={}", cache.path().display());
    chmod(cache.path(), 0o777);
    let run = Wtrace::new(["run", "-n1", &cache_arg, guests::HELLO, "my-function()"]).run();
    let stderr = run.failure();
    assert!(
        stderr.contains("compiled-component cache") && stderr.contains("--cache-dir"),
        "{stderr}"
    );

    chmod(cache.path(), 0o700);
    let run = Wtrace::new(["run", "-n1", &cache_arg, guests::HELLO, "my-function()"]).run();
    assert_eq!(run.success(), "1\n");
    let entry = wtrace_tests::files_under(cache.path())
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("a cached component");
    // Flip bytes in the middle of the compiled code.
    let mut bytes = std::fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 64] {
        *byte ^= 0xff;
    }
    std::fs::write(&entry, &bytes).unwrap();
    let run = Wtrace::new(["run", "-n1", &cache_arg, guests::HELLO, "my-function()"]).run();
    assert_eq!(run.success(), "1\n", "compiled again, not run corrupt");
    assert_ne!(
        std::fs::read(&entry).unwrap(),
        bytes,
        "the entry was rewritten"
    );

    // Without its checksum beside it (a write cut short), the same.
    let sum = entry.with_extension("crc32");
    assert_eq!(std::fs::read(&sum).unwrap().len(), 4, "a CRC-32 beside it");
    std::fs::remove_file(&sum).unwrap();
    std::fs::write(&entry, &bytes).unwrap();
    let run = Wtrace::new(["run", "-n1", &cache_arg, guests::HELLO, "my-function()"]).run();
    assert_eq!(run.success(), "1\n", "compiled again, not run unchecked");
    assert_ne!(std::fs::read(&entry).unwrap(), bytes, "rewritten");
    assert!(sum.exists(), "with its checksum");
}
