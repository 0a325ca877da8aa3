//! The wasmtime engine every process shares, its compiled-component cache,
//! WAVE (task arguments and results), and what a component imports and
//! exports (`wtrace check`).

pub mod check;
pub mod wave;

use std::collections::VecDeque;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::Limits;
use crate::error::{Error, Result, chain};
use crate::sync::lock;

/// How often the epoch advances: how often deadlines are checked.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The sha256 of a component's bytes: its name everywhere in a cluster.
///
/// Kept as the 32 bytes, so a submission copies it without allocating and
/// the wire carries it raw; written out (`sha256:<hex>`) only at the edges:
/// span attributes, messages, file and blob names. Hashing one for a map
/// takes its first 8 bytes, which are already uniformly spread.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// `sha256:<hex>` or the 64 hex digits alone, any case; `None` for
    /// anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        let mut bytes = [0; 32];
        hex::decode_to_slice(hex, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// The 64 lowercase hex digits, as in file and blob names.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl std::hash::Hash for Digest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut head = [0; 8];
        head.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_ne_bytes(head));
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Hex in readable formats (JSON, the cluster's key-value entries), the raw
/// 32 bytes in binary ones (postcard messages).
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.hex())
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Digest;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sha256 digest: 32 bytes or 64 hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Digest, E> {
                Digest::parse(text)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(text), &self))
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Digest, E> {
                bytes
                    .try_into()
                    .map(Digest)
                    .map_err(|_| E::invalid_length(bytes.len(), &self))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(Visit)
        } else {
            deserializer.deserialize_bytes(Visit)
        }
    }
}

/// A wasmtime engine configured for many short-lived instances, with a cache
/// of compiled components in memory and on disk (by digest).
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    limits: Limits,
    cache_dir: Option<PathBuf>,
    /// `cache_dir`'s directory for this engine's compiled code, named by a
    /// hash of the engine's settings: made at the first load, as hashing
    /// them costs more than reading the compiled component's checksum.
    engine_dir: OnceLock<PathBuf>,
    /// Recently loaded components, at most [`COMPILED_KEPT`], oldest first.
    compiled: Mutex<VecDeque<(Digest, Component)>>,
}

