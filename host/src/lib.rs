//! wtrace: run task functions as sandboxed WebAssembly components on a pool
//! of worker processes, traced with OpenTelemetry.
//!
//! Every process first runs a *tracing startup hook*, itself a component,
//! which configures where that process's spans go. A span bridge turns the
//! guests' `start-span`/`end-span` calls into real OpenTelemetry spans,
//! parented under the task's `<function> execute` span, itself a child of the
//! `<function> submit` span of whoever submitted it, across processes.
//!
//! The pieces, from the bottom up:
//! - [`engine::Runtime`]: the wasmtime engine and compiled-component cache;
//! - [`bridge`] and [`provider`]: the host side of the WIT interfaces;
//! - [`hook`]: loading and running a tracing startup hook into a [`Telemetry`];
//! - [`task`]: running one task in a fresh instance inside its execute span;
//! - [`cluster`]: head, workers and drivers as processes;
//! - [`spans`]: reading span files back as trace trees.

#![deny(missing_docs)]

mod attrs;
mod bindings;
pub mod bridge;
pub mod check;
pub mod cluster;
pub mod config;
pub mod diagnostics;
pub mod engine;
pub mod error;
pub mod export;
pub mod hook;
pub mod http_client;
mod ids;
pub mod nested;
#[cfg(test)]
mod properties;
pub mod provider;
mod sandbox;
pub mod spans;
pub mod task;
pub mod telemetry;
mod wasi_otel;
pub mod wave;

pub use cluster::Client;
pub use config::{DirGrant, ExportPolicy, Grants, Limits};
pub use engine::{Digest, Runtime};
pub use error::{Error, Result};
pub use hook::{HookComponent, HookSpec};
pub use telemetry::Telemetry;
