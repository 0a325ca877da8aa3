//! Test task: output and log records of every kind, each written while a
//! known span is current, so tests can check what each record is joined to.

wit_bindgen::generate!({
    inline: "
        package tests:logging;
        world logging {
            export chatter: func() -> u32;
            export with-tracing: func() -> u32;
            export flood: func(records: u32) -> u32;
        }
    ",
});

use std::io::Write as _;

use wtrace_guest::logs::{self, Severity};

struct Logging;

impl Guest for Logging {
    /// Under the execute span: a plain stdout line and a stderr line. Under
    /// span `step`: a line that declares ERROR, an emitted WARN record with
    /// an attribute, and a last line with no newline.
    fn chatter() -> u32 {
        println!("plain line");
        eprintln!("careful now");
        let step = wtrace_guest::span("step");
        println!("ERROR disk full");
        logs::emit(Severity::Warn, "slow disk", &[wtrace_guest::kv("ms", 250)]);
        print!("no newline at the end");
        let _ = std::io::stdout().flush();
        drop(step);
        1
    }

    /// A `tracing` event inside a `tracing` span: a record joined to it.
    fn with_tracing() -> u32 {
        wtrace_guest::tracing_layer::init();
        let load = tracing::info_span!("load");
        let _entered = load.enter();
        tracing::warn!(rows = 3, "loaded slowly");
        2
    }

    /// `records` records emitted as fast as the guest can: more than any
    /// exporter queue holds, faster than it drains.
    fn flood(records: u32) -> u32 {
        for i in 0..records {
            logs::emit(
                Severity::Info,
                "flooding",
                &[wtrace_guest::kv("i", i64::from(i))],
            );
        }
        records
    }
}

export!(Logging);