/// Compiled components a runtime keeps in memory for the next load; older
/// ones are loaded again from the disk cache (in microseconds).
const COMPILED_KEPT: usize = 16;

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.inner.limits)
            .field("cache_dir", &self.inner.cache_dir)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// An engine enforcing `limits`, caching compiled components under
    /// `cache_dir` (none: compile every time a process loads a component).
    pub fn new(limits: Limits, cache_dir: Option<PathBuf>) -> Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(limits.fuel.is_some());
        config.wasm_backtrace_max_frames(std::num::NonZeroUsize::new(64));

        // Fresh instances per task are cheap with a pool whose slots keep
        // their first MiB resident and reset only the pages a task dirtied.
        // Calls are synchronous, so the pool needs no fiber stacks: the
        // default 1000 cost every process about 1000 `mprotect`s at start
        // and as many `munmap`s at exit, most of `wtrace check`'s time.
        let mut pool = PoolingAllocationConfig::new();
        pool.total_stacks(0)
            .total_component_instances(64)
            .total_core_instances(512)
            .total_memories(64)
            .total_tables(128)
            .max_memory_size(usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX))
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(1 << 20)
            .pagemap_scan(Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

        let engine = Engine::new(&config)
            .map_err(|e| Error::Config(format!("cannot configure wasmtime: {}", chain(&e))))?;
        start_epoch_ticker(&engine);

        if let Some(dir) = &cache_dir {
            // wtrace runs what it loads from there: only the user may write it.
            crate::private::ensure_private_dir(dir, 0o700, "the compiled-component cache")
                .map_err(|e| Error::Config(format!("{e} (choose another with --cache-dir)")))?;
        }
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                limits,
                cache_dir,
                engine_dir: OnceLock::new(),
                compiled: Mutex::new(VecDeque::new()),
            }),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The limits every task and hook of this runtime runs under.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Compiles `bytes` (named `name` in errors), or loads the compiled form
    /// from the cache. Returns a clear error for anything not a component.
    pub fn load(&self, name: &Path, bytes: &[u8]) -> Result<(Digest, Component)> {
        self.load_digested(name, bytes, Digest::of(bytes))
    }

    /// [`Runtime::load`] for bytes whose `digest` the caller made already:
    /// a digest of a hook's 100 KB is a tenth of a millisecond per process
    /// start.
    pub fn load_digested(
        &self,
        name: &Path,
        bytes: &[u8],
        digest: Digest,
    ) -> Result<(Digest, Component)> {
        if let Some((_, component)) = lock(&self.inner.compiled)
            .iter()
            .find(|(d, _)| *d == digest)
        {
            return Ok((digest, component.clone()));
        }
        check_is_component(name, bytes)?;
        let component = match &self.inner.cache_dir {
            Some(dir) => self.load_cached(self.engine_dir(dir), &digest, name, bytes)?,
            None => self.compile(name, bytes)?,
        };
        let mut kept = lock(&self.inner.compiled);
        if kept.len() == COMPILED_KEPT {
            kept.pop_front();
        }
        kept.push_back((digest, component.clone()));
        drop(kept);
        Ok((digest, component))
    }

    fn compile(&self, name: &Path, bytes: &[u8]) -> Result<Component> {
        Component::new(&self.inner.engine, bytes).map_err(|e| {
            let detail = chain(&e);
            // The pool's slots are sized by --max-memory: a component whose
            // initial memory is larger cannot run here, valid or not.
            let cause = if detail.contains("pooling allocator") && detail.contains("memory") {
                format!(
                    "its initial memory is larger than --max-memory ({} bytes) allows; raise --max-memory ({detail})",
                    self.inner.limits.memory_bytes
                )
            } else {
                format!("not a valid WebAssembly component: {detail}")
            };
            Error::Component {
                path: name.to_owned(),
                cause,
            }
        })
    }

    /// `<cache_dir>/<engine hash>`, named at the first load.
    fn engine_dir(&self, cache_dir: &Path) -> &Path {
        self.inner
            .engine_dir
            .get_or_init(|| cache_dir.join(engine_hash(&self.inner.engine)))
    }

    /// Loads from `<engine_dir>/<digest>.cwasm`, compiling and storing
    /// it first if absent. A lock file keeps processes from compiling the same
    /// component at once.
    fn load_cached(
        &self,
        engine_dir: &Path,
        digest: &Digest,
        name: &Path,
        bytes: &[u8],
    ) -> Result<Component> {
        let path = engine_dir.join(format!("{}.cwasm", digest.hex()));
        if let Some(component) = self.deserialize(&path) {
            return Ok(component);
        }
        let cache_error = |e| Error::io(format!("component cache {}", engine_dir.display()), e);
        crate::private::ensure_private_dir(engine_dir, 0o700, "the compiled-component cache")
            .map_err(Error::Config)?;
        let lock = crate::private::open_append(&engine_dir.join(format!("{}.lock", digest.hex())))
            .map_err(cache_error)?;
        lock.lock().map_err(cache_error)?;
        if let Some(component) = self.deserialize(&path) {
            return Ok(component);
        }
        let component = self.compile(name, bytes)?;
        if let Ok(serialized) = component.serialize() {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            // The checksum first: a reader that finds it before the new
            // component (or a torn one) sees them disagree and compiles.
            let write = |path: &Path, bytes: &[u8]| {
                let _ = fs::remove_file(&tmp);
                let written = crate::private::create_new(&tmp, 0o600)
                    .and_then(|mut f| {
                        f.write_all(bytes)?;
                        f.sync_data()
                    })
                    .and_then(|()| fs::rename(&tmp, path));
                if written.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                written
            };
            let sum = crc32fast::hash(&serialized).to_le_bytes();
            let _ =
                write(&path.with_extension("crc32"), &sum).and_then(|()| write(&path, &serialized));
        }
        Ok(component)
    }

    /// Loads a cached compiled component: the file holds exactly what
    /// `Component::serialize` wrote, and a file beside it (`.crc32`) their
    /// CRC-32 (little endian). One that does not match (torn, corrupted) is
    /// removed, not run. A checksum, not a digest: only this user can write
    /// the directory (checked), and every process loads its hook and
    /// components from here at start, where a SHA-256 of each cost more
    /// than the load. The file is then mapped, not read into memory: its
    /// pages are the page cache's, shared by every process that loads it,
    /// where a copy cost each process page faults and zeroed pages for
    /// twice its size.
    fn deserialize(&self, path: &Path) -> Option<Component> {
        let sum = fs::read(path.with_extension("crc32")).ok()?;
        if checksum(path).ok()?.to_le_bytes()[..] != sum[..] {
            let _ = fs::remove_file(path);
            return None;
        }
        // SAFETY: the file is what this engine's `Component::serialize`
        // wrote into a directory only this user can write (checked), its
        // checksum checked just now; wasmtime checks the engine header too.
        // It is never changed in place (a new one is renamed over it), so
        // the mapping stays what was checked.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize_file(&self.inner.engine, path) };
        match loaded {
            Ok(component) => Some(component),
            Err(_) => {
                let _ = fs::remove_file(path);
                None
            }
        }
    }
}

