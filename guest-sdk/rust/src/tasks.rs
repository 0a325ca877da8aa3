//! Submitting tasks, and making and calling actors, from inside a task.
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

/// An actor on the cluster: an instance of a resource type a component
/// exports, kept alive on one worker. Its calls run one at a time, in the
/// order the cluster got them. Dropping the reference leaves the actor
/// alive; [`ActorRef::kill`] ends it.
///
/// ```no_run
/// use wtrace_guest::tasks;
///
/// fn count_to(n: i64) -> Result<String, String> {
///     let counter = tasks::create_actor("counter", "0", &tasks::ActorOptions::default())?;
///     let calls: Vec<tasks::TaskRef> = (0..n)
///         .map(|_| counter.call("incr", "1"))
///         .collect::<Result<_, _>>()?;
///     let last = calls.last().map(|c| c.get()).transpose()?;
///     counter.kill()?;
///     Ok(last.unwrap_or_default())
/// }
/// ```
#[derive(Debug)]
pub struct ActorRef(raw::ActorRef);

/// How to make an actor.
#[derive(Debug, Clone, Default)]
pub struct ActorOptions {
    /// A name usable in place of its id, unique in the cluster.
    pub name: Option<String>,
    /// How many times the cluster makes it again by its constructor (its
    /// state lost) after a call kills it or its worker dies.
    pub max_restarts: u32,
}

impl ActorOptions {
    fn raw(&self) -> raw::ActorOptions {
        raw::ActorOptions {
            name: self.name.clone(),
            max_restarts: self.max_restarts,
        }
    }
}

impl ActorRef {
    /// Its id, unique in the cluster: pass it to other tasks, which find
    /// the actor with [`actor`].
    pub fn id(&self) -> String {
        self.0.id()
    }

    /// Its class: the name of the resource type.
    pub fn class(&self) -> String {
        self.0.class()
    }

    /// Calls `method(args)` (`args` in WAVE, without `self`), after every
    /// call sent to the actor before. [`TaskRef::get`] waits for it.
    pub fn call(&self, method: &str, args: &str) -> Result<TaskRef, String> {
        self.0.call(method, args).map(TaskRef)
    }

    /// Ends the actor after the calls sent before (its destructor runs), and
    /// waits until it is gone.
    pub fn kill(&self) -> Result<(), String> {
        self.0.kill()
    }
}

/// Makes an actor of `class`, a resource type this task's own component
/// exports, by its constructor (`args` in WAVE), and waits until it exists.
pub fn create_actor(class: &str, args: &str, options: &ActorOptions) -> Result<ActorRef, String> {
    raw::create_actor(class, args, &options.raw()).map(ActorRef)
}

/// Makes an actor of a class of another component the cluster stores, named
/// by its digest (`sha256:<hex>`).
pub fn create_actor_in(
    component: &str,
    class: &str,
    args: &str,
    options: &ActorOptions,
) -> Result<ActorRef, String> {
    raw::create_actor_in(component, class, args, &options.raw()).map(ActorRef)
}

/// An actor made before, by a driver or a task: by its id or its name.
pub fn actor(id_or_name: &str) -> Result<ActorRef, String> {
    raw::actor(id_or_name).map(ActorRef)
}
