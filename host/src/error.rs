//! The error type of the wtrace library.

use std::path::PathBuf;

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in wtrace, each with a message that says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The tracing startup hook could not be loaded, did not match the hook
    /// world, trapped, or returned an error.
    #[error("tracing startup hook {hook}: {cause}")]
    Hook {
        /// The hook as the user named it (`hook.wasm:setup-tracing`).
        hook: String,
        /// What went wrong.
        cause: String,
    },

    /// A file could not be read as a WebAssembly component.
    #[error("{}: {cause}", path.display())]
    Component {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        cause: String,
    },

    /// A task invocation (`name(args)` in WAVE) could not be parsed or does not
    /// fit the component's export.
    #[error("invalid invocation {invocation:?}: {cause}")]
    Invocation {
        /// The invocation as given.
        invocation: String,
        /// What is wrong with it.
        cause: String,
    },

    /// A task failed: it trapped, returned an error, or its worker died.
    #[error(transparent)]
    Task(#[from] crate::outcome::TaskError),

    /// The cluster could not be reached or misbehaved.
    #[error("{0}")]
    Cluster(String),

    /// A setting is invalid.
    #[error("{0}")]
    Config(String),

    /// A detached job's results cannot be fetched: the cluster does not
    /// know it, or no longer does.
    #[error("no job {job} on this cluster: {cause}")]
    NoSuchJob {
        /// The job id as given.
        job: String,
        /// Why it is not there, and what to check.
        cause: String,
    },

    /// An I/O error, with what was being done. Its message includes the
    /// I/O error, which is therefore not also given as its `source` (an error
    /// report would print it twice).
    #[error("{context}: {cause}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        cause: std::io::Error,
    },
}

impl Error {
    /// An I/O error with context.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            cause: source,
        }
    }
}

/// Formats a wasmtime error with its whole cause chain on one line.
pub(crate) fn chain(error: &wasmtime::Error) -> String {
    let mut out = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}