/// The CRC-32 of the file at `path`, read through one small buffer.
fn checksum(path: &Path) -> std::io::Result<u32> {
    use std::io::Read as _;
    let mut file = fs::File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = [0; 64 * 1024];
    loop {
        match file.read(&mut buffer)? {
            0 => return Ok(hasher.finalize()),
            n => hasher.update(&buffer[..n]),
        }
    }
}

/// The default cache directory: `$WTRACE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/wtrace`, else `~/.cache/wtrace`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WTRACE_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("wtrace"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("wtrace"))
}

fn engine_hash(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    // The entries' own format (a CRC-32, then the bytes): a change of it
    // is a new directory, so wtraces of either format never read the
    // other's entries as torn ones and remove them.
    "crc32".hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Rejects what is not a component with a message that says what it is.
fn check_is_component(name: &Path, bytes: &[u8]) -> Result<()> {
    let error = |cause: &str| Error::Component {
        path: name.to_owned(),
        cause: cause.to_owned(),
    };
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(error(
            "not a WebAssembly file (it does not start with the \\0asm header); build a \
             component, e.g. `cargo build --target wasm32-wasip2`",
        ));
    }
    // After the magic: version 1, layer 0 is a core module; layer 1 a component.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(error(
            "is a core WebAssembly module, not a component; wrap it with \
             `wasm-tools component new` or build for wasm32-wasip2",
        ));
    }
    Ok(())
}

/// Advances the engine's epoch every [`EPOCH_TICK`] for the life of the process.
fn start_epoch_ticker(engine: &Engine) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("wtrace-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn epoch thread");
}

#[cfg(test)]
mod tests {
    use super::Digest;

    #[test]
    fn a_digest_is_sha256_written_as_hex_at_the_edges() {
        let digest = Digest::of(b"abc");
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(digest.hex(), hex);
        assert_eq!(digest.to_string(), format!("sha256:{hex}"));
        assert_eq!(digest.short(), &hex[..12]);
        assert_eq!(Digest::parse(&format!("sha256:{hex}")), Some(digest));
        assert_eq!(Digest::parse(&hex.to_uppercase()), Some(digest));
        for bad in [
            "",
            "sha256:",
            &hex[..63],
            &format!("{hex}0"),
            &hex.replace('b', "g"),
        ] {
            assert_eq!(Digest::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_digest_is_hex_in_json_and_raw_bytes_on_the_wire() {
        let digest = Digest::of(b"abc");
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{}\"", digest.hex()));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
        assert!(serde_json::from_str::<Digest>("\"sha256:12\"").is_err());

        let wire = postcard::to_allocvec(&digest).unwrap();
        assert_eq!(wire.len(), 33, "a length byte and the 32 bytes");
        assert_eq!(postcard::from_bytes::<Digest>(&wire).unwrap(), digest);
        assert!(postcard::from_bytes::<Digest>(&[3, 1, 2, 3]).is_err());
    }
}
