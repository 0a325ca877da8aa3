//! Running guests: a tracing startup hook into a process's [`Telemetry`],
//! a task in a fresh instance inside its `execute` span. Each run builds a
//! store from the sandbox and the capabilities; what comes out is an
//! [`outcome`](crate::outcome).
//!
//! [`Telemetry`]: crate::Telemetry

pub mod actor;
pub mod hook;
mod store;
pub mod task;
