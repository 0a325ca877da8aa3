//! Test actors: a counter with a method per edge case (a trap, an error
//! result, output, a guest span, a spin past the timeout, waiting on a call
//! to itself), a second class in another interface, and tasks that make
//! and call actors from inside the cluster.

wit_bindgen::generate!({
    inline: "
        package tests:actors;
        world actors {
            export counter-api: interface {
                resource counter {
                    constructor(start: s64);
                    incr: func(by: s64) -> s64;
                    get: func() -> s64;
                    boom: func();
                    refuse: func(why: string) -> result<s64, string>;
                    say: func(text: string);
                    traced: func() -> s64;
                    spin: func(ms: u32);
                    grow: func(pages: u32) -> u32;
                    wait-on: func(id: string) -> result<string, string>;
                }
            }
            export log-api: interface {
                resource log {
                    constructor();
                    push: func(entry: string) -> u32;
                    entries: func() -> list<string>;
                }
            }
            export plain: func() -> u32;
            /// Makes a counter at `start`, adds 1 `times` times, kills it:
            /// the last count.
            export make-and-count: func(start: s64, times: u32) -> result<s64, string>;
            /// Makes a counter named `name` at 100 and leaves it alive: its id.
            export make-named: func(name: string) -> result<string, string>;
            /// Adds `by` to the actor `name` names.
            export call-by-name: func(name: string, by: s64) -> result<string, string>;
        }
    ",
});

use std::cell::{Cell, RefCell};

use wtrace_guest::tasks;

struct Component;

impl exports::counter_api::Guest for Component {
    type Counter = Counter;
}

impl exports::log_api::Guest for Component {
    type Log = Log;
}

impl Guest for Component {
    fn plain() -> u32 {
        7
    }

    fn make_and_count(start: i64, times: u32) -> Result<i64, String> {
        let counter = tasks::create_actor(
            "counter",
            &start.to_string(),
            &tasks::ActorOptions::default(),
        )?;
        let calls: Vec<tasks::TaskRef> = (0..times)
            .map(|_| counter.call("incr", "1"))
            .collect::<Result<_, _>>()?;
        let mut last = start;
        for call in calls {
            last = call.get()?.parse().map_err(|e| format!("{e}"))?;
        }
        counter.kill()?;
        Ok(last)
    }

    fn make_named(name: String) -> Result<String, String> {
        let options = tasks::ActorOptions {
            name: Some(name),
            max_restarts: 0,
        };
        Ok(tasks::create_actor("counter", "100", &options)?.id())
    }

    fn call_by_name(name: String, by: i64) -> Result<String, String> {
        tasks::actor(&name)?.call("incr", &by.to_string())?.get()
    }
}

struct Counter {
    value: Cell<i64>,
    memory: RefCell<Vec<Vec<u8>>>,
}

impl exports::counter_api::GuestCounter for Counter {
    fn new(start: i64) -> Self {
        if start < 0 {
            panic!("a counter cannot start below zero");
        }
        Self {
            value: Cell::new(start),
            memory: RefCell::new(Vec::new()),
        }
    }

    fn incr(&self, by: i64) -> i64 {
        self.value.set(self.value.get() + by);
        self.value.get()
    }

    fn get(&self) -> i64 {
        self.value.get()
    }

    fn boom(&self) {
        panic!("boom at {}", self.value.get());
    }

    fn refuse(&self, why: String) -> Result<i64, String> {
        Err(why)
    }

    fn say(&self, text: String) {
        println!("{text}");
    }

    fn traced(&self) -> i64 {
        wtrace_guest::in_span("inside-method", |span| {
            span.set_attribute("counter.value", self.value.get());
        });
        self.value.get()
    }

    fn spin(&self, ms: u32) {
        let until = std::time::Instant::now() + std::time::Duration::from_millis(ms.into());
        while std::time::Instant::now() < until {}
    }

    fn wait_on(&self, id: String) -> Result<String, String> {
        tasks::actor(&id)?.call("get", "")?.get()
    }

    fn grow(&self, pages: u32) -> u32 {
        self.memory
            .borrow_mut()
            .push(vec![1u8; pages as usize * 65536]);
        self.memory.borrow().len() as u32
    }
}

struct Log {
    entries: RefCell<Vec<String>>,
}

impl exports::log_api::GuestLog for Log {
    fn new() -> Self {
        Self {
            entries: RefCell::new(Vec::new()),
        }
    }

    fn push(&self, entry: String) -> u32 {
        self.entries.borrow_mut().push(entry);
        self.entries.borrow().len() as u32
    }

    fn entries(&self) -> Vec<String> {
        self.entries.borrow().clone()
    }
}

export!(Component);
