//! What a task came to: its result in WAVE or the reason it failed, and the
//! output it wrote. A leaf: the sandbox, the capabilities and the cluster
//! all speak of outcomes, and it depends on none of them.

use serde::{Deserialize, Serialize};

/// Why a task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskErrorKind {
    /// The component has no such export, or it is not a function.
    UnknownExport,
    /// The arguments do not parse or do not fit the export's parameters.
    InvalidArguments,
    /// The component could not be loaded or instantiated.
    Instantiate,
    /// The guest trapped (or a host call it made failed).
    Trap,
    /// The guest ran past its time limit.
    Timeout,
    /// The guest ran out of fuel.
    OutOfFuel,
    /// The worker stopped it (the cluster is shutting down).
    Interrupted,
    /// The guest asked for more memory than allowed.
    MemoryLimit,
    /// The export returned `err(..)`.
    Returned,
    /// The result was larger than allowed.
    ResultTooLarge,
    /// The task submitted too many nested tasks, or nested too deep.
    NestingLimit,
    /// The worker running it died, on every attempt.
    WorkerDied,
    /// The cluster could not run it.
    Cluster,
    /// The host itself failed while serving the task (a wtrace bug, contained
    /// to this task).
    HostPanic,
    /// The call went to an actor that an earlier call left dead.
    ActorDead,
    /// Making the actor would pass `--max-actors` or
    /// `--max-actors-per-worker`.
    ActorLimit,
}

impl TaskErrorKind {
    /// The `exception.type` recorded on the execute span.
    pub fn exception_type(self) -> &'static str {
        match self {
            Self::UnknownExport => "wtrace.UnknownExport",
            Self::InvalidArguments => "wtrace.InvalidArguments",
            Self::Instantiate => "wtrace.InstantiationError",
            Self::Trap => "wasm.Trap",
            Self::Timeout => "wtrace.Timeout",
            Self::OutOfFuel => "wtrace.OutOfFuel",
            Self::Interrupted => "wtrace.Interrupted",
            Self::MemoryLimit => "wtrace.MemoryLimit",
            Self::Returned => "wtrace.GuestError",
            Self::ResultTooLarge => "wtrace.ResultTooLarge",
            Self::NestingLimit => "wtrace.NestingLimit",
            Self::WorkerDied => "wtrace.WorkerDied",
            Self::Cluster => "wtrace.ClusterError",
            Self::HostPanic => "wtrace.HostPanic",
            Self::ActorDead => "wtrace.ActorDead",
            Self::ActorLimit => "wtrace.ActorLimit",
        }
    }
}

/// A task's failure, as shown to whoever submitted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{function}: {message}")]
pub struct TaskError {
    /// What kind of failure.
    pub kind: TaskErrorKind,
    /// The export that was called.
    pub function: String,
    /// What happened, and what to do about it.
    pub message: String,
    /// The guest's wasm backtrace, when it trapped.
    pub backtrace: Option<String>,
}

impl TaskError {
    /// A failure of `function`.
    pub fn new(kind: TaskErrorKind, function: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            function: function.to_owned(),
            message: message.into(),
            backtrace: None,
        }
    }
}

/// A task's result (WAVE) and its captured output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskOutput {
    /// The results in WAVE, or why there are none.
    pub result: std::result::Result<String, TaskError>,
    /// What the guest wrote to stdout.
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    /// What the guest wrote to stderr.
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    /// Output of the nested tasks it waited for, in the order it got them.
    pub nested: Vec<OutputChunk>,
}

impl TaskOutput {
    /// About how many bytes it takes on the wire.
    pub fn wire_size(&self) -> usize {
        let result = match &self.result {
            Ok(text) => text.len(),
            Err(error) => {
                error.message.len()
                    + error.function.len()
                    + error.backtrace.as_ref().map_or(0, String::len)
            }
        };
        let nested: usize = self
            .nested
            .iter()
            .map(|c| c.stdout.len() + c.stderr.len() + c.function.len() + 16)
            .sum();
        result + self.stdout.len() + self.stderr.len() + nested + 32
    }

    /// The output of a task that failed before it ran.
    pub fn failed(error: TaskError) -> Self {
        Self::answered(Err(error))
    }

    /// An answer given without running anything: no output.
    pub fn answered(result: Result<String, TaskError>) -> Self {
        Self {
            result,
            stdout: Vec::new(),
            stderr: Vec::new(),
            nested: Vec::new(),
        }
    }
}

/// The output of a nested task, carried up to whoever submitted the root task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputChunk {
    /// The export that ran.
    pub function: String,
    /// The worker's pid.
    pub pid: u32,
    /// What it wrote to stdout.
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    /// What it wrote to stderr.
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
}
