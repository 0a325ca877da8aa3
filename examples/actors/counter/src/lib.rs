//! An actor: a counter whose state lives between calls, in one instance on
//! one worker.
//!
//! ```text
//! wtrace actor create counter.wasm 'counter(5)'    # prints the actor's id
//! wtrace actor call ID 'incr(2)'                   # prints 7
//! ```

wit_bindgen::generate!({
    inline: "
        package example:counter;
        world counter {
            export counter-api: interface {
                /// A number that goes up.
                resource counter {
                    /// Starts at `start`.
                    constructor(start: s64);
                    /// Adds `by` and returns the new value.
                    incr: func(by: s64) -> s64;
                    /// The value.
                    get: func() -> s64;
                }
            }
        }
    ",
});

use std::cell::Cell;

use exports::counter_api::{Guest, GuestCounter};

struct Component;

impl Guest for Component {
    type Counter = Counter;
}

struct Counter {
    value: Cell<i64>,
}

impl GuestCounter for Counter {
    fn new(start: i64) -> Self {
        Self {
            value: Cell::new(start),
        }
    }

    fn incr(&self, by: i64) -> i64 {
        wtrace_guest::in_span("add", |span| {
            span.set_attribute("counter.by", by);
            self.value.set(self.value.get() + by);
        });
        self.value.get()
    }

    fn get(&self) -> i64 {
        self.value.get()
    }
}

export!(Component);
