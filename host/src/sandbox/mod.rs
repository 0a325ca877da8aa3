//! What a guest may reach, and for how long: deny-by-default WASI with
//! captured output, the wall-time [`Deadline`] (epoch ticks for a guest that
//! computes, deadline-aware WASI for one that waits), and the memory limiter.
//!
//! The sandbox knows nothing of wtrace's own interfaces: a store's data
//! offers it WASI and a deadline through [`Sandboxed`], and the
//! capabilities and `exec` build on it.

mod deadline;
mod fault;
mod limiter;
mod output;
mod wasi;

use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiView};

pub(crate) use deadline::{Deadline, Stopped, arm_deadline};
pub(crate) use fault::{HostPanic, contain, host_call};
pub(crate) use limiter::MemoryLimiter;
pub(crate) use output::{GuestStream, OutputPipe, OutputTap};

use crate::config::{Grants, net_allowed};

/// A store's data as the sandbox sees it: WASI, and the deadline its guest
/// runs under.
pub(crate) trait Sandboxed: WasiView + 'static {
    /// When the guest must stop.
    fn deadline(&self) -> &Deadline;

    /// The guest's CPU profiler, sampled at every epoch tick, if profiling:
    /// taken out while it samples the store, then put back.
    fn profiler(&mut self) -> &mut Option<wasmtime::GuestProfiler>;
}

/// Adds WASI 0.2 to `linker`, its blocking calls (poll, streams, the
/// filesystem calls that can wait) bound by the store's [`Deadline`].
pub(crate) fn add_to_linker<T: Sandboxed>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    wasi::add_deadline_aware_poll(linker)?;
    wasi::add_deadline_aware_streams(linker)?;
    wasi::add_deadline_aware_filesystem(linker)
}

/// A guest's captured standard output and error.
#[derive(Clone)]
pub(crate) struct CapturedOutput {
    pub(crate) stdout: OutputPipe,
    pub(crate) stderr: OutputPipe,
}

impl CapturedOutput {
    /// Up to `capacity` bytes of each stream.
    pub(crate) fn new(capacity: usize) -> Self {
        Self::tapped(capacity, None)
    }

    /// Up to `capacity` bytes of each stream, both also shown as written to
    /// `tap`.
    pub(crate) fn tapped(capacity: usize, tap: Option<Arc<dyn OutputTap>>) -> Self {
        Self {
            stdout: OutputPipe::new(capacity, GuestStream::Stdout, tap.clone()),
            stderr: OutputPipe::new(capacity, GuestStream::Stderr, tap),
        }
    }
}

/// A WASI context that grants nothing but clocks, random and the captured
/// output, plus `env` and whatever `grants` adds (directories, sockets).
pub(crate) fn wasi_ctx<'a>(
    output: &CapturedOutput,
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
    grants: Option<&Grants>,
) -> Result<WasiCtx, String> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(output.stdout.clone())
        .stderr(output.stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for (key, value) in env {
        builder.env(key, value);
    }
    if let Some(grants) = grants {
        for dir in &grants.dirs {
            let perms = if dir.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            builder
                .preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| {
                    format!(
                        "cannot open the granted directory {} (--allow-dir): {e}",
                        dir.host.display()
                    )
                })?;
        }
        if !grants.net.is_empty() {
            let patterns = Arc::new(grants.net.clone());
            builder
                .allow_tcp(true)
                .allow_udp(true)
                .allow_ip_name_lookup(true)
                .socket_addr_check(move |addr, _| {
                    // An ephemeral local bind comes with every connection.
                    let ephemeral = addr.ip().is_unspecified() && addr.port() == 0;
                    let allowed = ephemeral || net_allowed(&patterns, &addr);
                    Box::pin(async move { allowed })
                });
        }
    }
    Ok(builder.build())
}
