//! Random identifiers: tokens, job, node and task ids.

use std::io::Read as _;

/// `bytes` random bytes as lowercase hex, from the OS.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !filled {
        // No /dev/urandom: mix the clock, pid and a counter. Ids stay unique,
        // but tokens made this way are guessable; say so.
        use std::hash::{BuildHasher as _, Hasher as _};
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        eprintln!(
            "wtrace: warning: /dev/urandom is unavailable; ids are not cryptographically random"
        );
        for chunk in buf.chunks_mut(8) {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            hasher.write_u32(std::process::id());
            hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let bytes = hasher.finish().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
    hex::encode(buf)
}

/// This process's id, asked of the OS once (`getpid` is a system call, and
/// every task and span records the pid).
pub fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// A cluster token: 16 bytes from the OS's secure random source, as hex. No
/// fallback: without that source, a token could be guessed, so the caller
/// refuses to start.
pub fn secure_token() -> Result<String, crate::Error> {
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| {
            crate::Error::Config(format!(
                "cannot make a cluster token: the OS's secure random source (/dev/urandom) \
                 failed ({e}); wtrace will not start a cluster with a guessable token"
            ))
        })?;
    Ok(hex::encode(buf))
}
