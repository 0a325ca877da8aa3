//! Submitting tasks from inside a task.
//!
//! The nested task runs on whichever worker is free (possibly this one), and
//! is traced as part of the same trace: its submit span is a child of the
//! current span here. Waiting in [`TaskRef::get`] does not hold the worker,
//! so tasks may wait on tasks without deadlocking the pool.
//!
//! ```no_run
//! use wtrace_guest::tasks;
//!
//! fn sum_of_squares(n: u32) -> Result<u64, String> {
//!     let parts: Vec<tasks::TaskRef> = (1..=n)
//!         .map(|i| tasks::submit("square", &i.to_string()))
//!         .collect::<Result<_, _>>()?;
//!     let mut total = 0;
//!     for part in parts {
//!         total += part.get()?.parse::<u64>().map_err(|e| e.to_string())?;
//!     }
//!     Ok(total)
//! }
//! ```

use crate::wit::wtrace::tracing::tasks as raw;

/// A submitted task.
#[derive(Debug)]
pub struct TaskRef(raw::TaskRef);

impl TaskRef {
    /// Waits for the task: its results in WAVE (`"42"`, `"\"text\""`), or
    /// its error. Calling it again returns the same answer.
    pub fn get(&self) -> Result<String, String> {
        self.0.get()
    }
}

/// Submits `function(args)` of this task's own component; `args` is the
/// WAVE argument list without parentheses (`""`, `"1, 2"`, `"\"x\""`).
pub fn submit(function: &str, args: &str) -> Result<TaskRef, String> {
    raw::submit(function, args).map(TaskRef)
}

/// Submits `function(args)` of another component the cluster stores, named
/// by its digest (`sha256:<hex>`).
pub fn submit_to(component: &str, function: &str, args: &str) -> Result<TaskRef, String> {
    raw::submit_to(component, function, args).map(TaskRef)
}
