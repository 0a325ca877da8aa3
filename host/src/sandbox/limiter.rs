//! Linear memory past `--max-memory` refused with an error naming the flag.

use wasmtime::ResourceLimiter;

use super::Stopped;
use crate::outcome::TaskErrorKind;

/// Refuses memory growth past the limit with an error naming it, and
/// records the peak.
pub(crate) struct MemoryLimiter {
    limit: u64,
    pub(crate) peak: u64,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: u64) -> Self {
        Self { limit, peak: 0 }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.limit {
            return Err(Stopped::error(
                TaskErrorKind::MemoryLimit,
                format!(
                    "memory limit exceeded: the guest asked for {} MiB of linear memory, the limit is {} MiB (raise it with --max-memory)",
                    desired >> 20,
                    self.limit >> 20
                ),
            ));
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}
