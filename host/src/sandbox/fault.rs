//! Faults of the host itself while it serves a guest. Every value a guest
//! sends is checked before use, so a panic here is a wtrace bug; as defence
//! in depth it fails the one task it happened in (a `wtrace.HostPanic`
//! naming the call), never the worker, and leaves nothing half-done.
//!
//! Each host call of wtrace's own interfaces names itself with
//! [`host_call`]; a panic hook installed once per process notes, on the
//! panicking thread, which call was running and where the panic was, and
//! [`contain`] turns the unwinding into a [`HostPanic`].

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::sync::Once;

thread_local! {
    /// The host call (or phase of a task) this thread is in, if any.
    static CURRENT: Cell<Option<&'static str>> = const { Cell::new(None) };
    /// Set inside [`contain`]: panics here are reported as a task's failure,
    /// not printed as a crash.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
    /// What the panic hook saw of the last contained panic on this thread.
    static LAST: RefCell<Option<HostPanic>> = const { RefCell::new(None) };
}

/// A panic caught while serving a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPanic {
    /// The host call it happened in (`wtrace:tracing/tracer#start-span`), or
    /// the phase of the task (`instantiating the component`).
    pub(crate) call: &'static str,
    /// The panic's message.
    pub(crate) message: String,
    /// Where in the host's source it panicked.
    pub(crate) location: String,
}

impl std::fmt::Display for HostPanic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the host panicked in {}: {} (at {}); only this task failed, and the worker runs on. \
             This is a wtrace bug: please report it with the guest that triggered it",
            self.call, self.message, self.location
        )
    }
}

/// Marks this thread as inside `call` until the guard drops (the previous
/// call, if any, is current again).
#[must_use = "the call is current only while the guard lives"]
pub(crate) fn host_call(call: &'static str) -> CallGuard {
    CallGuard(CURRENT.replace(Some(call)))
}

/// Restores the call that was current before [`host_call`].
#[derive(Debug)]
pub(crate) struct CallGuard(Option<&'static str>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        CURRENT.set(self.0);
    }
}

/// Runs `f`, turning a panic inside it into a [`HostPanic`]. `phase` names
/// what `f` does, for panics outside any named host call.
pub(crate) fn contain<R>(phase: &'static str, f: impl FnOnce() -> R) -> Result<R, HostPanic> {
    install_hook();
    let _phase = host_call(phase);
    let outer = CONTAINED.replace(true);
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINED.set(outer);
    result.map_err(|payload| {
        LAST.take().unwrap_or_else(|| HostPanic {
            call: phase,
            message: payload_text(payload.as_ref()),
            location: "unknown".into(),
        })
    })
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Installs, once, a panic hook that records contained panics instead of
/// printing them; every other panic goes to the previous hook as before.
fn install_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
            if !CONTAINED.get() {
                return previous(info);
            }
            let panic = HostPanic {
                call: CURRENT.get().unwrap_or("the host"),
                message: payload_text(info.payload()),
                location: info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_else(|| "unknown".into()),
            };
            LAST.set(Some(panic));
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contained_panic_names_the_innermost_call_and_where_it_was() {
        let caught = contain("running the task", || {
            let _call = host_call("wtrace:tracing/tracer#start-span");
            let n: Option<u32> = std::hint::black_box(None);
            n.expect("a guest value")
        })
        .unwrap_err();
        assert_eq!(caught.call, "wtrace:tracing/tracer#start-span");
        assert_eq!(caught.message, "a guest value");
        assert!(caught.location.contains("fault.rs"), "{}", caught.location);
        assert!(caught.to_string().contains("only this task failed"));
        // The guard was dropped while unwinding; the thread is clean again.
        assert_eq!(CURRENT.get(), None);
        assert_eq!(contain("again", || 7), Ok(7));
    }

    #[test]
    fn a_panic_outside_named_calls_names_the_phase() {
        let caught = contain("formatting the result", || panic!("boom {}", 1)).unwrap_err();
        assert_eq!(caught.call, "formatting the result");
        assert_eq!(caught.message, "boom 1");
    }
}
