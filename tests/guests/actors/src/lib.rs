//! Test actors: a counter with a method per edge case (a trap, an error
//! result, output, a guest span, a spin past the timeout), and a second
//! class in another interface.

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
        }
    ",
});

use std::cell::{Cell, RefCell};

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
