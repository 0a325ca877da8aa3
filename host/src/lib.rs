//! wtrace: run task functions as sandboxed WebAssembly components on a pool
//! of worker processes, traced with OpenTelemetry.
//!
//! Every process first runs a *tracing startup hook*, itself a component,
//! which configures where that process's spans go. A span bridge turns the
//! guests' `start-span`/`end-span` calls into real OpenTelemetry spans,
//! parented under the task's `<function> execute` span, itself a child of the
//! `<function> submit` span of whoever submitted it, across processes.
//!
//! The modules, from the bottom up (each uses only those above it):
//! - [`error`], [`outcome`], [`config`]: the error type, what a task came to,
//!   limits and grants;
//! - [`runtime`]: the wasmtime engine, compiled-component cache, WAVE and
//!   component introspection (`wtrace check`);
//! - [`telemetry`]: a process's tracer provider, its exporters, trace context;
//! - `sandbox`: what a guest may reach and for how long (WASI, deadlines,
//!   memory);
//! - [`capabilities`]: the host side of wtrace's WIT interfaces, the guest
//!   boundary: span bridge, provider, nested tasks, `wasi:otel`, `wasi:http`;
//! - [`exec`]: running a hook or a task in a store built from the two above;
//! - [`cluster`]: head, workers and drivers as processes;
//! - [`spans`]: reading span files back as trace trees.

#![deny(missing_docs)]

mod attrs;
pub mod capabilities;
pub mod cluster;
pub mod config;
pub mod error;
pub mod exec;
mod ids;
pub mod outcome;
pub mod private;
#[cfg(test)]
mod properties;
pub mod runtime;
mod sandbox;
pub mod spans;
mod sync;
pub mod telemetry;

pub use cluster::Client;
pub use config::{DirGrant, ExportPolicy, Grants, Limits};
pub use error::{Error, Result};
pub use exec::hook::{HookComponent, HookSpec};
pub use runtime::{Digest, Runtime};
pub use telemetry::Telemetry;
