//! What wtrace offers guests beyond WASI, one module per capability, each in
//! the shape of wasmtime's `wasi-config`: its state, a view borrowing that
//! state out of the store, `impl Host` for the view, and `add_to_linker`.
//!
//! - [`tracer`]: the span bridge (`wtrace:tracing/tracer`), for tasks and hooks;
//! - [`provider`]: what a tracing startup hook configures (`wtrace:tracing/provider`);
//! - [`tasks`]: tasks that submit tasks (`wtrace:tracing/tasks`);
//! - [`wasi_otel`]: `wasi:otel/tracing` on the same bridge;
//! - [`http`]: outgoing `wasi:http`, refused unless granted, traced when asked.
//!
//! Everything a guest hands over through them is untrusted: an `Err` from a
//! host call is a trap for protocol misuse, a WIT `result` carries expected
//! failures, and no value a guest sends may panic the host.

pub(crate) mod bindings;
pub mod http;
pub mod logs;
#[cfg(test)]
mod properties;
pub mod provider;
mod span_encoding;
pub mod tasks;
pub mod tracer;
pub(crate) mod wasi_otel;
