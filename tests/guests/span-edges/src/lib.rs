//! Test task: one export per edge case of the span protocol, using the raw
//! bindings where the SDK's guard would prevent the misuse.

wit_bindgen::generate!({
    inline: "
        package tests:span-edges;
        world span-edges {
            export nested-three: func();
            export never-ended: func();
            export child-outlives-parent: func();
            export double-end: func() -> string;
            export dropped-handle: func();
            export trap-in-span: func();
            export fails: func(reason: string) -> result<u32, string>;
            export add: func(a: u32, b: u32) -> u32;
            export attributes: func();
            export many-spans: func(n: u32) -> u32;
            export spin: func(ms: u32) -> u32;
            export bench-spans: func(n: u32) -> u32;
            export bench-spans-late: func(n: u32) -> u32;
            export bench-spans-raw: func(n: u32) -> u32;
            export finish-in-one-call: func() -> string;
            export busy: func(rounds: u32) -> u64;
        }
    ",
});

use wtrace_guest::wit::wtrace::tracing::tracer as raw;
use wtrace_guest::{SpanBuilder, SpanKind, in_span, kv, span};

fn start(name: &str) -> raw::Span {
    raw::start_span(
        name,
        &raw::SpanOptions {
            kind: None,
            attributes: Vec::new(),
            links: Vec::new(),
            parent: None,
        },
    )
}

struct Edges;

impl Guest for Edges {
    fn nested_three() {
        in_span("level-1", |_| {
            in_span("level-2", |_| {
                in_span("level-3", |s| s.set_attribute("depth", 3));
            });
        });
    }

    fn never_ended() {
        let open = start("never-ended");
        // Leak the handle: the guest never ends or drops it.
        std::mem::forget(open);
    }

    fn child_outlives_parent() {
        let parent = start("parent");
        let child = start("child");
        raw::end_span(&parent).unwrap();
        raw::end_span(&child).unwrap();
    }

    fn double_end() -> String {
        let once = start("ended-twice");
        raw::end_span(&once).unwrap();
        raw::end_span(&once).unwrap_err()
    }

    fn dropped_handle() {
        let dropped = start("dropped-handle");
        drop(dropped);
        in_span("after-drop", |_| {});
    }

    fn trap_in_span() {
        let _outer = span("outer");
        let _inner = span("inner");
        panic!("trapping with two spans open");
    }

    fn fails(reason: String) -> Result<u32, String> {
        let _work = span("doomed-work");
        Err(reason)
    }

    fn add(a: u32, b: u32) -> u32 {
        a + b
    }

    fn attributes() {
        let s = SpanBuilder::new("attributed")
            .kind(SpanKind::Client)
            .attribute("at.start", "yes")
            .start();
        s.set_attribute("text", "hello");
        s.set_attribute("count", 42);
        s.set_attribute("ratio", 0.5);
        s.set_attribute("flag", true);
        s.set_attribute("tags", &["a", "b"][..]);
        s.add_event("checkpoint", &[kv("step", 1)]);
        s.set_error("went wrong on purpose");
        // Every value type known at start: the SDK's encoded start.
        SpanBuilder::new("all-types")
            .kind(SpanKind::Producer)
            .attribute("s", "text")
            .attribute("b", true)
            .attribute("i", -3_i64)
            .attribute("f", 0.25)
            .attribute("sl", vec!["x".to_owned(), "ÿ".to_owned()])
            .attribute("il", vec![1_i64, -2])
            .attribute("fl", vec![0.5, 1.5])
            .attribute("bl", vec![true, false])
            .start();
    }

    fn many_spans(n: u32) -> u32 {
        for i in 0..n {
            in_span("many", |s| s.set_attribute("i", i));
        }
        n
    }

    fn bench_spans(n: u32) -> u32 {
        // The unit of the span benchmark: a span with two attributes known
        // at start, then its end, as the SDK makes it (two host calls).
        for _ in 0..n {
            SpanBuilder::new("bench")
                .attribute("a", 1)
                .attribute("b", "two")
                .start()
                .end();
        }
        n
    }

    fn bench_spans_raw(n: u32) -> u32 {
        // The same span with its encoding made once: the two host calls
        // alone, without the SDK's work in the guest.
        let mut start = Vec::new();
        let attributes = [kv("a", 1), kv("b", "two")];
        wtrace_guest::encoded::start(&mut start, None, "bench", &attributes, &[], None);
        let mut none = Vec::new();
        wtrace_guest::encoded::attributes(&mut none, &[]);
        for _ in 0..n {
            let span = raw::start_span_encoded(&start);
            raw::finish_span_encoded(span, &none).ok();
        }
        n
    }

    fn bench_spans_late(n: u32) -> u32 {
        // The same span with its attributes set one call each after start,
        // ended and dropped: five host calls.
        let options = raw::SpanOptions {
            kind: None,
            attributes: Vec::new(),
            links: Vec::new(),
            parent: None,
        };
        let one = wtrace_guest::Value::S64(1);
        let two = wtrace_guest::Value::String("two".into());
        for _ in 0..n {
            let span = raw::start_span("bench", &options);
            span.set_attribute("a", &one);
            span.set_attribute("b", &two);
            raw::end_span(&span).ok();
        }
        n
    }

    fn finish_in_one_call() -> String {
        let finished = start("finished");
        raw::finish_span(finished, &[kv("at.end", 7)]).unwrap();
        let ended = start("finished-after-end");
        raw::end_span(&ended).unwrap();
        let message = raw::finish_span(ended, &[kv("ignored", true)]).unwrap_err();
        in_span("after-finish", |_| {});
        message
    }

    /// `rounds` of xorshift and no span: a task with work of its own.
    fn busy(rounds: u32) -> u64 {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..rounds {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        x
    }

    fn spin(ms: u32) -> u32 {
        let _busy = span("spinning");
        let until = std::time::Instant::now() + std::time::Duration::from_millis(ms.into());
        let mut turns = 0u32;
        while std::time::Instant::now() < until {
            turns = turns.wrapping_add(1);
        }
        turns
    }
}

export!(Edges);
