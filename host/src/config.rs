//! Limits and grants: what a task or hook may use.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Per-task resource limits. Every worker of a cluster uses the same limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest linear memory a task may grow to, in bytes (`--max-memory`).
    pub memory_bytes: u64,
    /// Wall-clock time a task may run (`--timeout`).
    pub timeout: Duration,
    /// Wall-clock time the tracing startup hook may run.
    pub hook_timeout: Duration,
    /// Fuel (roughly, wasm instructions) a task may consume; none when off (`--fuel`).
    pub fuel: Option<u64>,
    /// Spans a task may start; later ones are dropped and counted (`--max-spans`).
    pub spans_per_task: u32,
    /// Spans a task may have open at once; later ones are dropped and counted (`--max-open-spans`).
    pub open_spans: u32,
    /// Attributes per span; later ones are dropped by the SDK (`--max-span-attributes`).
    pub attributes_per_span: u32,
    /// Events per span; later ones are dropped by the SDK (`--max-span-events`).
    pub events_per_span: u32,
    /// Longest attribute string value, in bytes; longer ones are truncated (`--max-attribute-length`).
    pub attribute_value_length: u32,
    /// Largest task output (stdout and stderr each) kept, in bytes.
    pub output_bytes: u32,
    /// Tasks one task may submit (`--max-nested-tasks`).
    pub nested_tasks: u32,
    /// How deep tasks may submit tasks that submit tasks (`--max-nesting-depth`).
    pub nesting_depth: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 512 << 20,
            timeout: Duration::from_secs(300),
            hook_timeout: Duration::from_secs(30),
            fuel: None,
            spans_per_task: 10_000,
            open_spans: 1_000,
            attributes_per_span: 128,
            events_per_span: 128,
            attribute_value_length: 8 << 10,
            output_bytes: 1 << 20,
            nested_tasks: 1_000,
            nesting_depth: 16,
        }
    }
}

/// Where a tracing startup hook may send spans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportPolicy {
    /// Directories under which file exporters may write (`--allow-span-dir`).
    pub span_dirs: Vec<PathBuf>,
    /// Hosts OTLP exporters may reach (`--allow-otlp-host`); loopback is always allowed.
    pub otlp_hosts: Vec<String>,
}

impl Default for ExportPolicy {
    fn default() -> Self {
        Self {
            span_dirs: vec![PathBuf::from("/tmp/spans")],
            otlp_hosts: Vec::new(),
        }
    }
}
